package transfer_test

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// testModel returns n deterministic pseudo-random bytes.
func testModel(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// validManifest returns a manifest that passes ValidateManifest for model.
func validManifest(model []byte, chunkSize uint32) *efpb.Manifest {
	m := &efpb.Manifest{
		ProtocolVersion: efpb.ProtocolVersion,
		Name:            "fraud-detector",
		Version:         "1.2.0",
		Inputs:          []*efpb.TensorSpec{{Name: "features", Datatype: "FP32", Shape: []int64{-1, 4}}},
		Outputs:         []*efpb.TensorSpec{{Name: "probability", Datatype: "FP32", Shape: []int64{-1, 1}}},
		TestVectors: []*efpb.TestVector{{
			Inputs:   []*efpb.Tensor{{Name: "features", Shape: []int64{2, 4}, Data: []float32{1, 2, 3, 4, 5, 6, 7, 8}}},
			Expected: []*efpb.Tensor{{Name: "probability", Shape: []int64{2, 1}, Data: []float32{0.1, 0.9}}},
		}},
	}
	transfer.FillManifest(m, model, chunkSize)
	return m
}

func TestChunkCount(t *testing.T) {
	tests := []struct {
		size  uint64
		chunk uint32
		want  int
	}{
		{0, 1024, 0},
		{1, 1024, 1},
		{1024, 1024, 1},
		{1025, 1024, 2},
		{10 * 1024, 1024, 10},
		{100, 0, 0},
		{1 << 40, 1 << 20, 1 << 20},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, transfer.ChunkCount(tt.size, tt.chunk), "ChunkCount(%d, %d)", tt.size, tt.chunk)
	}
}

func TestChunkHashesAndData(t *testing.T) {
	model := testModel(2*1024 + 500)
	hashes := transfer.ChunkHashes(model, 1024)
	require.Len(t, hashes, 3)
	var joined []byte
	for i, h := range hashes {
		data, err := transfer.ChunkData(model, 1024, uint32(i))
		require.NoError(t, err)
		sum := sha256.Sum256(data)
		assert.Equal(t, sum[:], h, "hash of chunk %d", i)
		joined = append(joined, data...)
	}
	assert.Equal(t, model, joined, "chunks must tile the model")
	last, err := transfer.ChunkData(model, 1024, 2)
	require.NoError(t, err)
	assert.Len(t, last, 500, "the last chunk is short")

	_, err = transfer.ChunkData(model, 1024, 3)
	assert.ErrorIs(t, err, transfer.ErrChunkRange)
	_, err = transfer.ChunkData(model, 0, 0)
	assert.Error(t, err)

	assert.Len(t, transfer.ChunkHashes(testModel(transfer.DefaultChunkSize+1), 0), 2, "0 means DefaultChunkSize")

	m := &efpb.Manifest{}
	transfer.FillManifest(m, model, 1024)
	sum := sha256.Sum256(model)
	assert.Equal(t, sum[:], m.Sha256)
	assert.EqualValues(t, len(model), m.Size)
	assert.EqualValues(t, 1024, m.ChunkSize)
	assert.Equal(t, hashes, m.ChunkSha256)
}

