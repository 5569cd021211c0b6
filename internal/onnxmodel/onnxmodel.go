// Package onnxmodel reads what an ONNX model declares without running it:
// IR version, producer, opset imports, metadata, and the graph's inputs and
// outputs with their full types (tensors with fixed, symbolic or unknown
// dimensions; sequences, maps, optionals), plus the class labels of
// ai.onnx.ml ZipMap outputs. It also makes the edits serving needs:
// widening half-precision outputs to float (WidenOutputs), and pointing
// large initializers at their bytes in the model file as external data
// (Externalize), so onnxruntime maps them instead of copying. It depends only
// on protowire and internal/tensor. Imported by internal/infer,
// controlplane/cli (model inspect) and fleet-sim/scenario.
package onnxmodel

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// ErrMalformed is wrapped by Read's errors: the bytes are not a ModelProto.
var ErrMalformed = errors.New("not an ONNX model")

// Model is what a ModelProto declares.
type Model struct {
	IRVersion       int64
	ProducerName    string
	ProducerVersion string
	Domain          string
	ModelVersion    int64
	// DocString is the model's doc_string, its first MaxDocString bytes
	// when longer (a model may carry megabytes of it).
	DocString string
	GraphName string
	Opsets    []Opset
	// Metadata are the metadata_props, in file order.
	Metadata []KeyValue
	// Inputs are the graph inputs that are not initializers (what a caller
	// feeds); Outputs the graph outputs.
	Inputs, Outputs []Value
	// Nodes counts the graph's top-level nodes; Initializers its
	// initializers.
	Nodes, Initializers int

	zipMaps map[string]zipMap // by output name
}

// Opset is one opset import; Domain "" is the default ONNX domain.
type Opset struct {
	Domain  string
	Version int64
}

// KeyValue is one metadata_props entry.
type KeyValue struct{ Key, Value string }

// Value is a graph input or output.
type Value struct {
	Name string
	Type Type
	Doc  string
}

// Kind is what a TypeProto holds.
type Kind int

// Kinds of TypeProto.
const (
	KindUnknown Kind = iota // no type, or one this package does not know
	KindTensor
	KindSequence
	KindMap
	KindOptional
	KindSparseTensor
)

// Type is a TypeProto.
type Type struct {
	Kind Kind
	// Elem is the element type of a tensor or sparse tensor.
	Elem ElemType
	// Shape is a tensor's shape; HasShape is false when the rank is unknown.
	Shape    []Dim
	HasShape bool
	// Inner is the element type of a sequence or optional, and the value
	// type of a map.
	Inner *Type
	// Key is a map's key type.
	Key ElemType
}

// Dim is one dimension: Value when Known, else the symbolic name Param
// (possibly "").
type Dim struct {
	Value int64
	Param string
	Known bool
}

// ElemType is an ONNX TensorProto.DataType.
type ElemType int32

var elemNames = map[ElemType]string{
	1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
	9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
	16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
	21: "uint4", 22: "int4", 23: "float4e2m1",
}

// String is the ONNX name of the element type ("float", "int64", ...).
func (e ElemType) String() string {
	if n, ok := elemNames[e]; ok {
		return n
	}
	return "elem_type " + strconv.Itoa(int(e))
}

var datatypes = map[ElemType]tensor.Datatype{
	1: tensor.FP32, 2: tensor.Uint8, 3: tensor.Int8, 4: tensor.Uint16, 5: tensor.Int16, 6: tensor.Int32,
	7: tensor.Int64, 8: tensor.Bytes, 9: tensor.Bool, 10: tensor.FP16, 11: tensor.FP64, 12: tensor.Uint32,
	13: tensor.Uint64, 16: tensor.BF16,
}

// Datatype returns the Open Inference Protocol datatype of the element
// type; ok is false for types it has none for (complex, float8, int4 ...).
func (e ElemType) Datatype() (d tensor.Datatype, ok bool) {
	d, ok = datatypes[e]
	return d, ok
}

// String writes the type the way ONNX tools print it: tensor(float),
// seq(map(int64,tensor(float))), optional(tensor(int64)).
func (t Type) String() string {
	switch t.Kind {
	case KindTensor:
		return "tensor(" + t.Elem.String() + ")"
	case KindSparseTensor:
		return "sparse_tensor(" + t.Elem.String() + ")"
	case KindSequence:
		return "seq(" + t.Inner.String() + ")"
	case KindMap:
		return "map(" + t.Key.String() + "," + t.Inner.String() + ")"
	case KindOptional:
		return "optional(" + t.Inner.String() + ")"
	}
	return "unknown type"
}

