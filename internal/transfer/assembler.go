package transfer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// File is where an Assembler writes a model. An *os.File fits; MemFile is an
// in-memory one for fleet-sim and tests.
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
}

// Assembler writes the chunks of one model version into a File, checking
// each against the manifest. It keeps no bookkeeping besides the file: on
// creation it rescans the file and counts every chunk whose bytes hash right
// as present, so a download resumes after kill -9 (a torn write fails its
// hash and is fetched again). Safe for concurrent use.
type Assembler struct {
	// Immutable after NewAssembler.
	f         File
	size      uint64
	chunkSize uint32
	hashes    [][]byte // per-chunk sha256, from the manifest
	sum       []byte   // whole-model sha256

	// mu guards present and have, and serialises writes to f so two Adds of
	// the same chunk write it once.
	mu      sync.Mutex
	present []bool
	have    int
}

// NewAssembler prepares f to receive the chunks of m: it sizes f to m's size
// (keeping what is already there) and marks the chunks already intact. It
// checks only what it needs to work safely (a consistent chunk layout); call
// ValidateManifest with the device's Limits first.
func NewAssembler(m *efpb.Manifest, f File) (*Assembler, error) {
	if err := checkLayout(m); err != nil {
		return nil, fmt.Errorf("new assembler: %w", err)
	}
	if f == nil {
		return nil, fmt.Errorf("new assembler: file is nil")
	}
	a := &Assembler{
		f:         f,
		size:      m.Size,
		chunkSize: m.ChunkSize,
		hashes:    make([][]byte, len(m.ChunkSha256)),
		sum:       bytes.Clone(m.Sha256),
		present:   make([]bool, len(m.ChunkSha256)),
	}
	for i, h := range m.ChunkSha256 {
		a.hashes[i] = bytes.Clone(h)
	}
	// An empty file (a download starting) holds no chunk: rescanning it
	// would read and hash the whole model's worth of zeros.
	fresh := false
	if st, ok := f.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil && fi.Size() == 0 {
			fresh = true
		}
	}
	if err := f.Truncate(int64(m.Size)); err != nil {
		return nil, fmt.Errorf("new assembler %s %s: size file: %w", m.Name, m.Version, err)
	}
	if !fresh {
		if err := a.rescan(); err != nil {
			return nil, fmt.Errorf("new assembler %s %s: %w", m.Name, m.Version, err)
		}
	}
	return a, nil
}

// checkLayout is the part of ValidateManifest the Assembler relies on.
func checkLayout(m *efpb.Manifest) error {
	switch {
	case m == nil:
		return fieldErr("manifest", "is nil")
	case m.Size == 0:
		return fieldErr("size", "is 0")
	case m.Size > 1<<62:
		return fieldErr("size", "%d is too large", m.Size)
	case m.ChunkSize == 0:
		return fieldErr("chunk_size", "is 0")
	case len(m.Sha256) != sha256.Size:
		return fieldErr("sha256", "has %d bytes, want %d", len(m.Sha256), sha256.Size)
	}
	if n := ChunkCount(m.Size, m.ChunkSize); len(m.ChunkSha256) != n {
		return fieldErr("chunk_sha256", "has %d hashes, want %d", len(m.ChunkSha256), n)
	}
	for i, h := range m.ChunkSha256 {
		if len(h) != sha256.Size {
			return fieldErr(fmt.Sprintf("chunk_sha256[%d]", i), "has %d bytes, want %d", len(h), sha256.Size)
		}
	}
	return nil
}

// rescan marks every chunk whose bytes in the file hash right.
func (a *Assembler) rescan() error {
	buf := make([]byte, min(uint64(a.chunkSize), a.size))
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.present {
		start, end := chunkBounds(a.size, a.chunkSize, uint32(i))
		b := buf[:end-start]
		if err := readFull(a.f, b, int64(start)); err != nil {
			return fmt.Errorf("rescan chunk %d: %w", i, err)
		}
		sum := sha256.Sum256(b)
		if bytes.Equal(sum[:], a.hashes[i]) {
			a.present[i] = true
			a.have++
		}
	}
	return nil
}

// readFull reads len(b) bytes at off; io.EOF with a full buffer is fine.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read at %d: %d of %d bytes", off, n, len(b))
	}
	return err
}

// chunkLen is the exact length chunk index must have.
func (a *Assembler) chunkLen(index uint32) uint64 {
	start, end := chunkBounds(a.size, a.chunkSize, index)
	return end - start
}