func TestValidateManifest(t *testing.T) {
	model := testModel(10*1024 + 7)
	require.NoError(t, transfer.ValidateManifest(validManifest(model, 1024), transfer.Limits{}))

	tests := []struct {
		name   string
		mut    func(m *efpb.Manifest)
		limits transfer.Limits
		field  string
	}{
		{"empty name", func(m *efpb.Manifest) { m.Name = "" }, transfer.Limits{}, "name"},
		{"unsafe name", func(m *efpb.Manifest) { m.Name = "../etc" }, transfer.Limits{}, "name"},
		{"long version", func(m *efpb.Manifest) { m.Version = strings.Repeat("1", 65) }, transfer.Limits{}, "version"},
		{"version with slash", func(m *efpb.Manifest) { m.Version = "1/2" }, transfer.Limits{}, "version"},
		{"short sha256", func(m *efpb.Manifest) { m.Sha256 = m.Sha256[:31] }, transfer.Limits{}, "sha256"},
		{"zero size", func(m *efpb.Manifest) { m.Size = 0 }, transfer.Limits{}, "size"},
		{"size over default limit", func(m *efpb.Manifest) { m.Size = 256<<20 + 1 }, transfer.Limits{}, "size"},
		{"size over custom limit", func(*efpb.Manifest) {}, transfer.Limits{MaxModelSize: 10 * 1024}, "size"},
		{"chunk size 0", func(m *efpb.Manifest) { m.ChunkSize = 0 }, transfer.Limits{}, "chunk_size"},
		{"chunk size below min", func(m *efpb.Manifest) { m.ChunkSize = 512 }, transfer.Limits{}, "chunk_size"},
		{"chunk size above max", func(m *efpb.Manifest) { m.ChunkSize = 1<<20 + 1 }, transfer.Limits{}, "chunk_size"},
		{"too many chunks", func(*efpb.Manifest) {}, transfer.Limits{MaxChunks: 10}, "chunk_size"},
		{"missing chunk hash", func(m *efpb.Manifest) { m.ChunkSha256 = m.ChunkSha256[:10] }, transfer.Limits{}, "chunk_sha256"},
		{"extra chunk hash", func(m *efpb.Manifest) { m.ChunkSha256 = append(m.ChunkSha256, m.ChunkSha256[0]) }, transfer.Limits{}, "chunk_sha256"},
		{"short chunk hash", func(m *efpb.Manifest) { m.ChunkSha256[3] = m.ChunkSha256[3][:16] }, transfer.Limits{}, "chunk_sha256[3]"},
		{"no inputs", func(m *efpb.Manifest) { m.Inputs = nil }, transfer.Limits{}, "inputs"},
		{"unnamed output", func(m *efpb.Manifest) { m.Outputs[0].Name = "" }, transfer.Limits{}, "outputs[0].name"},
		{"duplicate input", func(m *efpb.Manifest) { m.Inputs = append(m.Inputs, m.Inputs[0]) }, transfer.Limits{}, "inputs[1].name"},
		{"no outputs", func(m *efpb.Manifest) { m.Outputs = nil }, transfer.Limits{}, "outputs"},
		{"no test vectors", func(m *efpb.Manifest) { m.TestVectors = nil }, transfer.Limits{}, "test_vectors"},
		{"test vector without inputs", func(m *efpb.Manifest) { m.TestVectors[0].Inputs = nil }, transfer.Limits{}, "test_vectors[0].inputs"},
		{"test vector without expected", func(m *efpb.Manifest) { m.TestVectors[0].Expected = nil }, transfer.Limits{}, "test_vectors[0].expected"},
		{"unnamed test tensor", func(m *efpb.Manifest) { m.TestVectors[0].Inputs[0].Name = "" }, transfer.Limits{}, "test_vectors[0].inputs[0].name"},
		{"dynamic test shape", func(m *efpb.Manifest) { m.TestVectors[0].Inputs[0].Shape = []int64{-1, 4} }, transfer.Limits{}, "test_vectors[0].inputs[0].shape[0]"},
		{"data shorter than shape", func(m *efpb.Manifest) { m.TestVectors[0].Expected[0].Data = []float32{1} }, transfer.Limits{}, "test_vectors[0].expected[0].data"},
		{"typed data in the wrong field", func(m *efpb.Manifest) {
			m.TestVectors[0].Expected[0].Datatype = "INT64"
		}, transfer.Limits{}, "test_vectors[0].expected[0]"},
		{"int8 out of range", func(m *efpb.Manifest) {
			m.TestVectors[0].Expected[0] = &efpb.Tensor{Name: "y", Datatype: "INT8", Shape: []int64{1}, IntData: []int64{300}}
		}, transfer.Limits{}, "test_vectors[0].expected[0]"},
		{"typed data shorter than shape", func(m *efpb.Manifest) {
			m.TestVectors[0].Expected[0] = &efpb.Tensor{Name: "y", Datatype: "BYTES", Shape: []int64{2}, BytesData: [][]byte{{'a'}}}
		}, transfer.Limits{}, "test_vectors[0].expected[0].data"},
		{"overflowing shape", func(m *efpb.Manifest) {
			m.TestVectors[0].Inputs[0].Shape = []int64{1 << 40, 1 << 40, 1 << 40}
		}, transfer.Limits{}, "test_vectors[0].inputs[0].data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest(model, 1024)
			tt.mut(m)
			err := transfer.ValidateManifest(m, tt.limits)
			var me *transfer.ManifestError
			require.True(t, errors.As(err, &me), "ValidateManifest = %v, want *ManifestError for %s", err, tt.field)
			assert.Equal(t, tt.field, me.Field)
			assert.ErrorIs(t, err, transfer.ErrInvalidManifest)
			assert.Contains(t, err.Error(), tt.field, "the message must name the field")
		})
	}

	assert.ErrorIs(t, transfer.ValidateManifest(nil, transfer.Limits{}), transfer.ErrInvalidManifest)

	// A zero-sized dimension with no data, and a scalar, are consistent.
	m := validManifest(model, 1024)
	m.TestVectors[0].Inputs[0].Shape = []int64{0, 4}
	m.TestVectors[0].Inputs[0].Data = nil
	m.TestVectors[0].Expected[0].Shape = nil
	m.TestVectors[0].Expected[0].Data = []float32{0.5}
	assert.NoError(t, transfer.ValidateManifest(m, transfer.Limits{}))

	// Typed test vectors (protocol version 2) count the field their datatype names.
	m.TestVectors[0].Expected[0] = &efpb.Tensor{Name: "y", Datatype: "BYTES", Shape: []int64{2}, BytesData: [][]byte{[]byte("a"), nil}}
	m.TestVectors[0].Inputs[0] = &efpb.Tensor{Name: "x", Datatype: "UINT8", Shape: []int64{1, 3}, UintData: []uint64{0, 7, 255}}
	assert.NoError(t, transfer.ValidateManifest(m, transfer.Limits{}))
}

