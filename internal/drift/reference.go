package drift

import (
	"math"
	"slices"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ReferenceBins is the number of quantile bins Reference makes.
const ReferenceBins = 10

// Reference returns the reference statistics of one feature's training
// values for drift detection. Bins: a feature with at most ReferenceBins
// distinct values gets one bin per value (edges at the midpoints between
// them); any other feature gets ReferenceBins quantile bins, with duplicate
// edges merged. Bin i holds the values v with edges[i-1] <= v < edges[i];
// the first and last bins are open-ended, so len(bin_fractions) ==
// len(bin_edges)+1. NaN values are left out. vals is not modified.
func Reference(name string, vals []float64) *efpb.FeatureStats {
	fs := &efpb.FeatureStats{Name: name}
	sorted := make([]float64, 0, len(vals))
	for _, v := range vals {
		if !math.IsNaN(v) {
			sorted = append(sorted, v)
		}
	}
	n := len(sorted)
	if n == 0 {
		return fs
	}
	var sum float64
	for _, v := range sorted {
		sum += v
	}
	fs.Mean = sum / float64(n)
	var ss float64
	for _, v := range sorted {
		ss += (v - fs.Mean) * (v - fs.Mean)
	}
	fs.Stddev = math.Sqrt(ss / float64(n))
	slices.Sort(sorted)
	fs.Min, fs.Max = sorted[0], sorted[n-1]

	distinct := slices.Compact(slices.Clone(sorted))
	var edges []float64
	if len(distinct) <= ReferenceBins {
		for i := 1; i < len(distinct); i++ {
			edges = append(edges, (distinct[i-1]+distinct[i])/2)
		}
	} else {
		for q := 1; q < ReferenceBins; q++ {
			e := sorted[q*n/ReferenceBins]
			if len(edges) == 0 || e > edges[len(edges)-1] {
				edges = append(edges, e)
			}
		}
	}
	// Infinite values cannot be edges (sketches need finite ones).
	edges = slices.DeleteFunc(edges, func(e float64) bool { return math.IsInf(e, 0) })
	fs.BinEdges = edges
	counts := make([]int, len(edges)+1)
	for _, v := range sorted {
		counts[Bin(edges, v)]++
	}
	fs.BinFractions = make([]float64, len(counts))
	for i, c := range counts {
		fs.BinFractions[i] = float64(c) / float64(n)
	}
	return fs
}
