package soak

import (
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"syscall"
	"time"
)

// Resource is one reading of the process (control plane, broker and every
// agent share it) and of the control plane's store.
type Resource struct {
	At float64 `json:"at_s"` // seconds since the soak started
	// HeapLive is the heap live after the last GC (runtime/metrics
	// /gc/heap/live:bytes): what a leak grows, without the garbage
	// between collections.
	HeapLive   uint64 `json:"heap_live_bytes"`
	Goroutines int    `json:"goroutines"`
	FDs        int    `json:"fds"`
	// StoreBytes is the disk the control plane's data directory uses
	// (allocated blocks: badger's value log is sparse).
	StoreBytes int64 `json:"store_bytes"`
}

// readResource samples the process and the store in cpDir.
func readResource(at float64, cpDir string) Resource {
	r := Resource{At: at, Goroutines: runtime.NumGoroutine(), FDs: countFDs(), StoreBytes: diskUsage(cpDir)}
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		r.HeapLive = s[0].Value.Uint64()
	}
	return r
}

// countFDs counts the process's open file descriptors (-1 where
// /proc/self/fd is not there).
func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // the directory being read
}

// diskUsage sums the allocated size of the files under dir.
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // a file removed meanwhile (compaction) is skipped
		}
		info, err := d.Info()
		if err != nil {
			return nil // same
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += info.Size()
		}
		return nil
	})
	return n
}

// Trend is a least-squares line through one resource's readings after the
// warm-up.
type Trend struct {
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Samples is how many readings the fit used; First and Last their
	// values, Mean their mean, Max the highest.
	Samples int     `json:"samples"`
	First   float64 `json:"first"`
	Last    float64 `json:"last"`
	Mean    float64 `json:"mean"`
	Max     float64 `json:"max"`
	// SlopePerMin is the fitted growth per minute; Bound the highest
	// allowed (0: not enforced).
	SlopePerMin float64 `json:"slope_per_min"`
	// Intercept is the fitted value at 0 s (the chart draws the line).
	Intercept float64 `json:"intercept"`
	Bound     float64 `json:"bound_per_min"`
	OK        bool    `json:"ok"`
	// NotJudged says why the trend was reported but not judged.
	NotJudged string `json:"not_judged,omitempty"`
}

func (t Trend) String() string {
	verdict := "ok"
	switch {
	case t.NotJudged != "":
		verdict = "not judged: " + t.NotJudged
	case t.Bound == 0:
		verdict = "not enforced"
	case !t.OK:
		verdict = "OVER THE BOUND"
	}
	return fmt.Sprintf("%-10s slope %+.3g %s/min (bound %.3g), mean %.4g, first %.4g, last %.4g, max %.4g over %d samples: %s",
		t.Name, t.SlopePerMin, t.Unit, t.Bound, t.Mean, t.First, t.Last, t.Max, t.Samples, verdict)
}

// fitTrend fits a line through (x seconds, y) and returns its slope per
// minute: the Theil–Sen estimate, the median of the slopes between every
// pair of readings, which the dips of an outage (every agent's connection
// goroutines gone for seconds) do not tilt the way they tilt least squares.
func fitTrend(name, unit string, xs, ys []float64) Trend {
	t := Trend{Name: name, Unit: unit, Samples: len(xs), OK: true}
	if len(xs) == 0 {
		return t
	}
	t.First, t.Last = ys[0], ys[len(ys)-1]
	var sy float64
	t.Max = math.Inf(-1)
	for i := range xs {
		sy += ys[i]
		t.Max = math.Max(t.Max, ys[i])
	}
	t.Mean = sy / float64(len(xs))
	slope := theilSen(xs, ys)
	t.SlopePerMin = slope * 60
	rest := make([]float64, len(xs))
	for i := range xs {
		rest[i] = ys[i] - slope*xs[i]
	}
	t.Intercept = median(rest)
	return t
}

// Bounds are the highest resource growth a soak accepts after its
// warm-up, per minute: the larger of an absolute floor and a fraction of
// the resource's mean after warm-up (a fleet of 1,000 agents has a
// bigger heap than one of 20, and noise scales with it). Zero fields take
// the defaults below; a negative field turns that check off.
type Bounds struct {
	HeapFloor       float64 // bytes/min; default 4 MiB
	HeapFraction    float64 // of the mean, per min; default 0.01
	GoroutineFloor  float64 // per min; default 20
	GoroutineFrac   float64 // default 0.005
	FDFloor         float64 // per min; default 2
	FDFraction      float64 // default 0.01
	StorePerAgent   float64 // bytes per agent per min; default 16 KiB
	StoreFloor      float64 // bytes/min; default 4 MiB
	DisableResource bool    // report the trends, enforce none
	// MinWindow is the shortest stretch after the warm-up a trend is
	// judged on; default 10 minutes. Over a shorter one the swings of the
	// work in flight (hundreds of MiB of heap, a rollout's records in the
	// store) outweigh any leak, so a short soak reports its trends only.
	MinWindow time.Duration
}

// The default bounds (docs/testing.md explains them).
const (
	DefaultHeapFloor      = 4 << 20
	DefaultHeapFraction   = 0.01
	DefaultGoroutineFloor = 20
	DefaultGoroutineFrac  = 0.005
	DefaultFDFloor        = 2
	DefaultFDFraction     = 0.01
	DefaultStorePerAgent  = 16 << 10
	DefaultStoreFloor     = 4 << 20
	DefaultMinWindow      = 10 * time.Minute
)

