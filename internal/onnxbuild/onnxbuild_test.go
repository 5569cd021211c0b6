package onnxbuild

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
)

// field is one decoded protobuf field; only the member for its wire type is set.
type field struct {
	typ   protowire.Type
	u     uint64
	bytes []byte
}

// msg maps field numbers to their occurrences in wire order.
type msg map[protowire.Number][]field

// decode parses one protobuf message with protowire, independent of the
// encoder under test.
func decode(t *testing.T, b []byte) msg {
	t.Helper()
	m := msg{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		require.GreaterOrEqual(t, n, 0, "bad tag: %v", protowire.ParseError(n))
		b = b[n:]
		f := field{typ: typ}
		switch typ {
		case protowire.VarintType:
			f.u, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var v uint32
			v, n = protowire.ConsumeFixed32(b)
			f.u = uint64(v)
		case protowire.Fixed64Type:
			f.u, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			f.bytes, n = protowire.ConsumeBytes(b)
		default:
			t.Fatalf("unexpected wire type %d for field %d", typ, num)
		}
		require.GreaterOrEqual(t, n, 0, "field %d: %v", num, protowire.ParseError(n))
		b = b[n:]
		m[num] = append(m[num], f)
	}
	return m
}

func (m msg) one(t *testing.T, num protowire.Number) field {
	t.Helper()
	require.Len(t, m[num], 1, "field %d occurrences", num)
	return m[num][0]
}

func (m msg) str(t *testing.T, num protowire.Number) string {
	t.Helper()
	f := m.one(t, num)
	require.Equal(t, protowire.BytesType, f.typ, "field %d wire type", num)
	return string(f.bytes)
}

func (m msg) varint(t *testing.T, num protowire.Number) uint64 {
	t.Helper()
	f := m.one(t, num)
	require.Equal(t, protowire.VarintType, f.typ, "field %d wire type", num)
	return f.u
}

func (m msg) sub(t *testing.T, num protowire.Number) msg {
	t.Helper()
	f := m.one(t, num)
	require.Equal(t, protowire.BytesType, f.typ, "field %d wire type", num)
	return decode(t, f.bytes)
}

func (m msg) subs(t *testing.T, num protowire.Number) []msg {
	t.Helper()
	var out []msg
	for _, f := range m[num] {
		require.Equal(t, protowire.BytesType, f.typ, "field %d wire type", num)
		out = append(out, decode(t, f.bytes))
	}
	return out
}

func (m msg) strs(t *testing.T, num protowire.Number) []string {
	t.Helper()
	var out []string
	for _, f := range m[num] {
		require.Equal(t, protowire.BytesType, f.typ, "field %d wire type", num)
		out = append(out, string(f.bytes))
	}
	return out
}

func (m msg) varints(num protowire.Number) []int64 {
	var out []int64
	for _, f := range m[num] {
		out = append(out, int64(f.u))
	}
	return out
}

func linearModel() *Model {
	return &Model{
		DocString: "y = sigmoid(x W + b)",
		Graph: Graph{
			Name: "linear",
			Initializers: []Tensor{
				{Name: "W", Dims: []int64{3, 1}, Data: []float32{0.5, -1.25, 2}},
				{Name: "B", Dims: []int64{1}, Data: []float32{-0.75}},
			},
			Nodes: []Node{
				{Name: "matmul", OpType: "MatMul", Inputs: []string{"x", "W"}, Outputs: []string{"xw"}},
				{Name: "add", OpType: "Add", Inputs: []string{"xw", "B"}, Outputs: []string{"z"}},
				{
					Name: "gemm", OpType: "Gemm", Inputs: []string{"z", "z"}, Outputs: []string{"g"},
					Attributes: []Attribute{
						FloatAttr("alpha", 1.5), IntAttr("transB", 1), IntsAttr("perm", 1, 0),
						FloatsAttr("scales", 0.25, -4), StringAttr("mode", "linear"),
					},
				},
				{Name: "sigmoid", OpType: "Sigmoid", Inputs: []string{"g"}, Outputs: []string{"y"}},
			},
			Inputs:  []ValueInfo{{Name: "x", Shape: []Dim{Symbolic("batch"), Fixed(3)}}},
			Outputs: []ValueInfo{{Name: "y", ElemType: Float, Shape: []Dim{Symbolic("batch"), Fixed(1)}}},
		},
	}
}

