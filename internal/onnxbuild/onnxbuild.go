// Package onnxbuild encodes small ONNX models (ModelProto) directly with
// protowire, so edgefleet can build real models in Go without Python or an
// ONNX Go module. It covers initializers of every tensor element type
// (strings included), nodes of any domain (ai.onnx.ml classifiers and
// ZipMap too) with int/float/string/tensor attributes and their lists, and
// graph inputs/outputs typed as tensors (fixed, symbolic or unknown dims),
// sequences, maps and optionals. Imported by internal/fraud,
// internal/modelzoo, fleet-sim/bench, fleet-sim/scenario, fleet-sim/soak
// and tests.
package onnxbuild

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// Defaults applied to zero fields of Model.
const (
	DefaultIRVersion = 8
	DefaultOpset     = 13
	DefaultProducer  = "edgefleet"
)

// ErrInvalid is wrapped by every error Marshal returns for a model it cannot
// encode.
var ErrInvalid = errors.New("invalid model")

// Field numbers from onnx/onnx.proto (proto2, package onnx). They never change.
const (
	// ModelProto
	fModelIRVersion       = 1
	fModelProducerName    = 2
	fModelProducerVersion = 3
	fModelDocString       = 6
	fModelGraph           = 7
	fModelOpsetImport     = 8

	// OperatorSetIdProto
	fOpsetDomain  = 1
	fOpsetVersion = 2

	// GraphProto
	fGraphNode        = 1
	fGraphName        = 2
	fGraphInitializer = 5
	fGraphDocString   = 10
	fGraphInput       = 11
	fGraphOutput      = 12

	// NodeProto
	fNodeInput     = 1
	fNodeOutput    = 2
	fNodeName      = 3
	fNodeOpType    = 4
	fNodeAttribute = 5
	fNodeDomain    = 7

	// AttributeProto
	fAttrName    = 1
	fAttrF       = 2
	fAttrI       = 3
	fAttrS       = 4
	fAttrT       = 5
	fAttrFloats  = 7
	fAttrInts    = 8
	fAttrStrings = 9
	fAttrType    = 20

	// TensorProto
	fTensorDims       = 1
	fTensorDataType   = 2
	fTensorStringData = 6
	fTensorName       = 8
	fTensorRawData    = 9

	// ValueInfoProto
	fValueInfoName = 1
	fValueInfoType = 2

	// TypeProto and its Tensor, Sequence, Map and Optional
	fTypeTensorType   = 1
	fTypeSequenceType = 4
	fTypeMapType      = 5
	fTypeOptionalType = 9
	fTensorElemType   = 1
	fTensorShape      = 2
	fSequenceElemType = 1
	fMapKeyType       = 1
	fMapValueType     = 2
	fOptionalElemType = 1

	// TensorShapeProto and TensorShapeProto.Dimension
	fShapeDim = 1
	fDimValue = 1
	fDimParam = 2
)

// DataType is an ONNX TensorProto.DataType.
type DataType int32

// Data types this package can declare (values from onnx.proto).
const (
	Float    DataType = 1  // float32
	Uint8    DataType = 2  // uint8
	Int8     DataType = 3  // int8
	Uint16   DataType = 4  // uint16
	Int16    DataType = 5  // int16
	Int32    DataType = 6  // int32
	Int64    DataType = 7  // int64
	String   DataType = 8  // string (bytes)
	Bool     DataType = 9  // bool, one byte
	Float16  DataType = 10 // IEEE half
	Double   DataType = 11 // float64
	Uint32   DataType = 12 // uint32
	Uint64   DataType = 13 // uint64
	BFloat16 DataType = 16 // bfloat16
)

// Size is the bytes of one element in raw_data; 0 for String and for
// types this package does not know.
func (t DataType) Size() int {
	switch t {
	case Uint8, Int8, Bool:
		return 1
	case Uint16, Int16, Float16, BFloat16:
		return 2
	case Float, Int32, Uint32:
		return 4
	case Int64, Double, Uint64:
		return 8
	}
	return 0
}

