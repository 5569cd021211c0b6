package tensor

import (
	"fmt"
	"math"
	"slices"
)

// Tolerance is how far a floating-point element may be from its expected
// value: |got - want| <= Abs + Rel*|want|. NaN matches only NaN, and an
// infinity only the same infinity. Integer, BOOL and BYTES elements must
// match exactly, whatever the tolerance.
type Tolerance struct {
	Abs, Rel float64
}

// Default tolerances for test vectors the control plane records by running
// a model (edgefleet model push --sample-inputs): agents on other CPUs, or
// with another onnxruntime build, compute floats a few ulps apart.
var (
	// DefaultTolerance covers FP32 and FP64 outputs.
	DefaultTolerance = Tolerance{Abs: 1e-5, Rel: 1e-4}
	// DefaultHalfTolerance covers models with an FP16 or BF16 output:
	// BF16 keeps 8 significant bits (relative step 2^-8 ≈ 0.4%).
	DefaultHalfTolerance = Tolerance{Abs: 1e-3, Rel: 1e-2}
)

// Valid reports whether both bounds are finite and non-negative.
func (tol Tolerance) Valid() bool {
	return tol.Abs >= 0 && tol.Rel >= 0 && !math.IsInf(tol.Abs, 0) && !math.IsInf(tol.Rel, 0)
}

// Within reports whether got is within tol of want.
func (tol Tolerance) Within(got, want float64) bool {
	switch {
	case math.IsNaN(want) || math.IsNaN(got):
		return math.IsNaN(want) && math.IsNaN(got)
	case math.IsInf(want, 0) || math.IsInf(got, 0):
		return got == want
	}
	return math.Abs(got-want) <= tol.Abs+tol.Rel*math.Abs(want)
}

// Mismatch is the first difference Compare found.
type Mismatch struct {
	Output    string
	Element   int // -1 when the difference is not in the values
	Got, Want string
	Reason    string // for Element -1: what differs (datatype, shape, length)
}

func (m *Mismatch) Error() string {
	if m.Element < 0 {
		return fmt.Sprintf("output %q %s", m.Output, m.Reason)
	}
	return fmt.Sprintf("output %q element %d: got %s, want %s%s", m.Output, m.Element, m.Got, m.Want, m.Reason)
}

// Compare checks got against want: same datatype and shape, and every
// element equal (integers, BOOL, BYTES) or within tol (floats). It
// returns nil or the first difference.
func Compare(got, want *Tensor, tol Tolerance) *Mismatch {
	gd, wd := got.DT(), want.DT()
	if gd != wd {
		return &Mismatch{Output: want.Name, Element: -1, Reason: fmt.Sprintf("is %s, expected %s", gd, wd)}
	}
	if !slices.Equal(got.Shape, want.Shape) {
		return &Mismatch{Output: want.Name, Element: -1,
			Reason: fmt.Sprintf("has shape %s, expected %s", FormatShape(got.Shape), FormatShape(want.Shape))}
	}
	if got.Len() != want.Len() {
		return &Mismatch{Output: want.Name, Element: -1, Reason: fmt.Sprintf("has %d values, expected %d", got.Len(), want.Len())}
	}
	diff := func(i int, why string) *Mismatch {
		return &Mismatch{Output: want.Name, Element: i, Got: got.Format(i), Want: want.Format(i), Reason: why}
	}
	switch w := want.Data.(type) {
	case []float32:
		g := got.Data.([]float32)
		for i := range w {
			if !tol.Within(float64(g[i]), float64(w[i])) {
				return diff(i, tolText(tol))
			}
		}
	case []float64:
		g := got.Data.([]float64)
		for i := range w {
			if !tol.Within(g[i], w[i]) {
				return diff(i, tolText(tol))
			}
		}
	case []string:
		g := got.Data.([]string)
		for i := range w {
			if g[i] != w[i] {
				return diff(i, " (BYTES match exactly)")
			}
		}
	default:
		if i := firstDiff(got.Data, want.Data); i >= 0 {
			return diff(i, fmt.Sprintf(" (%s matches exactly)", wd))
		}
	}
	return nil
}

func tolText(tol Tolerance) string {
	return fmt.Sprintf(" (tolerance %g + %g·|want|)", tol.Abs, tol.Rel)
}

// firstDiff returns the first index where two slices of one comparable
// element type differ, or -1.
func firstDiff(a, b any) int {
	switch x := a.(type) {
	case []bool:
		return diffOf(x, b.([]bool))
	case []uint8:
		return diffOf(x, b.([]uint8))
	case []uint16:
		return diffOf(x, b.([]uint16))
	case []uint32:
		return diffOf(x, b.([]uint32))
	case []uint64:
		return diffOf(x, b.([]uint64))
	case []int8:
		return diffOf(x, b.([]int8))
	case []int16:
		return diffOf(x, b.([]int16))
	case []int32:
		return diffOf(x, b.([]int32))
	case []int64:
		return diffOf(x, b.([]int64))
	}
	return -1
}

func diffOf[T comparable](a, b []T) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
