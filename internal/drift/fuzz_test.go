package drift

import (
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FuzzFromStats: reference statistics come from a signed manifest, but
// they are still bytes an agent decodes and builds sketches from. No
// panic; an accepted reference gives a sketch that takes any value and
// whose distances to the reference are finite.
func FuzzFromStats(f *testing.F) {
	for _, fs := range []*efpb.FeatureStats{
		{Name: "amount", BinEdges: []float64{10, 100}, BinFractions: []float64{0.25, 0.5, 0.25}},
		{Name: "x", BinEdges: []float64{0}, BinFractions: []float64{1, 0}},
		{Name: "nan", BinEdges: []float64{math.NaN()}, BinFractions: []float64{0.5, 0.5}},
	} {
		b, err := proto.Marshal(fs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, 3.5)
	}
	f.Fuzz(func(t *testing.T, data []byte, v float64) {
		fs := &efpb.FeatureStats{}
		if proto.Unmarshal(data, fs) != nil {
			return
		}
		s, err := FromStats(fs)
		if err != nil {
			return
		}
		s.Add(v)
		ref, err := ReferenceFractions(fs)
		if err != nil {
			t.Fatalf("FromStats accepted what ReferenceFractions refuses: %v", err)
		}
		live := Fractions(s.Counts())
		if psi := PSI(ref, live); math.IsNaN(psi) || math.IsInf(psi, 0) {
			t.Fatalf("PSI = %v for an accepted reference %v", psi, fs)
		}
		if ks := KS(ref, live); !(ks >= 0 && ks <= 1+1e-9) {
			t.Fatalf("KS = %v for an accepted reference %v", ks, fs)
		}
	})
}
