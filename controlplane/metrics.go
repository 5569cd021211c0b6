package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the control plane's Prometheus metrics, registered on a
// registry of its own (several servers can run in one process).
type metrics struct {
	reg         *prometheus.Registry
	uploads     *prometheus.CounterVec // result: accepted, forced, rejected
	deploys     prometheus.Counter     // desired states issued
	dropped     *prometheus.CounterVec // topic_kind, reason
	chunks      prometheus.Counter
	chunkBytes  prometheus.Counter
	apiRequests *prometheus.CounterVec // route, code
}

// newMetrics registers the metrics; the gauges read live state through the
// given functions at scrape time.
func newMetrics(devices, online, models func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_model_uploads_total",
			Help: "Model version uploads by result (accepted, forced, rejected).",
		}, []string{"result"}),
		deploys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_desired_states_issued_total",
			Help: "Signed desired-state documents issued to devices.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_mqtt_payloads_dropped_total",
			Help: "MQTT payloads from devices that were dropped, by topic kind and reason.",
		}, []string{"topic_kind", "reason"}),
		chunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_publishes_total",
			Help: "Model chunks published on chunk topics.",
		}),
		chunkBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_publish_bytes_total",
			Help: "Model bytes published on chunk topics.",
		}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_api_requests_total",
			Help: "REST API requests by route pattern and status code.",
		}, []string{"route", "code"}),
	}
	m.reg.MustRegister(
		m.uploads, m.deploys, m.dropped, m.chunks, m.chunkBytes, m.apiRequests,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_devices", Help: "Registered devices.",
		}, devices),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_devices_online", Help: "Devices currently online.",
		}, online),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_model_versions", Help: "Uploaded model versions.",
		}, models),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}
