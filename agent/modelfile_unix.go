//go:build unix

package agent

import (
	"fmt"
	"os"
	"syscall"
)

// mapFile maps size bytes of f read-only. The agent's own model files are
// never written once renamed into place, so the mapping cannot change
// under a load.
func mapFile(f *os.File, size int64) (*modelFile, error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("map %s: cannot map %d bytes", f.Name(), size)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	return &modelFile{b: b, unmap: syscall.Munmap}, nil
}

// dropResident lets the mapped pages go from this process (they stay in
// the page cache and come back when read); a no-op on a plain slice.
func (m *modelFile) dropResident() {
	if m.unmap != nil && len(m.b) > 0 {
		_ = syscall.Madvise(m.b, syscall.MADV_DONTNEED)
	}
}
