package drift

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

func phi(x float64) float64    { return 0.5 * (1 + math.Erf(x/math.Sqrt2)) }
func phiInv(p float64) float64 { return math.Sqrt2 * math.Erfinv(2*p-1) }
func normalDecileEdges() []float64 {
	e := make([]float64, 9)
	for i := range e {
		e[i] = phiInv(float64(i+1) / 10)
	}
	return e
}

// normalStats is the reference of a standard normal feature in decile bins.
func normalStats() *efpb.FeatureStats {
	fr := make([]float64, 10)
	for i := range fr {
		fr[i] = 0.1
	}
	return &efpb.FeatureStats{Name: "x", Stddev: 1, BinEdges: normalDecileEdges(), BinFractions: fr}
}

func TestBin(t *testing.T) {
	edges := []float64{1, 2, 3}
	for _, tc := range []struct {
		v    float64
		want int
	}{{-5, 0}, {0.999, 0}, {1, 1}, {1.5, 1}, {2, 2}, {3, 3}, {1e9, 3}, {math.Inf(-1), 0}, {math.Inf(1), 3}} {
		assert.Equal(t, tc.want, Bin(edges, tc.v), "Bin(%v)", tc.v)
	}
	assert.Equal(t, 0, Bin(nil, 42))
}

func TestPSIAndKSKnownValues(t *testing.T) {
	ref := []float64{0.25, 0.25, 0.25, 0.25}
	live := Fractions([]uint64{10, 20, 30, 40})
	// Computed by hand: Σ (l−r)·ln(l/r) over the four bins.
	wantPSI := -0.15*math.Log(0.4) - 0.05*math.Log(0.8) + 0.05*math.Log(1.2) + 0.15*math.Log(1.6)
	assert.InDelta(t, 0.228218, wantPSI, 1e-6)
	assert.InDelta(t, wantPSI, PSI(ref, live), 1e-12)
	// CDFs .25 .5 .75 1 vs .1 .3 .6 1.
	assert.InDelta(t, 0.2, KS(ref, live), 1e-12)

	assert.InDelta(t, 0, PSI(ref, ref), 1e-15)
	assert.InDelta(t, 0, KS(ref, ref), 1e-15)
	assert.True(t, math.IsNaN(PSI(ref, live[:3])))
	assert.True(t, math.IsNaN(KS(nil, nil)))

	// An empty live bin is Epsilon, not infinity.
	p := PSI([]float64{0.5, 0.5}, []float64{1, 0})
	want := (1-0.5)*math.Log(1/0.5) + (Epsilon-0.5)*math.Log(Epsilon/0.5)
	assert.InDelta(t, want, p, 1e-12)
	assert.False(t, math.IsInf(p, 0))
}

// TestShiftedNormal compares a sketch of samples with the PSI and KS
// computed analytically from the normal CDF.
func TestShiftedNormal(t *testing.T) {
	fs := normalStats()
	ref, err := ReferenceFractions(fs)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 200_000
	for _, tc := range []struct {
		shift   float64
		drifted bool
	}{{0, false}, {0.1, false}, {0.5, true}, {1, true}} {
		s, err := FromStats(fs)
		require.NoError(t, err)
		for range n {
			s.Add(rng.NormFloat64() + tc.shift)
		}
		require.EqualValues(t, n, s.Total())
		// Analytic live fractions of N(shift, 1) in the decile bins.
		edges := fs.BinEdges
		want := make([]float64, len(edges)+1)
		prev := 0.0
		for i := range want {
			c := 1.0
			if i < len(edges) {
				c = phi(edges[i] - tc.shift)
			}
			want[i], prev = c-prev, c
		}
		wantPSI, wantKS := PSI(ref, want), KS(ref, want)
		gotPSI, gotKS := PSI(ref, s.Fractions()), KS(ref, s.Fractions())
		assert.InDelta(t, wantPSI, gotPSI, 0.003+0.03*wantPSI, "PSI at shift %v", tc.shift)
		assert.InDelta(t, wantKS, gotKS, 0.005, "KS at shift %v", tc.shift)
		// KS of a location shift d is 2Φ(d/2)−1 at the median edge.
		assert.InDelta(t, 2*phi(tc.shift/2)-1, wantKS, 0.01)
		assert.Equal(t, tc.drifted, gotPSI > 0.1, "PSI %v at shift %v", gotPSI, tc.shift)
	}
}

