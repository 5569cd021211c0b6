package scenario

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/hostload"
)

// Report is the outcome of one run, written as report.json. Its times
// are simulated (see ClockSpec) except fleet_start_seconds and those named
// real; ClockSpeed and RealSeconds (the run in real time) are set only
// when the clock was sped up. Load is how loaded the process and host were
// over the run (timeline and assertions), to read a failure against.
type Report struct {
	Scenario        string            `json:"scenario"`
	File            string            `json:"file,omitempty"`
	Passed          bool              `json:"passed"`
	Started         time.Time         `json:"started"`
	Devices         int               `json:"devices"`
	ClockSpeed      float64           `json:"clock_speed,omitempty"`
	StartSeconds    float64           `json:"fleet_start_seconds"`
	DurationSeconds float64           `json:"duration_seconds"`
	RealSeconds     float64           `json:"real_seconds,omitempty"`
	Steps           []StepResult      `json:"steps"`
	Assertions      []AssertionResult `json:"assertions"`
	Inference       *sim.TrafficStats `json:"inference,omitempty"`
	Network         *NetworkFigures   `json:"network,omitempty"`
	Restarts        int               `json:"restarts"`
	Figures         map[string]any    `json:"figures,omitempty"`
	Leak            *sim.LeakReport   `json:"leak,omitempty"`
	Load            *hostload.Load    `json:"load,omitempty"`
	Errors          []string          `json:"errors,omitempty"`
	Samples         []Sample          `json:"samples"`
}

