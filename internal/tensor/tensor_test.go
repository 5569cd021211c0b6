package tensor

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestFP16RoundTripsEveryValue(t *testing.T) {
	for h := range 1 << 16 {
		f := FP16Float(uint16(h))
		got := FP16Bits(f)
		if math.IsNaN(float64(f)) {
			assert.True(t, math.IsNaN(float64(FP16Float(got))), "NaN %#04x", h)
			continue
		}
		if got != uint16(h) {
			t.Fatalf("FP16Bits(FP16Float(%#04x) = %v) = %#04x", h, f, got)
		}
	}
}

func TestBF16RoundTripsEveryValue(t *testing.T) {
	for h := range 1 << 16 {
		f := BF16Float(uint16(h))
		got := BF16Bits(f)
		if math.IsNaN(float64(f)) {
			continue
		}
		if got != uint16(h) {
			t.Fatalf("BF16Bits(BF16Float(%#04x) = %v) = %#04x", h, f, got)
		}
	}
}

func TestHalfRounding(t *testing.T) {
	tests := []struct {
		in       float32
		fp16     float32
		fp16Bits uint16
		bf16     float32
	}{
		{1, 1, 0x3c00, 1},
		{-2, -2, 0xc000, -2},
		{0.1, 0.099975586, 0x2e66, math.Float32frombits(0x3dcd0000)},
		{65504, 65504, 0x7bff, 65536},
		{65520, float32(math.Inf(1)), 0x7c00, 65536}, // halfway to the next step: rounds to even (Inf)
		{1 + 1.0/2048, 1, 0x3c00, 1},                 // a tie rounds to even
		{5.9604645e-08, 5.9604645e-08, 0x0001, 5.9604645e-08},
		{2.9e-08, 0, 0x0000, BF16Float(0x32f9)}, // 2.9e-08 is 0x32f91bad
	}
	for _, tt := range tests {
		assert.Equal(t, tt.fp16Bits, FP16Bits(tt.in), "FP16Bits(%v)", tt.in)
		assert.Equal(t, tt.fp16, RoundFP16(tt.in), "RoundFP16(%v)", tt.in)
		assert.Equal(t, tt.bf16, RoundBF16(tt.in), "RoundBF16(%v)", tt.in)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		t    Tensor
		want string
	}{
		{"fp32 implied", Tensor{Name: "x", Shape: []int64{2}, Data: []float32{1, 2}}, ""},
		{"scalar", Tensor{Name: "x", Datatype: Int64, Data: []int64{7}}, ""},
		{"zero size", Tensor{Name: "x", Datatype: Bytes, Shape: []int64{0, 3}, Data: []string{}}, ""},
		{"wrong go type", Tensor{Name: "x", Datatype: Int32, Shape: []int64{1}, Data: []int64{1}}, "INT32 data must be []int32, not []int64"},
		{"length", Tensor{Name: "x", Shape: []int64{2, 2}, Data: []float32{1}}, "has 1 values, shape [2,2] needs 4"},
		{"unknown", Tensor{Name: "x", Datatype: "FP8", Data: []float32{}}, `unknown datatype "FP8"`},
		{"foreign", Tensor{Name: "x", Data: []complex64{}}, "no tensor datatype"},
		{"inexact half", Tensor{Name: "x", Datatype: FP16, Shape: []int64{1}, Data: []float32{0.1}}, "is not a FP16 value"},
		{"negative dim", Tensor{Name: "x", Shape: []int64{-1}, Data: []float32{}}, "negative dimension"},
	}
	for _, tt := range tests {
		err := tt.t.Check()
		if tt.want == "" {
			assert.NoError(t, err, tt.name)
			continue
		}
		require.Error(t, err, tt.name)
		assert.ErrorIs(t, err, ErrInvalid, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	tensors := []Tensor{
		{Name: "b", Datatype: Bool, Shape: []int64{2}, Data: []bool{true, false}},
		{Name: "u8", Datatype: Uint8, Shape: []int64{2}, Data: []uint8{0, 255}},
		{Name: "u16", Datatype: Uint16, Shape: []int64{1}, Data: []uint16{65535}},
		{Name: "u32", Datatype: Uint32, Shape: []int64{1}, Data: []uint32{1<<32 - 1}},
		{Name: "u64", Datatype: Uint64, Shape: []int64{1}, Data: []uint64{1<<64 - 1}},
		{Name: "i8", Datatype: Int8, Shape: []int64{2}, Data: []int8{-128, 127}},
		{Name: "i16", Datatype: Int16, Shape: []int64{1}, Data: []int16{-32768}},
		{Name: "i32", Datatype: Int32, Shape: []int64{1}, Data: []int32{-1 << 31}},
		{Name: "i64", Datatype: Int64, Shape: []int64{1}, Data: []int64{-1 << 63}},
		{Name: "f16", Datatype: FP16, Shape: []int64{2}, Data: []float32{0.5, 65504}},
		{Name: "bf16", Datatype: BF16, Shape: []int64{1}, Data: []float32{65536}},
		{Name: "f32", Datatype: FP32, Shape: []int64{1, 1}, Data: []float32{0.25}},
		{Name: "f64", Datatype: FP64, Shape: []int64{1}, Data: []float64{1e300}},
		{Name: "s", Datatype: Bytes, Shape: []int64{3}, Data: []string{"", "日本", "\x00\xff"}},
		{Name: "empty", Datatype: Int64, Shape: []int64{0}, Data: []int64{}},
	}
	for _, tt := range tensors {
		p, err := ToProto(&tt)
		require.NoError(t, err, tt.Name)
		if tt.Datatype == FP32 {
			assert.Empty(t, p.Datatype, "FP32 stays in the version 1 form")
		}
		got, err := FromProto(p)
		require.NoError(t, err, tt.Name)
		assert.Nil(t, Compare(&got, &tt, Tolerance{}), "FromProto(ToProto(%s))", tt.Name)
		assert.Equal(t, tt.Datatype, got.Datatype)
	}
}

func TestFromProtoRefuses(t *testing.T) {
	tests := []struct {
		name string
		p    *efpb.Tensor
		want string
	}{
		{"nil", nil, "tensor is empty"},
		{"unknown", &efpb.Tensor{Name: "x", Datatype: "COMPLEX64"}, `unknown datatype "COMPLEX64"`},
		{"wrong field", &efpb.Tensor{Name: "x", Datatype: "INT64", Shape: []int64{1}, Data: []float32{1}},
			`tensor "x" is INT64 but has 1 values in data (want int_data)`},
		{"int8 range", &efpb.Tensor{Name: "x", Datatype: "INT8", Shape: []int64{1}, IntData: []int64{200}}, "element 0 (200) is out of INT8 range"},
		{"uint16 range", &efpb.Tensor{Name: "x", Datatype: "UINT16", Shape: []int64{1}, UintData: []uint64{70000}}, "out of UINT16 range"},
		{"count", &efpb.Tensor{Name: "x", Datatype: "BOOL", Shape: []int64{3}, BoolData: []bool{true}}, "has 1 values, shape [3] needs 3"},
		{"v1 count", &efpb.Tensor{Name: "x", Shape: []int64{2}, Data: []float32{1}}, "has 1 values"},
	}
	for _, tt := range tests {
		_, err := FromProto(tt.p)
		require.Error(t, err, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
	}
	v1, err := FromProto(&efpb.Tensor{Name: "x", Shape: []int64{1}, Data: []float32{2}})
	require.NoError(t, err)
	assert.Equal(t, FP32, v1.Datatype, "no datatype is FP32")
	p, err := ToProto(&v1)
	require.NoError(t, err)
	assert.True(t, proto.Equal(&efpb.Tensor{Name: "x", Shape: []int64{1}, Data: []float32{2}}, p))
}

func TestCompare(t *testing.T) {
	f32 := func(v ...float32) *Tensor { return &Tensor{Name: "y", Shape: []int64{int64(len(v))}, Data: v} }
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	tol := Tolerance{Abs: 0.01, Rel: 0.1}
	tests := []struct {
		name      string
		got, want *Tensor
		tol       Tolerance
		want1     string // "" for a match
	}{
		{"equal", f32(1, 2), f32(1, 2), Tolerance{}, ""},
		{"within abs", f32(1.005), f32(1), Tolerance{Abs: 0.01}, ""},
		{"within rel", f32(108), f32(100), tol, ""},
		{"beyond rel", f32(112), f32(100), tol, `output "y" element 0: got 112, want 100 (tolerance 0.01 + 0.1·|want|)`},
		{"nan matches nan", f32(nan), f32(nan), tol, ""},
		{"nan vs number", f32(nan), f32(1), tol, "got NaN, want 1"},
		{"inf", f32(inf), f32(inf), Tolerance{}, ""},
		{"inf vs big", f32(3e38), f32(inf), Tolerance{Abs: 1e38}, "want +Inf"},
		{"shape", &Tensor{Name: "y", Shape: []int64{1, 2}, Data: []float32{1, 2}}, f32(1, 2), tol, "has shape [1,2], expected [2]"},
		{"datatype", &Tensor{Name: "y", Datatype: Int64, Shape: []int64{1}, Data: []int64{1}}, f32(1), tol, "is INT64, expected FP32"},
		{"ints exact", &Tensor{Name: "y", Shape: []int64{2}, Data: []int64{1, 3}}, &Tensor{Name: "y", Shape: []int64{2}, Data: []int64{1, 2}}, Tolerance{Abs: 5},
			"element 1: got 3, want 2 (INT64 matches exactly)"},
		{"bytes exact", &Tensor{Name: "y", Shape: []int64{1}, Data: []string{"a"}}, &Tensor{Name: "y", Shape: []int64{1}, Data: []string{"b"}}, tol,
			`element 0: got "a", want "b" (BYTES match exactly)`},
		{"bool", &Tensor{Name: "y", Shape: []int64{1}, Data: []bool{true}}, &Tensor{Name: "y", Shape: []int64{1}, Data: []bool{false}}, tol, "got true, want false"},
	}
	for _, tt := range tests {
		m := Compare(tt.got, tt.want, tt.tol)
		if tt.want1 == "" {
			assert.Nil(t, m, "Compare(%s)", tt.name)
			continue
		}
		require.NotNil(t, m, "Compare(%s)", tt.name)
		assert.Contains(t, m.Error(), tt.want1, "Compare(%s)", tt.name)
	}
}

func TestZerosAndFloat64s(t *testing.T) {
	for _, d := range Datatypes() {
		z, err := Zeros("z", d, []int64{2, 3})
		require.NoError(t, err, d)
		require.NoError(t, z.Check(), d)
		assert.Equal(t, 6, z.Len())
		vals, ok := z.Float64s()
		assert.Equal(t, d.IsNumeric(), ok, d)
		if ok {
			assert.Equal(t, make([]float64, 6), vals)
		}
	}
	b := Tensor{Data: []bool{true, false}}
	vals, ok := b.Float64s()
	assert.True(t, ok)
	assert.Equal(t, []float64{1, 0}, vals)
	_, err := Zeros("z", "NOPE", []int64{1})
	assert.Error(t, err)
}
