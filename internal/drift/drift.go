// Package drift provides small, mergeable fixed-bin sketches and the
// distances that compare a live distribution with a reference one: the
// population stability index (PSI) and a Kolmogorov–Smirnov-style distance.
// Imported by agent (which fills sketches per inference),
// controlplane/monitor (which merges them), controlplane/models and
// internal/fraud (reference statistics), and fleet-sim/bench (real reports
// for its load generator).
package drift

import (
	"errors"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Epsilon replaces an empty bin's fraction in PSI, which is otherwise
// infinite when a bin is empty on one side only.
const Epsilon = 1e-4

// MaxBins bounds the bins of one sketch (a manifest or report declaring
// more is refused).
const MaxBins = 1024

// ErrMismatch is wrapped when two sketches or a sketch and counts do not
// have the same bins.
var ErrMismatch = errors.New("drift: bins do not match")

// Sketch counts values into fixed bins. Bin i holds the values v with
// edges[i-1] <= v < edges[i]; the first and last bins are open-ended, so a
// sketch has len(edges)+1 bins (the convention of efpb.FeatureStats).
// NaN values are counted apart and belong to no bin. A Sketch is not safe
// for concurrent use; Add does not allocate.
type Sketch struct {
	edges  []float64 // shared, never modified
	counts []uint64
	total  uint64
	nan    uint64
}

// NewSketch returns an empty sketch over edges, which must be finite and
// strictly increasing (none is one bin). The sketch keeps edges; the
// caller must not modify them.
func NewSketch(edges []float64) (*Sketch, error) {
	if len(edges)+1 > MaxBins {
		return nil, fmt.Errorf("drift: %d bins, at most %d", len(edges)+1, MaxBins)
	}
	for i, e := range edges {
		if math.IsNaN(e) || math.IsInf(e, 0) {
			return nil, fmt.Errorf("drift: bin edge %d is %v, not a finite number", i, e)
		}
		if i > 0 && e <= edges[i-1] {
			return nil, fmt.Errorf("drift: bin edges not strictly increasing at %d (%v after %v)", i, e, edges[i-1])
		}
	}
	return &Sketch{edges: edges, counts: make([]uint64, len(edges)+1)}, nil
}

// ReferenceFractions checks fs and returns its bin fractions, the
// distribution a live sketch over fs.BinEdges is compared with.
func ReferenceFractions(fs *efpb.FeatureStats) ([]float64, error) {
	fr := fs.GetBinFractions()
	if len(fr) != len(fs.GetBinEdges())+1 {
		return nil, fmt.Errorf("drift: feature %q has %d bin fractions for %d edges, want %d",
			fs.GetName(), len(fr), len(fs.GetBinEdges()), len(fs.GetBinEdges())+1)
	}
	var sum float64
	for i, f := range fr {
		if !(f >= 0 && f <= 1) {
			return nil, fmt.Errorf("drift: feature %q bin fraction %d is %v, not in [0, 1]", fs.GetName(), i, f)
		}
		sum += f
	}
	if math.Abs(sum-1) > 1e-6 {
		return nil, fmt.Errorf("drift: feature %q bin fractions sum to %v, not 1", fs.GetName(), sum)
	}
	return fr, nil
}

// FromStats returns an empty sketch over the bins of a manifest's reference
// statistics, after checking them.
func FromStats(fs *efpb.FeatureStats) (*Sketch, error) {
	if _, err := ReferenceFractions(fs); err != nil {
		return nil, err
	}
	s, err := NewSketch(fs.GetBinEdges())
	if err != nil {
		return nil, fmt.Errorf("feature %q: %w", fs.GetName(), err)
	}
	return s, nil
}

// Bin returns the bin of v: the number of edges e with e <= v.
func Bin(edges []float64, v float64) int {
	if len(edges) <= 16 {
		// A short scan beats binary search's unpredictable branches.
		i := 0
		for i < len(edges) && edges[i] <= v {
			i++
		}
		return i
	}
	lo, hi := 0, len(edges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if edges[m] <= v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Add counts v.
func (s *Sketch) Add(v float64) {
	if v != v { // NaN
		s.nan++
		return
	}
	s.counts[Bin(s.edges, v)]++
	s.total++
}

// Edges returns the sketch's interior bin edges (shared; do not modify).
func (s *Sketch) Edges() []float64 { return s.edges }

// Counts returns the count per bin (shared; copy to keep).
func (s *Sketch) Counts() []uint64 { return s.counts }

// Total is the number of values counted into bins.
func (s *Sketch) Total() uint64 { return s.total }

// NaN is the number of NaN values seen.
func (s *Sketch) NaN() uint64 { return s.nan }

// Merge adds o's counts to s; both must have the same edges.
func (s *Sketch) Merge(o *Sketch) error {
	if len(o.edges) != len(s.edges) {
		return fmt.Errorf("%w: %d bins and %d bins", ErrMismatch, len(s.counts), len(o.counts))
	}
	for i, e := range o.edges {
		if e != s.edges[i] {
			return fmt.Errorf("%w: edge %d is %v and %v", ErrMismatch, i, s.edges[i], e)
		}
	}
	s.nan += o.nan
	return s.MergeCounts(o.counts)
}

// MergeCounts adds per-bin counts (e.g. from a device report) to s.
func (s *Sketch) MergeCounts(counts []uint64) error {
	if len(counts) != len(s.counts) {
		return fmt.Errorf("%w: %d counts for %d bins", ErrMismatch, len(counts), len(s.counts))
	}
	for i, c := range counts {
		s.counts[i] += c
		s.total += c
	}
	return nil
}

// Reset empties the sketch, keeping its bins.
func (s *Sketch) Reset() {
	clear(s.counts)
	s.total, s.nan = 0, 0
}

// Clone returns an independent copy of s.
func (s *Sketch) Clone() *Sketch {
	c := *s
	c.counts = append([]uint64(nil), s.counts...)
	return &c
}

// Fractions returns the share of values per bin (all zero when empty).
func (s *Sketch) Fractions() []float64 { return Fractions(s.counts) }

// Fractions turns per-bin counts into shares of their total.
func Fractions(counts []uint64) []float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	out := make([]float64, len(counts))
	if total == 0 {
		return out
	}
	for i, c := range counts {
		out[i] = float64(c) / float64(total)
	}
	return out
}

// PSI is the population stability index of live against ref (both bin
// fractions over the same bins): Σ (live−ref)·ln(live/ref), with empty
// bins counted as Epsilon. Common reading: < 0.1 stable, 0.1–0.25 a
// moderate shift, > 0.25 a significant shift. Mismatched lengths give NaN.
func PSI(ref, live []float64) float64 {
	if len(ref) != len(live) || len(ref) == 0 {
		return math.NaN()
	}
	var psi float64
	for i := range ref {
		r, l := max(ref[i], Epsilon), max(live[i], Epsilon)
		psi += (l - r) * math.Log(l/r)
	}
	return psi
}

// KS is the largest difference between the cumulative distributions of
// ref and live evaluated at the bin edges: a binned Kolmogorov–Smirnov
// statistic in [0, 1]. Mismatched lengths give NaN.
func KS(ref, live []float64) float64 {
	if len(ref) != len(live) || len(ref) == 0 {
		return math.NaN()
	}
	var cr, cl, d float64
	for i := range ref {
		cr += ref[i]
		cl += live[i]
		d = max(d, math.Abs(cr-cl))
	}
	return d
}

// UniformEdges returns the n-1 interior edges of n equal bins on [lo, hi],
// e.g. UniformEdges(10, 0, 1) for a prediction sketch of probabilities.
func UniformEdges(n int, lo, hi float64) []float64 {
	if n < 2 {
		return nil
	}
	out := make([]float64, n-1)
	for i := range out {
		out[i] = lo + (hi-lo)*float64(i+1)/float64(n)
	}
	return out
}

// PredictionBins is the number of bins of a prediction sketch on [0, 1].
const PredictionBins = 10

// PredictionEdges are the edges of the prediction sketch: PredictionBins
// equal bins on [0, 1]. A new slice on every call.
func PredictionEdges() []float64 { return UniformEdges(PredictionBins, 0, 1) }

// LatencyEdgesMicros are the latency histogram bucket edges in
// microseconds (50 µs .. 5 s, roughly ×2–2.5 apart). A new slice on every
// call.
func LatencyEdgesMicros() []float64 {
	return []float64{50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000,
		100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000}
}

// Quantile estimates the q-quantile (0 <= q <= 1) of the values counted
// over edges by linear interpolation inside the bin that holds it. The
// open first and last bins are reported as their finite edge. It returns
// NaN for an empty histogram or a count/edge mismatch.
func Quantile(edges []float64, counts []uint64, q float64) float64 {
	if len(counts) != len(edges)+1 || len(edges) == 0 {
		return math.NaN()
	}
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return math.NaN()
	}
	q = min(max(q, 0), 1)
	rank := q * float64(total)
	var cum float64
	for i, c := range counts {
		next := cum + float64(c)
		if c > 0 && next >= rank {
			switch {
			case i == 0:
				return edges[0]
			case i == len(edges):
				return edges[len(edges)-1]
			}
			lo, hi := edges[i-1], edges[i]
			return lo + (hi-lo)*(rank-cum)/float64(c)
		}
		cum = next
	}
	return edges[len(edges)-1]
}
