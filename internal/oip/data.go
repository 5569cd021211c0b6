package oip

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unsafe"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// JSON tensor data, as the Open Inference Protocol's REST API carries it:
//
//	BOOL                      true / false
//	UINT8..UINT64, INT8..INT64  integers (no fraction, no exponent), in range
//	FP16, BF16, FP32, FP64    numbers; FP16 and BF16 are rounded to the
//	                          nearest value of the type, FP32 to float32.
//	                          JSON has no NaN or infinity: they travel as
//	                          the strings "NaN", "Infinity" and "-Infinity"
//	                          (tree models read NaN as a missing value)
//	BYTES                     strings (JSON strings hold Unicode text; the
//	                          binary data extension carries any bytes)
//
// data is a flat array of the shape's element count in row-major order, or
// arrays nested exactly as deep as the shape, each as long as its
// dimension.

// decodeData decodes one input's JSON data as datatype d for a concrete
// shape of product elements. raw must be valid JSON (encoding/json
// checked it).
func decodeData(raw []byte, d tensor.Datatype, shape []int64, product int64) (any, error) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return nil, fmt.Errorf("data must be a JSON array of %s", elementWord(d))
	}
	// The nesting depth of the first leaf decides between flat and nested.
	leaf := 0
	for j := i; j < len(raw); j++ {
		if raw[j] == '[' {
			leaf++
		} else if !isSpace(raw[j]) {
			break
		}
	}
	if leaf == 1 && d == tensor.FP32 {
		if out, ok := decodeFlatFP32(raw[i:], product); ok {
			return out, nil
		}
		// Anything unusual (strings, too few or many values, a bad value)
		// takes the general way, which says what is wrong.
	}
	return decodeNested(raw, i, leaf, d, shape, product)
}

// decodeNested is decodeData's general way: any datatype, flat (leaf 1)
// or nested leaf deep, raw's array starting at i.
func decodeNested(raw []byte, i, leaf int, d tensor.Datatype, shape []int64, product int64) (any, error) {
	nested := leaf > 1
	if nested && leaf != len(shape) {
		return nil, fmt.Errorf("data is nested %d deep but shape %s has rank %d; send a flat array or arrays nested to the shape",
			leaf, fmtShape(shape), len(shape))
	}
	// Each value takes at least two bytes ("1,"), which bounds the
	// allocation whatever the shape claims.
	capacity := int(min(product, int64(len(raw)/2+1)))
	s := newSink(d, capacity)
	counts := make([]int64, leaf) // elements seen in the open array at each depth
	depth := 0
	n := int64(0)
	for i < len(raw) {
		c := raw[i]
		switch {
		case isSpace(c) || c == ',':
			i++
			continue
		case c == '[':
			if depth == leaf {
				return nil, fmt.Errorf("data nesting is irregular: an array appears where values %d.. are expected", n)
			}
			if depth > 0 {
				counts[depth-1]++
			}
			depth++
			counts[depth-1] = 0
			i++
			continue
		case c == ']':
			if nested && counts[depth-1] != shape[depth-1] {
				return nil, fmt.Errorf("data has an array of %d elements at nesting depth %d, but shape %s wants %d",
					counts[depth-1], depth, fmtShape(shape), shape[depth-1])
			}
			depth--
			i++
			if depth == 0 {
				i = len(raw) // valid JSON: only whitespace can follow
			}
			continue
		}
		if depth != leaf {
			return nil, fmt.Errorf("data nesting is irregular: a value appears at depth %d where arrays are expected", depth)
		}
		j := tokenEnd(raw, i)
		if n >= product {
			return nil, fmt.Errorf("data has more than %d values; shape %s needs exactly %d", product, fmtShape(shape), product)
		}
		if err := s.add(raw[i:j]); err != nil {
			return nil, fmt.Errorf("data value %d (%s) %v", n, clip(raw[i:j]), err)
		}
		n++
		counts[depth-1]++
		i = j
	}
	if n != product {
		return nil, fmt.Errorf("data has %d values but shape %s needs %d", n, fmtShape(shape), product)
	}
	return s.data(), nil
}

