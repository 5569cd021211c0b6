package console

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

func urlQuery(s string) string { return url.QueryEscape(s) }
func urlPath(s string) string  { return url.PathEscape(s) }

// chartRange is one choice of the monitoring page's time range.
type chartRange struct {
	Name   string
	Span   time.Duration
	Points int
}

var chartRanges = []chartRange{
	{"1h", time.Hour, 60},
	{"6h", 6 * time.Hour, 72},
	{"24h", 24 * time.Hour, 96},
	{"7d", 7 * 24 * time.Hour, 84},
}

const (
	maxLabelKeys = 50
	maxAlerts    = 50
)

type choice struct {
	Value, Label string
	Selected     bool
}

type alertRow struct {
	Time      time.Time
	Rule      string
	Target    string
	Site      string
	Feature   string
	Value     string
	Threshold string
}

type monitoringData struct {
	Versions []choice
	By       []choice
	Ranges   []choice
	MV       string
	From, To time.Time
	Err      string
	Accuracy *chart
	Drift    *chart
	Groups   []api.MetricsGroup
	ByName   string
	// Alerts come from the audit log (operators and up).
	Alerts []alertRow
}

func (c *Console) monitoringPage(w http.ResponseWriter, r *http.Request, req *request) {
	q := r.URL.Query()
	v := c.view(req, "Monitoring", "monitoring", nil)
	d := &monitoringData{}
	v.Data = d

	// The model versions to choose from; by default the one most devices run.
	running := map[string]int{}
	keys := map[string]bool{}
	c.opts.Fleet.Visit(func(dev *api.Device) bool {
		for name, st := range dev.Reported {
			if st.ActiveVersion != "" {
				running[name+"@"+st.ActiveVersion]++
			}
		}
		for k := range dev.Labels {
			if len(keys) < maxLabelKeys {
				keys[k] = true
			}
		}
		return true
	})
	mv := q.Get("mv")
	var versions []string
	for _, m := range c.opts.Models.List() {
		versions = append(versions, m.Name+"@"+m.Version)
	}
	if !slices.Contains(versions, mv) {
		mv = ""
		for _, s := range versions {
			if mv == "" || running[s] > running[mv] {
				mv = s
			}
		}
	}
	d.MV = mv
	for _, s := range versions {
		d.Versions = append(d.Versions, choice{Value: s, Label: fmt.Sprintf("%s (%d devices)", s, running[s]), Selected: s == mv})
	}
	by := q.Get("by")
	byChoices := []string{monitor.BySite, monitor.ByCohort}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if k != siteLabel {
			byChoices = append(byChoices, monitor.ByLabelPrefix+k)
		}
	}
	if !slices.Contains(byChoices, by) {
		by = monitor.BySite
	}
	d.ByName = strings.TrimPrefix(by, monitor.ByLabelPrefix)
	for _, b := range byChoices {
		d.By = append(d.By, choice{Value: b, Label: strings.Replace(b, monitor.ByLabelPrefix, "label ", 1), Selected: b == by})
	}
	rng := chartRanges[0]
	for _, cr := range chartRanges {
		if cr.Name == q.Get("range") {
			rng = cr
		}
	}
	for _, cr := range chartRanges {
		d.Ranges = append(d.Ranges, choice{Value: cr.Name, Label: "last " + cr.Name, Selected: cr.Name == rng.Name})
	}

	if mv != "" {
		name, version, _ := strings.Cut(mv, "@")
		d.To = c.opts.Clock().UTC().Truncate(time.Minute).Add(time.Minute)
		d.From = d.To.Add(-rng.Span)
		series, err := c.opts.Metrics.SeriesBy(monitor.Query{Model: name, Version: version, From: d.From, To: d.To, By: by, Points: rng.Points})
		if err != nil {
			d.Err = err.Error()
		}
		for _, s := range series {
			d.Groups = append(d.Groups, api.MetricsGroup{Key: s.Key, MetricsFigures: s.Figures})
		}
		d.Accuracy = accuracyChart(series, d.From, d.To, c.opts.Rules.MinAccuracy, d.ByName)
		d.Drift = driftChart(series, d.From, d.To, c.opts.Rules.MaxPSI, d.ByName)
	}
	if v.Can.Audit {
		entries, err := c.audits.list(audit.Query{Action: "monitor.alert.", Limit: maxAlerts})
		if err != nil {
			c.log.Error("audit list", "err", err)
		}
		for i := len(entries) - 1; i >= 0; i-- {
			d.Alerts = append(d.Alerts, alertOf(entries[i]))
		}
	}
	c.renderLive(w, r, "monitoring.html", v)
}

func alertOf(e audit.Entry) alertRow {
	str := func(k string) string { s, _ := e.Details[k].(string); return s }
	num := func(k string) string {
		if f, ok := e.Details[k].(float64); ok {
			return fmt.Sprintf("%.3f", f)
		}
		return ""
	}
	return alertRow{Time: e.Time, Rule: strings.TrimPrefix(e.Action, "monitor.alert."), Target: e.Target,
		Site: str("site"), Feature: str("feature"), Value: num("value"), Threshold: num("threshold")}
}
