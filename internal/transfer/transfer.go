// Package transfer splits a model into hashed chunks for the manifest, checks
// a manifest's declared layout against limits, and reassembles chunks into a
// file on the agent, resuming from whatever survived a crash. Imported by
// agent, controlplane, controlplane/models and fleet-sim/bench.
package transfer

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// DefaultChunkSize is the chunk size the control plane uses unless told
// otherwise: small enough for one MQTT publish on any broker default, large
// enough that a 10 MiB model is 160 chunks.
const DefaultChunkSize = 64 << 10

// Sentinel errors for branching with errors.Is.
var (
	// ErrChunkRange: a chunk index outside the manifest's chunks.
	ErrChunkRange = errors.New("chunk index out of range")
	// ErrChunkSize: a chunk whose length is not the one its index requires.
	ErrChunkSize = errors.New("chunk has the wrong length")
	// ErrChunkHash: a chunk whose sha256 differs from the manifest's.
	ErrChunkHash = errors.New("chunk hash mismatch")
	// ErrModelHash: the assembled file's size or sha256 differs from the
	// manifest's.
	ErrModelHash = errors.New("model hash mismatch")
	// ErrIncomplete: Verify was called before every chunk was present.
	ErrIncomplete = errors.New("model incomplete")
	// ErrInvalidManifest: the manifest breaks a layout rule or a limit. The
	// concrete error is a *ManifestError naming the field.
	ErrInvalidManifest = errors.New("invalid manifest")
)

// ChunkCount is the number of chunks of a size-byte model cut into chunkSize
// pieces (the last may be short). A zero chunkSize yields 0.
func ChunkCount(size uint64, chunkSize uint32) int {
	if chunkSize == 0 || size == 0 {
		return 0
	}
	n := size / uint64(chunkSize)
	if size%uint64(chunkSize) != 0 {
		n++
	}
	const maxInt = int(^uint(0) >> 1)
	if n > uint64(maxInt) {
		return maxInt
	}
	return int(n)
}

// chunkBounds returns the byte range [start, end) of chunk index.
func chunkBounds(size uint64, chunkSize, index uint32) (start, end uint64) {
	start = uint64(index) * uint64(chunkSize)
	end = min(start+uint64(chunkSize), size)
	return start, end
}

// ChunkHashes returns the sha256 of every chunkSize piece of model, in order.
// A zero chunkSize means DefaultChunkSize.
func ChunkHashes(model []byte, chunkSize uint32) [][]byte {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	n := ChunkCount(uint64(len(model)), chunkSize)
	out := make([][]byte, n)
	for i := range n {
		start, end := chunkBounds(uint64(len(model)), chunkSize, uint32(i))
		sum := sha256.Sum256(model[start:end])
		out[i] = sum[:]
	}
	return out
}

// FillManifest sets m's sha256, size, chunk_size and chunk_sha256 from model.
// A zero chunkSize means DefaultChunkSize.
func FillManifest(m *efpb.Manifest, model []byte, chunkSize uint32) {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	sum := sha256.Sum256(model)
	m.Sha256 = sum[:]
	m.Size = uint64(len(model))
	m.ChunkSize = chunkSize
	m.ChunkSha256 = ChunkHashes(model, chunkSize)
}

// ChunkData returns chunk index of model. The slice aliases model.
func ChunkData(model []byte, chunkSize, index uint32) ([]byte, error) {
	if chunkSize == 0 {
		return nil, fmt.Errorf("chunk data: chunk size is 0")
	}
	n := ChunkCount(uint64(len(model)), chunkSize)
	if uint64(index) >= uint64(n) {
		return nil, fmt.Errorf("chunk data: %w: index %d, model has %d chunks", ErrChunkRange, index, n)
	}
	start, end := chunkBounds(uint64(len(model)), chunkSize, index)
	return model[start:end], nil
}