// decodeFlatFP32 decodes a flat array of exactly product plain numbers
// (valid JSON starting at its '['), the form almost every FP32 request
// has, without the general decoder's per-value dispatch; ok is false for
// anything else.
func decodeFlatFP32(raw []byte, product int64) ([]float32, bool) {
	if product > int64(len(raw)/2+1) {
		return nil, false // each value takes at least two bytes
	}
	out := make([]float32, 0, product)
	i := 1 // after '['
	for {
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return nil, false
		}
		if raw[i] == ']' && len(out) == 0 {
			break
		}
		if !isNumberStart(raw[i]) || int64(len(out)) == product {
			return nil, false
		}
		j := tokenEnd(raw, i)
		v, err := strconv.ParseFloat(view(raw[i:j]), 32)
		if err != nil { // out of FP32 range, among others
			return nil, false
		}
		out = append(out, float32(v))
		i = skipSpace(raw, j)
		if i < len(raw) && raw[i] == ',' {
			i++
			continue
		}
		if i < len(raw) && raw[i] == ']' {
			break
		}
		return nil, false
	}
	if int64(len(out)) != product {
		return nil, false
	}
	return out, true
}

// tokenEnd returns the end of the JSON scalar starting at raw[i].
func tokenEnd(raw []byte, i int) int {
	if raw[i] == '"' {
		j := i + 1
		for j < len(raw) && raw[j] != '"' {
			if raw[j] == '\\' {
				j++
			}
			j++
		}
		return min(j+1, len(raw))
	}
	j := i + 1
	for j < len(raw) && !isSpace(raw[j]) && raw[j] != ',' && raw[j] != ']' && raw[j] != '}' {
		j++
	}
	return j
}

func clip(tok []byte) string {
	if len(tok) > 40 {
		return string(tok[:37]) + "..."
	}
	return string(tok)
}

func elementWord(d tensor.Datatype) string {
	switch {
	case d == tensor.Bool:
		return "booleans"
	case d == tensor.Bytes:
		return "strings"
	case d.IsInteger():
		return "integers"
	}
	return "numbers"
}

// sink collects decoded elements of one datatype.
type sink struct {
	add  func(tok []byte) error
	data func() any
}

var errNotInteger = errors.New("is not an integer")

func kindError(tok []byte, d tensor.Datatype) error {
	if d.IsFloat() {
		return fmt.Errorf(`is %s; %s data must contain only numbers (and "NaN", "Infinity", "-Infinity")`, describeJSON(tok[0]), d)
	}
	return fmt.Errorf("is %s; %s data must contain only %s", describeJSON(tok[0]), d, elementWord(d))
}

func newSink(d tensor.Datatype, capacity int) sink {
	switch {
	case d == tensor.Bool:
		out := make([]bool, 0, capacity)
		return sink{func(tok []byte) error {
			switch string(tok) {
			case "true":
				out = append(out, true)
			case "false":
				out = append(out, false)
			default:
				return kindError(tok, d)
			}
			return nil
		}, func() any { return out }}
	case d == tensor.Bytes:
		out := make([]string, 0, capacity)
		return sink{func(tok []byte) error {
			if tok[0] != '"' {
				return kindError(tok, d)
			}
			var s string
			if err := json.Unmarshal(tok, &s); err != nil {
				return fmt.Errorf("is not a valid string: %v", err)
			}
			out = append(out, s)
			return nil
		}, func() any { return out }}
	case d.IsInteger():
		lo, hi, signed := tensor.IntRange(d)
		uhi, _ := tensor.UintMax(d)
		ints := make([]int64, 0, capacity)
		uints := make([]uint64, 0, capacity)
		return sink{func(tok []byte) error {
			if !isNumberStart(tok[0]) {
				return kindError(tok, d)
			}
			if signed {
				v, err := strconv.ParseInt(view(tok), 10, 64)
				if err != nil || v < lo || v > hi {
					return intError(tok, d, err)
				}
				ints = append(ints, v)
				return nil
			}
			v, err := strconv.ParseUint(view(tok), 10, 64)
			if err != nil || v > uhi {
				return intError(tok, d, err)
			}
			uints = append(uints, v)
			return nil
		}, func() any { return convertInts(d, ints, uints) }}
	case d == tensor.FP64:
		out := make([]float64, 0, capacity)
		return sink{func(tok []byte) error {
			v, err := parseFloat(tok, d, 64)
			out = append(out, v)
			return err
		}, func() any { return out }}
	}
	// FP16, BF16, FP32
	round := func(f float64) float32 { return float32(f) }
	switch d {
	case tensor.FP16:
		round = func(f float64) float32 { return tensor.RoundFP16(float32(f)) }
	case tensor.BF16:
		round = func(f float64) float32 { return tensor.RoundBF16(float32(f)) }
	}
	out := make([]float32, 0, capacity)
	return sink{func(tok []byte) error {
		v, err := parseFloat(tok, d, 32)
		if err != nil {
			return err
		}
		f := round(v)
		if math.IsInf(float64(f), 0) && !math.IsInf(v, 0) {
			return fmt.Errorf("is beyond the %s range", d)
		}
		out = append(out, f)
		return nil
	}, func() any { return out }}
}