// StepResult is one timeline step as it ran; times are (simulated) seconds
// since the timeline started, and with a clock speed also real ones.
type StepResult struct {
	Index       int     `json:"index"`
	Line        int     `json:"line"`
	Action      string  `json:"action"`
	Name        string  `json:"name,omitempty"`
	At          float64 `json:"at"`
	Started     float64 `json:"started"`
	Took        float64 `json:"took"`
	RealStarted float64 `json:"real_started,omitempty"`
	RealTook    float64 `json:"real_took,omitempty"`
	Detail      string  `json:"detail,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// AssertionResult is one assertion's verdict.
type AssertionResult struct {
	Kind        string `json:"kind"`
	Line        int    `json:"line"`
	Passed      bool   `json:"passed"`
	Explanation string `json:"explanation,omitempty"`
}

// NetworkFigures are the proxy's counts.
type NetworkFigures struct {
	BytesToDevices   uint64 `json:"bytes_to_devices"`
	BytesFromDevices uint64 `json:"bytes_from_devices"`
	Connections      uint64 `json:"connections"`
	CorruptedChunks  uint64 `json:"corrupted_chunks"`
}

// WriteFiles writes report.json and chart.svg into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "chart.svg"))
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := r.WriteSVG(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// Summary writes the human verdict: failed steps and assertions with their
// explanations.
func (r *Report) Summary(w io.Writer) {
	verdict := "PASSED"
	if !r.Passed {
		verdict = "FAILED"
	}
	if r.ClockSpeed > 0 {
		fmt.Fprintf(w, "scenario %s: %s (%d devices, %.1fs simulated in %.1fs at %g× real time)\n", r.Scenario, verdict, r.Devices, r.DurationSeconds, r.RealSeconds, r.ClockSpeed)
	} else {
		fmt.Fprintf(w, "scenario %s: %s (%d devices, %.1fs)\n", r.Scenario, verdict, r.Devices, r.DurationSeconds)
	}
	for _, s := range r.Steps {
		if s.Error != "" {
			fmt.Fprintf(w, "  step %d %s (line %d) failed: %s\n", s.Index, s.Action, s.Line, s.Error)
		}
	}
	for _, a := range r.Assertions {
		mark := "ok  "
		if !a.Passed {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s (line %d)", mark, a.Kind, a.Line)
		if a.Explanation != "" {
			fmt.Fprintf(w, ": %s", a.Explanation)
		}
		fmt.Fprintln(w)
	}
	if r.Inference != nil {
		fmt.Fprintf(w, "  inferences: %d ok, %d failed, %d before a model was active\n", r.Inference.OK, r.Inference.Failed, r.Inference.NotServing)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Figures)) {
		b, err := json.Marshal(r.Figures[k])
		if err != nil {
			b = []byte(fmt.Sprint(r.Figures[k]))
		}
		fmt.Fprintf(w, "  %s: %s\n", k, b)
	}
	if r.Load != nil {
		fmt.Fprintf(w, "  load over the run (%.1fs real): %s\n", r.Load.Seconds, r.Load)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
}

func sortedKeys(m map[string]int) []string { return slices.Sorted(maps.Keys(m)) }

var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"}

// WriteSVG draws the number of devices serving each model version over
// time, with the timeline's steps as vertical markers.
func (r *Report) WriteSVG(w io.Writer) error {
	const (
		width, height    = 900.0, 420.0
		left, right, top = 60.0, 200.0, 40.0
		bottom           = 50.0
		plotW, plotH     = width - left - right, height - top - bottom
		maxTicks         = 10
	)
	series := map[string]bool{}
	maxT := 0.0
	for _, s := range r.Samples {
		for k := range s.Serving {
			series[k] = true
		}
		maxT = max(maxT, s.T)
	}
	if maxT == 0 {
		maxT = 1
	}
	maxY := float64(max(r.Devices, 1))
	x := func(t float64) float64 { return left + t/maxT*plotW }
	y := func(v float64) float64 { return top + plotH - v/maxY*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	verdict := "passed"
	if !r.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="15">%s — devices serving each version (%d devices, %s)</text>`+"\n", left, html.EscapeString(r.Scenario), r.Devices, verdict)
	// Axes and grid.
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top+plotH, left+plotW, top+plotH)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top, left, top+plotH)
	for i := 0; i <= 4; i++ {
		v := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
			left, y(v), left+plotW, y(v), left-6, y(v)+4, v)
	}
	step := niceStep(maxT / maxTicks)
	for t := 0.0; t <= maxT+1e-9; t += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%gs</text>`+"\n", x(t), top+plotH+18, roundTo(t, step))
	}
	axis := "seconds since the timeline started"
	if r.ClockSpeed > 0 {
		axis = fmt.Sprintf("simulated seconds since the timeline started (clock at %g× real time)", r.ClockSpeed)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", left+plotW/2, height-8, axis)
	// Step markers.
	for _, s := range r.Steps {
		color := "#999"
		if s.Error != "" {
			color = "#d00"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3,3"><title>step %d %s: %s</title></line>`+"\n",
			x(s.Started), top, x(s.Started), top+plotH, color, s.Index, s.Action, html.EscapeString(s.Detail+s.Error))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" fill="%s" transform="rotate(-90 %.1f %.1f)">%d %s</text>`+"\n",
			x(s.Started)+3, top+4, color, x(s.Started)+3, top+4, s.Index, s.Action)
	}
	// One line per series.
	for i, k := range slices.Sorted(maps.Keys(series)) {
		color := palette[i%len(palette)]
		var pts strings.Builder
		for _, s := range r.Samples {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(s.T), y(float64(s.Serving[k])))
		}
		dash := ""
		if strings.HasSuffix(k, "@-") {
			dash = ` stroke-dasharray="6,3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, strings.TrimSpace(pts.String()))
		ly := top + 10 + float64(i)*18
		label := k
		if strings.HasSuffix(k, "@-") {
			label = strings.TrimSuffix(k, "@-") + " (none)"
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="12" fill="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
			left+plotW+15, ly-10, color, left+plotW+32, ly, html.EscapeString(label))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceStep rounds a raw tick step up to 1, 2 or 5 × 10^n.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= raw {
		p *= 10
	}
	for p > raw {
		p /= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func roundTo(v, step float64) float64 {
	if step >= 1 {
		return float64(int64(v + 0.5))
	}
	return float64(int64(v/step+0.5)) * step
}
