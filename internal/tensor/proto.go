package tensor

import (
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FromProto converts a manifest tensor (a test vector's input or expected
// output). An empty datatype is FP32 (protocol version 1). The elements
// must be in the field the datatype names, within its range, and as many
// as the shape says; FP16 and BF16 values must be exact.
func FromProto(p *efpb.Tensor) (Tensor, error) {
	if p == nil {
		return Tensor{}, fmt.Errorf("%w: tensor is empty", ErrInvalid)
	}
	d := Datatype(p.GetDatatype())
	if d == "" {
		d = FP32
	}
	if !d.Valid() {
		return Tensor{}, fmt.Errorf("%w: tensor %q: unknown datatype %q", ErrInvalid, p.GetName(), d)
	}
	t := Tensor{Name: p.GetName(), Datatype: d, Shape: p.GetShape()}
	// Elements in a field the datatype does not name are refused: they
	// would be silently ignored.
	used := []struct {
		field string
		n     int
	}{
		{"data", len(p.GetData())}, {"int_data", len(p.GetIntData())}, {"uint_data", len(p.GetUintData())},
		{"double_data", len(p.GetDoubleData())}, {"bool_data", len(p.GetBoolData())}, {"bytes_data", len(p.GetBytesData())},
	}
	field := protoField(d)
	for _, u := range used {
		if u.field != field && u.n > 0 {
			return Tensor{}, fmt.Errorf("%w: tensor %q is %s but has %d values in %s (want %s)", ErrInvalid, t.Name, d, u.n, u.field, field)
		}
	}
	switch d {
	case FP16, BF16, FP32:
		t.Data = p.GetData()
	case FP64:
		t.Data = p.GetDoubleData()
	case Bool:
		t.Data = p.GetBoolData()
	case Bytes:
		bs := p.GetBytesData()
		s := make([]string, len(bs))
		for i, b := range bs {
			s[i] = string(b)
		}
		t.Data = s
	case Int8, Int16, Int32, Int64:
		lo, hi, _ := IntRange(d)
		vals := p.GetIntData()
		for i, v := range vals {
			if v < lo || v > hi {
				return Tensor{}, fmt.Errorf("%w: tensor %q element %d (%d) is out of %s range", ErrInvalid, t.Name, i, v, d)
			}
		}
		t.Data = convertInts(d, vals)
	default: // unsigned
		hi, _ := UintMax(d)
		vals := p.GetUintData()
		for i, v := range vals {
			if v > hi {
				return Tensor{}, fmt.Errorf("%w: tensor %q element %d (%d) is out of %s range", ErrInvalid, t.Name, i, v, d)
			}
		}
		t.Data = convertUints(d, vals)
	}
	if t.Data == nil {
		t.Data = Make(d, 0)
	}
	if err := t.Check(); err != nil {
		return Tensor{}, err
	}
	return t, nil
}

// protoField names the efpb.Tensor field holding d's elements.
func protoField(d Datatype) string {
	switch {
	case d == FP16 || d == BF16 || d == FP32:
		return "data"
	case d == FP64:
		return "double_data"
	case d == Bool:
		return "bool_data"
	case d == Bytes:
		return "bytes_data"
	case d == Int8 || d == Int16 || d == Int32 || d == Int64:
		return "int_data"
	}
	return "uint_data"
}

func convertInts(d Datatype, v []int64) any {
	switch d {
	case Int8:
		return mapSlice(v, func(x int64) int8 { return int8(x) })
	case Int16:
		return mapSlice(v, func(x int64) int16 { return int16(x) })
	case Int32:
		return mapSlice(v, func(x int64) int32 { return int32(x) })
	}
	return v
}

func convertUints(d Datatype, v []uint64) any {
	switch d {
	case Uint8:
		return mapSlice(v, func(x uint64) uint8 { return uint8(x) })
	case Uint16:
		return mapSlice(v, func(x uint64) uint16 { return uint16(x) })
	case Uint32:
		return mapSlice(v, func(x uint64) uint32 { return uint32(x) })
	}
	return v
}

func mapSlice[S, T any](s []S, f func(S) T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// ToProto converts t to a manifest tensor. FP32 tensors are written in the
// version 1 form (no datatype), so a manifest of FP32 test vectors stays
// readable by version 1 agents.
func ToProto(t *Tensor) (*efpb.Tensor, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	d := t.DT()
	p := &efpb.Tensor{Name: t.Name, Shape: t.Shape}
	if d != FP32 {
		p.Datatype = string(d)
	}
	switch v := t.Data.(type) {
	case []float32:
		p.Data = v
	case []float64:
		p.DoubleData = v
	case []bool:
		p.BoolData = v
	case []string:
		p.BytesData = make([][]byte, len(v))
		for i, s := range v {
			p.BytesData[i] = []byte(s)
		}
	case []int8:
		p.IntData = mapSlice(v, func(x int8) int64 { return int64(x) })
	case []int16:
		p.IntData = mapSlice(v, func(x int16) int64 { return int64(x) })
	case []int32:
		p.IntData = mapSlice(v, func(x int32) int64 { return int64(x) })
	case []int64:
		p.IntData = v
	case []uint8:
		p.UintData = mapSlice(v, func(x uint8) uint64 { return uint64(x) })
	case []uint16:
		p.UintData = mapSlice(v, func(x uint16) uint64 { return uint64(x) })
	case []uint32:
		p.UintData = mapSlice(v, func(x uint32) uint64 { return uint64(x) })
	case []uint64:
		p.UintData = v
	}
	return p, nil
}

// Finite reports the index of the first NaN or infinite element of a
// floating-point tensor, or -1.
func (t *Tensor) Finite() int {
	switch v := t.Data.(type) {
	case []float32:
		for i, x := range v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return i
			}
		}
	case []float64:
		for i, x := range v {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return i
			}
		}
	}
	return -1
}
