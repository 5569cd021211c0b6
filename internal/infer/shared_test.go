package infer

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/onnxmodel"
)

func TestLoadSharedSharesOneSessionPerModel(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	in, out := []string{fraud.InputName}, []string{fraud.OutputName}
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(t, err)
	rows := rowsTensor(g.Generate(4).Rows)

	// Many agents load the same version at once.
	sessions := make([]*Session, 8)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			s, err := r.LoadShared(a.ONNX, in, out)
			assert.NoError(t, err)
			sessions[i] = s
		})
	}
	wg.Wait()
	core := sessions[0].core
	for _, s := range sessions {
		require.NotNil(t, s)
		assert.Same(t, core, s.core, "one onnxruntime session for the version")
	}
	assert.Equal(t, len(sessions), core.refs)

	// Closing some leaves the others serving; a closed one refuses.
	for _, s := range sessions[:7] {
		require.NoError(t, s.Close())
	}
	_, err = sessions[0].Run([]Tensor{rows})
	assert.ErrorIs(t, err, ErrClosed)
	got, err := sessions[7].Run([]Tensor{rows})
	require.NoError(t, err)
	assert.Len(t, got[0].Data, 4)

	// The last close destroys it; the next LoadShared makes a new one.
	require.NoError(t, sessions[7].Close())
	assert.Nil(t, core.dyn)
	again, err := r.LoadShared(a.ONNX, in, out)
	require.NoError(t, err)
	defer again.Close()
	assert.NotSame(t, core, again.core)

	// Other bytes, or a plain Load, get sessions of their own.
	other := onnxbuild.Pad(a.ONNX, 1)
	s2, err := r.LoadShared(other, in, out)
	require.NoError(t, err)
	defer s2.Close()
	assert.NotSame(t, again.core, s2.core)
	plain := loadFraud(t, r)
	assert.NotSame(t, again.core, plain.core)

	// LoadSharedSum with the bytes' own sum joins the same session.
	joined, err := r.LoadSharedSum(a.ONNX, sha256.Sum256(a.ONNX), in, out)
	require.NoError(t, err)
	defer joined.Close()
	assert.Same(t, again.core, joined.core)
}

// TestLoadSharedFileMapsLargeWeights loads a model with a 4 MiB weight
// from its file: onnxruntime gets the weight as external data in the same
// file (onnxmodel.Externalize) and computes what the small model does;
// the file's bytes need not stay with the caller.
func TestLoadSharedFileMapsLargeWeights(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	model, err := fraud.LargeONNX(a.Model, 4<<20, 1)
	require.NoError(t, err)
	slim, n, err := onnxmodel.Externalize(model, "m.onnx", externalMinBytes)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the table is moved out")
	assert.Less(t, len(slim), 4096)

	path := filepath.Join(t.TempDir(), "m.onnx")
	require.NoError(t, os.WriteFile(path, model, 0o600))
	s, err := r.LoadSharedFile(path, slices.Clone(model), sha256.Sum256(model), []string{fraud.InputName}, []string{fraud.OutputName})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, 1, s.core.mapped, "onnxruntime took the weight as external data")
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(t, err)
	rows := g.Generate(16).Rows
	got, err := s.Run([]Tensor{rowsTensor(rows)})
	require.NoError(t, err)
	assert.InDeltaSlice(t, a.Predict(rows), got[0].Data, 1e-5)
	require.NoError(t, s.Check(a.Metadata().GetTestVectors(), ManifestTolerance(a.Metadata())))
}