func TestMarshalStructure(t *testing.T) {
	b, err := linearModel().Marshal()
	require.NoError(t, err)

	model := decode(t, b)
	assert.EqualValues(t, DefaultIRVersion, model.varint(t, fModelIRVersion))
	assert.Equal(t, "edgefleet", model.str(t, fModelProducerName))
	assert.Equal(t, "y = sigmoid(x W + b)", model.str(t, fModelDocString))
	opset := model.sub(t, fModelOpsetImport)
	assert.Empty(t, opset[fOpsetDomain], "default domain must be absent or empty")
	assert.EqualValues(t, DefaultOpset, opset.varint(t, fOpsetVersion))

	graph := model.sub(t, fModelGraph)
	assert.Equal(t, "linear", graph.str(t, fGraphName))

	inits := graph.subs(t, fGraphInitializer)
	require.Len(t, inits, 2)
	assert.Equal(t, "W", inits[0].str(t, fTensorName))
	assert.Equal(t, []int64{3, 1}, inits[0].varints(fTensorDims))
	assert.EqualValues(t, 1, inits[0].varint(t, fTensorDataType), "FLOAT")
	raw := []byte(inits[0].str(t, fTensorRawData))
	require.Len(t, raw, 12)
	var got []float32
	for i := 0; i < len(raw); i += 4 {
		got = append(got, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
	}
	assert.Equal(t, []float32{0.5, -1.25, 2}, got)

	nodes := graph.subs(t, fGraphNode)
	require.Len(t, nodes, 4)
	wantOps := []string{"MatMul", "Add", "Gemm", "Sigmoid"}
	for i, n := range nodes {
		assert.Equal(t, wantOps[i], n.str(t, fNodeOpType), "node %d op_type", i)
	}
	assert.Equal(t, []string{"x", "W"}, nodes[0].strs(t, fNodeInput))
	assert.Equal(t, []string{"xw"}, nodes[0].strs(t, fNodeOutput))
	assert.Equal(t, "matmul", nodes[0].str(t, fNodeName))
	assert.Empty(t, nodes[0][fNodeDomain])

	attrs := nodes[2].subs(t, fNodeAttribute)
	require.Len(t, attrs, 5)
	byName := map[string]msg{}
	for _, a := range attrs {
		byName[a.str(t, fAttrName)] = a
	}
	alpha := byName["alpha"]
	assert.EqualValues(t, AttrFloat, alpha.varint(t, fAttrType))
	assert.Equal(t, float32(1.5), math.Float32frombits(uint32(alpha.one(t, fAttrF).u)))
	transB := byName["transB"]
	assert.EqualValues(t, AttrInt, transB.varint(t, fAttrType))
	assert.EqualValues(t, 1, transB.varint(t, fAttrI))
	perm := byName["perm"]
	assert.EqualValues(t, AttrInts, perm.varint(t, fAttrType))
	assert.Equal(t, []int64{1, 0}, perm.varints(fAttrInts))
	scales := byName["scales"]
	assert.EqualValues(t, AttrFloats, scales.varint(t, fAttrType))
	require.Len(t, scales[fAttrFloats], 2)
	assert.Equal(t, float32(-4), math.Float32frombits(uint32(scales[fAttrFloats][1].u)))
	mode := byName["mode"]
	assert.EqualValues(t, AttrString, mode.varint(t, fAttrType))
	assert.Equal(t, "linear", mode.str(t, fAttrS))

	in := graph.subs(t, fGraphInput)
	require.Len(t, in, 1)
	assert.Equal(t, "x", in[0].str(t, fValueInfoName))
	tensorType := in[0].sub(t, fValueInfoType).sub(t, fTypeTensorType)
	assert.EqualValues(t, 1, tensorType.varint(t, fTensorElemType), "elem_type FLOAT")
	dims := tensorType.sub(t, fTensorShape).subs(t, fShapeDim)
	require.Len(t, dims, 2)
	assert.Equal(t, "batch", dims[0].str(t, fDimParam))
	assert.Empty(t, dims[0][fDimValue])
	assert.EqualValues(t, 3, dims[1].varint(t, fDimValue))
	assert.Empty(t, dims[1][fDimParam])

	out := graph.subs(t, fGraphOutput)
	require.Len(t, out, 1)
	assert.Equal(t, "y", out[0].str(t, fValueInfoName))
}

func TestMarshalOptions(t *testing.T) {
	m := linearModel()
	m.IRVersion = 9
	m.ProducerName = "other"
	m.ProducerVersion = "1.2.3"
	m.Opsets = []Opset{{Version: 17}, {Domain: "ai.onnx.ml", Version: 3}}
	m.Graph.Nodes[0].Domain = "com.example"
	m.Graph.Inputs[0].ElemType = Int64
	b, err := m.Marshal()
	require.NoError(t, err)

	model := decode(t, b)
	assert.EqualValues(t, 9, model.varint(t, fModelIRVersion))
	assert.Equal(t, "other", model.str(t, fModelProducerName))
	assert.Equal(t, "1.2.3", model.str(t, fModelProducerVersion))
	opsets := model.subs(t, fModelOpsetImport)
	require.Len(t, opsets, 2)
	assert.EqualValues(t, 17, opsets[0].varint(t, fOpsetVersion))
	assert.Equal(t, "ai.onnx.ml", opsets[1].str(t, fOpsetDomain))
	assert.EqualValues(t, 3, opsets[1].varint(t, fOpsetVersion))
	graph := model.sub(t, fModelGraph)
	nodes := graph.subs(t, fGraphNode)
	assert.Equal(t, "com.example", nodes[0].str(t, fNodeDomain))
	in := graph.sub(t, fGraphInput).sub(t, fValueInfoType).sub(t, fTypeTensorType)
	assert.EqualValues(t, Int64, in.varint(t, fTensorElemType))
}

func TestMarshalDeterministic(t *testing.T) {
	a, err := linearModel().Marshal()
	require.NoError(t, err)
	b, err := linearModel().Marshal()
	require.NoError(t, err)
	assert.Equal(t, a, b)
}

func TestMarshalScalarInitializer(t *testing.T) {
	m := linearModel()
	m.Graph.Initializers = append(m.Graph.Initializers, Tensor{Name: "s", Data: []float32{3}})
	b, err := m.Marshal()
	require.NoError(t, err)
	inits := decode(t, b).sub(t, fModelGraph).subs(t, fGraphInitializer)
	require.Len(t, inits, 3)
	assert.Empty(t, inits[2][fTensorDims], "a scalar has no dims")
	assert.Len(t, inits[2].str(t, fTensorRawData), 4)
}

func TestMarshalRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(m *Model)
		want   string
	}{
		{"no graph name", func(m *Model) { m.Graph.Name = "" }, "graph has no name"},
		{"no outputs", func(m *Model) { m.Graph.Outputs = nil }, `graph "linear" has no outputs`},
		{"negative ir", func(m *Model) { m.IRVersion = -1 }, "ir_version -1"},
		{"zero opset", func(m *Model) { m.Opsets = []Opset{{Version: 0}} }, "opset import 0"},
		{"data length", func(m *Model) { m.Graph.Initializers[0].Data = []float32{1} },
			`initializer "W" has 1 values, dims [3 1] need 3`},
		{"negative dim", func(m *Model) { m.Graph.Initializers[0].Dims = []int64{-3, -1} },
			`initializer "W" dim 0 is -3`},
		{"unnamed initializer", func(m *Model) { m.Graph.Initializers[1].Name = "" }, "initializer 1 has no name"},
		{"no op type", func(m *Model) { m.Graph.Nodes[1].OpType = "" }, `node 1 ("add") has no op_type`},
		{"node without outputs", func(m *Model) { m.Graph.Nodes[1].Outputs = nil }, `node 1 ("add", Add) has no outputs`},
		{"bad attribute type", func(m *Model) { m.Graph.Nodes[2].Attributes[0].Type = 42 },
			`attribute "alpha" has unsupported type 42`},
		{"unnamed attribute", func(m *Model) { m.Graph.Nodes[2].Attributes[0].Name = "" },
			"has an attribute with no name"},
		{"unnamed input", func(m *Model) { m.Graph.Inputs[0].Name = "" }, "graph input 0 has no name"},
		{"unsupported elem type", func(m *Model) { m.Graph.Inputs[0].ElemType = 42 }, `graph input "x" has elem_type 42`},
		{"negative shape dim", func(m *Model) { m.Graph.Outputs[0].Shape[1] = Fixed(-2) },
			`graph output "y" dim 1 is -2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := linearModel()
			tt.modify(m)
			b, err := m.Marshal()
			require.Error(t, err)
			assert.Nil(t, b)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestMarshalTypedTensorsAndTypes(t *testing.T) {
	m := linearModel()
	m.Graph.Initializers = append(m.Graph.Initializers,
		Int64Tensor("ints", []int64{2}, 7, -1),
		StringTensor("names", []int64{2}, "a", "日本"),
	)
	m.Graph.Nodes = append(m.Graph.Nodes, Node{OpType: "Constant", Outputs: []string{"c"},
		Attributes: []Attribute{TensorAttr("value", Int64Tensor("", []int64{1}, 5)), StringsAttr("labels", "x", "y")}})
	m.Graph.Outputs = append(m.Graph.Outputs, ValueInfo{Name: "seq", Type: SequenceOf(MapOf(Int64, TensorOf(Float)))},
		ValueInfo{Name: "u", Type: &Type{Elem: Uint8, UnknownRank: true}})
	b, err := m.Marshal()
	require.NoError(t, err)

	graph := decode(t, b).sub(t, fModelGraph)
	inits := graph.subs(t, fGraphInitializer)
	require.Len(t, inits, 4)
	assert.EqualValues(t, Int64, inits[2].varint(t, fTensorDataType))
	raw := []byte(inits[2].str(t, fTensorRawData))
	assert.Equal(t, uint64(7), binary.LittleEndian.Uint64(raw))
	assert.Equal(t, int64(-1), int64(binary.LittleEndian.Uint64(raw[8:])))
	assert.EqualValues(t, String, inits[3].varint(t, fTensorDataType))
	assert.Equal(t, []string{"a", "日本"}, inits[3].strs(t, fTensorStringData))
	assert.Empty(t, inits[3][fTensorRawData])

	nodes := graph.subs(t, fGraphNode)
	attrs := nodes[len(nodes)-1].subs(t, fNodeAttribute)
	require.Len(t, attrs, 2)
	assert.EqualValues(t, AttrTensor, attrs[0].varint(t, fAttrType))
	assert.EqualValues(t, Int64, attrs[0].sub(t, fAttrT).varint(t, fTensorDataType))
	assert.Equal(t, []string{"x", "y"}, attrs[1].strs(t, fAttrStrings))

	outs := graph.subs(t, fGraphOutput)
	seq := outs[1].sub(t, fValueInfoType).sub(t, fTypeSequenceType).sub(t, fSequenceElemType).sub(t, fTypeMapType)
	assert.EqualValues(t, Int64, seq.varint(t, fMapKeyType))
	assert.EqualValues(t, Float, seq.sub(t, fMapValueType).sub(t, fTypeTensorType).varint(t, fTensorElemType))
	u := outs[2].sub(t, fValueInfoType).sub(t, fTypeTensorType)
	assert.EqualValues(t, Uint8, u.varint(t, fTensorElemType))
	assert.Empty(t, u[fTensorShape], "unknown rank: no shape")
}

func TestMarshalRejectsTyped(t *testing.T) {
	tests := []struct {
		name   string
		modify func(m *Model)
		want   string
	}{
		{"raw length", func(m *Model) {
			m.Graph.Initializers = append(m.Graph.Initializers, RawTensor("r", Int32, []int64{2}, []byte{1, 2, 3}))
		}, `initializer "r" has 3 raw bytes, not a multiple of 4`},
		{"count", func(m *Model) {
			m.Graph.Initializers = append(m.Graph.Initializers, Int64Tensor("r", []int64{3}, 1))
		}, `initializer "r" has 1 values, dims [3] need 3`},
		{"float data on int", func(m *Model) {
			m.Graph.Initializers = append(m.Graph.Initializers, Tensor{Name: "r", ElemType: Int64, Data: []float32{1}})
		}, "holds float32 Data"},
		{"two kinds", func(m *Model) {
			m.Graph.Outputs[0].Type = &Type{Sequence: TensorOf(Float), Optional: TensorOf(Float)}
		}, "more than one of sequence, map and optional"},
		{"map key", func(m *Model) {
			m.Graph.Outputs[0].Type = MapOf(99, TensorOf(Float))
		}, "map key type 99"},
		{"tensor attr", func(m *Model) {
			m.Graph.Nodes[0].Attributes = []Attribute{{Name: "value", Type: AttrTensor}}
		}, `tensor attribute "value" has no tensor`},
	}
	for _, tt := range tests {
		m := linearModel()
		tt.modify(m)
		_, err := m.Marshal()
		require.Error(t, err, tt.name)
		assert.ErrorIs(t, err, ErrInvalid, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
	}
}
