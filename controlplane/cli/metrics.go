package cli

import (
	"fmt"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// metricsCmd prints a model version's field metrics: a table per group
// (or per device) and sparklines of accuracy and drift over time.
func (a *app) metricsCmd() *cobra.Command {
	var (
		by     string
		since  time.Duration
		points int
	)
	c := &cobra.Command{
		Use:   "metrics NAME@VERSION",
		Short: "accuracy, drift and latency in the field, with sparklines",
		Long: `Prints what the devices running NAME@VERSION reported over --since: rows served, labelled
predictions, accuracy and F1, drift (PSI of each feature and of the predictions) and
latency, one row per device or per group (--by), then the drift of each feature and
sparklines of accuracy and drift over time.`,
		Example: `  edgefleet metrics fraud@1.0.0
  edgefleet metrics fraud@1.0.0 --by site --since 6h
  edgefleet metrics fraud@1.0.0 --by label:hw`,
		Args: oneArg("NAME@VERSION"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			name, version, ok := strings.Cut(pos[0], "@")
			if !ok || name == "" || version == "" {
				return usagef("metrics %q: want NAME@VERSION, e.g. fraud@1.0.0", pos[0])
			}
			if err := monitor.ValidBy(by); err != nil {
				return usagef("--by %q: want site, cohort, device or label:<key>", by)
			}
			if since <= 0 {
				return usagef("--since %v: want a positive duration", since)
			}
			if points < 1 || points > 200 {
				return usagef("--points %d: want 1..200", points)
			}
			now := time.Now().UTC()
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.ModelMetrics(cmd.Context(), name, version, api.MetricsQuery{From: now.Add(-since), To: now.Add(time.Minute), By: by, Points: points})
			if err != nil {
				return err
			}
			writeMetrics(a, res)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&by, "by", "", "`GROUP` rows by site, cohort, device or label:<key> (default: one row per device)")
	f.DurationVar(&since, "since", 24*time.Hour, "`DURATION` of the time range ending now")
	f.IntVar(&points, "points", 24, "`N` points of the sparklines")
	enumFlag(c, "by", "site", "cohort", "device")
	return c
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
	if len(res.UnmonitoredInputs) > 0 {
		fmt.Fprintf(a.stdout, "not monitored for drift (non-numeric): %s\n", strings.Join(res.UnmonitoredInputs, ", "))
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