func (t DataType) known() bool { return t == String || t.Size() > 0 }

// AttrType is an ONNX AttributeProto.AttributeType.
type AttrType int32

// Attribute types this package can encode (values from onnx.proto).
const (
	AttrFloat   AttrType = 1
	AttrInt     AttrType = 2
	AttrString  AttrType = 3
	AttrTensor  AttrType = 4
	AttrFloats  AttrType = 6
	AttrInts    AttrType = 7
	AttrStrings AttrType = 8
)

// Model is an ONNX ModelProto. Zero fields take the defaults: IRVersion 8,
// one opset import of the default domain at version 13, producer "edgefleet".
type Model struct {
	IRVersion       int64
	Opsets          []Opset
	ProducerName    string
	ProducerVersion string
	DocString       string
	Graph           Graph
}

// Opset is an OperatorSetIdProto; Domain "" is the default ONNX domain.
type Opset struct {
	Domain  string
	Version int64
}

// Graph is a GraphProto. Nodes must be in topological order.
type Graph struct {
	Name         string
	DocString    string
	Initializers []Tensor
	Nodes        []Node
	Inputs       []ValueInfo
	Outputs      []ValueInfo
}

// Tensor is a TensorProto initializer (or a tensor attribute). ElemType
// zero means Float: Data holds the row-major values, written as
// little-endian raw_data. Any other fixed-size type takes its little-endian
// bytes in Raw (build them with RawTensor or Int64Tensor), and String its
// values in Strings. The element count must equal the product of Dims (1
// for a scalar with no dims).
type Tensor struct {
	Name     string
	Dims     []int64
	Data     []float32
	ElemType DataType
	Raw      []byte
	Strings  []string
}

// RawTensor returns a tensor of type t from its little-endian bytes.
func RawTensor(name string, t DataType, dims []int64, raw []byte) Tensor {
	return Tensor{Name: name, Dims: dims, ElemType: t, Raw: raw}
}

// Int64Tensor returns an INT64 tensor.
func Int64Tensor(name string, dims []int64, vals ...int64) Tensor {
	raw := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return RawTensor(name, Int64, dims, raw)
}

// StringTensor returns a STRING tensor.
func StringTensor(name string, dims []int64, vals ...string) Tensor {
	return Tensor{Name: name, Dims: dims, ElemType: String, Strings: vals}
}

func (t *Tensor) elemType() DataType {
	if t.ElemType == 0 {
		return Float
	}
	return t.ElemType
}

// count returns the element count the tensor holds.
func (t *Tensor) count() int64 {
	switch et := t.elemType(); {
	case et == Float:
		return int64(len(t.Data))
	case et == String:
		return int64(len(t.Strings))
	default:
		return int64(len(t.Raw) / et.Size())
	}
}

// Node is a NodeProto. Domain "" is the default ONNX domain.
type Node struct {
	Name       string
	OpType     string
	Domain     string
	Inputs     []string
	Outputs    []string
	Attributes []Attribute
}

// Attribute is an AttributeProto; build it with IntAttr, FloatAttr,
// StringAttr, TensorAttr, IntsAttr, FloatsAttr or StringsAttr.
type Attribute struct {
	Name    string
	Type    AttrType
	Int     int64
	Float   float32
	String  string
	Tensor  *Tensor
	Ints    []int64
	Floats  []float32
	Strings []string
}

// IntAttr returns an INT attribute.
func IntAttr(name string, v int64) Attribute { return Attribute{Name: name, Type: AttrInt, Int: v} }

// FloatAttr returns a FLOAT attribute.
func FloatAttr(name string, v float32) Attribute {
	return Attribute{Name: name, Type: AttrFloat, Float: v}
}

// StringAttr returns a STRING attribute.
func StringAttr(name, v string) Attribute {
	return Attribute{Name: name, Type: AttrString, String: v}
}

