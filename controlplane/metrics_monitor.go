package controlplane

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// monitorMetrics are the monitoring series on the control plane's registry.
type monitorMetrics struct {
	ingested   prometheus.Counter
	duplicates prometheus.Counter
	accuracy   *prometheus.GaugeVec // model, version
	labelled   *prometheus.GaugeVec // model, version
	psi        *prometheus.GaugeVec // model, version, feature
	predPSI    *prometheus.GaugeVec // model, version, site
}

// gaugeWindow is the time range the per-version gauges summarise.
const gaugeWindow = 15 * time.Minute

func newMonitorMetrics(reg *prometheus.Registry) *monitorMetrics {
	m := &monitorMetrics{
		ingested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_monitor_reports_ingested_total",
			Help: "Telemetry messages with monitoring reports aggregated and stored.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_monitor_reports_duplicate_total",
			Help: "Telemetry messages with monitoring reports dropped as already ingested (same device and seq).",
		}),
		accuracy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_model_accuracy",
			Help: "Accuracy of a model version from delayed labels over the last 15 minutes.",
		}, []string{"model", "version"}),
		labelled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_model_labelled_rows",
			Help: "Labelled rows behind edgefleet_model_accuracy.",
		}, []string{"model", "version"}),
		psi: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_model_feature_psi",
			Help: "Population stability index of an input feature vs the manifest's reference over the last 15 minutes.",
		}, []string{"model", "version", "feature"}),
		predPSI: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgefleet_model_site_max_psi",
			Help: "Largest feature PSI of a model version at one site over the last 15 minutes.",
		}, []string{"model", "version", "site"}),
	}
	reg.MustRegister(m.ingested, m.duplicates, m.accuracy, m.labelled, m.psi, m.predPSI)
	return m
}

// refreshMonitorGauges recomputes the per-version gauges.
func (s *Server) refreshMonitorGauges() {
	now := s.clock()
	vs, err := s.monitor.Versions(now.Add(-gaugeWindow))
	if err != nil {
		s.log.Error("monitoring gauges", "err", err)
		return
	}
	m := s.monMetrics
	m.accuracy.Reset()
	m.labelled.Reset()
	m.psi.Reset()
	m.predPSI.Reset()
	for _, v := range vs {
		res, err := s.monitor.Query(monitor.Query{Model: v[0], Version: v[1], From: now.Add(-gaugeWindow), To: now.Add(time.Nanosecond), By: monitor.BySite, Points: 1})
		if err != nil {
			continue
		}
		if res.Total.Accuracy != nil {
			m.accuracy.WithLabelValues(v[0], v[1]).Set(*res.Total.Accuracy)
		}
		m.labelled.WithLabelValues(v[0], v[1]).Set(float64(res.Total.Labelled))
		for _, f := range res.Total.Features {
			m.psi.WithLabelValues(v[0], v[1], f.Name).Set(f.PSI)
		}
		for _, g := range res.Groups {
			m.predPSI.WithLabelValues(v[0], v[1], g.Key).Set(g.MaxPSI)
		}
	}
}
