package tensor

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Tensor is a dense row-major tensor. Data holds the elements in the Go
// slice type of the datatype:
//
//	BOOL []bool     UINT8 []uint8   UINT16 []uint16  UINT32 []uint32  UINT64 []uint64
//	INT8 []int8     INT16 []int16   INT32 []int32    INT64 []int64
//	FP16 []float32  BF16 []float32  FP32 []float32   FP64 []float64   BYTES []string
//
// FP16 and BF16 values are float32s that the half type represents exactly
// (Round makes them so). A Go string holds any bytes, so BYTES elements
// need not be UTF-8. An empty Datatype is taken from Data's type (float32
// is FP32), so Tensor{Name: "x", Shape: s, Data: []float32{...}} is FP32.
type Tensor struct {
	Name     string
	Datatype Datatype
	Shape    []int64
	Data     any
}

// ErrInvalid is wrapped by Check's errors.
var ErrInvalid = errors.New("invalid tensor")

// DT returns the tensor's datatype: Datatype, or the one Data's Go type
// implies when it is empty ("" when Data is of no tensor type).
func (t *Tensor) DT() Datatype {
	if t.Datatype != "" {
		return t.Datatype
	}
	switch t.Data.(type) {
	case []bool:
		return Bool
	case []uint8:
		return Uint8
	case []uint16:
		return Uint16
	case []uint32:
		return Uint32
	case []uint64:
		return Uint64
	case []int8:
		return Int8
	case []int16:
		return Int16
	case []int32:
		return Int32
	case []int64:
		return Int64
	case []float32:
		return FP32
	case []float64:
		return FP64
	case []string:
		return Bytes
	}
	return ""
}

// Len returns the number of elements in Data (0 for a nil or foreign Data).
func (t *Tensor) Len() int {
	switch d := t.Data.(type) {
	case []bool:
		return len(d)
	case []uint8:
		return len(d)
	case []uint16:
		return len(d)
	case []uint32:
		return len(d)
	case []uint64:
		return len(d)
	case []int8:
		return len(d)
	case []int16:
		return len(d)
	case []int32:
		return len(d)
	case []int64:
		return len(d)
	case []float32:
		return len(d)
	case []float64:
		return len(d)
	case []string:
		return len(d)
	}
	return 0
}

// Make returns an empty slice of n elements of d's Go type, or nil for an
// unknown datatype.
func Make(d Datatype, n int) any {
	switch d {
	case Bool:
		return make([]bool, n)
	case Uint8:
		return make([]uint8, n)
	case Uint16:
		return make([]uint16, n)
	case Uint32:
		return make([]uint32, n)
	case Uint64:
		return make([]uint64, n)
	case Int8:
		return make([]int8, n)
	case Int16:
		return make([]int16, n)
	case Int32:
		return make([]int32, n)
	case Int64:
		return make([]int64, n)
	case FP16, BF16, FP32:
		return make([]float32, n)
	case FP64:
		return make([]float64, n)
	case Bytes:
		return make([]string, n)
	}
	return nil
}

// Zeros returns a tensor of zeros (false, "") of datatype d and shape.
func Zeros(name string, d Datatype, shape []int64) (Tensor, error) {
	n, err := Elements(shape, math.MaxInt32)
	if err != nil {
		return Tensor{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	data := Make(d, int(n))
	if data == nil {
		return Tensor{}, fmt.Errorf("%w: tensor %q: unknown datatype %q", ErrInvalid, name, d)
	}
	return Tensor{Name: name, Datatype: d, Shape: shape, Data: data}, nil
}

// Elements returns the element count of a concrete shape: the product of
// its dimensions (1 for rank 0, 0 when a dimension is 0). A negative
// dimension, or a count above limit, is an error.
func Elements(shape []int64, limit int64) (int64, error) {
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: shape %s has negative dimension %d", ErrInvalid, FormatShape(shape), i)
		}
		if d == 0 {
			n = 0
		}
	}
	if n == 0 {
		return 0, nil
	}
	for _, d := range shape {
		if d > limit/n {
			return 0, fmt.Errorf("%w: shape %s has more than %d elements", ErrInvalid, FormatShape(shape), limit)
		}
		n *= d
	}
	return n, nil
}

