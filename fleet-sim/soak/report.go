package soak

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

// Report is what a soak found. Times in it are seconds since the chaos
// started (the initial deployment comes before).
type Report struct {
	Agents   int    `json:"agents"`
	Sites    int    `json:"sites"`
	Duration string `json:"chaos_duration"`
	Seed     uint64 `json:"seed"`
	// Heartbeat is the agents' telemetry interval; AgentStore "memory"
	// or "disk" (Options.AgentStoreOnDisk).
	Heartbeat  string    `json:"heartbeat"`
	AgentStore string    `json:"agent_store"`
	Started    time.Time `json:"started"`
	Ended      time.Time `json:"ended"`
	Bounds     Bounds    `json:"bounds"`
	// LastFault is when the chaos phase ended; Warmup when the resource
	// trends begin.
	LastFault float64 `json:"last_fault_s"`
	Warmup    float64 `json:"warmup_s"`

	Passed     bool        `json:"passed"`
	Invariants []Invariant `json:"invariants"`

	Faults []Fault `json:"faults"`
	// FaultsSkipped counts planned faults skipped because the schedule ran
	// late past the end of the chaos.
	FaultsSkipped int           `json:"faults_skipped"`
	Rollouts      RolloutCounts `json:"rollouts"`

	// ServedChecks is how many inference answers were checked against the
	// devices' histories; DesiredStates how many desired states the wire
	// carried to devices.
	ServedChecks       uint64      `json:"served_checks"`
	DesiredStates      uint64      `json:"desired_states_seen"`
	DesiredUndecodable uint64      `json:"desired_states_undecodable"`
	ViolationCount     uint64      `json:"violations"`
	Violations         []Violation `json:"violation_examples,omitempty"`

	Convergence     Convergence      `json:"convergence"`
	Drain           Drain            `json:"drain"`
	TelemetryChecks []TelemetryCheck `json:"telemetry_checks"`
	Drops           Drops            `json:"control_plane_drops"`
	Traffic         sim.TrafficStats `json:"traffic"`
	Trends          []Trend          `json:"trends"`
	Leak            sim.LeakReport   `json:"leak"`
	LeakError       string           `json:"leak_error,omitempty"`
	HarnessErrors   []string         `json:"harness_errors,omitempty"`

	DeviceSamples []DeviceSample `json:"device_samples"`
	Resources     []Resource     `json:"resources"`
}

