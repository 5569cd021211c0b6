package models

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registry's Prometheus series.
type metrics struct {
	uploads    *prometheus.CounterVec // result: accepted, forced, rejected
	chunks     prometheus.Counter
	chunkBytes prometheus.Counter
	// directChunks are the chunks published to one device's
	// own topic (a download its site shares, or a late asker's).
	directChunks prometheus.Counter
	// lateAskers are fetch requests answered on the device's own topic
	// because their version's shared round had gone out (lateAsker).
	lateAskers prometheus.Counter
	// onItsWay are chunks asked for again and not published again: their
	// last publish was already on its way to the device (sentChunks).
	onItsWay prometheus.Counter
	// paced is the time the shared rounds waited for the broker to take
	// more (awaitBroker).
	paced prometheus.Counter
}

// Upload results (the result label of edgefleet_model_uploads_total).
const (
	uploadAccepted = "accepted"
	uploadForced   = "forced"
	uploadRejected = "rejected"
)

func newMetrics(reg prometheus.Registerer, versions, corrupt func() float64) *metrics {
	m := &metrics{
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_model_uploads_total",
			Help: "Model version uploads by result (accepted, forced, rejected).",
		}, []string{"result"}),
		chunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_publishes_total",
			Help: "Model chunks published on chunk topics.",
		}),
		chunkBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_publish_bytes_total",
			Help: "Model bytes published on chunk topics.",
		}),
		directChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_publishes_direct_total",
			Help: "Of edgefleet_chunk_publishes_total, the chunks published on one device's own chunk topic: its part of a download its site shares, or what a shared round had carried before the device asked.",
		}),
		lateAskers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_requests_late_total",
			Help: "Fetch requests that came after their version's shared round went out, answered on the device's own chunk topic instead of another round to every device downloading the version.",
		}),
		onItsWay: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_requests_on_their_way_total",
			Help: "Chunks devices asked for again while a publish that already went to them was on its way: not published again to every device downloading the version.",
		}),
		paced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_chunk_rounds_paced_seconds_total",
			Help: fmt.Sprintf("Time the versions' shared chunk rounds waited for the embedded broker to have fewer than %d unacknowledged messages per connected client: it keeps a copy of each chunk per subscriber until acknowledged.", roundDepth),
		}),
	}
	reg.MustRegister(m.uploads, m.chunks, m.chunkBytes, m.directChunks, m.lateAskers, m.onItsWay, m.paced,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_model_versions", Help: "Uploaded model versions.",
		}, versions),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_model_versions_corrupt",
			Help: "Model versions whose stored file no longer matches its sha256: they cannot be served or deployed.",
		}, corrupt))
	return m
}

// CountRejected counts an upload refused before it reached Add (a
// malformed request body).
func (r *Registry) CountRejected() { r.metrics.uploads.WithLabelValues(uploadRejected).Inc() }
