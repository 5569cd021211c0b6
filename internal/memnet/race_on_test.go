//go:build race

package memnet

// raceEnabled: under the race detector sync.Pool drops a share of what it
// is given, on purpose, so reuse is only mostly there.
const raceEnabled = true
