//go:build !linux

package agent

// lowPriority runs fn: only Linux sets a priority per thread.
func lowPriority(fn func()) { fn() }