// IntsAttr returns an INTS attribute.
func IntsAttr(name string, v ...int64) Attribute {
	return Attribute{Name: name, Type: AttrInts, Ints: v}
}

// FloatsAttr returns a FLOATS attribute.
func FloatsAttr(name string, v ...float32) Attribute {
	return Attribute{Name: name, Type: AttrFloats, Floats: v}
}

// TensorAttr returns a TENSOR attribute (e.g. Constant's value).
func TensorAttr(name string, t Tensor) Attribute {
	return Attribute{Name: name, Type: AttrTensor, Tensor: &t}
}

// StringsAttr returns a STRINGS attribute.
func StringsAttr(name string, v ...string) Attribute {
	return Attribute{Name: name, Type: AttrStrings, Strings: v}
}

// ValueInfo is a ValueInfoProto for a graph input or output. Without Type
// it is a tensor: ElemType (zero means Float) of Shape. Type, when set,
// declares any other type (and ElemType and Shape are ignored).
type ValueInfo struct {
	Name     string
	ElemType DataType
	Shape    []Dim
	Type     *Type
}

// Type is a TypeProto. Exactly one of Sequence, Map (MapKey and MapValue)
// and Optional is set, or none: then it is a tensor of Elem (zero means
// Float) with Shape, or of unknown rank when UnknownRank is set.
type Type struct {
	Elem        DataType
	Shape       []Dim
	UnknownRank bool

	Sequence *Type
	MapKey   DataType
	MapValue *Type
	Optional *Type
}

// TensorOf returns a tensor type.
func TensorOf(elem DataType, dims ...Dim) *Type { return &Type{Elem: elem, Shape: dims} }

// SequenceOf returns a sequence type.
func SequenceOf(elem *Type) *Type { return &Type{Sequence: elem} }

// MapOf returns a map type.
func MapOf(key DataType, value *Type) *Type { return &Type{MapKey: key, MapValue: value} }

// OptionalOf returns an optional type.
func OptionalOf(elem *Type) *Type { return &Type{Optional: elem} }

// Dim is one TensorShapeProto dimension: a fixed size, or, when Param is not
// empty, a symbolic size such as "batch", or, when Unknown is set, a
// dimension with neither.
type Dim struct {
	Value   int64
	Param   string
	Unknown bool
}

// Fixed returns a fixed dimension of size n.
func Fixed(n int64) Dim { return Dim{Value: n} }

// Symbolic returns a symbolic dimension named name.
func Symbolic(name string) Dim { return Dim{Param: name} }

// UnknownDim returns a dimension with no size and no name.
func UnknownDim() Dim { return Dim{Unknown: true} }

// Marshal checks m and encodes it as ONNX protobuf bytes. Field order follows
// field numbers within each message, so the output is deterministic.
func (m *Model) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("onnxbuild: marshal: %w", err)
	}
	var b []byte
	ir := m.IRVersion
	if ir == 0 {
		ir = DefaultIRVersion
	}
	b = appendVarintField(b, fModelIRVersion, uint64(ir))
	producer := m.ProducerName
	if producer == "" {
		producer = DefaultProducer
	}
	b = appendStringField(b, fModelProducerName, producer)
	if m.ProducerVersion != "" {
		b = appendStringField(b, fModelProducerVersion, m.ProducerVersion)
	}
	if m.DocString != "" {
		b = appendStringField(b, fModelDocString, m.DocString)
	}
	b = protowire.AppendTag(b, fModelGraph, protowire.BytesType)
	b = protowire.AppendBytes(b, m.Graph.encode())
	opsets := m.Opsets
	if len(opsets) == 0 {
		opsets = []Opset{{Version: DefaultOpset}}
	}
	for _, o := range opsets {
		var ob []byte
		if o.Domain != "" {
			ob = appendStringField(ob, fOpsetDomain, o.Domain)
		}
		ob = appendVarintField(ob, fOpsetVersion, uint64(o.Version))
		b = protowire.AppendTag(b, fModelOpsetImport, protowire.BytesType)
		b = protowire.AppendBytes(b, ob)
	}
	return b, nil
}

