package transfer_test

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FuzzValidateManifest decodes arbitrary bytes as a manifest and checks
// its layout. No panic; a refusal is an ErrInvalidManifest; an accepted
// manifest has the layout the assembler relies on (one hash per chunk,
// within the limits), so NewAssembler takes it.
func FuzzValidateManifest(f *testing.F) {
	good := &efpb.Manifest{
		Name: "fraud", Version: "1.0.0", Sha256: make([]byte, 32), Size: 3000, ChunkSize: 1024,
		ChunkSha256: [][]byte{make([]byte, 32), make([]byte, 32), make([]byte, 32)},
		Inputs:      []*efpb.TensorSpec{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}}},
		Outputs:     []*efpb.TensorSpec{{Name: "y", Datatype: "FP32", Shape: []int64{1}}},
		TestVectors: []*efpb.TestVector{{
			Inputs:   []*efpb.Tensor{{Name: "x", Shape: []int64{1, 2}, Data: []float32{1, 2}}},
			Expected: []*efpb.Tensor{{Name: "y", Shape: []int64{1}, Data: []float32{0.5}}},
		}},
	}
	b, err := proto.Marshal(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	limits := transfer.Limits{MaxModelSize: 1 << 20, MinChunkSize: 1024, MaxChunkSize: 64 << 10, MaxChunks: 1024}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &efpb.Manifest{}
		if proto.Unmarshal(data, m) != nil {
			return
		}
		if err := transfer.ValidateManifest(m, limits); err != nil {
			if !errors.Is(err, transfer.ErrInvalidManifest) {
				t.Fatalf("ValidateManifest error %v is not ErrInvalidManifest", err)
			}
			return
		}
		n := transfer.ChunkCount(m.Size, m.ChunkSize)
		if n != len(m.ChunkSha256) || n > limits.MaxChunks || m.Size > limits.MaxModelSize {
			t.Fatalf("accepted size %d chunk %d with %d hashes (%d chunks)", m.Size, m.ChunkSize, len(m.ChunkSha256), n)
		}
		asm, err := transfer.NewAssembler(m, transfer.NewMemFile())
		if err != nil {
			t.Fatalf("NewAssembler refused a valid manifest: %v", err)
		}
		if asm.Total() != n {
			t.Fatalf("assembler expects %d chunks, manifest has %d", asm.Total(), n)
		}
	})
}
