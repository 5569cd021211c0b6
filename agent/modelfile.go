package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// modelFile is a model file's bytes for loading into onnxruntime: mapped
// read-only from the file where the platform allows (modelfile_unix.go),
// so they are the page cache's pages and never a copy in the Go heap,
// which would otherwise grow by the model's size at each load and keep
// that memory from the rest of the device until the runtime returned it.
// close releases them; onnxruntime keeps nothing of them after a load.
type modelFile struct {
	path  string // the file's path, for onnxruntime to read
	b     []byte
	unmap func([]byte) error // nil: b is an ordinary slice
	sum   [sha256.Size]byte
}

// openVerified checks that the model file at path is exactly size bytes
// with sha256 sum (hex) and maps it. The agent alone writes its data
// directory and never rewrites a model file, so what onnxruntime then
// reads is what was checked.
func openVerified(path, sum string, size uint64) (*modelFile, error) {
	f, fi, err := openSized(path, sum, size)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Hashed by reading, not through the mapping: read pages stay in the
	// page cache, outside this process's resident set, where mapped ones
	// would count against it until dropped.
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	mf, err := mapFile(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	mf.path = path
	h.Sum(mf.sum[:0])
	if hex.EncodeToString(mf.sum[:]) != sum {
		mf.close()
		return nil, fmt.Errorf("model file %s is corrupt: sha256 differs from the manifest", sum)
	}
	return mf, nil
}

// openDownloaded is openVerified for a download the agent has just
// completed, without hashing the file whole: each of its chunks was checked
// against the signed manifest's chunk hashes before it was written (or,
// after a restart, when the assembler rescanned the part file), at the
// offsets and the size the manifest gives, so the file is the signed bytes
// and a second hash would read and hash every byte again (at 10,000
// simulated agents, 10 GiB per 1 MiB rollout). The file's whole sha256 is
// still checked by every later load from disk (restart, rollback).
func openDownloaded(path, sum string, size uint64) (*modelFile, error) {
	f, fi, err := openSized(path, sum, size)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mf, err := mapFile(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	mf.path = path
	if n, err := hex.Decode(mf.sum[:], []byte(sum)); err != nil || n != sha256.Size {
		mf.close()
		return nil, fmt.Errorf("model file %s: the manifest's sha256 is not %d hex bytes", sum, sha256.Size)
	}
	return mf, nil
}

// openSized opens the model file at path (named by its sha256 sum, hex)
// and checks that it has size bytes.
func openSized(path, sum string, size uint64) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read model: %w", err)
	}
	if uint64(fi.Size()) != size {
		f.Close()
		return nil, nil, fmt.Errorf("model file %s is corrupt: %d bytes, the manifest says %d", sum, fi.Size(), size)
	}
	return f, fi, nil
}

// close releases the bytes; safe on nil and more than once.
func (m *modelFile) close() {
	if m == nil || m.b == nil {
		return
	}
	if m.unmap != nil {
		_ = m.unmap(m.b)
	}
	m.b = nil
}
