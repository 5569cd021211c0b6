package onnxmodel

import (
	"encoding/binary"
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
)

// weighted is y = x·W + b with a W of rows×4 floats and a 4-float b.
func weighted(t *testing.T, rows int) []byte {
	t.Helper()
	w := make([]float32, rows*4)
	for i := range w {
		w[i] = float32(i)
	}
	m := &onnxbuild.Model{Graph: onnxbuild.Graph{
		Name: "weighted",
		Initializers: []onnxbuild.Tensor{
			{Name: "W", Dims: []int64{int64(rows), 4}, Data: w},
			{Name: "b", Dims: []int64{4}, Data: []float32{1, 2, 3, 4}},
		},
		Nodes: []onnxbuild.Node{
			{OpType: "MatMul", Inputs: []string{"x", "W"}, Outputs: []string{"xw"}},
			{OpType: "Add", Inputs: []string{"xw", "b"}, Outputs: []string{"y"}},
		},
		Inputs:  []onnxbuild.ValueInfo{{Name: "x", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("n"), onnxbuild.Fixed(int64(rows))}}},
		Outputs: []onnxbuild.ValueInfo{{Name: "y", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("n"), onnxbuild.Fixed(4)}}},
	}}
	b, err := m.Marshal()
	require.NoError(t, err)
	return b
}

// externalRefs returns each initializer's external-data entries.
func externalRefs(t *testing.T, model []byte) map[string]map[string]string {
	t.Helper()
	refs := map[string]map[string]string{}
	require.NoError(t, walkFields(model, 0, func(num protowire.Number, _ protowire.Type, graph []byte, _ int) {
		if num != fModelGraph {
			return
		}
		require.NoError(t, walkFields(graph, 0, func(num protowire.Number, _ protowire.Type, tensor []byte, _ int) {
			if num != fGraphInitializer {
				return
			}
			var name string
			entries := map[string]string{}
			require.NoError(t, walkFields(tensor, 0, func(num protowire.Number, _ protowire.Type, v []byte, _ int) {
				switch num {
				case 8:
					name = string(v)
				case fTensorExternalData:
					var k, val string
					require.NoError(t, walkFields(v, 0, func(num protowire.Number, _ protowire.Type, s []byte, _ int) {
						if num == fEntryKey {
							k = string(s)
						} else {
							val = string(s)
						}
					}))
					entries[k] = val
				}
			}))
			refs[name] = entries
		}))
	}))
	return refs
}

func TestExternalizePointsLargeWeightsAtTheirBytes(t *testing.T) {
	model := weighted(t, 1024) // W: 16 KiB, b: 16 bytes
	slim, n, err := Externalize(model, "model.onnx", 4096)
	require.NoError(t, err)
	require.Equal(t, 1, n, "only W is large enough")
	assert.Less(t, len(slim), len(model)-16<<10+512, "W's bytes are gone from the slim model")

	refs := externalRefs(t, slim)
	assert.Empty(t, refs["b"], "b stays inline")
	w := refs["W"]
	require.Equal(t, "model.onnx", w["location"])
	off, err := strconv.Atoi(w["offset"])
	require.NoError(t, err)
	length, err := strconv.Atoi(w["length"])
	require.NoError(t, err)
	require.Equal(t, 16<<10, length)
	for i := range 1024 * 4 { // the reference is W's row-major floats in the original
		assert.Equal(t, float32(i), float32FromLE(model[off+4*i:]), "W[%d]", i)
	}

	a, err := Read(model)
	require.NoError(t, err)
	b, err := Read(slim)
	require.NoError(t, err)
	assert.Equal(t, a.Inputs, b.Inputs)
	assert.Equal(t, a.Outputs, b.Outputs)
	assert.Equal(t, a.Initializers, b.Initializers)

	same, n, err := Externalize(model, "model.onnx", 1<<20)
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Equal(t, model, same, "nothing large enough: the model as it is")

	again, n, err := Externalize(slim, "model.onnx", 1)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "b moves; W, already external, is left alone")
	assert.Equal(t, w, externalRefs(t, again)["W"])

	_, _, err = Externalize([]byte{0x3a, 0xff, 0x01}, "model.onnx", 1)
	assert.ErrorIs(t, err, ErrMalformed)
}

func float32FromLE(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }
