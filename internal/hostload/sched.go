package hostload

import (
	"math"
	"runtime/metrics"
	"slices"
)

// diff is the histogram of what b recorded after a (a nil: all of b). If
// the buckets differ (they do not within one process) b is returned whole.
func diff(a, b *metrics.Float64Histogram) *metrics.Float64Histogram {
	if a == nil || !slices.Equal(a.Buckets, b.Buckets) || len(a.Counts) != len(b.Counts) {
		return b
	}
	d := &metrics.Float64Histogram{Buckets: b.Buckets, Counts: make([]uint64, len(b.Counts))}
	for i := range b.Counts {
		if b.Counts[i] > a.Counts[i] {
			d.Counts[i] = b.Counts[i] - a.Counts[i]
		}
	}
	return d
}

// quantile is the q-quantile (0 < q ≤ 1) of h: the upper bound of the
// bucket holding it (the lower one for the last, unbounded bucket). false:
// h is empty.
func quantile(h *metrics.Float64Histogram, q float64) (float64, bool) {
	if h == nil || len(h.Buckets) != len(h.Counts)+1 {
		return 0, false
	}
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total == 0 {
		return 0, false
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen < rank {
			continue
		}
		if hi := h.Buckets[i+1]; !math.IsInf(hi, 1) {
			return hi, true
		}
		return max(h.Buckets[i], 0), true
	}
	return 0, false
}
