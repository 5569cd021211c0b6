package transfer_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

const testChunk = 1024

func chunk(t testing.TB, model []byte, i uint32) []byte {
	t.Helper()
	data, err := transfer.ChunkData(model, testChunk, i)
	require.NoError(t, err)
	return data
}

func tempFile(t *testing.T) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.onnx.part")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f, path
}

func TestAssembleRoundTrip(t *testing.T) {
	model := testModel(10*testChunk + 123)
	m := validManifest(model, testChunk)

	files := map[string]func(t *testing.T) transfer.File{
		"memfile": func(*testing.T) transfer.File { return transfer.NewMemFile() },
		"os.File": func(t *testing.T) transfer.File { f, _ := tempFile(t); return f },
	}
	for name, newFile := range files {
		t.Run(name, func(t *testing.T) {
			f := newFile(t)
			a, err := transfer.NewAssembler(m, f)
			require.NoError(t, err)
			assert.Equal(t, 11, a.Total())
			assert.Equal(t, 0, a.Have())
			assert.Len(t, a.Missing(0), 11)

			// Out of order, every chunk twice.
			order := rand.New(rand.NewPCG(1, 2)).Perm(a.Total())
			order = append(order, order...)
			added := 0
			for _, i := range order {
				ok, err := a.Add(uint32(i), chunk(t, model, uint32(i)))
				require.NoError(t, err, "Add(%d)", i)
				if ok {
					added++
				}
			}
			assert.Equal(t, 11, added, "each chunk is added once; duplicates report added=false")
			assert.True(t, a.Complete())
			assert.Empty(t, a.Missing(0))
			require.NoError(t, a.Verify())

			got := make([]byte, len(model)+10)
			n, _ := f.ReadAt(got, 0)
			assert.Equal(t, model, got[:n], "assembled file must equal the model")
		})
	}
}

func TestAssemblerAddRefusals(t *testing.T) {
	model := testModel(3*testChunk + 100) // chunks 0..2 full, 3 has 100 bytes
	m := validManifest(model, testChunk)

	wrong := bytes.Clone(chunk(t, model, 1))
	wrong[10] ^= 0xff
	tests := []struct {
		name  string
		index uint32
		data  []byte
		want  error
	}{
		{"wrong hash", 1, wrong, transfer.ErrChunkHash},
		{"zero bytes of the right length", 1, make([]byte, testChunk), transfer.ErrChunkHash},
		{"index past the end", 4, chunk(t, model, 3), transfer.ErrChunkRange},
		{"huge index", ^uint32(0), chunk(t, model, 3), transfer.ErrChunkRange},
		// The length is checked before the hash: a right prefix with extra
		// bytes is a size error, not a hash error.
		{"oversized", 0, append(bytes.Clone(chunk(t, model, 0)), 0), transfer.ErrChunkSize},
		{"undersized", 0, chunk(t, model, 0)[:testChunk-1], transfer.ErrChunkSize},
		{"empty", 2, nil, transfer.ErrChunkSize},
		{"last chunk padded to full size", 3, append(bytes.Clone(chunk(t, model, 3)), make([]byte, testChunk-100)...), transfer.ErrChunkSize},
		{"last chunk truncated", 3, chunk(t, model, 3)[:99], transfer.ErrChunkSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := transfer.NewMemFile()
			a, err := transfer.NewAssembler(m, f)
			require.NoError(t, err)
			before := f.Bytes()
			added, err := a.Add(tt.index, tt.data)
			assert.ErrorIs(t, err, tt.want)
			assert.False(t, added)
			assert.Equal(t, before, f.Bytes(), "a refused chunk must not touch the file")
			assert.Equal(t, 0, a.Have())
		})
	}

	// A copy of a chunk already present is dropped unread, good or bad:
	// nothing is written, and duplicates (republished for later devices)
	// cost no hashing.
	f := transfer.NewMemFile()
	a, err := transfer.NewAssembler(m, f)
	require.NoError(t, err)
	added, err := a.Add(1, chunk(t, model, 1))
	require.NoError(t, err)
	require.True(t, added)
	before := f.Bytes()
	added, err = a.Add(1, wrong)
	assert.NoError(t, err)
	assert.False(t, added)
	assert.Equal(t, before, f.Bytes(), "the present chunk is untouched")
	assert.True(t, a.Has(1))
	assert.False(t, a.Has(0))
	assert.False(t, a.Has(99))
}