func TestMergeResetClone(t *testing.T) {
	a, err := NewSketch([]float64{0, 1})
	require.NoError(t, err)
	b, err := NewSketch([]float64{0, 1})
	require.NoError(t, err)
	for _, v := range []float64{-1, 0.5, 2, 2} {
		a.Add(v)
	}
	b.Add(0.5)
	b.Add(math.NaN())
	require.NoError(t, a.Merge(b))
	assert.Equal(t, []uint64{1, 2, 2}, a.Counts())
	assert.EqualValues(t, 5, a.Total())
	assert.EqualValues(t, 1, a.NaN())
	assert.Equal(t, []float64{0.2, 0.4, 0.4}, a.Fractions())

	c := a.Clone()
	a.Reset()
	assert.Equal(t, []uint64{0, 0, 0}, a.Counts())
	assert.Zero(t, a.Total())
	assert.Equal(t, []uint64{1, 2, 2}, c.Counts(), "clone is independent")
	assert.Equal(t, []float64{0, 0, 0}, a.Fractions())

	other, err := NewSketch([]float64{0, 2})
	require.NoError(t, err)
	assert.ErrorIs(t, a.Merge(other), ErrMismatch)
	assert.ErrorIs(t, a.MergeCounts([]uint64{1}), ErrMismatch)
}

func TestBadBins(t *testing.T) {
	for name, edges := range map[string][]float64{
		"decreasing": {1, 0},
		"equal":      {1, 1},
		"nan":        {math.NaN()},
		"inf":        {0, math.Inf(1)},
		"too many":   make([]float64, MaxBins),
	} {
		_, err := NewSketch(edges)
		assert.Error(t, err, name)
	}
	for name, fs := range map[string]*efpb.FeatureStats{
		"count":    {Name: "f", BinEdges: []float64{1}, BinFractions: []float64{1}},
		"sum":      {Name: "f", BinEdges: []float64{1}, BinFractions: []float64{0.5, 0.6}},
		"negative": {Name: "f", BinEdges: []float64{1}, BinFractions: []float64{-0.5, 1.5}},
		"nan":      {Name: "f", BinEdges: []float64{1}, BinFractions: []float64{math.NaN(), 1}},
	} {
		_, err := FromStats(fs)
		assert.ErrorContains(t, err, `feature "f"`, name)
	}
}

func TestQuantile(t *testing.T) {
	edges := []float64{10, 20, 30}
	counts := []uint64{0, 10, 10, 0}
	assert.InDelta(t, 20, Quantile(edges, counts, 0.5), 1e-9)
	assert.InDelta(t, 15, Quantile(edges, counts, 0.25), 1e-9)
	assert.InDelta(t, 29, Quantile(edges, counts, 0.95), 1e-9)
	assert.InDelta(t, 30, Quantile(edges, []uint64{0, 0, 0, 5}, 0.99), 1e-9)
	assert.InDelta(t, 10, Quantile(edges, []uint64{5, 0, 0, 0}, 0.5), 1e-9)
	assert.True(t, math.IsNaN(Quantile(edges, []uint64{0, 0, 0, 0}, 0.5)))
	assert.True(t, math.IsNaN(Quantile(edges, []uint64{1}, 0.5)))
}

func TestUniformEdges(t *testing.T) {
	assert.InDeltaSlice(t, []float64{0.25, 0.5, 0.75}, UniformEdges(4, 0, 1), 1e-12)
	assert.Len(t, PredictionEdges(), PredictionBins-1)
	_, err := NewSketch(LatencyEdgesMicros())
	assert.NoError(t, err)
}

func TestAddDoesNotAllocate(t *testing.T) {
	s, err := FromStats(normalStats())
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(100, func() { s.Add(0.3) })
	assert.Zero(t, allocs)
}

func TestBinLongEdgesAgreesWithScan(t *testing.T) {
	edges := UniformEdges(100, 0, 1)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		v := rng.Float64()*1.2 - 0.1
		want := 0
		for _, e := range edges {
			if e <= v {
				want++
			}
		}
		require.Equal(t, want, Bin(edges, v), "Bin(%v)", v)
	}
}
