// Package tensor holds dense typed tensors with the Open Inference
// Protocol's datatype names (BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16,
// FP32, FP64, BYTES): their Go element slices, half-precision rounding,
// conversion to and from manifest test vectors (efpb.Tensor), and the
// comparison of outputs with a tolerance. It is the one tensor type of the
// serving path. Imported by agent, controlplane/cli, controlplane/data
// (base dataset values), controlplane/models,
// controlplane/retrain, fleet-sim/scenario, fleet-sim/sim (csv traffic),
// internal/infer, internal/modelzoo, internal/oip, internal/onnxmodel and
// internal/transfer.
package tensor

import (
	"fmt"
	"slices"
	"strings"
)

// Datatype is an Open Inference Protocol tensor datatype name.
type Datatype string

// The datatypes edgefleet serves. BF16 is not in the Open Inference
// Protocol's list; Triton and KServe servers use the name for bfloat16.
const (
	Bool   Datatype = "BOOL"
	Uint8  Datatype = "UINT8"
	Uint16 Datatype = "UINT16"
	Uint32 Datatype = "UINT32"
	Uint64 Datatype = "UINT64"
	Int8   Datatype = "INT8"
	Int16  Datatype = "INT16"
	Int32  Datatype = "INT32"
	Int64  Datatype = "INT64"
	FP16   Datatype = "FP16"
	BF16   Datatype = "BF16"
	FP32   Datatype = "FP32"
	FP64   Datatype = "FP64"
	Bytes  Datatype = "BYTES"
)

var all = []Datatype{Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, FP16, BF16, FP32, FP64, Bytes}

// Datatypes returns every datatype, in the order above.
func Datatypes() []Datatype { return slices.Clone(all) }

// Valid reports whether d is one of Datatypes.
func (d Datatype) Valid() bool { return slices.Contains(all, d) }

// Parse returns the datatype named s (exact, upper case), or an error that
// lists the valid names.
func Parse(s string) (Datatype, error) {
	d := Datatype(s)
	if !d.Valid() {
		names := make([]string, len(all))
		for i, x := range all {
			names[i] = string(x)
		}
		return "", fmt.Errorf("datatype %q is not one of %s", s, strings.Join(names, ", "))
	}
	return d, nil
}

// IsFloat reports FP16, BF16, FP32 and FP64: compared with a tolerance.
func (d Datatype) IsFloat() bool { return d == FP16 || d == BF16 || d == FP32 || d == FP64 }

// IsInteger reports the signed and unsigned integer datatypes.
func (d Datatype) IsInteger() bool {
	switch d {
	case Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64:
		return true
	}
	return false
}

// IsNumeric reports every datatype but BYTES (BOOL counts as 0 and 1).
func (d Datatype) IsNumeric() bool { return d.Valid() && d != Bytes }

// Size is the bytes of one element in memory and in the binary tensor
// data extension; 0 for BYTES, whose elements vary.
func (d Datatype) Size() int {
	switch d {
	case Bool, Uint8, Int8:
		return 1
	case Uint16, Int16, FP16, BF16:
		return 2
	case Uint32, Int32, FP32:
		return 4
	case Uint64, Int64, FP64:
		return 8
	}
	return 0
}

// intRange returns the inclusive range of an integer datatype's values as
// int64 (lo, hi) for signed types; unsigned types report lo 0 and their
// maximum in uhi.
func intRange(d Datatype) (lo, hi int64, uhi uint64) {
	switch d {
	case Int8:
		return -1 << 7, 1<<7 - 1, 0
	case Int16:
		return -1 << 15, 1<<15 - 1, 0
	case Int32:
		return -1 << 31, 1<<31 - 1, 0
	case Int64:
		return -1 << 63, 1<<63 - 1, 0
	case Uint8:
		return 0, 0, 1<<8 - 1
	case Uint16:
		return 0, 0, 1<<16 - 1
	case Uint32:
		return 0, 0, 1<<32 - 1
	case Uint64:
		return 0, 0, 1<<64 - 1
	}
	return 0, 0, 0
}

// IntRange returns the smallest and largest value of a signed integer
// datatype; ok is false for other datatypes.
func IntRange(d Datatype) (lo, hi int64, ok bool) {
	switch d {
	case Int8, Int16, Int32, Int64:
		lo, hi, _ = intRange(d)
		return lo, hi, true
	}
	return 0, 0, false
}

// UintMax returns the largest value of an unsigned integer datatype; ok is
// false for other datatypes.
func UintMax(d Datatype) (hi uint64, ok bool) {
	switch d {
	case Uint8, Uint16, Uint32, Uint64:
		_, _, hi = intRange(d)
		return hi, true
	}
	return 0, false
}
