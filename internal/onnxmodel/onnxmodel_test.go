package onnxmodel

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

// classifier is a scikit-learn style converted classifier: a label output
// and ZipMap probabilities.
func classifier(t testing.TB, labels onnxbuild.Attribute, key onnxbuild.DataType) []byte {
	t.Helper()
	m := &onnxbuild.Model{
		IRVersion:       7,
		ProducerName:    "skl2onnx",
		ProducerVersion: "1.17.0",
		Opsets:          []onnxbuild.Opset{{Version: 15}, {Domain: "ai.onnx.ml", Version: 1}},
		Graph: onnxbuild.Graph{
			Name: "clf",
			Initializers: []onnxbuild.Tensor{
				{Name: "unused", Dims: []int64{1}, Data: []float32{1}},
			},
			Nodes: []onnxbuild.Node{
				{OpType: "LinearClassifier", Domain: "ai.onnx.ml", Inputs: []string{"x"}, Outputs: []string{"label", "probs"},
					Attributes: []onnxbuild.Attribute{onnxbuild.FloatsAttr("coefficients", 1, 2, 3, 4), onnxbuild.IntsAttr("classlabels_ints", 0, 1)}},
				{OpType: "ZipMap", Domain: "ai.onnx.ml", Inputs: []string{"probs"}, Outputs: []string{"output_probability"},
					Attributes: []onnxbuild.Attribute{labels}},
			},
			Inputs: []onnxbuild.ValueInfo{
				{Name: "x", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("N"), onnxbuild.Fixed(2)}},
				{Name: "unused", Shape: []onnxbuild.Dim{onnxbuild.Fixed(1)}}, // an initializer (IR < 4 style)
			},
			Outputs: []onnxbuild.ValueInfo{
				{Name: "label", ElemType: onnxbuild.Int64, Shape: []onnxbuild.Dim{onnxbuild.UnknownDim()}},
				{Name: "output_probability", Type: onnxbuild.SequenceOf(onnxbuild.MapOf(key, onnxbuild.TensorOf(onnxbuild.Float)))},
			},
		},
	}
	b, err := m.Marshal()
	require.NoError(t, err)
	return b
}

func TestReadClassifier(t *testing.T) {
	m, err := Read(classifier(t, onnxbuild.IntsAttr("classlabels_int64s", 0, 1), onnxbuild.Int64))
	require.NoError(t, err)
	assert.EqualValues(t, 7, m.IRVersion)
	assert.Equal(t, "skl2onnx", m.ProducerName)
	assert.Equal(t, "1.17.0", m.ProducerVersion)
	assert.EqualValues(t, 15, m.Opset(""))
	assert.EqualValues(t, 15, m.Opset("ai.onnx"))
	assert.EqualValues(t, 1, m.Opset("ai.onnx.ml"))
	assert.EqualValues(t, 0, m.Opset("com.microsoft"))
	assert.Equal(t, 2, m.Nodes)
	assert.Equal(t, 1, m.Initializers)

	require.Len(t, m.Inputs, 1, "initializers listed as inputs are not inputs")
	x := m.Inputs[0]
	assert.Equal(t, "x", x.Name)
	assert.Equal(t, "tensor(float)", x.Type.String())
	assert.Equal(t, "[N,2]", x.Type.ShapeString())

	require.Len(t, m.Outputs, 2)
	assert.Equal(t, "tensor(int64)", m.Outputs[0].Type.String())
	assert.Equal(t, "[?]", m.Outputs[0].Type.ShapeString())
	probs := m.Outputs[1].Type
	assert.Equal(t, KindSequence, probs.Kind)
	assert.Equal(t, "seq(map(int64,tensor(float)))", probs.String())
	d, ok := probs.Inner.Inner.Elem.Datatype()
	assert.True(t, ok)
	assert.Equal(t, tensor.FP32, d)

	labels, ok := m.ClassLabels("output_probability")
	require.True(t, ok)
	assert.Equal(t, tensor.Int64, labels.Datatype)
	assert.Equal(t, []int64{0, 1}, labels.Data)
	_, ok = m.ClassLabels("label")
	assert.False(t, ok)
}