// Add checks chunk index against the manifest and writes it. It checks the
// index and the exact length (only the last chunk may be short) before
// hashing. added is false when the chunk was already present: a duplicate
// is dropped without being hashed or written. Errors:
// ErrChunkRange, ErrChunkSize, ErrChunkHash (untrusted data; nothing is
// written), or a write error.
func (a *Assembler) Add(index uint32, data []byte) (added bool, err error) {
	if uint64(index) >= uint64(len(a.hashes)) {
		return false, fmt.Errorf("add chunk: %w: index %d, model has %d chunks", ErrChunkRange, index, len(a.hashes))
	}
	if want := a.chunkLen(index); uint64(len(data)) != want {
		return false, fmt.Errorf("add chunk %d: %w: %d bytes, want %d", index, ErrChunkSize, len(data), want)
	}
	// A duplicate (a chunk republished for a later device) is dropped
	// before it is hashed: on a shared chunk topic that is the common case.
	a.mu.Lock()
	dup := a.present[index]
	a.mu.Unlock()
	if dup {
		return false, nil
	}
	sum := sha256.Sum256(data)
	if !bytes.Equal(sum[:], a.hashes[index]) {
		return false, fmt.Errorf("add chunk %d: %w", index, ErrChunkHash)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.present[index] {
		return false, nil
	}
	start, _ := chunkBounds(a.size, a.chunkSize, index)
	if _, err := a.f.WriteAt(data, int64(start)); err != nil {
		return false, fmt.Errorf("add chunk %d: %w", index, err)
	}
	a.present[index] = true
	a.have++
	return true, nil
}

// Missing returns the indexes of up to limit absent chunks in ascending
// order; limit ≤ 0 means all of them.
func (a *Assembler) Missing(limit int) []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.present) - a.have
	if limit > 0 && limit < n {
		n = limit
	}
	out := make([]uint32, 0, n)
	for i, ok := range a.present {
		if len(out) == n {
			break
		}
		if !ok {
			out = append(out, uint32(i))
		}
	}
	return out
}

// Has reports whether chunk index is present (false when out of range).
func (a *Assembler) Has(index uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return uint64(index) < uint64(len(a.present)) && a.present[index]
}

// Have is the number of chunks present.
func (a *Assembler) Have() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.have
}

// Total is the number of chunks of the model.
func (a *Assembler) Total() int { return len(a.hashes) }

// Complete reports whether every chunk is present.
func (a *Assembler) Complete() bool { return a.Have() == a.Total() }

// Verify syncs the file, then re-reads all of it and checks its size and
// whole-file sha256 against the manifest (ErrModelHash). It refuses with
// ErrIncomplete while chunks are missing. A mismatch with every chunk present
// means the manifest's chunk hashes and file hash disagree: discard the file.
func (a *Assembler) Verify() error {
	_, err := a.ReadVerified()
	return err
}

// ReadVerified is Verify that also returns the model bytes it read and
// hashed, so that the caller can load them without reading and hashing the
// file once more.
func (a *Assembler) ReadVerified() ([]byte, error) {
	if have, total := a.Have(), a.Total(); have != total {
		return nil, fmt.Errorf("verify model: %w: %d of %d chunks present", ErrIncomplete, have, total)
	}
	if err := a.f.Sync(); err != nil {
		return nil, fmt.Errorf("verify model: sync: %w", err)
	}
	if a.size > math.MaxInt-1 {
		return nil, fmt.Errorf("verify model: %d bytes do not fit in memory", a.size)
	}
	// One byte more than the manifest says, to notice a longer file.
	b := make([]byte, a.size+1)
	n, err := a.f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("verify model: read: %w", err)
	}
	switch {
	case uint64(n) < a.size:
		return nil, fmt.Errorf("verify model: %w: file has %d bytes, manifest says %d", ErrModelHash, n, a.size)
	case uint64(n) > a.size:
		return nil, fmt.Errorf("verify model: %w: file is longer than the manifest's %d bytes", ErrModelHash, a.size)
	}
	b = b[:n:n]
	if sum := sha256.Sum256(b); !bytes.Equal(sum[:], a.sum) {
		return nil, fmt.Errorf("verify model: %w: sha256 %x, manifest says %x", ErrModelHash, sum, a.sum)
	}
	return b, nil
}