func (m *Model) validate() error {
	if m.IRVersion < 0 {
		return fmt.Errorf("%w: ir_version %d is negative", ErrInvalid, m.IRVersion)
	}
	for i, o := range m.Opsets {
		if o.Version <= 0 {
			return fmt.Errorf("%w: opset import %d (domain %q) has version %d, want > 0",
				ErrInvalid, i, o.Domain, o.Version)
		}
	}
	g := &m.Graph
	if g.Name == "" {
		return fmt.Errorf("%w: graph has no name", ErrInvalid)
	}
	if len(g.Outputs) == 0 {
		return fmt.Errorf("%w: graph %q has no outputs", ErrInvalid, g.Name)
	}
	for i, t := range g.Initializers {
		if t.Name == "" {
			return fmt.Errorf("%w: initializer %d has no name", ErrInvalid, i)
		}
		n := int64(1)
		for j, d := range t.Dims {
			if d < 0 {
				return fmt.Errorf("%w: initializer %q dim %d is %d, want >= 0",
					ErrInvalid, t.Name, j, d)
			}
			if d > 0 && n > math.MaxInt64/d {
				return fmt.Errorf("%w: initializer %q dims %v overflow", ErrInvalid, t.Name, t.Dims)
			}
			n *= d
		}
		if err := t.validate(n); err != nil {
			return fmt.Errorf("%w: initializer %q %s", ErrInvalid, t.Name, err)
		}
	}
	for i, nd := range g.Nodes {
		if nd.OpType == "" {
			return fmt.Errorf("%w: node %d (%q) has no op_type", ErrInvalid, i, nd.Name)
		}
		if len(nd.Outputs) == 0 {
			return fmt.Errorf("%w: node %d (%q, %s) has no outputs", ErrInvalid, i, nd.Name, nd.OpType)
		}
		for _, a := range nd.Attributes {
			if a.Name == "" {
				return fmt.Errorf("%w: node %d (%q) has an attribute with no name", ErrInvalid, i, nd.Name)
			}
			switch a.Type {
			case AttrFloat, AttrInt, AttrString, AttrFloats, AttrInts, AttrStrings:
			case AttrTensor:
				if a.Tensor == nil {
					return fmt.Errorf("%w: node %d (%q) tensor attribute %q has no tensor", ErrInvalid, i, nd.Name, a.Name)
				}
				if err := a.Tensor.validate(product(a.Tensor.Dims)); err != nil {
					return fmt.Errorf("%w: node %d (%q) tensor attribute %q %s", ErrInvalid, i, nd.Name, a.Name, err)
				}
			default:
				return fmt.Errorf("%w: node %d (%q) attribute %q has unsupported type %d",
					ErrInvalid, i, nd.Name, a.Name, a.Type)
			}
		}
	}
	for _, set := range []struct {
		what string
		vis  []ValueInfo
	}{{"input", g.Inputs}, {"output", g.Outputs}} {
		for i, v := range set.vis {
			if v.Name == "" {
				return fmt.Errorf("%w: graph %s %d has no name", ErrInvalid, set.what, i)
			}
			typ := v.Type
			if typ == nil {
				typ = &Type{Elem: v.ElemType, Shape: v.Shape}
			}
			if err := typ.validate(); err != nil {
				return fmt.Errorf("%w: graph %s %q %s", ErrInvalid, set.what, v.Name, err)
			}
		}
	}
	return nil
}

// product is the element count of dims, or -1 when a dim is negative or
// the count overflows.
func product(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		if d < 0 || (d > 0 && n > math.MaxInt64/d) {
			return -1
		}
		n *= d
	}
	return n
}