// TestReadKeepsTheStartOfALongDocString: a model padded with megabytes of
// doc_string (as large test downloads are) costs Read MaxDocString bytes.
func TestReadKeepsTheStartOfALongDocString(t *testing.T) {
	model := classifier(t, onnxbuild.IntsAttr("classlabels_int64s", 0, 1), onnxbuild.Int64)
	m, err := Read(onnxbuild.Pad(model, 1<<20))
	require.NoError(t, err)
	assert.Len(t, m.DocString, MaxDocString)
	assert.Equal(t, 2, m.Nodes, "the rest is read as before")
}

func TestReadStringClassLabels(t *testing.T) {
	m, err := Read(classifier(t, onnxbuild.StringsAttr("classlabels_strings", "ok", "fraud"), onnxbuild.String))
	require.NoError(t, err)
	assert.Equal(t, "seq(map(string,tensor(float)))", m.Outputs[1].Type.String())
	labels, ok := m.ClassLabels("output_probability")
	require.True(t, ok)
	assert.Equal(t, []string{"ok", "fraud"}, labels.Data)
}

func TestReadTypes(t *testing.T) {
	m := &onnxbuild.Model{Graph: onnxbuild.Graph{
		Name:  "types",
		Nodes: []onnxbuild.Node{{OpType: "Identity", Inputs: []string{"a"}, Outputs: []string{"b"}}},
		Inputs: []onnxbuild.ValueInfo{
			{Name: "a", Type: &onnxbuild.Type{Elem: onnxbuild.String, UnknownRank: true}},
			{Name: "opt", Type: onnxbuild.OptionalOf(onnxbuild.TensorOf(onnxbuild.BFloat16, onnxbuild.Fixed(3)))},
			{Name: "scalar", ElemType: onnxbuild.Bool},
		},
		Outputs: []onnxbuild.ValueInfo{{Name: "b", Type: onnxbuild.MapOf(onnxbuild.String, onnxbuild.TensorOf(onnxbuild.Double))}},
	}}
	b, err := m.Marshal()
	require.NoError(t, err)
	got, err := Read(b)
	require.NoError(t, err)
	require.Len(t, got.Inputs, 3)
	assert.Equal(t, "tensor(string)", got.Inputs[0].Type.String())
	assert.Equal(t, "unknown rank", got.Inputs[0].Type.ShapeString())
	assert.Equal(t, "optional(tensor(bfloat16))", got.Inputs[1].Type.String())
	assert.Equal(t, "[3]", got.Inputs[1].Type.Inner.ShapeString())
	assert.Equal(t, "[]", got.Inputs[2].Type.ShapeString(), "a scalar has an empty shape")
	assert.Equal(t, "map(string,tensor(double))", got.Outputs[0].Type.String())
	assert.Equal(t, "float8e4m3fn", ElemType(17).String())
	_, ok := ElemType(17).Datatype()
	assert.False(t, ok)
}

func TestReadRefuses(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("this is not protobuf at all"),
		"truncated": {0x3a, 0x10, 0x01},
		"no graph":  {0x08, 0x07},
	} {
		_, err := Read(b)
		require.Error(t, err, name)
		assert.ErrorIs(t, err, ErrMalformed, name)
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x07})
	f.Add(classifier(f, onnxbuild.IntsAttr("classlabels_int64s", 0, 1), onnxbuild.Int64))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Read(b)
		if err == nil && m == nil {
			t.Fatal("nil model without an error")
		}
		if err == nil {
			for _, v := range append(m.Inputs, m.Outputs...) {
				_ = v.Type.String()
				_ = v.Type.ShapeString()
			}
		}
	})
}
