package console

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// Charts are SVG drawn on the server: the geometry is computed here and
// the chart template writes it (escaping every name in it), so a chart
// needs no script and reads as an image with a title, a description and a
// data table for screen readers.

const (
	chartW, chartH        = 720, 260
	padLeft, padRight     = 64, 16
	padTop, padBottom     = 16, 40
	plotW                 = chartW - padLeft - padRight
	plotH                 = chartH - padTop - padBottom
	maxChartSeries        = 8 // colours and dash patterns told apart; more groups are listed in the table only
	noGroupName           = "(none)"
	chartTimeLayout       = "15:04"
	chartTimeLayoutLonger = "01-02 15:04"
)

type tick struct {
	Pos   float64
	Label string
}

type chartPoint struct{ X, Y float64 }

type chartLine struct {
	Key      string
	Class    string
	Segments []string // polyline point lists, broken where a step has no value
	Dots     []chartPoint
	Last     string // the newest value, for the legend
}

type chart struct {
	ID, Title, Desc, Unit string
	W, H                  int
	Left, Top             float64
	Right, Bottom         float64
	XTicks, YTicks        []tick
	Lines                 []chartLine
	// Threshold is the alert rule's limit, drawn as a dashed line.
	Threshold      *tick
	ThresholdLabel string
	Empty          bool
	// Table is the chart's data: a header row of group names, then one
	// row per step with a value.
	Head []string
	Rows [][]string
}

// accuracyChart plots each group's accuracy (0-100 %) with the
// low-accuracy alert threshold.
func accuracyChart(series []monitor.Series, from, to time.Time, minAccuracy float64, by string) *chart {
	val := func(i int, s monitor.Series) (float64, bool) {
		p := s.Points[i]
		if p.Accuracy == nil {
			return 0, false
		}
		return *p.Accuracy * 100, true
	}
	c := newChart("accuracy", "Accuracy by "+by, "%", from, to, series, val, 100)
	c.yTicks(100, func(v float64) string { return fmt.Sprintf("%.0f %%", v) })
	if minAccuracy > 0 {
		c.threshold(minAccuracy*100, 100, fmt.Sprintf("alert below %.0f %%", minAccuracy*100))
	}
	c.Desc = fmt.Sprintf("Share of labelled predictions that were right, per %s, from %s to %s UTC.", by, from.Format("2006-01-02 15:04"), to.Format("15:04"))
	return c
}

// driftChart plots each group's largest feature PSI with the drift alert
// threshold.
func driftChart(series []monitor.Series, from, to time.Time, maxPSI float64, by string) *chart {
	val := func(i int, s monitor.Series) (float64, bool) {
		p := s.Points[i]
		if p.MaxPSI == nil {
			return 0, false
		}
		return *p.MaxPSI, true
	}
	top := 0.5
	for _, s := range series {
		for i := range s.Points {
			if v, ok := val(i, s); ok && v*1.1 > top {
				top = v * 1.1
			}
		}
	}
	if maxPSI*1.25 > top {
		top = maxPSI * 1.25
	}
	top = niceCeil(top)
	c := newChart("drift", "Input drift by "+by+" (largest feature PSI)", "PSI", from, to, series, val, top)
	c.yTicks(top, func(v float64) string { return fmt.Sprintf("%.2f", v) })
	if maxPSI > 0 {
		c.threshold(maxPSI, top, fmt.Sprintf("alert above PSI %.2f", maxPSI))
	}
	c.Desc = fmt.Sprintf("Population stability index of the most drifted input feature against the model's reference statistics, per %s, from %s to %s UTC. Above 0.25 is usually a significant shift.", by, from.Format("2006-01-02 15:04"), to.Format("15:04"))
	return c
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func newChart(id, title, unit string, from, to time.Time, series []monitor.Series, val func(int, monitor.Series) (float64, bool), top float64) *chart {
	c := &chart{ID: id, Title: title, Unit: unit, W: chartW, H: chartH, Left: padLeft, Top: padTop, Right: padLeft + plotW, Bottom: padTop + plotH, Empty: true}
	span := to.Sub(from)
	x := func(t time.Time) float64 { return padLeft + float64(t.Sub(from))/float64(span)*plotW }
	y := func(v float64) float64 { return padTop + (1-math.Min(math.Max(v/top, 0), 1))*plotH }
	layout := chartTimeLayout
	if span > 24*time.Hour {
		layout = chartTimeLayoutLonger
	}
	for i := 0; i <= 6; i++ {
		t := from.Add(span * time.Duration(i) / 6)
		c.XTicks = append(c.XTicks, tick{Pos: x(t), Label: t.UTC().Format(layout)})
	}
	c.Head = []string{"time (UTC)"}
	var rows [][]string
	for si, s := range series {
		key := s.Key
		if key == "" {
			key = noGroupName
		}
		c.Head = append(c.Head, key)
		line := chartLine{Key: key, Class: fmt.Sprintf("series series-%d", si%maxChartSeries)}
		var seg []string
		flush := func() {
			if len(seg) > 0 {
				line.Segments = append(line.Segments, strings.Join(seg, " "))
				seg = nil
			}
		}
		for i, p := range s.Points {
			if len(rows) <= i {
				rows = append(rows, make([]string, len(series)+1))
				rows[i][0] = p.Time.UTC().Format(layout)
			}
			v, ok := val(i, s)
			if !ok {
				flush()
				continue
			}
			c.Empty = false
			step := span / time.Duration(len(s.Points))
			pt := chartPoint{X: round1(x(p.Time.Add(step / 2))), Y: round1(y(v))}
			seg = append(seg, fmt.Sprintf("%.1f,%.1f", pt.X, pt.Y))
			line.Dots = append(line.Dots, pt)
			line.Last = fmt.Sprintf("%.3g %s", v, unit)
			rows[i][si+1] = fmt.Sprintf("%.3g", v)
		}
		flush()
		if si < maxChartSeries {
			c.Lines = append(c.Lines, line)
		}
	}
	for _, r := range rows {
		for _, cell := range r[1:] {
			if cell != "" {
				c.Rows = append(c.Rows, r)
				break
			}
		}
	}
	return c
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

func (c *chart) yTicks(top float64, label func(float64) string) {
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		c.YTicks = append(c.YTicks, tick{Pos: round1(padTop + (1-v/top)*plotH), Label: label(v)})
	}
}

func (c *chart) threshold(v, top float64, label string) {
	c.Threshold = &tick{Pos: round1(padTop + (1-math.Min(v/top, 1))*plotH), Label: label}
	c.ThresholdLabel = label
}