// Invariant is one judged property.
type Invariant struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// judge sets Invariants and Passed.
func (r *Report) judge() {
	add := func(name string, ok bool, format string, args ...any) {
		r.Invariants = append(r.Invariants, Invariant{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	ex := ""
	if len(r.Violations) > 0 {
		v := r.Violations[0]
		ex = fmt.Sprintf("; first: %s served %s at %.1fs (%s)", v.Device, v.Version, v.At, v.How)
	}
	add("served-only-assigned", r.ViolationCount == 0 && r.DesiredUndecodable == 0 && r.ServedChecks > 0,
		"%d violations in %d inference answers and every device sample, against %d desired states seen (%d undecodable)%s",
		r.ViolationCount, r.ServedChecks, r.DesiredStates, r.DesiredUndecodable, ex)

	c := r.Convergence
	detail := fmt.Sprintf("every device settled %.1fs after the last fault: %v", c.Seconds, c.Versions)
	if !c.Converged {
		detail = fmt.Sprintf("%s; unsettled: %s", c.Error, strings.Join(c.Unsettled, "; "))
	}
	add("converged", c.Converged, "%s", detail)

	var final *TelemetryCheck
	for i := range r.TelemetryChecks {
		if r.TelemetryChecks[i].Why == "final" {
			final = &r.TelemetryChecks[i]
		}
	}
	if final == nil {
		add("no-acked-telemetry-lost", false, "the final check did not run (see harness errors)")
	} else {
		add("no-acked-telemetry-lost", final.Missing == 0 && final.Lost == 0 && final.Confirmed > 0 && r.Drain.Dropped == 0,
			"%d reports acknowledged by the broker: %d found in the control plane's persisted seqs, %d missing at the end (devices %v), %d lost (missing at a check, then out of the window unseen), %d unverifiable (left the 1024-seq window before a check); %d checks; outboxes dropped %d, drained: %v; control plane drops: %d subscription queue, %d client queue, %d ingest %v",
			final.Acked, final.Confirmed, final.Missing, final.MissingDevices, final.Lost, final.Unverifiable, len(r.TelemetryChecks), r.Drain.Dropped, r.Drain.Drained,
			r.Drops.BrokerSubscription, r.Drops.BrokerClient, r.Drops.Ingest, r.Drops.IngestBy)
	}

	for _, t := range r.Trends {
		name := t.Name + "-flat"
		if t.Name == "store" {
			name = "store-bounded"
		}
		add(name, t.OK, "%s", t.String())
	}

	var kinds []string
	counts := map[string]int{}
	failed := 0
	for _, f := range r.Faults {
		if f.Error != "" {
			failed++
			continue
		}
		counts[f.Kind]++
	}
	for _, k := range FaultKinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, counts[k]))
	}
	allKinds := true
	for _, k := range FaultKinds {
		allKinds = allKinds && counts[k] > 0
	}
	add("chaos-injected", allKinds && failed == 0, "%s; %d failed to inject, %d skipped (the schedule ran late)", strings.Join(kinds, ", "), failed, r.FaultsSkipped)

	ro := r.Rollouts
	add("rollouts-end", ro.Started > 0 && len(ro.Stuck) == 0,
		"%d started: %d completed, %d rolled back, %d aborted, %d other; stuck: %v; %d API calls retried",
		ro.Started, ro.Completed, ro.RolledBack, ro.Aborted, ro.Other, ro.Stuck, ro.APIErrors)

	tr := r.Traffic
	add("no-failed-inference", tr.Failed == 0 && tr.OK > 0, "%d ok, %d failed (first: %s), %d before a model, %d labels accepted",
		tr.OK, tr.Failed, tr.FirstFailure, tr.NotServing, tr.Labelled)

	add("no-leak-after-stop", r.LeakError == "", "goroutines %d before, %d after; broker connections left %d, proxy %d %s",
		r.Leak.GoroutinesBefore, r.Leak.GoroutinesAfter, r.Leak.BrokerConns, r.Leak.ProxyConns, r.LeakError)

	r.Passed = true
	for _, inv := range r.Invariants {
		r.Passed = r.Passed && inv.OK
	}
}

// Failed returns the invariants that did not hold.
func (r *Report) Failed() []Invariant {
	var out []Invariant
	for _, inv := range r.Invariants {
		if !inv.OK {
			out = append(out, inv)
		}
	}
	return out
}

// WriteText writes the human summary.
func (r *Report) WriteText(w io.Writer) {
	verdict := "PASSED"
	if !r.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "soak %s: %d agents in %d sites (heartbeat %s, agent store in %s), chaos %s (last fault at %.0fs), seed %d, %s → %s\n",
		verdict, r.Agents, r.Sites, r.Heartbeat, r.AgentStore, r.Duration, r.LastFault, r.Seed, r.Started.Format(time.RFC3339), r.Ended.Format(time.RFC3339))
	for _, inv := range r.Invariants {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-24s %s\n", mark, inv.Name, inv.Detail)
	}
	if len(r.HarnessErrors) > 0 {
		fmt.Fprintf(w, "  harness notes (%d):\n", len(r.HarnessErrors))
		for _, e := range r.HarnessErrors {
			fmt.Fprintf(w, "    %s\n", e)
		}
	}
}