func TestAssemblerResume(t *testing.T) {
	model := testModel(8*testChunk + 300) // 9 chunks
	m := validManifest(model, testChunk)
	f, path := tempFile(t)

	a, err := transfer.NewAssembler(m, f)
	require.NoError(t, err)
	for _, i := range []uint32{0, 2, 4, 6, 8} {
		_, err := a.Add(i, chunk(t, model, i))
		require.NoError(t, err)
	}
	require.Equal(t, 5, a.Have())
	require.NoError(t, f.Close())

	// The crash: chunk 4 is damaged on disk, and half of chunk 5 was
	// written before the process died (a torn write, never acknowledged).
	g, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close() })
	_, err = g.WriteAt([]byte{^model[4*testChunk+17]}, 4*testChunk+17)
	require.NoError(t, err)
	_, err = g.WriteAt(chunk(t, model, 5)[:testChunk/2], 5*testChunk)
	require.NoError(t, err)

	b, err := transfer.NewAssembler(m, g)
	require.NoError(t, err)
	assert.Equal(t, 4, b.Have(), "exactly the intact chunks survive")
	assert.Equal(t, []uint32{1, 3, 4, 5, 7}, b.Missing(0))
	assert.Equal(t, []uint32{1, 3}, b.Missing(2))

	for _, i := range b.Missing(0) {
		added, err := b.Add(i, chunk(t, model, i))
		require.NoError(t, err)
		assert.True(t, added, "chunk %d", i)
	}
	require.True(t, b.Complete())
	require.NoError(t, b.Verify())

	// A complete file rescans as complete.
	c, err := transfer.NewAssembler(m, g)
	require.NoError(t, err)
	assert.True(t, c.Complete())
}

func TestAssemblerTruncatesLongerFile(t *testing.T) {
	model := testModel(2*testChunk + 1)
	m := validManifest(model, testChunk)
	f := transfer.NewMemFile()
	_, err := f.WriteAt(append(bytes.Clone(model), "trailing junk"...), 0)
	require.NoError(t, err)

	a, err := transfer.NewAssembler(m, f)
	require.NoError(t, err)
	assert.True(t, a.Complete(), "the model bytes were all there")
	assert.EqualValues(t, len(model), f.Size())
	assert.NoError(t, a.Verify())
}

func TestAssemblerVerify(t *testing.T) {
	model := testModel(4*testChunk + 10)
	fill := func(t *testing.T, m *efpb.Manifest) (*transfer.Assembler, *transfer.MemFile) {
		t.Helper()
		f := transfer.NewMemFile()
		a, err := transfer.NewAssembler(m, f)
		require.NoError(t, err)
		for i := range a.Total() {
			_, err := a.Add(uint32(i), chunk(t, model, uint32(i)))
			require.NoError(t, err)
		}
		return a, f
	}

	t.Run("incomplete", func(t *testing.T) {
		a, err := transfer.NewAssembler(validManifest(model, testChunk), transfer.NewMemFile())
		require.NoError(t, err)
		_, err = a.Add(0, chunk(t, model, 0))
		require.NoError(t, err)
		err = a.Verify()
		assert.ErrorIs(t, err, transfer.ErrIncomplete)
		assert.ErrorContains(t, err, "1 of 5 chunks present")
	})
	t.Run("file changed after assembly", func(t *testing.T) {
		a, f := fill(t, validManifest(model, testChunk))
		_, err := f.WriteAt([]byte{^model[3]}, 3)
		require.NoError(t, err)
		assert.ErrorIs(t, a.Verify(), transfer.ErrModelHash)
	})
	t.Run("file grew after assembly", func(t *testing.T) {
		a, f := fill(t, validManifest(model, testChunk))
		_, err := f.WriteAt([]byte("x"), int64(len(model)))
		require.NoError(t, err)
		err = a.Verify()
		assert.ErrorIs(t, err, transfer.ErrModelHash)
		assert.ErrorContains(t, err, "longer")
	})
	t.Run("file shrank after assembly", func(t *testing.T) {
		a, f := fill(t, validManifest(model, testChunk))
		require.NoError(t, f.Truncate(int64(len(model)-1)))
		assert.ErrorIs(t, a.Verify(), transfer.ErrModelHash)
	})
	t.Run("chunk hashes disagree with file hash", func(t *testing.T) {
		m := validManifest(model, testChunk)
		m.Sha256[0] ^= 1
		a, _ := fill(t, m)
		require.True(t, a.Complete())
		assert.ErrorIs(t, a.Verify(), transfer.ErrModelHash)
	})
}

