//go:build unix

package store

import (
	"io/fs"
	"syscall"
)

// diskUsage is the space allocated to a file: badger preallocates sparse
// value-log and memtable files, so their apparent size overstates it.
func diskUsage(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}
