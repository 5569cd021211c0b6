package cli

import (
	"context"
	"fmt"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// metricsCmd prints a model version's field metrics: a table per group
// (or per device) and sparklines of accuracy and drift over time.
func (a *app) metricsCmd(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet metrics")
	a.globalFlags(fs)
	by := fs.String("by", "", "group by site, cohort or device (default: one row per device)")
	since := fs.Duration("since", 24*time.Hour, "time range ending now")
	points := fs.Int("points", 24, "points of the sparklines")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("metrics takes one NAME@VERSION, got %d arguments", len(pos))
	}
	name, version, ok := strings.Cut(pos[0], "@")
	if !ok || name == "" || version == "" {
		return usagef("metrics %q: want NAME@VERSION, e.g. fraud@1.0.0", pos[0])
	}
	if err := monitor.ValidBy(*by); err != nil {
		return usagef("--by %q: want site, cohort, device or label:<key>", *by)
	}
	if *since <= 0 {
		return usagef("--since %v: want a positive duration", *since)
	}
	if *points < 1 || *points > 200 {
		return usagef("--points %d: want 1..200", *points)
	}
	now := time.Now().UTC()
	c, err := a.client()
	if err != nil {
		return err
	}
	res, err := c.ModelMetrics(ctx, name, version, api.MetricsQuery{From: now.Add(-*since), To: now.Add(time.Minute), By: *by, Points: *points})
	if err != nil {
		return err
	}
	writeMetrics(a, res)
	return nil
}

func writeMetrics(a *app, res *api.ModelMetrics) {
	fmt.Fprintf(a.stdout, "%s@%s  %s .. %s\n\n", res.Model, res.Version, res.From.Format(time.RFC3339), res.To.Format(time.RFC3339))
	rows := res.Groups
	col := strings.ToUpper(res.By)
	if res.By == "" {
		rows, col = res.Devices, "DEVICE"
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\tDEVICES\tROWS\tLABELLED\tACCURACY\tF1\tMAX PSI (FEATURE)\tPRED PSI\tP50 ms\tP99 ms\n", col)
	line := func(key string, f api.MetricsFigures) {
		if key == "" {
			key = "-"
		}
		psi := "-"
		if f.MaxPSIFeature != "" {
			psi = fmt.Sprintf("%.3f (%s)", f.MaxPSI, f.MaxPSIFeature)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%.3f\t%.2f\t%.2f\n", key, f.Devices, f.Rows, f.Labelled,
			pct(f.Accuracy), num(f.F1), psi, f.PredictionPSI, f.LatencyP50Ms, f.LatencyP99Ms)
	}
	for _, g := range rows {
		line(g.Key, g.MetricsFigures)
	}
	line("TOTAL", res.Total)
	_ = tw.Flush()

	if len(res.Total.Features) > 0 {
		fmt.Fprintln(a.stdout, "\nfeature drift (total):")
		tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FEATURE\tPSI\tKS\tROWS")
		for _, f := range res.Total.Features {
			fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%d\n", f.Name, f.PSI, f.KS, f.Rows)
		}
		_ = tw.Flush()
	}
	acc := make([]float64, len(res.Series))
	psi := make([]float64, len(res.Series))
	for i, p := range res.Series {
		acc[i], psi[i] = math.NaN(), math.NaN()
		if p.Accuracy != nil {
			acc[i] = *p.Accuracy
		}
		if p.MaxPSI != nil {
			psi[i] = *p.MaxPSI
		}
	}
	fmt.Fprintf(a.stdout, "\naccuracy  %s  (0..1)\n", sparkline(acc, 0, 1))
	fmt.Fprintf(a.stdout, "max PSI   %s  (0..%.2f)\n", sparkline(psi, 0, math.Max(0.5, maxOf(psi))), math.Max(0.5, maxOf(psi)))
}

func pct(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", *v*100)
}

func num(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.3f", *v)
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		if !math.IsNaN(x) && x > m {
			m = x
		}
	}
	return m
}

// sparkline draws values scaled to [lo, hi] with block characters; NaN
// (no data) is a space.
func sparkline(values []float64, lo, hi float64) string {
	const bars = "▁▂▃▄▅▆▇█"
	runes := []rune(bars)
	var b strings.Builder
	for _, v := range values {
		if math.IsNaN(v) {
			b.WriteRune(' ')
			continue
		}
		f := 0.0
		if hi > lo {
			f = (v - lo) / (hi - lo)
		}
		i := int(math.Round(f * float64(len(runes)-1)))
		b.WriteRune(runes[min(max(i, 0), len(runes)-1)])
	}
	return "|" + b.String() + "|"
}
