//go:build !unix

package agent

import (
	"io"
	"os"
)

// mapFile reads f: without mmap the bytes are a copy in the Go heap for the
// duration of a load.
func mapFile(f *os.File, size int64) (*modelFile, error) {
	b := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), b); err != nil { // from the start, wherever a hash left the offset
		return nil, err
	}
	return &modelFile{b: b}, nil
}

// dropResident has nothing to drop: the bytes are an ordinary slice.
func (m *modelFile) dropResident() {}