func (b *Bounds) setDefaults() {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&b.HeapFloor, DefaultHeapFloor)
	def(&b.HeapFraction, DefaultHeapFraction)
	def(&b.GoroutineFloor, DefaultGoroutineFloor)
	def(&b.GoroutineFrac, DefaultGoroutineFrac)
	def(&b.FDFloor, DefaultFDFloor)
	def(&b.FDFraction, DefaultFDFraction)
	def(&b.StorePerAgent, DefaultStorePerAgent)
	def(&b.StoreFloor, DefaultStoreFloor)
	if b.MinWindow == 0 {
		b.MinWindow = DefaultMinWindow
	}
}

// trends fits every resource from warmup to end seconds (end 0: to the
// last reading) and judges each against the bounds. The soak ends the
// window at its last fault: up to there the load is the same all along;
// after it the fleet converges and drains, a burst of work a trend would
// take for growth (a 1,000-agent run's heap floors rose 2.1 MiB a minute
// in the chaos and 10.6 with the convergence that followed counted in).
func trends(rs []Resource, warmup, end float64, agents int, b Bounds) []Trend {
	var xs, heap, gor, fds, st []float64
	for _, r := range rs {
		if r.At < warmup || (end > 0 && r.At > end) {
			continue
		}
		xs = append(xs, r.At)
		heap = append(heap, float64(r.HeapLive))
		gor = append(gor, float64(r.Goroutines))
		fds = append(fds, float64(r.FDs))
		st = append(st, float64(r.StoreBytes))
	}
	hx, hy := floors(xs, heap, trendWindows)
	out := []Trend{
		fitTrend("heap", "bytes", hx, hy),
		fitTrend("goroutines", "", xs, gor),
		fitTrend("fds", "", xs, fds),
		fitTrend("store", "bytes", xs, st),
	}
	bound := func(floor, frac, mean float64) float64 {
		if floor < 0 || frac < 0 {
			return 0
		}
		return math.Max(floor, frac*mean)
	}
	out[0].Bound = bound(b.HeapFloor, b.HeapFraction, out[0].Mean)
	out[1].Bound = bound(b.GoroutineFloor, b.GoroutineFrac, out[1].Mean)
	out[2].Bound = bound(b.FDFloor, b.FDFraction, out[2].Mean)
	if b.StoreFloor >= 0 && b.StorePerAgent >= 0 {
		out[3].Bound = math.Max(b.StoreFloor, b.StorePerAgent*float64(agents))
	}
	short := ""
	if len(xs) > 0 {
		if span := time.Duration((xs[len(xs)-1] - xs[0]) * float64(time.Second)); span < b.MinWindow {
			short = fmt.Sprintf("%v after the warm-up, less than %v", span.Round(time.Second), b.MinWindow)
		}
	}
	for i := range out {
		if b.DisableResource {
			out[i].Bound = 0
		}
		if short != "" && out[i].Bound != 0 {
			out[i].NotJudged = short
			continue
		}
		// Too few readings to fit a line say nothing: not judged.
		out[i].OK = out[i].Bound == 0 || out[i].Samples < minTrendSamples || out[i].SlopePerMin <= out[i].Bound
	}
	return out
}

// minTrendSamples is the fewest readings (floors for the heap) a trend is
// judged on.
const minTrendSamples = 10

// maxPairs bounds the pairs theilSen looks at: beyond it, readings are
// strided (a long soak at a short interval has thousands).
const maxPairs = 1 << 20

// theilSen is the median of the pairwise slopes (y per x unit).
func theilSen(xs, ys []float64) float64 {
	step := 1
	for n := len(xs) / step; n*(n-1)/2 > maxPairs; n = len(xs) / step {
		step++
	}
	var slopes []float64
	for i := 0; i < len(xs); i += step {
		for j := i + step; j < len(xs); j += step {
			if dx := xs[j] - xs[i]; dx > 0 {
				slopes = append(slopes, (ys[j]-ys[i])/dx)
			}
		}
	}
	if len(slopes) == 0 {
		return 0
	}
	return median(slopes)
}

// median sorts vs and returns its median.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	slices.Sort(vs)
	m := len(vs) / 2
	if len(vs)%2 == 0 {
		return (vs[m-1] + vs[m]) / 2
	}
	return vs[m]
}

// trendWindows is how many windows the heap readings are cut into.
const trendWindows = 15

// floors cuts the readings into n windows of equal time and keeps the
// lowest reading of each (at its time). The live heap swings by hundreds
// of megabytes with the downloads and rollouts in flight; a leak raises
// the floor under the swings, so the heap's trend is fitted through the
// floors.
func floors(xs, ys []float64, n int) (fx, fy []float64) {
	if len(xs) < 2*n {
		return xs, ys
	}
	span := (xs[len(xs)-1] - xs[0]) / float64(n)
	for w := range n {
		lo, hi := xs[0]+span*float64(w), xs[0]+span*float64(w+1)
		best := -1
		for i, x := range xs {
			if x >= lo && (x < hi || w == n-1) && (best < 0 || ys[i] < ys[best]) {
				best = i
			}
		}
		if best >= 0 {
			fx, fy = append(fx, xs[best]), append(fy, ys[best])
		}
	}
	return fx, fy
}
