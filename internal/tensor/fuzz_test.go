package tensor

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FuzzFromProto: a manifest's test vectors are decoded with FromProto on
// every agent. No panic; a refusal wraps ErrInvalid; an accepted tensor is
// consistent (Check passes) and converts back to an equal manifest tensor.
func FuzzFromProto(f *testing.F) {
	for _, p := range []*efpb.Tensor{
		{Name: "x", Shape: []int64{1, 2}, Data: []float32{1, 2}},
		{Name: "i", Datatype: "INT8", Shape: []int64{3}, IntData: []int64{-1, 0, 127}},
		{Name: "h", Datatype: "FP16", Shape: []int64{1}, Data: []float32{0.5}},
		{Name: "s", Datatype: "BYTES", Shape: []int64{2}, BytesData: [][]byte{[]byte("a"), nil}},
		{Name: "b", Datatype: "BOOL", Shape: []int64{}, BoolData: []bool{true}},
	} {
		b, err := proto.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &efpb.Tensor{}
		if proto.Unmarshal(data, p) != nil {
			return
		}
		got, err := FromProto(p)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("FromProto error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := got.Check(); err != nil {
			t.Fatalf("FromProto accepted an inconsistent tensor: %v", err)
		}
		back, err := ToProto(&got)
		if err != nil {
			t.Fatalf("ToProto of an accepted tensor: %v", err)
		}
		again, err := FromProto(back)
		if err != nil || again.Len() != got.Len() || again.DT() != got.DT() {
			t.Fatalf("round trip changed the tensor: %v, %v", again, err)
		}
	})
}

// FuzzParseDatatype: every accepted name is a valid datatype.
func FuzzParseDatatype(f *testing.F) {
	for _, s := range []string{"FP32", "fp16", "BYTES", "INT64", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := Parse(s); err == nil && !d.Valid() {
			t.Fatalf("Parse(%q) = %q, not a valid datatype", s, d)
		}
	})
}
