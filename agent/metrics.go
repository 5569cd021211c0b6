package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The agent's optional Prometheus endpoint (Options.MetricsListen). Values
// are read from the agent's own counters when scraped, so serving metrics
// adds nothing to an inference.

var (
	descInferences = prometheus.NewDesc("edgefleet_agent_inferences_total",
		"Inferences answered by the serving version of a model.", []string{"model", "version"}, nil)
	descErrors = prometheus.NewDesc("edgefleet_agent_inference_errors_total",
		"Inferences the runtime failed, by model and serving version.", []string{"model", "version"}, nil)
	descRejects = prometheus.NewDesc("edgefleet_agent_inference_rejects_total",
		"Inference requests refused before the runtime (bad input), by model.", []string{"model"}, nil)
	descModel = prometheus.NewDesc("edgefleet_agent_model_info",
		"1 for each model slot: the serving version, the committed one and the update in progress.",
		[]string{"model", "serving", "active", "previous", "target", "on_trial"}, nil)
	descGeneration = prometheus.NewDesc("edgefleet_agent_desired_generation",
		"Highest desired-state generation the agent accepted.", nil, nil)
	descDropped = prometheus.NewDesc("edgefleet_agent_mqtt_payloads_dropped_total",
		"MQTT payloads that could not be decoded or were not for this agent.", nil, nil)
	descRefused = prometheus.NewDesc("edgefleet_agent_documents_refused_total",
		"Signed documents, chunks and updates refused by a check.", nil, nil)
	descTrust = prometheus.NewDesc("edgefleet_agent_trust_version",
		"Version of the trust bundle the agent trusts (0: none accepted yet).", nil, nil)
	descWriteFailures = prometheus.NewDesc("edgefleet_agent_state_write_failures_total",
		"Writes of the agent's persisted state that failed; the step was not acted on and is retried.", nil, nil)
	descQueued = prometheus.NewDesc("edgefleet_agent_telemetry_queued",
		"Telemetry reports waiting in the store-and-forward outbox.", nil, nil)
	descReportsDropped = prometheus.NewDesc("edgefleet_agent_telemetry_dropped_total",
		"Telemetry reports dropped because the outbox was full.", nil, nil)
	descUp = prometheus.NewDesc("edgefleet_agent_uptime_seconds",
		"Seconds since the agent started.", nil, nil)
)

// metricsCollector reads the agent at scrape time.
type metricsCollector struct{ a *Agent }

func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInferences, descErrors, descRejects, descModel, descGeneration,
		descDropped, descRefused, descTrust, descWriteFailures, descQueued, descReportsDropped, descUp} {
		ch <- d
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	for _, st := range a.Status() {
		s := a.slot(st.Name)
		if s == nil {
			continue
		}
		if m := s.serving.Load(); m != nil {
			ch <- prometheus.MustNewConstMetric(descInferences, prometheus.CounterValue, float64(m.inferences.Load()), st.Name, m.version)
			ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(m.errors.Load()), st.Name, m.version)
		}
		ch <- prometheus.MustNewConstMetric(descRejects, prometheus.CounterValue, float64(s.rejects.Load()), st.Name)
		trial := "false"
		if st.OnTrial {
			trial = "true"
		}
		ch <- prometheus.MustNewConstMetric(descModel, prometheus.GaugeValue, 1, st.Name, st.Serving, st.Active, st.Previous, st.Target, trial)
	}
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(a.Generation()))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(a.Dropped()))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(a.Refused()))
	ch <- prometheus.MustNewConstMetric(descTrust, prometheus.GaugeValue, float64(a.TrustVersion()))
	ch <- prometheus.MustNewConstMetric(descWriteFailures, prometheus.CounterValue, float64(a.StateWriteFailures()))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(a.QueuedReports()))
	ch <- prometheus.MustNewConstMetric(descReportsDropped, prometheus.CounterValue, float64(a.ReportsDropped()))
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, a.opts.Clock().Sub(a.started).Seconds())
}

// metricsHandler serves the agent's metrics from a registry of its own.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{a}, captureCollector{a})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// serveHTTP serves h on ln until ctx ends, then shuts it down gracefully.
// Both goroutines belong to wg.
func (a *Agent) serveHTTP(ctx context.Context, wg *sync.WaitGroup, name string, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "server", name, "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
}
