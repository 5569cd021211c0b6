package agent

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The agent's optional Prometheus endpoint (Options.MetricsListen). Values
// are read from the agent's own counters when scraped, so serving metrics
// adds nothing to an inference. The text exposition format (0.0.4) is
// written here rather than with the Prometheus client library: a dozen
// gauges and counters do not justify the library's weight in a device
// binary (docs/benchmarks.md, the agent's size).

// metricDesc is one metric family.
type metricDesc struct {
	name, help, typ string
	labels          []string
}

var (
	descInferences = metricDesc{"edgefleet_agent_inferences_total",
		"Inferences answered by the serving version of a model.", "counter", []string{"model", "version"}}
	descErrors = metricDesc{"edgefleet_agent_inference_errors_total",
		"Inferences the runtime failed, by model and serving version.", "counter", []string{"model", "version"}}
	descRejects = metricDesc{"edgefleet_agent_inference_rejects_total",
		"Inference requests refused before the runtime (bad input), by model.", "counter", []string{"model"}}
	descModel = metricDesc{"edgefleet_agent_model_info",
		"1 for each model slot: the serving version, the committed one and the update in progress.", "gauge",
		[]string{"model", "serving", "active", "previous", "target", "on_trial"}}
	descGeneration = metricDesc{"edgefleet_agent_desired_generation",
		"Highest desired-state generation the agent accepted.", "gauge", nil}
	descDropped = metricDesc{"edgefleet_agent_mqtt_payloads_dropped_total",
		"MQTT payloads that could not be decoded or were not for this agent.", "counter", nil}
	descRefused = metricDesc{"edgefleet_agent_documents_refused_total",
		"Signed documents, chunks and updates refused by a check.", "counter", nil}
	descTrust = metricDesc{"edgefleet_agent_trust_version",
		"Version of the trust bundle the agent trusts (0: none accepted yet).", "gauge", nil}
	descWriteFailures = metricDesc{"edgefleet_agent_state_write_failures_total",
		"Writes of the agent's persisted state that failed; the step was not acted on and is retried.", "counter", nil}
	descQueued = metricDesc{"edgefleet_agent_telemetry_queued",
		"Reports waiting in the store-and-forward outbox until the control plane acknowledges them.", "gauge", nil}
	descReportsDropped = metricDesc{"edgefleet_agent_telemetry_dropped_total",
		"Reports dropped because the outbox was full or the control plane never acknowledged them.", "counter", nil}
	descUp = metricDesc{"edgefleet_agent_uptime_seconds",
		"Seconds since the agent started.", "gauge", nil}
	descGoMemory = metricDesc{"edgefleet_agent_go_memory_bytes",
		"Memory the Go runtime has mapped, by class (runtime/metrics /memory/classes: heap_objects, heap_free, " +
			"heap_released, heap_stacks, metadata_*, os_stacks, other ...); all but heap_released count in the " +
			"process's RSS once touched, and the rest of its anonymous memory is onnxruntime's and the C threads'.",
		"gauge", []string{"class"}}
)

// goMemoryClasses are the runtime/metrics samples behind descGoMemory, read
// at each scrape: the memory classes, each labelled by its path
// ("/memory/classes/heap/free:bytes" is heap_free), without their total.
func goMemoryClasses() ([]metrics.Sample, []string) {
	var samples []metrics.Sample
	var classes []string
	for _, d := range metrics.All() {
		name, ok := strings.CutPrefix(d.Name, "/memory/classes/")
		if !ok || name == "total:bytes" {
			continue
		}
		samples = append(samples, metrics.Sample{Name: d.Name})
		classes = append(classes, strings.ReplaceAll(strings.TrimSuffix(name, ":bytes"), "/", "_"))
	}
	return samples, classes
}

// metricSample is one value of a family, its label values in the
// family's label order.
type metricSample struct {
	desc   *metricDesc
	values []string
	v      float64
}

// collect reads the agent at scrape time.
func (a *Agent) collectMetrics() []metricSample {
	var out []metricSample
	add := func(d *metricDesc, v float64, values ...string) {
		out = append(out, metricSample{desc: d, values: values, v: v})
	}
	for _, st := range a.Status() {
		s := a.slot(st.Name)
		if s == nil {
			continue
		}
		if m := s.serving.Load(); m != nil {
			add(&descInferences, float64(m.inferences.Load()), st.Name, m.version)
			add(&descErrors, float64(m.errors.Load()), st.Name, m.version)
		}
		add(&descRejects, float64(s.rejects.Load()), st.Name)
		add(&descModel, 1, st.Name, st.Serving, st.Active, st.Previous, st.Target, strconv.FormatBool(st.OnTrial))
	}
	add(&descGeneration, float64(a.Generation()))
	add(&descDropped, float64(a.Dropped()))
	add(&descRefused, float64(a.Refused()))
	add(&descTrust, float64(a.TrustVersion()))
	add(&descWriteFailures, float64(a.StateWriteFailures()))
	add(&descQueued, float64(a.QueuedReports()))
	add(&descReportsDropped, float64(a.ReportsDropped()))
	add(&descUp, a.opts.Clock().Sub(a.started).Seconds())
	samples, classes := goMemoryClasses()
	metrics.Read(samples)
	for i, smp := range samples {
		if smp.Value.Kind() == metrics.KindUint64 {
			add(&descGoMemory, float64(smp.Value.Uint64()), classes[i])
		}
	}
	a.captureMetrics(add)
	return out
}

// families lists every family once, in the order served.
var families = []*metricDesc{&descInferences, &descErrors, &descRejects, &descModel, &descGeneration,
	&descDropped, &descRefused, &descTrust, &descWriteFailures, &descQueued, &descReportsDropped, &descUp, &descGoMemory,
	&descCaptureQueued, &descCaptureBytes, &descCaptureUploaded, &descCaptureDropped}

// writeMetrics writes samples in the Prometheus text format, families in
// a fixed order and each family's samples sorted by their labels, labels by
// name (as the client library does).
func writeMetrics(w *bufio.Writer, samples []metricSample) {
	for _, d := range families {
		var lines []string
		for _, s := range samples {
			if s.desc != d {
				continue
			}
			lines = append(lines, d.name+labelText(d.labels, s.values)+" "+strconv.FormatFloat(s.v, 'g', -1, 64))
		}
		if len(lines) == 0 {
			continue
		}
		slices.Sort(lines)
		w.WriteString("# HELP " + d.name + " " + d.help + "\n# TYPE " + d.name + " " + d.typ + "\n")
		for _, l := range lines {
			w.WriteString(l + "\n")
		}
	}
}

// labelText is {a="x",b="y"} with the labels sorted by name, or "".
func labelText(names, values []string) string {
	if len(names) == 0 {
		return ""
	}
	order := make([]int, len(names))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(names[x], names[y]) })
	pairs := make([]string, len(names))
	for i, j := range order {
		pairs[i] = names[j] + `="` + labelEscaper.Replace(values[j]) + `"`
	}
	return "{" + strings.Join(pairs, ",") + "}"
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// metricsHandler serves the agent's metrics.
func (a *Agent) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		writeMetrics(bw, a.collectMetrics())
		_ = bw.Flush()
	})
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
