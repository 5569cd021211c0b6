package transfer

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// MemFile is an in-memory File for fleet-sim and tests. Safe for concurrent
// use.
type MemFile struct {
	mu   sync.Mutex // guards data
	data []byte
}

// NewMemFile returns an empty MemFile.
func NewMemFile() *MemFile { return &MemFile{} }

var errNegativeOffset = errors.New("negative offset")

// ReadAt implements io.ReaderAt.
func (m *MemFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("memfile read: %w", errNegativeOffset)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt, growing the file as needed.
func (m *MemFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("memfile write: %w", errNegativeOffset)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.data)) {
		m.grow(end)
	}
	return copy(m.data[off:], p), nil
}

// Truncate sets the size, zero-filling when it grows.
func (m *MemFile) Truncate(size int64) error {
	if size < 0 {
		return fmt.Errorf("memfile truncate: negative size %d", size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if size <= int64(len(m.data)) {
		clear(m.data[size:])
		m.data = m.data[:size]
		return nil
	}
	m.grow(size)
	return nil
}

// grow extends data to size with zeros; mu must be held.
func (m *MemFile) grow(size int64) {
	if size <= int64(cap(m.data)) {
		m.data = m.data[:size]
		return
	}
	nd := make([]byte, size)
	copy(nd, m.data)
	m.data = nd
}

// Sync does nothing; memory is as durable as it gets.
func (m *MemFile) Sync() error { return nil }

// Size returns the current size.
func (m *MemFile) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.data))
}

// Bytes returns a copy of the contents.
func (m *MemFile) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}