// validate checks the tensor's element type and that it holds n values.
func (t *Tensor) validate(n int64) error {
	et := t.elemType()
	if !et.known() {
		return fmt.Errorf("has elem_type %d, which this package cannot encode", et)
	}
	if et != Float && len(t.Data) > 0 {
		return fmt.Errorf("is %d but holds float32 Data; use Raw or Strings", et)
	}
	if et != String && et != Float && len(t.Raw)%et.Size() != 0 {
		return fmt.Errorf("has %d raw bytes, not a multiple of %d", len(t.Raw), et.Size())
	}
	if got := t.count(); got != n {
		return fmt.Errorf("has %d values, dims %v need %d", got, t.Dims, n)
	}
	return nil
}

func (t *Type) validate() error {
	set := 0
	for _, b := range []bool{t.Sequence != nil, t.MapValue != nil, t.Optional != nil} {
		if b {
			set++
		}
	}
	switch {
	case set > 1:
		return fmt.Errorf("type sets more than one of sequence, map and optional")
	case t.Sequence != nil:
		return t.Sequence.validate()
	case t.Optional != nil:
		return t.Optional.validate()
	case t.MapValue != nil:
		if !t.MapKey.known() {
			return fmt.Errorf("map key type %d is not a known element type", t.MapKey)
		}
		return t.MapValue.validate()
	case t.MapKey != 0:
		return fmt.Errorf("map key type without a value type")
	}
	elem := t.Elem
	if elem == 0 {
		elem = Float
	}
	if !elem.known() {
		return fmt.Errorf("has elem_type %d, which this package cannot declare", t.Elem)
	}
	for j, d := range t.Shape {
		if !d.Unknown && d.Param == "" && d.Value < 0 {
			return fmt.Errorf("dim %d is %d, want >= 0 or a symbolic name", j, d.Value)
		}
	}
	return nil
}

func (g *Graph) encode() []byte {
	var b []byte
	for _, n := range g.Nodes {
		b = protowire.AppendTag(b, fGraphNode, protowire.BytesType)
		b = protowire.AppendBytes(b, n.encode())
	}
	b = appendStringField(b, fGraphName, g.Name)
	for _, t := range g.Initializers {
		b = protowire.AppendTag(b, fGraphInitializer, protowire.BytesType)
		b = protowire.AppendBytes(b, t.encode())
	}
	if g.DocString != "" {
		b = appendStringField(b, fGraphDocString, g.DocString)
	}
	for _, v := range g.Inputs {
		b = protowire.AppendTag(b, fGraphInput, protowire.BytesType)
		b = protowire.AppendBytes(b, v.encode())
	}
	for _, v := range g.Outputs {
		b = protowire.AppendTag(b, fGraphOutput, protowire.BytesType)
		b = protowire.AppendBytes(b, v.encode())
	}
	return b
}

func (n *Node) encode() []byte {
	var b []byte
	for _, in := range n.Inputs {
		b = appendStringField(b, fNodeInput, in)
	}
	for _, out := range n.Outputs {
		b = appendStringField(b, fNodeOutput, out)
	}
	if n.Name != "" {
		b = appendStringField(b, fNodeName, n.Name)
	}
	b = appendStringField(b, fNodeOpType, n.OpType)
	for _, a := range n.Attributes {
		b = protowire.AppendTag(b, fNodeAttribute, protowire.BytesType)
		b = protowire.AppendBytes(b, a.encode())
	}
	if n.Domain != "" {
		b = appendStringField(b, fNodeDomain, n.Domain)
	}
	return b
}

func (a *Attribute) encode() []byte {
	var b []byte
	b = appendStringField(b, fAttrName, a.Name)
	switch a.Type {
	case AttrFloat:
		b = protowire.AppendTag(b, fAttrF, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.Float))
	case AttrInt:
		b = appendVarintField(b, fAttrI, uint64(a.Int))
	case AttrString:
		b = appendStringField(b, fAttrS, a.String)
	case AttrFloats:
		// proto2 repeated scalars are unpacked unless declared packed;
		// parsers accept both, we write the declared (unpacked) form.
		for _, f := range a.Floats {
			b = protowire.AppendTag(b, fAttrFloats, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, math.Float32bits(f))
		}
	case AttrInts:
		for _, i := range a.Ints {
			b = appendVarintField(b, fAttrInts, uint64(i))
		}
	case AttrTensor:
		b = protowire.AppendTag(b, fAttrT, protowire.BytesType)
		b = protowire.AppendBytes(b, a.Tensor.encode())
	case AttrStrings:
		for _, s := range a.Strings {
			b = appendStringField(b, fAttrStrings, s)
		}
	}
	b = appendVarintField(b, fAttrType, uint64(a.Type))
	return b
}