func TestDefaultLimits(t *testing.T) {
	assert.Equal(t, transfer.Limits{MaxModelSize: 256 << 20, MinChunkSize: 1 << 10, MaxChunkSize: 1 << 20, MaxChunks: 65536},
		transfer.DefaultLimits())
	// Limits whose other fields are zero still get the defaults for them.
	m := validManifest(testModel(4096), 1024)
	assert.NoError(t, transfer.ValidateManifest(m, transfer.Limits{MaxModelSize: 4096}))
	m.ChunkSize = 2 << 20
	assert.Error(t, transfer.ValidateManifest(m, transfer.Limits{MaxModelSize: 4096}), "default MaxChunkSize still applies")
}

func TestMemFile(t *testing.T) {
	f := transfer.NewMemFile()
	buf := make([]byte, 4)
	n, err := f.ReadAt(buf, 0)
	assert.Equal(t, 0, n)
	assert.ErrorIs(t, err, io.EOF)

	_, err = f.WriteAt([]byte("abc"), 2)
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 0, 'a', 'b', 'c'}, f.Bytes())
	n, err = f.ReadAt(buf, 2)
	assert.Equal(t, 3, n)
	assert.ErrorIs(t, err, io.EOF, "a short read reports EOF")

	require.NoError(t, f.Truncate(3))
	assert.Equal(t, []byte{0, 0, 'a'}, f.Bytes())
	require.NoError(t, f.Truncate(5))
	assert.Equal(t, []byte{0, 0, 'a', 0, 0}, f.Bytes(), "growing again must not resurrect old bytes")
	assert.EqualValues(t, 5, f.Size())

	_, err = f.ReadAt(buf, -1)
	assert.Error(t, err)
	_, err = f.WriteAt(buf, -1)
	assert.Error(t, err)
	assert.Error(t, f.Truncate(-1))
	assert.NoError(t, f.Sync())
}
