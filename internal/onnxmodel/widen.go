package onnxmodel

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// ONNX element types WidenOutputs handles.
const (
	elemFloat    ElemType = 1
	elemFloat16  ElemType = 10
	elemBFloat16 ElemType = 16
)

// WidenOutputs returns a copy of model in which every named graph output
// (an FP16 or BF16 tensor) is replaced by a float32 output computed by an
// added Cast node: float32 holds every half value exactly, so nothing is
// lost. renamed maps each named output to the name of its float32
// replacement. This works around onnxruntime_go (v1.27), which cannot hand
// half-precision outputs back to Go. The model's other bytes are kept as
// they are.
func WidenOutputs(model []byte, names []string) (widened []byte, renamed map[string]string, err error) {
	if len(names) == 0 {
		return model, map[string]string{}, nil
	}
	m, err := Read(model)
	if err != nil {
		return nil, nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, o := range m.Outputs {
		if !want[o.Name] {
			continue
		}
		if o.Type.Kind != KindTensor || (o.Type.Elem != elemFloat16 && o.Type.Elem != elemBFloat16) {
			return nil, nil, fmt.Errorf("widen outputs: output %q is %s, not an FP16 or BF16 tensor", o.Name, o.Type)
		}
		need := int64(6) // Cast from float16
		if o.Type.Elem == elemBFloat16 {
			need = 13
		}
		if v := m.Opset(""); v < need {
			return nil, nil, fmt.Errorf("widen outputs: output %q is %s; casting it needs default-domain opset %d, the model imports %d", o.Name, o.Type, need, v)
		}
	}
	taken, err := valueNames(model)
	if err != nil {
		return nil, nil, err
	}
	renamed = map[string]string{}
	for _, n := range names {
		if !want[n] {
			continue
		}
		delete(want, n)
		alt := n + "__edgefleet_float"
		for i := 2; taken[alt]; i++ {
			alt = fmt.Sprintf("%s__edgefleet_float%d", n, i)
		}
		taken[alt] = true
		renamed[n] = alt
	}
	if len(want) > 0 {
		return nil, nil, fmt.Errorf("widen outputs: the model has no output %q", firstKey(want))
	}

	var out []byte
	err = fields(model, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		if num != fModelGraph || typ != protowire.BytesType {
			out = appendField(out, num, typ, v, u)
			return nil
		}
		g, err := widenGraph(v, renamed)
		if err != nil {
			return err
		}
		out = protowire.AppendTag(out, fModelGraph, protowire.BytesType)
		out = protowire.AppendBytes(out, g)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("widen outputs: %w", err)
	}
	return out, renamed, nil
}

func firstKey(m map[string]bool) string {
	for k := range m {
		return k
	}
	return ""
}

// valueNames collects every value name the graph mentions.
func valueNames(model []byte) (map[string]bool, error) {
	names := map[string]bool{}
	err := fields(model, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num != fModelGraph || typ != protowire.BytesType {
			return nil
		}
		return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
			if typ != protowire.BytesType {
				return nil
			}
			switch num {
			case fGraphNode:
				return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
					if (num == fNodeInput || num == fNodeOutput) && typ == protowire.BytesType {
						names[string(v)] = true
					}
					return nil
				})
			case fGraphInput, fGraphOutput, fGraphInitializer:
				nameField := protowire.Number(fValueInfoName)
				if num == fGraphInitializer {
					nameField = fTensorName
				}
				return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
					if num == nameField && typ == protowire.BytesType {
						names[string(v)] = true
					}
					return nil
				})
			}
			return nil
		})
	})
	return names, err
}

// widenGraph rewrites the named outputs of a GraphProto and appends a Cast
// node for each.
func widenGraph(g []byte, renamed map[string]string) ([]byte, error) {
	var out []byte
	err := fields(g, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		if num != fGraphOutput || typ != protowire.BytesType {
			out = appendField(out, num, typ, v, u)
			return nil
		}
		val, err := readValueInfo(v)
		if err != nil {
			return err
		}
		alt, ok := renamed[val.Name]
		if !ok {
			out = appendField(out, num, typ, v, u)
			return nil
		}
		out = protowire.AppendTag(out, fGraphOutput, protowire.BytesType)
		out = protowire.AppendBytes(out, floatValueInfo(alt, val.Type))
		// Repeated fields may come in any order; appending the node after
		// the outputs is valid, and it only reads a value computed before.
		var node []byte
		node = appendString(node, fNodeInput, val.Name)
		node = appendString(node, fNodeOutput, alt)
		node = appendString(node, 3, "edgefleet_widen_"+val.Name) // NodeProto.name
		node = appendString(node, fNodeOpType, "Cast")
		var attr []byte
		attr = appendString(attr, fAttrName, "to")
		attr = protowire.AppendTag(attr, 3, protowire.VarintType) // AttributeProto.i
		attr = protowire.AppendVarint(attr, uint64(elemFloat))
		attr = protowire.AppendTag(attr, 20, protowire.VarintType) // AttributeProto.type = INT
		attr = protowire.AppendVarint(attr, 2)
		node = protowire.AppendTag(node, fNodeAttribute, protowire.BytesType)
		node = protowire.AppendBytes(node, attr)
		out = protowire.AppendTag(out, fGraphNode, protowire.BytesType)
		out = protowire.AppendBytes(out, node)
		return nil
	})
	return out, err
}

// floatValueInfo encodes a ValueInfoProto for a float tensor with the
// shape of t.
func floatValueInfo(name string, t Type) []byte {
	var tt []byte
	tt = protowire.AppendTag(tt, fTensorTypeElem, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(elemFloat))
	if t.HasShape {
		var shape []byte
		for _, d := range t.Shape {
			var db []byte
			switch {
			case d.Known:
				db = protowire.AppendTag(db, fDimValue, protowire.VarintType)
				db = protowire.AppendVarint(db, uint64(d.Value))
			case d.Param != "":
				db = appendString(db, fDimParam, d.Param)
			}
			shape = protowire.AppendTag(shape, fShapeDim, protowire.BytesType)
			shape = protowire.AppendBytes(shape, db)
		}
		tt = protowire.AppendTag(tt, fTensorTypeShape, protowire.BytesType)
		tt = protowire.AppendBytes(tt, shape)
	}
	var typ []byte
	typ = protowire.AppendTag(typ, fTypeTensor, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)
	var b []byte
	b = appendString(b, fValueInfoName, name)
	b = protowire.AppendTag(b, fValueInfoType, protowire.BytesType)
	return protowire.AppendBytes(b, typ)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendField re-encodes one field as fields decoded it.
func appendField(b []byte, num protowire.Number, typ protowire.Type, v []byte, u uint64) []byte {
	b = protowire.AppendTag(b, num, typ)
	switch typ {
	case protowire.VarintType:
		return protowire.AppendVarint(b, u)
	case protowire.Fixed32Type:
		return protowire.AppendFixed32(b, uint32(u))
	case protowire.Fixed64Type:
		return protowire.AppendFixed64(b, u)
	case protowire.BytesType:
		return protowire.AppendBytes(b, v)
	}
	return b
}
