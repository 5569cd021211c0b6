package hostload

import (
	"encoding/json"
	"math"
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLoadavg(t *testing.T) {
	tests := []struct {
		in   string
		want loadavg
		ok   bool
	}{
		{"0.52 0.58 0.59 3/1234 56789\n", loadavg{load1: 0.52, runnable: 3, total: 1234}, true},
		{"5.10 4.02 2.00 7/412 901", loadavg{load1: 5.1, runnable: 7, total: 412}, true},
		{"", loadavg{}, false},
		{"0.52 0.58 0.59", loadavg{}, false},
		{"x 0.58 0.59 3/1234 1", loadavg{}, false},
		{"0.52 0.58 0.59 31234 1", loadavg{}, false},
		{"0.52 0.58 0.59 3/x 1", loadavg{}, false},
		{"0.52 0.58 0.59 9/3 1", loadavg{}, false},
		{"-1 0.58 0.59 1/3 1", loadavg{}, false},
	}
	for _, tt := range tests {
		got, ok := parseLoadavg(tt.in)
		assert.Equal(t, tt.ok, ok, "parseLoadavg(%q) ok", tt.in)
		assert.Equal(t, tt.want, got, "parseLoadavg(%q) = %+v, want %+v", tt.in, got, tt.want)
	}
}

func TestParsePressure(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want pressure
		ok   bool
	}{
		{"some and full", "some avg10=63.12 avg60=40.00 avg300=12.50 total=987654321\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
			pressure{avg10: 63.12, totalMicros: 987654321}, true},
		{"some only (older kernels)", "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n", pressure{totalMicros: 42}, true},
		{"full first", "full avg10=1.00 avg60=0.00 avg300=0.00 total=5\nsome avg10=2.50 avg60=0.00 avg300=0.00 total=7\n", pressure{avg10: 2.5, totalMicros: 7}, true},
		{"empty (PSI off)", "", pressure{}, false},
		{"no total", "some avg10=1.00 avg60=0.00 avg300=0.00\n", pressure{}, false},
		{"bad avg10", "some avg10=abc avg60=0.00 avg300=0.00 total=1\n", pressure{}, false},
		{"bad total", "some avg10=1.00 avg60=0.00 avg300=0.00 total=-1\n", pressure{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parsePressure(tt.in)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got, "parsePressure(%q) = %+v, want %+v", tt.in, got, tt.want)
		})
	}
}

func hist(buckets []float64, counts ...uint64) *metrics.Float64Histogram {
	return &metrics.Float64Histogram{Buckets: buckets, Counts: counts}
}

func TestSchedQuantileOfDiff(t *testing.T) {
	inf := math.Inf(1)
	b := []float64{math.Inf(-1), 0, 1e-6, 1e-3, 0.01, 0.1, inf}
	tests := []struct {
		name   string
		before *metrics.Float64Histogram
		after  *metrics.Float64Histogram
		want   float64
		ok     bool
	}{
		{"first reading only", nil, hist(b, 0, 0, 100, 0, 0, 0), 1e-3, true},
		// Before the window, everything was fast; during it 2 of 100
		// waits took 10–100ms: p99 is in that bucket.
		{"only the window counts", hist(b, 0, 0, 1000, 0, 0, 0), hist(b, 0, 0, 1098, 0, 2, 0), 0.1, true},
		{"exactly at the rank", hist(b, 0, 0, 0, 0, 0, 0), hist(b, 0, 0, 99, 1, 0, 0), 1e-3, true},
		{"unbounded last bucket: its lower bound", hist(b, 0, 0, 0, 0, 0, 0), hist(b, 0, 0, 0, 0, 0, 5), 0.1, true},
		{"nothing scheduled in the window", hist(b, 0, 0, 7, 0, 0, 0), hist(b, 0, 0, 7, 0, 0, 0), 0, false},
		{"other buckets: the later reading", hist([]float64{0, 1}, 3), hist(b, 0, 0, 0, 4, 0, 0), 0.01, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := quantile(diff(tt.before, tt.after), 0.99)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got, "p99 = %v, want %v", got, tt.want)
		})
	}
}

func TestBetweenOmitsWhatIsMissing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := []float64{0, 0.001, 0.02, math.Inf(1)}
	a := Reading{at: t0, cpu: time.Second, cpuOK: true, sched: hist(b, 10, 0, 0),
		pressure: pressure{avg10: 1, totalMicros: 1_000_000}, pressureOK: true}
	z := Reading{at: t0.Add(10 * time.Second), cpu: 20 * time.Second, cpuOK: true, sched: hist(b, 20, 0, 5),
		loadavg: loadavg{load1: 5.1, runnable: 7, total: 300}, loadavgOK: true,
		pressure: pressure{avg10: 90, totalMicros: 7_300_000}, pressureOK: true}

	l := Between(a, z)
	require.NotNil(t, l.ProcessCPUs)
	assert.InDelta(t, 1.9, *l.ProcessCPUs, 1e-9, "19s of CPU in 10s")
	require.NotNil(t, l.CPUPressure)
	assert.InDelta(t, 63, *l.CPUPressure, 1e-9, "6.3s stalled in 10s, not the last 10s average")
	require.NotNil(t, l.SchedP99Seconds)
	assert.Equal(t, 0.02, *l.SchedP99Seconds)
	cpus := runtime.NumCPU()
	assert.Equal(t, "this process used 1.9 of "+strconv.Itoa(cpus)+" CPUs, load average 5.1 (7 runnable), CPU pressure 63%, goroutine scheduling p99 20ms", l.String())

	// Nothing but the window: each reading is left out, not zero.
	bare := Between(Reading{at: t0}, Reading{at: t0.Add(time.Second)})
	assert.Equal(t, strconv.Itoa(cpus)+" CPUs", bare.String())
	j, err := json.Marshal(bare)
	require.NoError(t, err)
	assert.JSONEq(t, `{"window_seconds": 1, "num_cpu": `+strconv.Itoa(cpus)+`}`, string(j))

	// A short window takes the kernel's 10s average.
	short := Between(a, Reading{at: t0.Add(100 * time.Millisecond), pressure: pressure{avg10: 12, totalMicros: 1_050_000}, pressureOK: true})
	require.NotNil(t, short.CPUPressure)
	assert.Equal(t, 12.0, *short.CPUPressure)
}

// TestReadHere: on Linux every reading but CPU pressure (which the kernel
// may not offer) is available.
func TestReadHere(t *testing.T) {
	a := Read()
	x := 0
	for i := range 1_000_000 {
		x += i
	}
	require.Positive(t, x)
	l := Since(a)
	assert.Positive(t, l.Seconds)
	if runtime.GOOS != "linux" {
		t.Skip("the /proc readings are Linux's")
	}
	require.NotNil(t, l.ProcessCPUs)
	assert.GreaterOrEqual(t, *l.ProcessCPUs, 0.0)
	assert.NotNil(t, l.LoadAverage)
	assert.NotNil(t, l.Runnable)
	t.Logf("load: %s", l)
}
