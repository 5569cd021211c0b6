package soak

import (
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

// readings makes n readings every 3 s with goroutines from f.
func readings(n int, f func(i int, at float64) int) []Resource {
	out := make([]Resource, n)
	for i := range out {
		at := float64(i) * 3
		out[i] = Resource{At: at, HeapLive: 100 << 20, Goroutines: f(i, at), FDs: 30, StoreBytes: 1 << 20}
	}
	return out
}

func trendOf(ts []Trend, name string) Trend {
	for _, t := range ts {
		if t.Name == name {
			return t
		}
	}
	return Trend{}
}

func TestTrendsCatchALeakAndIgnoreOutageDips(t *testing.T) {
	var b Bounds
	b.setDefaults()

	// 3,000 goroutines growing by 50 a minute: over the bound (20, or
	// 0.5% of the mean = 15).
	leak := trends(readings(300, func(_ int, at float64) int { return 3000 + int(at/60*50) }), 60, 0, 100, b)
	g := trendOf(leak, "goroutines")
	assert.InDelta(t, 50, g.SlopePerMin, 1)
	assert.False(t, g.OK, "%s", g)

	// Flat, with every agent's connection goroutines gone for 10 s every
	// minute (outages): the dips do not make a trend.
	dips := trends(readings(300, func(i int, at float64) int {
		if math.Mod(at, 60) < 10 {
			return 1000
		}
		return 3000
	}), 60, 0, 100, b)
	g = trendOf(dips, "goroutines")
	assert.True(t, g.OK, "%s", g)
	assert.InDelta(t, 0, g.SlopePerMin, 1)

	// The window ends at the last fault: a burst of work after it (the
	// fleet converging) is not taken for growth, but inside it would be.
	burst := func(_ int, at float64) int {
		if at > 600 {
			return 3000 + int((at-600)*20)
		}
		return 3000
	}
	g = trendOf(trends(readings(300, burst), 60, 600, 100, b), "goroutines")
	assert.True(t, g.OK, "%s", g)
	g = trendOf(trends(readings(300, burst), 60, 0, 100, b), "goroutines")
	assert.False(t, g.OK, "%s", g)

	// Too few readings, or too short a stretch, are not judged; a negative
	// bound turns a check off.
	few := trends(readings(5, func(_ int, at float64) int { return int(at * 100) }), 0, 0, 100, b)
	assert.True(t, trendOf(few, "goroutines").OK)
	short := trendOf(trends(readings(100, func(_ int, at float64) int { return int(at * 100) }), 0, 0, 100, b), "goroutines")
	assert.True(t, short.OK, "%s", short)
	assert.Contains(t, short.NotJudged, "less than 10m0s")
	b.GoroutineFloor = -1
	off := trends(readings(300, func(_ int, at float64) int { return int(at * 100) }), 0, 0, 100, b)
	assert.True(t, trendOf(off, "goroutines").OK)
	assert.Zero(t, trendOf(off, "goroutines").Bound)
}

// A report judges each invariant: one violation, one unsettled device or
// one missing report fails it.
func TestJudge(t *testing.T) {
	good := func() *Report {
		r := &Report{
			ServedChecks: 10, DesiredStates: 5,
			Convergence:     Convergence{Converged: true},
			TelemetryChecks: []TelemetryCheck{{Why: "final", Acked: 10, Confirmed: 10}},
			Rollouts:        RolloutCounts{Started: 1, Completed: 1},
			Traffic:         sim.TrafficStats{OK: 10},
		}
		for _, k := range FaultKinds {
			r.Faults = append(r.Faults, Fault{Kind: k})
		}
		return r
	}
	r := good()
	r.judge()
	require.True(t, r.Passed, "%+v", r.Failed())

	for name, spoil := range map[string]func(*Report){
		"served-only-assigned":     func(r *Report) { r.ViolationCount = 1 },
		"converged":                func(r *Report) { r.Convergence.Converged = false },
		"no-acked-telemetry-lost":  func(r *Report) { r.TelemetryChecks[0].Missing = 1 },
		"no-acked-telemetry-lost ": func(r *Report) { r.TelemetryChecks[0].Lost = 1 },
		"chaos-injected":           func(r *Report) { r.Faults = r.Faults[1:] },
		"rollouts-end":             func(r *Report) { r.Rollouts.Stuck = []string{"r1"} },
		"no-failed-inference":      func(r *Report) { r.Traffic.Failed = 1 },
		"no-leak-after-stop":       func(r *Report) { r.LeakError = "leak" },
	} {
		r := good()
		spoil(r)
		r.judge()
		assert.False(t, r.Passed, name)
		require.Len(t, r.Failed(), 1, name)
		assert.Equal(t, strings.TrimSpace(name), r.Failed()[0].Name)
	}
	r = good()
	r.TelemetryChecks = nil
	r.judge()
	assert.False(t, r.Passed, "no final telemetry check is a failure, not a pass")
}

func TestChartIsWellFormedSVG(t *testing.T) {
	r := &Report{Agents: 3, Duration: "1m", LastFault: 50, Warmup: 15,
		Faults:        []Fault{{At: 10, Kind: FaultKill, What: "killed <dev-1>"}, {At: 20, Kind: FaultPartition}},
		DeviceSamples: []DeviceSample{{At: 0, Serving: map[string]int{"1.0.0": 3}}, {At: 30, Serving: map[string]int{"1.0.0": 1, "2.0.0": 2}, Updating: 1}},
		Resources:     readings(40, func(i int, _ float64) int { return 100 + i }),
	}
	var b Bounds
	b.setDefaults()
	r.Trends = trends(r.Resources, r.Warmup, 0, r.Agents, b)
	r.judge()
	svg := r.Chart()
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	assert.Contains(t, svg, "serving 2.0.0")
	assert.Contains(t, svg, "killed &lt;dev-1&gt;")
	assert.Contains(t, svg, "slope")
}

func TestParseDrops(t *testing.T) {
	var d Drops
	require.NoError(t, parseDrops(`# HELP edgefleet_broker_subscription_dropped_total x
edgefleet_broker_subscription_dropped_total 3
edgefleet_broker_client_dropped_total 1
edgefleet_mqtt_payloads_dropped_total{kind="telemetry",reason="invalid"} 2
edgefleet_mqtt_payloads_dropped_total{kind="status",reason="decode"} 5
edgefleet_other_total 9
`, &d))
	assert.Equal(t, Drops{BrokerSubscription: 3, BrokerClient: 1, Ingest: 7,
		IngestBy: map[string]uint64{`kind="telemetry",reason="invalid"`: 2, `kind="status",reason="decode"`: 5}}, d)
	assert.Error(t, parseDrops("edgefleet_broker_client_dropped_total x\n", &d))
}

// The heap swings by hundreds of MiB with the work in flight; its trend is
// fitted through the floor under the swings, so a slow leak shows and the
// swings do not.
func TestHeapTrendFollowsTheFloor(t *testing.T) {
	var b Bounds
	b.setDefaults()
	heap := func(leakPerMin float64) []Resource {
		rs := readings(600, func(int, float64) int { return 3000 })
		for i := range rs {
			swing := float64((i*7919)%300) * (1 << 20) // 0..300 MiB, scattered
			rs[i].HeapLive = uint64(500<<20 + swing + leakPerMin*rs[i].At/60)
		}
		return rs
	}
	flat := trendOf(trends(heap(0), 0, 0, 100, b), "heap")
	assert.True(t, flat.OK, "%s", flat)
	assert.Less(t, math.Abs(flat.SlopePerMin), float64(1<<20), "%s", flat)

	leak := trendOf(trends(heap(20<<20), 0, 0, 100, b), "heap")
	assert.False(t, leak.OK, "%s", leak)
	assert.InDelta(t, 20<<20, leak.SlopePerMin, 2<<20, "%s", leak)
}