// view is tok as a string without a copy, for the strconv parsers; their
// errors, which keep it, are never kept beyond the call (the messages
// quote tok themselves).
func view(tok []byte) string { return unsafe.String(unsafe.SliceData(tok), len(tok)) }

func isNumberStart(c byte) bool { return c == '-' || (c >= '0' && c <= '9') }

func intError(tok []byte, d tensor.Datatype, err error) error {
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		if strings.ContainsAny(string(tok), ".eE") {
			return fmt.Errorf("%w; %s data must be whole numbers without a fraction or exponent", errNotInteger, d)
		}
		return errNotInteger
	}
	return fmt.Errorf("is out of %s range", d)
}

// Non-finite floats as JSON strings.
const (
	jsonNaN    = `"NaN"`
	jsonPosInf = `"Infinity"`
	jsonNegInf = `"-Infinity"`
)

func parseFloat(tok []byte, d tensor.Datatype, bits int) (float64, error) {
	switch string(tok) {
	case jsonNaN:
		return math.NaN(), nil
	case jsonPosInf:
		return math.Inf(1), nil
	case jsonNegInf:
		return math.Inf(-1), nil
	}
	if !isNumberStart(tok[0]) {
		return 0, kindError(tok, d)
	}
	v, err := strconv.ParseFloat(view(tok), bits)
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("is not a finite %s number", d)
	}
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("is not a number")
	}
	return v, nil
}

func convertInts(d tensor.Datatype, ints []int64, uints []uint64) any {
	switch d {
	case tensor.Int8:
		return mapSlice(ints, func(v int64) int8 { return int8(v) })
	case tensor.Int16:
		return mapSlice(ints, func(v int64) int16 { return int16(v) })
	case tensor.Int32:
		return mapSlice(ints, func(v int64) int32 { return int32(v) })
	case tensor.Int64:
		return ints
	case tensor.Uint8:
		return mapSlice(uints, func(v uint64) uint8 { return uint8(v) })
	case tensor.Uint16:
		return mapSlice(uints, func(v uint64) uint16 { return uint16(v) })
	case tensor.Uint32:
		return mapSlice(uints, func(v uint64) uint32 { return uint32(v) })
	}
	return uints
}

func mapSlice[S, T any](s []S, f func(S) T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// appendData appends t's elements as a flat JSON array. Floats are written
// in their shortest form for their type (FP16 and BF16 values as the
// float32 they are); NaN and infinities as the strings JSON needs.
func appendData(b []byte, t *Tensor) ([]byte, error) {
	b = append(b, '[')
	n := t.Len()
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		switch v := t.Data.(type) {
		case []float32:
			b = appendFloat(b, float64(v[i]), 32)
		case []float64:
			b = appendFloat(b, v[i], 64)
		case []int64:
			b = strconv.AppendInt(b, v[i], 10)
		case []uint64:
			b = strconv.AppendUint(b, v[i], 10)
		case []bool:
			b = strconv.AppendBool(b, v[i])
		case []string:
			q, _ := json.Marshal(v[i]) // a string always marshals
			b = append(b, q...)
		default:
			f, _ := t.Float64(i) // the smaller integer types are exact as float64
			b = strconv.AppendFloat(b, f, 'f', -1, 64)
		}
	}
	return append(b, ']'), nil
}

func appendFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, jsonNaN...)
	case math.IsInf(f, 1):
		return append(b, jsonPosInf...)
	case math.IsInf(f, -1):
		return append(b, jsonNegInf...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(raw []byte, i int) int {
	for i < len(raw) && isSpace(raw[i]) {
		i++
	}
	return i
}

func describeJSON(c byte) string {
	switch c {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	case '[':
		return "an array"
	}
	if isNumberStart(c) {
		return "a number"
	}
	return fmt.Sprintf("%q", c)
}

// fmtShape formats a shape like JSON: [-1,3].
func fmtShape(shape []int64) string { return tensor.FormatShape(shape) }

// elementCount returns the product of shape, or false if it exceeds limit.
func elementCount(shape []int64, limit int64) (int64, bool) {
	n, err := tensor.Elements(shape, limit)
	return n, err == nil
}