// Check reports whether t is well formed: a known datatype, Data of its Go
// type, as many elements as the shape says, and FP16/BF16 values that the
// half type represents (NaN and infinities are allowed, as onnxruntime
// produces them).
func (t *Tensor) Check() error {
	d := t.DT()
	if !d.Valid() {
		if t.Datatype != "" {
			return fmt.Errorf("%w: tensor %q: unknown datatype %q", ErrInvalid, t.Name, t.Datatype)
		}
		return fmt.Errorf("%w: tensor %q: data of Go type %T is no tensor datatype", ErrInvalid, t.Name, t.Data)
	}
	if !matches(d, t.Data) {
		return fmt.Errorf("%w: tensor %q: %s data must be %T, not %T", ErrInvalid, t.Name, d, Make(d, 0), t.Data)
	}
	n, err := Elements(t.Shape, math.MaxInt64)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if int64(t.Len()) != n {
		return fmt.Errorf("%w: tensor %q has %d values, shape %s needs %d", ErrInvalid, t.Name, t.Len(), FormatShape(t.Shape), n)
	}
	if d == FP16 || d == BF16 {
		round := RoundFP16
		if d == BF16 {
			round = RoundBF16
		}
		for i, v := range t.Data.([]float32) {
			if r := round(v); r != v && !math.IsNaN(float64(v)) {
				return fmt.Errorf("%w: tensor %q element %d (%v) is not a %s value (nearest: %v)", ErrInvalid, t.Name, i, v, d, r)
			}
		}
	}
	return nil
}

// matches reports whether data has datatype d's Go type.
func matches(d Datatype, data any) bool {
	switch data.(type) {
	case []float32:
		return d == FP32 || d == FP16 || d == BF16
	}
	probe := Tensor{Data: data}
	return probe.DT() == d
}

// Round rounds FP16 and BF16 data in place to their types' nearest
// values; it returns the index of the first value that rounded to an
// infinity from a finite value (out of range), or -1.
func (t *Tensor) Round() int {
	d := t.DT()
	if d != FP16 && d != BF16 {
		return -1
	}
	round := RoundFP16
	if d == BF16 {
		round = RoundBF16
	}
	over := -1
	data, _ := t.Data.([]float32)
	for i, v := range data {
		r := round(v)
		if over < 0 && math.IsInf(float64(r), 0) && !math.IsInf(float64(v), 0) {
			over = i
		}
		data[i] = r
	}
	return over
}

// Float64 returns element i as a float64 (false as 0, true as 1); ok is
// false for BYTES.
func (t *Tensor) Float64(i int) (v float64, ok bool) {
	switch d := t.Data.(type) {
	case []bool:
		if d[i] {
			return 1, true
		}
		return 0, true
	case []uint8:
		return float64(d[i]), true
	case []uint16:
		return float64(d[i]), true
	case []uint32:
		return float64(d[i]), true
	case []uint64:
		return float64(d[i]), true
	case []int8:
		return float64(d[i]), true
	case []int16:
		return float64(d[i]), true
	case []int32:
		return float64(d[i]), true
	case []int64:
		return float64(d[i]), true
	case []float32:
		return float64(d[i]), true
	case []float64:
		return d[i], true
	}
	return 0, false
}

// Float64s returns every element as float64 (see Float64); ok is false
// for BYTES. FP32 and FP64 are converted without a per-element type switch.
func (t *Tensor) Float64s() (vals []float64, ok bool) {
	switch d := t.Data.(type) {
	case []float32:
		vals = make([]float64, len(d))
		for i, v := range d {
			vals[i] = float64(v)
		}
		return vals, true
	case []float64:
		return d, true
	case []string:
		return nil, false
	}
	n := t.Len()
	vals = make([]float64, n)
	for i := range n {
		if vals[i], ok = t.Float64(i); !ok {
			return nil, false
		}
	}
	return vals, true
}

// Format returns element i as text: numbers as Go formats them, BYTES
// quoted.
func (t *Tensor) Format(i int) string {
	switch d := t.Data.(type) {
	case []string:
		return strconv.Quote(d[i])
	case []float32:
		return strconv.FormatFloat(float64(d[i]), 'g', -1, 32)
	case []float64:
		return strconv.FormatFloat(d[i], 'g', -1, 64)
	case []int64:
		return strconv.FormatInt(d[i], 10)
	case []uint64:
		return strconv.FormatUint(d[i], 10)
	case []bool:
		return strconv.FormatBool(d[i])
	}
	v, _ := t.Float64(i)
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// FormatShape formats a shape like JSON: [-1,3].
func FormatShape(shape []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(d, 10))
	}
	b.WriteByte(']')
	return b.String()
}