// ShapeString writes a tensor's shape: [batch,3], [?,3] for an unnamed
// dynamic dimension, "unknown rank" without a shape.
func (t Type) ShapeString() string {
	if !t.HasShape {
		return "unknown rank"
	}
	parts := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		switch {
		case d.Known:
			parts[i] = strconv.FormatInt(d.Value, 10)
		case d.Param != "":
			parts[i] = d.Param
		default:
			parts[i] = "?"
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// Opset returns the version of the opset imported for domain ("" is the
// default ONNX domain; "ai.onnx" is the same), or 0.
func (m *Model) Opset(domain string) int64 {
	if domain == "ai.onnx" {
		domain = ""
	}
	for _, o := range m.Opsets {
		d := o.Domain
		if d == "ai.onnx" {
			d = ""
		}
		if d == domain {
			return o.Version
		}
	}
	return 0
}

// ClassLabels returns the class labels of an ai.onnx.ml ZipMap node that
// produces output: a 1-D INT64 tensor (classlabels_int64s) or BYTES
// tensor (classlabels_strings). ok is false when no ZipMap makes output.
func (m *Model) ClassLabels(output string) (labels tensor.Tensor, ok bool) {
	z, ok := m.zipMaps[output]
	if !ok {
		return tensor.Tensor{}, false
	}
	if z.strs != nil {
		return tensor.Tensor{Name: output, Datatype: tensor.Bytes, Shape: []int64{int64(len(z.strs))}, Data: z.strs}, true
	}
	ints := z.ints
	if ints == nil {
		ints = []int64{}
	}
	return tensor.Tensor{Name: output, Datatype: tensor.Int64, Shape: []int64{int64(len(ints))}, Data: ints}, true
}

type zipMap struct {
	ints []int64
	strs []string
}

// Field numbers from onnx/onnx.proto.
const (
	fModelIRVersion       = 1
	fModelProducerName    = 2
	fModelProducerVersion = 3
	fModelDomain          = 4
	fModelModelVersion    = 5
	fModelDocString       = 6
	fModelGraph           = 7
	fModelOpsetImport     = 8
	fModelMetadataProps   = 14

	fOpsetDomain  = 1
	fOpsetVersion = 2

	fKVKey   = 1
	fKVValue = 2

	fGraphNode        = 1
	fGraphName        = 2
	fGraphInitializer = 5
	fGraphInput       = 11
	fGraphOutput      = 12

	fNodeInput     = 1
	fNodeOutput    = 2
	fNodeOpType    = 4
	fNodeAttribute = 5
	fNodeDomain    = 7

	fAttrName    = 1
	fAttrInts    = 8
	fAttrStrings = 9

	fTensorName = 8

	fValueInfoName = 1
	fValueInfoType = 2
	fValueInfoDoc  = 3

	fTypeTensor       = 1
	fTypeSequence     = 4
	fTypeMap          = 5
	fTypeSparseTensor = 8
	fTypeOptional     = 9

	fTensorTypeElem  = 1
	fTensorTypeShape = 2
	fShapeDim        = 1
	fDimValue        = 1
	fDimParam        = 2

	fInnerElem    = 1 // Sequence.elem_type, Optional.elem_type
	fMapKeyType   = 1
	fMapValueType = 2
)

// MaxDocString bounds the doc_string Read keeps.
const MaxDocString = 4 << 10

// maxTypeDepth bounds nested types (a hostile model could nest without end).
const maxTypeDepth = 16

// Read decodes what model declares. It reads only the fields it needs and
// skips the rest (initializer data and all but the start of a long
// doc_string are never copied), so it is cheap for large models. Bytes that are not a ModelProto give ErrMalformed.
func Read(model []byte) (*Model, error) {
	if len(model) == 0 {
		return nil, fmt.Errorf("%w: model is empty", ErrMalformed)
	}
	m := &Model{zipMaps: map[string]zipMap{}}
	var graph []byte
	haveGraph := false
	err := fields(model, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		switch {
		case num == fModelIRVersion && typ == protowire.VarintType:
			m.IRVersion = int64(u)
		case num == fModelProducerName && typ == protowire.BytesType:
			m.ProducerName = string(v)
		case num == fModelProducerVersion && typ == protowire.BytesType:
			m.ProducerVersion = string(v)
		case num == fModelDomain && typ == protowire.BytesType:
			m.Domain = string(v)
		case num == fModelModelVersion && typ == protowire.VarintType:
			m.ModelVersion = int64(u)
		case num == fModelDocString && typ == protowire.BytesType:
			m.DocString = string(v[:min(len(v), MaxDocString)])
		case num == fModelGraph && typ == protowire.BytesType:
			graph, haveGraph = v, true
		case num == fModelOpsetImport && typ == protowire.BytesType:
			var o Opset
			if err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
				switch {
				case num == fOpsetDomain && typ == protowire.BytesType:
					o.Domain = string(v)
				case num == fOpsetVersion && typ == protowire.VarintType:
					o.Version = int64(u)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("opset_import: %w", err)
			}
			m.Opsets = append(m.Opsets, o)
		case num == fModelMetadataProps && typ == protowire.BytesType:
			var kv KeyValue
			if err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				switch {
				case num == fKVKey && typ == protowire.BytesType:
					kv.Key = string(v)
				case num == fKVValue && typ == protowire.BytesType:
					kv.Value = string(v)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("metadata_props: %w", err)
			}
			m.Metadata = append(m.Metadata, kv)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !haveGraph {
		return nil, fmt.Errorf("%w: it has no graph", ErrMalformed)
	}
	if err := m.readGraph(graph); err != nil {
		return nil, fmt.Errorf("%w: graph: %v", ErrMalformed, err)
	}
	return m, nil
}

func (m *Model) readGraph(b []byte) error {
	var inputs []Value
	inits := map[string]bool{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fGraphName:
			m.GraphName = string(v)
		case fGraphNode:
			m.Nodes++
			return m.readNode(v)
		case fGraphInitializer:
			m.Initializers++
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num == fTensorName && typ == protowire.BytesType {
					inits[string(v)] = true
				}
				return nil
			})
		case fGraphInput, fGraphOutput:
			val, err := readValueInfo(v)
			if err != nil {
				return err
			}
			if num == fGraphInput {
				inputs = append(inputs, val)
			} else {
				m.Outputs = append(m.Outputs, val)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, in := range inputs {
		if !inits[in.Name] {
			m.Inputs = append(m.Inputs, in)
		}
	}
	return nil
}

// readNode records ZipMap nodes; other nodes are only counted.
func (m *Model) readNode(b []byte) error {
	var opType, domain string
	var outputs []string
	var z zipMap
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fNodeOpType:
			opType = string(v)
		case fNodeDomain:
			domain = string(v)
		case fNodeOutput:
			outputs = append(outputs, string(v))
		case fNodeAttribute:
			return readZipMapAttr(v, &z)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if opType == "ZipMap" && domain == "ai.onnx.ml" && len(outputs) == 1 {
		m.zipMaps[outputs[0]] = z
	}
	return nil
}

func readZipMapAttr(b []byte, z *zipMap) error {
	var name string
	var ints []int64
	var strs []string
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		switch {
		case num == fAttrName && typ == protowire.BytesType:
			name = string(v)
		case num == fAttrInts && typ == protowire.VarintType:
			ints = append(ints, int64(u))
		case num == fAttrInts && typ == protowire.BytesType: // packed
			for len(v) > 0 {
				x, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return protowire.ParseError(n)
				}
				ints = append(ints, int64(x))
				v = v[n:]
			}
		case num == fAttrStrings && typ == protowire.BytesType:
			strs = append(strs, string(v))
		}
		return nil
	})
	switch name {
	case "classlabels_int64s":
		z.ints = ints
	case "classlabels_strings":
		z.strs = strs
	}
	return err
}

func readValueInfo(b []byte) (Value, error) {
	var val Value
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fValueInfoName:
			val.Name = string(v)
		case fValueInfoDoc:
			val.Doc = string(v)
		case fValueInfoType:
			t, err := readType(v, 0)
			if err != nil {
				return fmt.Errorf("value %q: %w", val.Name, err)
			}
			val.Type = t
		}
		return nil
	})
	return val, err
}