// Write writes report.json, report.txt and chart.svg into dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("soak: report directory: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("soak: encode report: %w", err)
	}
	var txt strings.Builder
	r.WriteText(&txt)
	for name, data := range map[string][]byte{
		"report.json": b,
		"report.txt":  []byte(txt.String()),
		"chart.svg":   []byte(r.Chart()),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("soak: %w", err)
		}
	}
	return nil
}

// The chart's geometry and colours.
const (
	chartW      = 1000
	chartLeft   = 70
	chartRight  = 20
	panelH      = 130
	panelGap    = 40
	chartTop    = 50
	legendSpace = 30
)

var (
	lineColours  = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f"}
	faultColours = map[string]string{
		FaultKill: "#d62728", FaultBroker: "#ff7f0e", FaultControlPlane: "#9467bd",
		FaultPartition: "#8c564b", FaultCorrupt: "#e377c2", FaultSkew: "#17becf",
	}
)

type series struct {
	name   string
	colour string
	xs, ys []float64
}

// Chart draws the soak as an SVG: devices per served version with the
// faults marked, then heap, goroutines, descriptors and store size, with
// the warm-up shaded and the fitted trend dashed.
func (r *Report) Chart() string {
	var b strings.Builder
	xmax := r.LastFault
	for _, s := range r.DeviceSamples {
		xmax = math.Max(xmax, s.At)
	}
	for _, s := range r.Resources {
		xmax = math.Max(xmax, s.At)
	}
	if xmax <= 0 {
		xmax = 1
	}
	warm := r.Warmup

	var versions []string
	for _, s := range r.DeviceSamples {
		for v := range s.Serving {
			if !slices.Contains(versions, v) {
				versions = append(versions, v)
			}
		}
	}
	slices.Sort(versions)
	var dev []series
	for i, v := range versions {
		sr := series{name: "serving " + v, colour: lineColours[i%len(lineColours)]}
		for _, s := range r.DeviceSamples {
			sr.xs = append(sr.xs, s.At)
			sr.ys = append(sr.ys, float64(s.Serving[v]))
		}
		dev = append(dev, sr)
	}
	upd := series{name: "updating", colour: "#bcbd22"}
	for _, s := range r.DeviceSamples {
		upd.xs = append(upd.xs, s.At)
		upd.ys = append(upd.ys, float64(s.Updating))
	}
	dev = append(dev, upd)

	res := func(name, colour string, f func(Resource) float64) series {
		sr := series{name: name, colour: colour}
		for _, x := range r.Resources {
			sr.xs = append(sr.xs, x.At)
			sr.ys = append(sr.ys, f(x))
		}
		return sr
	}
	panels := []struct {
		title string
		lines []series
		trend string
		scale float64
	}{
		{"devices by served version (fault marks above)", dev, "", 1},
		{"heap live (MiB)", []series{res("heap", "#1f77b4", func(x Resource) float64 { return float64(x.HeapLive) / (1 << 20) })}, "heap", 1 << 20},
		{"goroutines", []series{res("goroutines", "#2ca02c", func(x Resource) float64 { return float64(x.Goroutines) })}, "goroutines", 1},
		{"open file descriptors", []series{res("fds", "#ff7f0e", func(x Resource) float64 { return float64(x.FDs) })}, "fds", 1},
		{"control plane store on disk (MiB)", []series{res("store", "#9467bd", func(x Resource) float64 { return float64(x.StoreBytes) / (1 << 20) })}, "store", 1 << 20},
	}
	height := chartTop + len(panels)*(panelH+panelGap) + legendSpace
	plotW := float64(chartW - chartLeft - chartRight)
	xpos := func(x float64) float64 { return chartLeft + x/xmax*plotW }

	verdict := "passed"
	if !r.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", chartW, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">edgefleet chaos soak: %d agents, %s of chaos — %s</text>`+"\n",
		chartLeft, r.Agents, html.EscapeString(r.Duration), verdict)
	fmt.Fprintf(&b, `<text x="%d" y="36" fill="#555">seconds since the chaos started; shaded: warm-up (not in the trends); dashed: fitted trend; grey line: last fault</text>`+"\n", chartLeft)

	for pi, p := range panels {
		top := float64(chartTop + pi*(panelH+panelGap) + 10)
		ymax := 0.0
		for _, s := range p.lines {
			for _, y := range s.ys {
				ymax = math.Max(ymax, y)
			}
		}
		if ymax <= 0 {
			ymax = 1
		}
		ymax *= 1.1
		ypos := func(y float64) float64 { return top + panelH - y/ymax*panelH }
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-weight="bold">%s</text>`+"\n", chartLeft, top-4, html.EscapeString(p.title))
		fmt.Fprintf(&b, `<rect x="%d" y="%.0f" width="%.0f" height="%d" fill="none" stroke="#ccc"/>`+"\n", chartLeft, top, plotW, panelH)
		if warm > 0 {
			fmt.Fprintf(&b, `<rect x="%d" y="%.0f" width="%.1f" height="%d" fill="#eee"/>`+"\n", chartLeft, top, xpos(math.Min(warm, xmax))-chartLeft, panelH)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#999"/>`+"\n", xpos(r.LastFault), top, xpos(r.LastFault), top+panelH)
		for _, frac := range []float64{0, 0.5, 1} {
			y := ymax / 1.1 * frac
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", chartLeft-4, ypos(y)+4, compact(y))
		}
		for _, s := range p.lines {
			if len(s.xs) == 0 {
				continue
			}
			var pts []string
			for i := range s.xs {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xpos(s.xs[i]), ypos(s.ys[i])))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"><title>%s</title></polyline>`+"\n",
				s.colour, strings.Join(pts, " "), html.EscapeString(s.name))
		}
		if p.trend != "" {
			for _, t := range r.Trends {
				if t.Name != p.trend || t.Samples < 2 {
					continue
				}
				y := func(x float64) float64 { return (t.Intercept + t.SlopePerMin/60*x) / p.scale }
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-dasharray="5,4"/>`+"\n",
					xpos(warm), ypos(y(warm)), xpos(xmax), ypos(y(xmax)))
				fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#333">slope %s/min (bound %s/min)</text>`+"\n",
					float64(chartW-chartRight-4), top+12, compact(t.SlopePerMin/p.scale), compact(t.Bound/p.scale))
			}
		}
		if pi == 0 {
			for _, f := range r.Faults {
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s" stroke-width="2"><title>%s at %.0fs: %s</title></line>`+"\n",
					xpos(f.At), top, xpos(f.At), top+8, faultColours[f.Kind], f.Kind, f.At, html.EscapeString(f.What))
			}
			lx := float64(chartLeft)
			for _, s := range p.lines {
				fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="10" height="3" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
					lx, top+panelH+14, s.colour, lx+14, top+panelH+18, html.EscapeString(s.name))
				lx += 14 + 7*float64(len(s.name)) + 12
			}
		}
		for _, x := range ticks(xmax) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#555">%s</text>`+"\n", xpos(x), top+panelH+(map[bool]float64{true: 30, false: 12})[pi == 0], compact(x))
		}
	}
	lx := float64(chartLeft)
	ly := float64(height - 10)
	for _, k := range FaultKinds {
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="3" height="10" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n", lx, ly-9, faultColours[k], lx+6, ly, k)
		lx += 6 + 7*float64(len(k)) + 14
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// ticks are about six round x-axis marks up to max.
func ticks(max float64) []float64 {
	step := math.Pow(10, math.Floor(math.Log10(max/6)))
	for _, m := range []float64{1, 2, 5, 10} {
		if max/(step*m) <= 8 {
			step *= m
			break
		}
	}
	var out []float64
	for x := 0.0; x <= max; x += step {
		out = append(out, x)
	}
	return out
}

// compact formats a number for an axis.
func compact(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.3gk", v/1e3)
	case a >= 100 || a == 0:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
