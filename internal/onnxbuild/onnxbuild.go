// Package onnxbuild encodes small ONNX models (ModelProto) directly with
// protowire, so edgefleet builds real models in Go without Python: float32
// initializers, plain nodes with attributes, tensor inputs and outputs with
// fixed or symbolic dims, and padding (Pad). Imported by internal/fraud,
// fleet-sim/... (padded models) and tests.
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
	fAttrName   = 1
	fAttrF      = 2
	fAttrI      = 3
	fAttrS      = 4
	fAttrFloats = 7
	fAttrInts   = 8
	fAttrType   = 20

	// TensorProto
	fTensorDims     = 1
	fTensorDataType = 2
	fTensorName     = 8
	fTensorRawData  = 9

	// ValueInfoProto
	fValueInfoName = 1
	fValueInfoType = 2

	// TypeProto and TypeProto.Tensor
	fTypeTensorType = 1
	fTensorElemType = 1
	fTensorShape    = 2

	// TensorShapeProto and TensorShapeProto.Dimension
	fShapeDim = 1
	fDimValue = 1
	fDimParam = 2
)

// DataType is an ONNX TensorProto.DataType. Initializers are always FLOAT;
// graph inputs and outputs may also be INT64 or DOUBLE.
type DataType int32

// Data types this package can declare (values from onnx.proto).
const (
	Float  DataType = 1  // float32
	Int64  DataType = 7  // int64
	Double DataType = 11 // float64
)

// AttrType is an ONNX AttributeProto.AttributeType.
type AttrType int32

// Attribute types this package can encode (values from onnx.proto).
const (
	AttrFloat  AttrType = 1
	AttrInt    AttrType = 2
	AttrString AttrType = 3
	AttrFloats AttrType = 6
	AttrInts   AttrType = 7
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

// Tensor is a float32 TensorProto initializer; Data is row-major and is
// written as little-endian raw_data. len(Data) must equal the product of Dims
// (1 for a scalar with no dims).
type Tensor struct {
	Name string
	Dims []int64
	Data []float32
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
// StringAttr, IntsAttr or FloatsAttr.
type Attribute struct {
	Name   string
	Type   AttrType
	Int    int64
	Float  float32
	String string
	Ints   []int64
	Floats []float32
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

// ValueInfo is a ValueInfoProto for a tensor graph input or output. ElemType
// zero means Float; Int64 and Double are also accepted.
type ValueInfo struct {
	Name     string
	ElemType DataType
	Shape    []Dim
}

// Dim is one TensorShapeProto dimension: a fixed size, or, when Param is not
// empty, a symbolic size such as "batch".
type Dim struct {
	Value int64
	Param string
}

// Fixed returns a fixed dimension of size n.
func Fixed(n int64) Dim { return Dim{Value: n} }

// Symbolic returns a symbolic dimension named name.
func Symbolic(name string) Dim { return Dim{Param: name} }

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
		if int64(len(t.Data)) != n {
			return fmt.Errorf("%w: initializer %q has %d values, dims %v need %d",
				ErrInvalid, t.Name, len(t.Data), t.Dims, n)
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
			case AttrFloat, AttrInt, AttrString, AttrFloats, AttrInts:
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
			switch v.ElemType {
			case 0, Float, Int64, Double:
			default:
				return fmt.Errorf("%w: graph %s %q has elem_type %d; want FLOAT (1), INT64 (7) or DOUBLE (11)",
					ErrInvalid, set.what, v.Name, v.ElemType)
			}
			for j, d := range v.Shape {
				if d.Param == "" && d.Value < 0 {
					return fmt.Errorf("%w: graph %s %q dim %d is %d, want >= 0 or a symbolic name",
						ErrInvalid, set.what, v.Name, j, d.Value)
				}
			}
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
	}
	b = appendVarintField(b, fAttrType, uint64(a.Type))
	return b
}

func (t *Tensor) encode() []byte {
	var b []byte
	for _, d := range t.Dims {
		b = appendVarintField(b, fTensorDims, uint64(d))
	}
	b = appendVarintField(b, fTensorDataType, uint64(Float))
	b = appendStringField(b, fTensorName, t.Name)
	raw := make([]byte, 4*len(t.Data))
	for i, f := range t.Data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
	}
	b = protowire.AppendTag(b, fTensorRawData, protowire.BytesType)
	b = protowire.AppendBytes(b, raw)
	return b
}

func (v *ValueInfo) encode() []byte {
	var shape []byte
	for _, d := range v.Shape {
		var db []byte
		if d.Param != "" {
			db = appendStringField(db, fDimParam, d.Param)
		} else {
			db = appendVarintField(db, fDimValue, uint64(d.Value))
		}
		shape = protowire.AppendTag(shape, fShapeDim, protowire.BytesType)
		shape = protowire.AppendBytes(shape, db)
	}
	elem := v.ElemType
	if elem == 0 {
		elem = Float
	}
	var tt []byte
	tt = appendVarintField(tt, fTensorElemType, uint64(elem))
	tt = protowire.AppendTag(tt, fTensorShape, protowire.BytesType)
	tt = protowire.AppendBytes(tt, shape)

	var typ []byte
	typ = protowire.AppendTag(typ, fTypeTensorType, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)

	var b []byte
	b = appendStringField(b, fValueInfoName, v.Name)
	b = protowire.AppendTag(b, fValueInfoType, protowire.BytesType)
	b = protowire.AppendBytes(b, typ)
	return b
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
