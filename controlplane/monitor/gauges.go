package monitor

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serviceMetrics are the monitoring series on the control plane's registry.
type serviceMetrics struct {
	ingested   prometheus.Counter
	duplicates prometheus.Counter
	gauges     *versionGauges
}

// gaugeWindow is the time range the per-version gauges summarise.
const gaugeWindow = 15 * time.Minute

func newServiceMetrics(reg prometheus.Registerer) *serviceMetrics {
	m := &serviceMetrics{
		ingested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_monitor_reports_ingested_total",
			Help: "Telemetry messages with monitoring reports aggregated and stored.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_monitor_reports_duplicate_total",
			Help: "Telemetry messages with monitoring reports dropped as already ingested (same device and seq).",
		}),
		gauges: &versionGauges{
			accuracy: prometheus.NewDesc("edgefleet_model_accuracy",
				"Accuracy of a model version from delayed labels over the last 15 minutes.", []string{"model", "version"}, nil),
			labelled: prometheus.NewDesc("edgefleet_model_labelled_rows",
				"Labelled rows behind edgefleet_model_accuracy.", []string{"model", "version"}, nil),
			psi: prometheus.NewDesc("edgefleet_model_feature_psi",
				"Population stability index of an input feature vs the manifest's reference over the last 15 minutes.", []string{"model", "version", "feature"}, nil),
			sitePSI: prometheus.NewDesc("edgefleet_model_site_max_psi",
				"Largest feature PSI of a model version at one site over the last 15 minutes.", []string{"model", "version", "site"}, nil),
		},
	}
	reg.MustRegister(m.ingested, m.duplicates, m.gauges)
	return m
}

// versionGauges are the per-version monitoring gauges. A refresh builds a
// whole new set and swaps it in, so a scrape sees either the old set or
// the new one, never a half-reset one with series missing.
type versionGauges struct {
	accuracy, labelled, psi, sitePSI *prometheus.Desc

	mu   sync.Mutex
	snap []prometheus.Metric
}

func (g *versionGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.accuracy
	ch <- g.labelled
	ch <- g.psi
	ch <- g.sitePSI
}

func (g *versionGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	snap := g.snap
	g.mu.Unlock()
	for _, m := range snap {
		ch <- m
	}
}

func (g *versionGauges) set(snap []prometheus.Metric) {
	g.mu.Lock()
	g.snap = snap
	g.mu.Unlock()
}

// refreshGauges recomputes the per-version gauges.
func (s *Service) refreshGauges() {
	now := s.opts.Clock()
	vs, err := s.agg.Versions(now.Add(-gaugeWindow))
	if err != nil {
		s.log.Error("monitoring gauges", "err", err)
		return
	}
	g := s.metrics.gauges
	var snap []prometheus.Metric
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		snap = append(snap, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	for _, v := range vs {
		res, err := s.agg.Query(Query{Model: v[0], Version: v[1], From: now.Add(-gaugeWindow), To: now.Add(time.Nanosecond), By: BySite, Points: 1})
		if err != nil {
			continue
		}
		if res.Total.Accuracy != nil {
			gauge(g.accuracy, *res.Total.Accuracy, v[0], v[1])
		}
		gauge(g.labelled, float64(res.Total.Labelled), v[0], v[1])
		for _, f := range res.Total.Features {
			gauge(g.psi, f.PSI, v[0], v[1], f.Name)
		}
		for _, grp := range res.Groups {
			gauge(g.sitePSI, grp.MaxPSI, v[0], v[1], grp.Key)
		}
	}
	g.set(snap)
}
