//go:build race

package deploytest

// raceEnabled makes the agent binary the tests build share the race build
// cache with the test binaries `make test` compiles anyway.
const raceEnabled = true