func (t *Tensor) encode() []byte {
	var b []byte
	for _, d := range t.Dims {
		b = appendVarintField(b, fTensorDims, uint64(d))
	}
	et := t.elemType()
	b = appendVarintField(b, fTensorDataType, uint64(et))
	if et == String {
		for _, s := range t.Strings {
			b = appendStringField(b, fTensorStringData, s)
		}
	}
	if t.Name != "" {
		b = appendStringField(b, fTensorName, t.Name)
	}
	switch et {
	case String:
	case Float:
		raw := make([]byte, 4*len(t.Data))
		for i, f := range t.Data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
		}
		b = protowire.AppendTag(b, fTensorRawData, protowire.BytesType)
		b = protowire.AppendBytes(b, raw)
	default:
		b = protowire.AppendTag(b, fTensorRawData, protowire.BytesType)
		b = protowire.AppendBytes(b, t.Raw)
	}
	return b
}

func (v *ValueInfo) encode() []byte {
	typ := v.Type
	if typ == nil {
		typ = &Type{Elem: v.ElemType, Shape: v.Shape}
	}
	var b []byte
	b = appendStringField(b, fValueInfoName, v.Name)
	b = protowire.AppendTag(b, fValueInfoType, protowire.BytesType)
	b = protowire.AppendBytes(b, typ.encode())
	return b
}

// encode returns the TypeProto bytes.
func (t *Type) encode() []byte {
	var inner []byte
	var field protowire.Number
	switch {
	case t.Sequence != nil:
		field = fTypeSequenceType
		inner = protowire.AppendTag(inner, fSequenceElemType, protowire.BytesType)
		inner = protowire.AppendBytes(inner, t.Sequence.encode())
	case t.MapValue != nil:
		field = fTypeMapType
		inner = appendVarintField(inner, fMapKeyType, uint64(t.MapKey))
		inner = protowire.AppendTag(inner, fMapValueType, protowire.BytesType)
		inner = protowire.AppendBytes(inner, t.MapValue.encode())
	case t.Optional != nil:
		field = fTypeOptionalType
		inner = protowire.AppendTag(inner, fOptionalElemType, protowire.BytesType)
		inner = protowire.AppendBytes(inner, t.Optional.encode())
	default:
		field = fTypeTensorType
		elem := t.Elem
		if elem == 0 {
			elem = Float
		}
		inner = appendVarintField(inner, fTensorElemType, uint64(elem))
		if !t.UnknownRank {
			var shape []byte
			for _, d := range t.Shape {
				var db []byte
				switch {
				case d.Unknown:
				case d.Param != "":
					db = appendStringField(db, fDimParam, d.Param)
				default:
					db = appendVarintField(db, fDimValue, uint64(d.Value))
				}
				shape = protowire.AppendTag(shape, fShapeDim, protowire.BytesType)
				shape = protowire.AppendBytes(shape, db)
			}
			inner = protowire.AppendTag(inner, fTensorShape, protowire.BytesType)
			inner = protowire.AppendBytes(inner, shape)
		}
	}
	var b []byte
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// Pad returns model with an ONNX ModelProto doc_string (field 6) of n
// bytes appended: a valid model of about len(model)+n bytes that computes
// the same, for larger downloads or a different digest.
func Pad(model []byte, n int) []byte {
	out := protowire.AppendTag(append([]byte(nil), model...), fModelDocString, protowire.BytesType)
	return protowire.AppendString(out, strings.Repeat("x", n))
}
