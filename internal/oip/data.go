package oip

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// decodeFP32 flattens a tensor's JSON data into row-major float32 values.
// raw must be valid JSON (encoding/json checked it). Accepted forms: a flat
// array of product values, or arrays nested exactly len(shape) deep whose
// lengths match shape at every level. Every value must be a finite number
// within FP32 range. product is the element count of shape.
func decodeFP32(raw []byte, shape []int64, product int64) ([]float32, error) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return nil, fmt.Errorf("data must be a JSON array of numbers")
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
	nested := leaf > 1
	if nested && leaf != len(shape) {
		return nil, fmt.Errorf("data is nested %d deep but shape %s has rank %d; send a flat array or arrays nested to the shape",
			leaf, fmtShape(shape), len(shape))
	}
	// Each value takes at least two bytes ("1,"), which bounds the
	// allocation whatever the shape claims.
	out := make([]float32, 0, min(product, int64(len(raw)/2+1)))
	counts := make([]int64, leaf) // elements seen in the open array at each depth
	depth := 0
	for i < len(raw) {
		c := raw[i]
		switch {
		case isSpace(c) || c == ',':
			i++
		case c == '[':
			if depth == leaf {
				return nil, fmt.Errorf("data nesting is irregular: an array appears where values %d.. are expected", len(out))
			}
			if depth > 0 {
				counts[depth-1]++
			}
			depth++
			counts[depth-1] = 0
			i++
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
		case c == '-' || (c >= '0' && c <= '9'):
			if depth != leaf {
				return nil, fmt.Errorf("data nesting is irregular: a number appears at depth %d where arrays are expected", depth)
			}
			j := i + 1
			for j < len(raw) && isNumberByte(raw[j]) {
				j++
			}
			if int64(len(out)) >= product {
				return nil, fmt.Errorf("data has more than %d values; shape %s needs exactly %d", product, fmtShape(shape), product)
			}
			v, err := strconv.ParseFloat(string(raw[i:j]), 32)
			if math.IsInf(v, 0) || math.IsNaN(v) {
				return nil, fmt.Errorf("data value %d (%s) is not a finite FP32 number", len(out), raw[i:j])
			}
			if err != nil && !errors.Is(err, strconv.ErrRange) {
				return nil, fmt.Errorf("data value %d (%s) is not a number", len(out), raw[i:j])
			}
			out = append(out, float32(v))
			counts[depth-1]++
			i = j
		default:
			return nil, fmt.Errorf("data value %d is %s; FP32 data must contain only numbers", len(out), describeJSON(c))
		}
	}
	if int64(len(out)) != product {
		return nil, fmt.Errorf("data has %d values but shape %s needs %d", len(out), fmtShape(shape), product)
	}
	return out, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

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
	default:
		return fmt.Sprintf("%q", c)
	}
}

// fmtShape formats a shape like JSON: [-1,3].
func fmtShape(shape []int64) string {
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

// elementCount returns the product of shape, or false if it exceeds limit.
func elementCount(shape []int64, limit int64) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d == 0 {
			return 0, true
		}
	}
	for _, d := range shape {
		if d > limit/n {
			return 0, false
		}
		n *= d
	}
	return n, n <= limit
}
