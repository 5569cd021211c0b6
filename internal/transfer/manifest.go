package transfer

import (
	"crypto/sha256"
	"fmt"

	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Limits bound what an agent accepts before it reads a byte of a model. A
// zero field means its default (see DefaultLimits).
type Limits struct {
	MaxModelSize uint64 // default 256 MiB
	MinChunkSize uint32 // default 1 KiB
	MaxChunkSize uint32 // default 1 MiB
	MaxChunks    int    // default 65536
}

// DefaultLimits returns the limits used for zero fields: 256 MiB models,
// chunks of 1 KiB to 1 MiB, at most 65536 chunks.
func DefaultLimits() Limits {
	return Limits{
		MaxModelSize: 256 << 20,
		MinChunkSize: 1 << 10,
		MaxChunkSize: 1 << 20,
		MaxChunks:    65536,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxModelSize == 0 {
		l.MaxModelSize = d.MaxModelSize
	}
	if l.MinChunkSize == 0 {
		l.MinChunkSize = d.MinChunkSize
	}
	if l.MaxChunkSize == 0 {
		l.MaxChunkSize = d.MaxChunkSize
	}
	if l.MaxChunks <= 0 {
		l.MaxChunks = d.MaxChunks
	}
	return l
}

// maxTensorNameLen bounds tensor names in the schema and test vectors.
const maxTensorNameLen = 256

// ManifestError names the manifest field that broke a rule.
// errors.Is(err, ErrInvalidManifest) is true for it.
type ManifestError struct {
	Field  string // e.g. "chunk_size", "chunk_sha256[3]", "inputs[0].name"
	Reason string
}

func (e *ManifestError) Error() string {
	return fmt.Sprintf("invalid manifest: %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidManifest) true.
func (e *ManifestError) Is(target error) bool { return target == ErrInvalidManifest }

func fieldErr(field, format string, args ...any) error {
	return &ManifestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ValidateManifest checks the layout a manifest declares against l before
// anything is downloaded: name and version (topics.ValidModelName, ValidModelVersion), size in
// 1..MaxModelSize, chunk_size in MinChunkSize..MaxChunkSize, at most
// MaxChunks chunks, one 32-byte chunk_sha256 per chunk, a 32-byte sha256,
// named inputs and outputs, and at least one test vector whose tensors are
// named and hold as many values as their shapes say. The error is a
// *ManifestError naming the first bad field. Signature checks are the
// signing package's job.
func ValidateManifest(m *efpb.Manifest, l Limits) error {
	if m == nil {
		return fieldErr("manifest", "is nil")
	}
	l = l.withDefaults()
	if err := topics.ValidModelName(m.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if err := topics.ValidModelVersion(m.Version); err != nil {
		return fieldErr("version", "%v", err)
	}
	if len(m.Sha256) != sha256.Size {
		return fieldErr("sha256", "has %d bytes, want %d", len(m.Sha256), sha256.Size)
	}
	if m.Size == 0 {
		return fieldErr("size", "is 0")
	}
	if m.Size > l.MaxModelSize {
		return fieldErr("size", "%d bytes exceeds the limit of %d", m.Size, l.MaxModelSize)
	}
	if m.ChunkSize < l.MinChunkSize || m.ChunkSize > l.MaxChunkSize {
		return fieldErr("chunk_size", "%d is outside %d..%d", m.ChunkSize, l.MinChunkSize, l.MaxChunkSize)
	}
	n := ChunkCount(m.Size, m.ChunkSize)
	if n > l.MaxChunks {
		return fieldErr("chunk_size", "%d bytes in chunks of %d make %d chunks, at most %d allowed", m.Size, m.ChunkSize, n, l.MaxChunks)
	}
	if len(m.ChunkSha256) != n {
		return fieldErr("chunk_sha256", "has %d hashes, %d bytes in chunks of %d need %d", len(m.ChunkSha256), m.Size, m.ChunkSize, n)
	}
	for i, h := range m.ChunkSha256 {
		if len(h) != sha256.Size {
			return fieldErr(fmt.Sprintf("chunk_sha256[%d]", i), "has %d bytes, want %d", len(h), sha256.Size)
		}
	}
	if err := validSpecs("inputs", m.Inputs); err != nil {
		return err
	}
	if err := validSpecs("outputs", m.Outputs); err != nil {
		return err
	}
	if len(m.TestVectors) == 0 {
		return fieldErr("test_vectors", "is empty; a model needs at least one")
	}
	for i, tv := range m.TestVectors {
		if err := validTensors(fmt.Sprintf("test_vectors[%d].inputs", i), tv.GetInputs()); err != nil {
			return err
		}
		if err := validTensors(fmt.Sprintf("test_vectors[%d].expected", i), tv.GetExpected()); err != nil {
			return err
		}
	}
	return nil
}

func validSpecs(field string, specs []*efpb.TensorSpec) error {
	if len(specs) == 0 {
		return fieldErr(field, "is empty")
	}
	seen := make(map[string]bool, len(specs))
	for i, s := range specs {
		f := fmt.Sprintf("%s[%d].name", field, i)
		if err := validTensorName(f, s.GetName()); err != nil {
			return err
		}
		if seen[s.GetName()] {
			return fieldErr(f, "%q is listed twice", s.GetName())
		}
		seen[s.GetName()] = true
	}
	return nil
}

func validTensors(field string, ts []*efpb.Tensor) error {
	if len(ts) == 0 {
		return fieldErr(field, "is empty")
	}
	for i, t := range ts {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := validTensorName(f+".name", t.GetName()); err != nil {
			return err
		}
		if err := validShape(f, t.GetShape(), tensorLen(t)); err != nil {
			return err
		}
		if _, err := tensor.FromProto(t); err != nil {
			return fieldErr(f, "%v", err)
		}
	}
	return nil
}

// validShape checks that shape is concrete and its element count is n,
// without overflowing on hostile dimensions.
func validShape(field string, shape []int64, n int) error {
	zero := false
	for j, d := range shape {
		if d < 0 {
			return fieldErr(fmt.Sprintf("%s.shape[%d]", field, j), "is %d; test vector shapes are concrete", d)
		}
		zero = zero || d == 0
	}
	limit := uint64(n)
	want, tooMany := uint64(1), false
	if zero {
		want = 0
	} else {
		for _, d := range shape {
			if want > limit/uint64(d) {
				tooMany = true
				break
			}
			want *= uint64(d)
		}
	}
	switch {
	case tooMany:
		return fieldErr(field+".data", "has %d values, shape %v needs more", n, shape)
	case want != limit:
		return fieldErr(field+".data", "has %d values, shape %v needs %d", n, shape, want)
	}
	return nil
}

// tensorLen counts the elements of t in all its data fields (FromProto
// then checks they are in the one its datatype names).
func tensorLen(t *efpb.Tensor) int {
	return len(t.GetData()) + len(t.GetIntData()) + len(t.GetUintData()) + len(t.GetDoubleData()) +
		len(t.GetBoolData()) + len(t.GetBytesData())
}

func validTensorName(field, name string) error {
	if name == "" {
		return fieldErr(field, "is empty")
	}
	if len(name) > maxTensorNameLen {
		return fieldErr(field, "has %d bytes, at most %d allowed", len(name), maxTensorNameLen)
	}
	return nil
}
