package models

import (
	"errors"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The upload's user-supplied files are decoders too: metadata JSON, sample
// inputs (OIP JSON or CSV) and reference data (CSV). Arbitrary bytes must
// never panic, and every refusal must be an api.ErrInvalid (a 400 for the
// user, not a 500).

func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte(`{"description":"fraud","training":{"algorithm":"logreg","seed":"7"},"hardware":["amd64"]}`))
	f.Add([]byte(`{"name":"x"}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := ParseMetadata(data); err != nil && !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("ParseMetadata error %v is not api.ErrInvalid", err)
		}
	})
}

// fuzzInputs are the schemas the sample and reference fuzzers read against:
// one tabular FP32 input, and two inputs with a dynamic first dimension.
var fuzzInputs = [][]*efpb.TensorSpec{
	{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}},
	{{Name: "amount", Datatype: "FP64", Shape: []int64{-1}}, {Name: "kind", Datatype: "INT64", Shape: []int64{-1, 1}}},
}

func FuzzParseSamples(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}`), uint8(0))
	f.Add([]byte(`[{"inputs":[{"name":"amount","datatype":"FP64","shape":[2],"data":[1.5,2]}]}]`), uint8(1))
	f.Add([]byte("a,b,c\n1,2,3\n4,5,6\n"), uint8(0))
	f.Add([]byte("amount,kind\n1.5,2\n"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, schema uint8) {
		inputs := fuzzInputs[int(schema)%len(fuzzInputs)]
		vecs, err := parseSamples(data, "m", inputs)
		if err != nil {
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("parseSamples error %v is not api.ErrInvalid", err)
			}
			return
		}
		if len(vecs) > MaxSampleVectors {
			t.Fatalf("parseSamples made %d vectors, max %d", len(vecs), MaxSampleVectors)
		}
	})
}

func FuzzReferenceStats(f *testing.F) {
	f.Add([]byte("a,b,c,label\n1,2,3,0\n4,5,6,1\n"), uint8(0))
	f.Add([]byte("amount,kind\n1.5,2\nNaN,3\n"), uint8(1))
	f.Add([]byte("1,2,3\n"), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, schema uint8) {
		inputs := fuzzInputs[int(schema)%len(fuzzInputs)]
		stats, _, err := referenceStats(data, inputs)
		if err != nil {
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("referenceStats error %v is not api.ErrInvalid", err)
			}
			return
		}
		for _, s := range stats {
			if len(s.BinFractions) != len(s.BinEdges)+1 && len(s.BinEdges) > 0 {
				t.Fatalf("feature %s: %d fractions for %d edges", s.Name, len(s.BinFractions), len(s.BinEdges))
			}
		}
	})
}