func TestNewAssemblerRefusals(t *testing.T) {
	model := testModel(3 * testChunk)
	tests := []struct {
		name  string
		mut   func(m *efpb.Manifest)
		field string
	}{
		{"zero size", func(m *efpb.Manifest) { m.Size = 0 }, "size"},
		{"zero chunk size", func(m *efpb.Manifest) { m.ChunkSize = 0 }, "chunk_size"},
		{"hash count", func(m *efpb.Manifest) { m.ChunkSha256 = m.ChunkSha256[:2] }, "chunk_sha256"},
		{"short hash", func(m *efpb.Manifest) { m.ChunkSha256[2] = nil }, "chunk_sha256[2]"},
		{"short file hash", func(m *efpb.Manifest) { m.Sha256 = nil }, "sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest(model, testChunk)
			tt.mut(m)
			_, err := transfer.NewAssembler(m, transfer.NewMemFile())
			var me *transfer.ManifestError
			require.True(t, errors.As(err, &me), "NewAssembler = %v, want *ManifestError", err)
			assert.Equal(t, tt.field, me.Field)
		})
	}
	_, err := transfer.NewAssembler(nil, transfer.NewMemFile())
	assert.ErrorIs(t, err, transfer.ErrInvalidManifest)
	_, err = transfer.NewAssembler(validManifest(model, testChunk), nil)
	assert.Error(t, err)
}

func TestAssemblerConcurrentAdd(t *testing.T) {
	model := testModel(64*testChunk + 5)
	m := validManifest(model, testChunk)
	f, _ := tempFile(t)
	a, err := transfer.NewAssembler(m, f)
	require.NoError(t, err)

	var added atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 0))
			for _, i := range r.Perm(a.Total()) {
				ok, err := a.Add(uint32(i), chunk(t, model, uint32(i)))
				assert.NoError(t, err)
				if ok {
					added.Add(1)
				}
				_ = a.Missing(4)
				_ = a.Have()
			}
		})
	}
	wg.Wait()
	assert.EqualValues(t, a.Total(), added.Load(), "every chunk added exactly once across goroutines")
	require.NoError(t, a.Verify())
}

// FuzzAssemblerAdd: any index and bytes; Add never panics, accepts only the
// true chunk, and the file only ever holds model bytes where chunks landed.
func FuzzAssemblerAdd(f *testing.F) {
	model := testModel(3*testChunk + 77)
	m := validManifest(model, testChunk)
	f.Add(uint32(0), bytes.Clone(model[:testChunk]))
	f.Add(uint32(3), bytes.Clone(model[3*testChunk:]))
	f.Add(uint32(3), bytes.Clone(model[2*testChunk:3*testChunk]))
	f.Add(uint32(4), []byte{})
	f.Add(^uint32(0), []byte("x"))
	f.Fuzz(func(t *testing.T, index uint32, data []byte) {
		mf := transfer.NewMemFile()
		a, err := transfer.NewAssembler(m, mf)
		if err != nil {
			t.Fatal(err)
		}
		added, err := a.Add(index, data)
		if err != nil {
			if added || a.Have() != 0 {
				t.Fatalf("Add(%d) failed with %v but added=%v have=%d", index, err, added, a.Have())
			}
			return
		}
		want, cerr := transfer.ChunkData(model, testChunk, index)
		if cerr != nil || !bytes.Equal(want, data) || !added || a.Have() != 1 {
			t.Fatalf("Add(%d, %x) accepted bytes that are not the chunk", index, data)
		}
		got := mf.Bytes()[int(index)*testChunk:][:len(data)]
		if !bytes.Equal(got, data) {
			t.Fatalf("chunk %d not written where it belongs", index)
		}
	})
}

// countingFile counts reads of an *os.File.
type countingFile struct {
	*os.File
	reads int
}

func (c *countingFile) ReadAt(b []byte, off int64) (int, error) {
	c.reads++
	return c.File.ReadAt(b, off)
}

func TestAssemblerFreshFileIsNotRescanned(t *testing.T) {
	model := testModel(4*testChunk + 10)
	f, _ := tempFile(t)
	cf := &countingFile{File: f}
	a, err := transfer.NewAssembler(validManifest(model, testChunk), cf)
	require.NoError(t, err)
	assert.Zero(t, cf.reads, "an empty file holds no chunk: nothing to read and hash")
	assert.Zero(t, a.Have())
	for i := range a.Total() {
		_, err := a.Add(uint32(i), chunk(t, model, uint32(i)))
		require.NoError(t, err)
	}
	got, err := a.ReadVerified()
	require.NoError(t, err)
	assert.Equal(t, model, got, "the verified bytes are the model")
	assert.Equal(t, len(got), cap(got), "no spare capacity to append into")
}
