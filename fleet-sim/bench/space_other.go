//go:build !linux

package bench

// freeBytes is not measured off Linux.
func freeBytes(string) (uint64, bool) { return 0, false }