func readType(b []byte, depth int) (Type, error) {
	if depth > maxTypeDepth {
		return Type{}, fmt.Errorf("type nested deeper than %d", maxTypeDepth)
	}
	var t Type
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fTypeTensor, fTypeSparseTensor:
			t.Kind = KindTensor
			if num == fTypeSparseTensor {
				t.Kind = KindSparseTensor
			}
			return readTensorType(v, &t)
		case fTypeSequence, fTypeOptional:
			t.Kind = KindSequence
			if num == fTypeOptional {
				t.Kind = KindOptional
			}
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num == fInnerElem && typ == protowire.BytesType {
					inner, err := readType(v, depth+1)
					t.Inner = &inner
					return err
				}
				return nil
			})
		case fTypeMap:
			t.Kind = KindMap
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
				switch {
				case num == fMapKeyType && typ == protowire.VarintType:
					t.Key = ElemType(u)
				case num == fMapValueType && typ == protowire.BytesType:
					inner, err := readType(v, depth+1)
					t.Inner = &inner
					return err
				}
				return nil
			})
		}
		return nil
	})
	if err == nil && (t.Kind == KindSequence || t.Kind == KindOptional || t.Kind == KindMap) && t.Inner == nil {
		t.Inner = &Type{}
	}
	return t, err
}

func readTensorType(b []byte, t *Type) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		switch {
		case num == fTensorTypeElem && typ == protowire.VarintType:
			t.Elem = ElemType(u)
		case num == fTensorTypeShape && typ == protowire.BytesType:
			t.HasShape = true
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != fShapeDim || typ != protowire.BytesType {
					return nil
				}
				var d Dim
				err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
					switch {
					case num == fDimValue && typ == protowire.VarintType:
						d.Value, d.Known = int64(u), true
					case num == fDimParam && typ == protowire.BytesType:
						d.Param = string(v)
					}
					return nil
				})
				t.Shape = append(t.Shape, d)
				return err
			})
		}
		return nil
	})
}

// fields calls fn for every field of the protobuf message b: v is the
// payload of a bytes field, u the value of a varint or fixed field.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var u uint64
		switch typ {
		case protowire.VarintType:
			u, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			u = uint64(x)
		case protowire.Fixed64Type:
			u, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			return fmt.Errorf("field %d has wire type %d, which ONNX does not use", num, typ)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v, u); err != nil {
			return err
		}
	}
	return nil
}
