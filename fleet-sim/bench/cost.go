package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// CostOptions configure Cost. Zero values are documented defaults.
type CostOptions struct {
	// N is the agents the rollout goes to; default 1000.
	N int
	// ModelBytes is the rolled-out model's size; default 1 MiB.
	ModelBytes int
	// ReportRate is the telemetry reports per second offered; default
	// 10000. Reporters raw device clients send them; default 1000.
	ReportRate int
	Reporters  int
	// Duration is the telemetry window after Warmup; defaults 20s and 3s.
	Duration time.Duration
	Warmup   time.Duration
	// FetchRetry is the agents' fetch retry interval in the rollout;
	// default 2s. On a loaded machine agents ask again while a round is
	// still being delivered and chunks go out again: a longer one measures
	// the control plane's cost with each chunk published once.
	FetchRetry time.Duration
	// Rollouts is how many rollouts of a new version, each ModelBytes, go
	// to the agents one after another; their median CPU is the ratio's
	// numerator. BaselineRuns is how many times the raw fan-out runs after
	// them; its median is the denominator. Defaults 3 and 3: single raw
	// runs ranged 1.2–3.8 CPU-s on one idle machine within minutes, and a
	// process's first run grows the heap the later ones reuse.
	Rollouts     int
	BaselineRuns int
	// ControlPlaneBin is the edgefleet binary run as `serve`; required.
	ControlPlaneBin string
	// SimBin is the fleet-sim binary run as `bench rawbroker` for the
	// baselines; default this process's executable.
	SimBin string
	// ControlPlaneProfile, if set, is where the control plane process
	// writes a CPU profile of its whole run (serve --cpu-profile), or
	// with ControlPlaneProfileWindow of the rollout's measured window only
	// (serve --cpu-profile-on-signal; the telemetry part is not profiled).
	ControlPlaneProfile       string
	ControlPlaneProfileWindow bool
	// BaselineProfile, if set, is where the raw broker process writes a
	// CPU profile of its fan-outs.
	BaselineProfile string
	// AgentDir, if set, is where the agents' model files go during the
	// rollouts (in a directory of their own, removed after), e.g. a tmpfs:
	// 1,000 agents write a model each per rollout, and on this machine's
	// one disk the writeback showed in the next run's load. Without it they
	// go under Dir, and are removed after the rollouts too.
	AgentDir string
	// SkipRollout and SkipTelemetry leave one part out.
	SkipRollout, SkipTelemetry bool
	Dir                        string
	ORTLibrary                 string
	Progress                   io.Writer
}

func (o *CostOptions) defaults() error {
	if o.N <= 0 {
		o.N = 1000
	}
	if o.ModelBytes <= 0 {
		o.ModelBytes = 1 << 20
	}
	if o.FetchRetry <= 0 {
		o.FetchRetry = 2 * time.Second
	}
	if o.Rollouts <= 0 {
		o.Rollouts = 3
	}
	if o.BaselineRuns <= 0 {
		o.BaselineRuns = 3
	}
	if o.ReportRate <= 0 {
		o.ReportRate = 10000
	}
	if o.Reporters <= 0 {
		o.Reporters = 1000
	}
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	if o.Warmup <= 0 {
		o.Warmup = 3 * time.Second
	}
	if o.ControlPlaneBin == "" {
		return errors.New("cost: the edgefleet binary is required (--cp-bin)")
	}
	if o.SimBin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cost: this executable: %w", err)
		}
		o.SimBin = exe
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// CostResult is the control plane's cost measured out of process.
type CostResult struct {
	Rollout   *RolloutCost   `json:"rollout,omitempty"`
	Telemetry *TelemetryCost `json:"telemetry,omitempty"`
}

// RolloutCost is the control plane's CPU per rollout against a raw fan-out
// of the same chunks through a broker process of the same code. Both sides
// run several times in their processes and compare medians: the first run
// of either grows its process's heap and pools, which a long-running
// broker or control plane has done long before (FirstRatio compares the
// two first runs).
type RolloutCost struct {
	N          int    `json:"n"`
	ModelBytes uint64 `json:"model_bytes"`
	Chunks     uint32 `json:"chunks"`
	// Runs are the rollouts, one new version each, one after another to
	// the same agents.
	Runs []RolloutRun `json:"runs"`
	// Seconds, CPUSeconds, ChunkPublishes, ClientDropped, PacketsIn,
	// PacketsOut and AcksPerDevice are the medians of Runs'.
	Seconds        float64 `json:"seconds"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	ChunkPublishes float64 `json:"chunk_publishes"`
	ClientDropped  float64 `json:"broker_client_dropped"`
	PacketsIn      float64 `json:"packets_in_per_device"`
	PacketsOut     float64 `json:"packets_out_per_device"`
	AcksPerDevice  float64 `json:"acks_per_device"`
	// IdleCPU is the control plane's CPU per second with the same agents
	// connected and idle, measured before the first rollout, and
	// CPUNetSeconds CPUSeconds less IdleCPU × Seconds.
	IdleCPU       float64 `json:"idle_cpu_cores"`
	CPUNetSeconds float64 `json:"cpu_net_seconds"`
	// CPUPerDeviceMs is CPUSeconds per device, in milliseconds.
	CPUPerDeviceMs float64 `json:"cpu_ms_per_device"`
	// Baseline*: the raw broker process's CPU from the first chunk publish
	// until N raw subscribers hold every chunk, and that time: the median
	// of BaselineRuns fan-outs (each run's CPU in BaselineRunsCPU).
	BaselineCPUSeconds float64   `json:"baseline_cpu_seconds"`
	BaselineSeconds    float64   `json:"baseline_seconds"`
	BaselineRunsCPU    []float64 `json:"baseline_runs_cpu_seconds"`
	BaselineMissing    uint64    `json:"baseline_missing_deliveries"`
	// Ratio is CPUSeconds / BaselineCPUSeconds (goal ≤ 1.3), FirstRatio
	// the first rollout's CPU over the first raw fan-out's.
	Ratio      float64 `json:"ratio"`
	FirstRatio float64 `json:"first_ratio"`
	// RSSBefore is the control plane process's resident memory before the
	// agents connected, RSSAfter after the last rollout with the N agents
	// still connected.
	RSSBefore uint64 `json:"cp_rss_before_bytes"`
	RSSAfter  uint64 `json:"cp_rss_after_bytes"`
	// Load is the host's 1-minute load average at the start and the end.
	LoadStart float64 `json:"load_avg_start"`
	LoadEnd   float64 `json:"load_avg_end"`
}

// RolloutRun is one rollout: from the deploy until the control plane has
// recorded every device active.
type RolloutRun struct {
	Seconds float64 `json:"seconds"`
	// CPUSeconds is the control plane process's user+system CPU in that
	// span, its embedded broker included.
	CPUSeconds float64 `json:"cpu_seconds"`
	// Writes is the write syscalls the process made in that span.
	Writes         uint64  `json:"write_syscalls"`
	ChunkPublishes float64 `json:"chunk_publishes"`
	// ClientDropped is messages the control plane's broker dropped on full
	// per-client queues (edgefleet_broker_client_dropped_total): chunks an
	// agent then asks for again.
	ClientDropped float64 `json:"broker_client_dropped"`
	// PacketsIn and PacketsOut are the MQTT packets of any type the control
	// plane's broker received and sent per device, and AcksPerDevice the
	// acknowledgement messages it published per device
	// (edgefleet_broker_packets_*_total, edgefleet_report_acks_published_total).
	PacketsIn     float64 `json:"packets_in_per_device"`
	PacketsOut    float64 `json:"packets_out_per_device"`
	AcksPerDevice float64 `json:"acks_per_device"`
}

// summarize sets the medians of r.Runs for n devices.
func (r *RolloutCost) summarize(n int) {
	of := func(field func(RolloutRun) float64) float64 {
		v := make([]float64, len(r.Runs))
		for i, run := range r.Runs {
			v[i] = field(run)
		}
		return median(v)
	}
	r.Seconds = of(func(x RolloutRun) float64 { return x.Seconds })
	r.CPUSeconds = of(func(x RolloutRun) float64 { return x.CPUSeconds })
	r.ChunkPublishes = of(func(x RolloutRun) float64 { return x.ChunkPublishes })
	r.ClientDropped = of(func(x RolloutRun) float64 { return x.ClientDropped })
	r.PacketsIn = of(func(x RolloutRun) float64 { return x.PacketsIn })
	r.PacketsOut = of(func(x RolloutRun) float64 { return x.PacketsOut })
	r.AcksPerDevice = of(func(x RolloutRun) float64 { return x.AcksPerDevice })
	r.CPUNetSeconds = r.CPUSeconds - r.IdleCPU*r.Seconds
	r.CPUPerDeviceMs = r.CPUSeconds / float64(n) * 1000
}

// TelemetryCost is telemetry ingest in the control plane's process against
// a raw counting subscriber in a broker process of the same code, both fed
// by the same raw device clients.
type TelemetryCost struct {
	Reporters     int     `json:"reporters"`
	Offered       float64 `json:"offered_reports_per_second"`
	PayloadBytes  int     `json:"payload_bytes"`
	WindowSeconds float64 `json:"window_seconds"`
	// Published is the reports per second the broker acknowledged (PUBACK)
	// in the window, Ingested the reports per second the control plane
	// aggregated (edgefleet_monitor_reports_ingested_total).
	Published float64 `json:"published_per_second"`
	Ingested  float64 `json:"ingested_per_second"`
	// Lost is acknowledged reports never ingested (nor counted duplicate)
	// once the clients stopped and the control plane drained;
	// SubscriptionDropped is how many of the reports the broker dropped on
	// the control plane's full ingest queue
	// (edgefleet_broker_subscription_dropped_total). The control plane
	// never acknowledges a dropped report, and an agent resends it; these
	// clients do not.
	Lost                int64   `json:"lost"`
	SubscriptionDropped float64 `json:"subscription_dropped"`
	Duplicates          uint64  `json:"duplicates"`
	CPU                 float64 `json:"cpu_cores"`
	// CPUPer1000 is the control plane's CPU cores per 1,000 reports/s
	// ingested (= CPU seconds per 1,000 reports).
	CPUPer1000 float64 `json:"cpu_cores_per_1000_reports_per_second"`
	AcksSeen   uint64  `json:"ack_messages"`

	BaselinePublished  float64 `json:"baseline_published_per_second"`
	BaselineReceived   float64 `json:"baseline_received_per_second"`
	BaselineLost       int64   `json:"baseline_lost"`
	BaselineDropped    uint64  `json:"baseline_dropped"`
	BaselineCPU        float64 `json:"baseline_cpu_cores"`
	BaselineCPUPer1000 float64 `json:"baseline_cpu_cores_per_1000_reports_per_second"`
	// Ratio is Ingested / BaselineReceived (goal ≥ 0.95), CPURatio
	// CPUPer1000 / BaselineCPUPer1000.
	Ratio     float64 `json:"ratio"`
	CPURatio  float64 `json:"cpu_ratio"`
	LoadStart float64 `json:"load_avg_start"`
	LoadEnd   float64 `json:"load_avg_end"`
}

// Cost runs the control plane (`edgefleet serve`, embedded broker) as its
// own process and measures its CPU from /proc: for one rollout of a
// ModelBytes model to N agents of this process, and for telemetry ingest at
// ReportRate reports per second from raw device clients with real
// credentials and real report payloads. The baselines run the same clients
// against a broker of the same package and settings in another process
// (RawBroker): a raw fan-out of the same chunk payloads to N raw
// subscribers, and a subscriber that only counts.
func Cost(ctx context.Context, o CostOptions) (*CostResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	res := &CostResult{}
	raw, err := startRawBrokerProcess(o.SimBin, mkdir(o.Dir))
	if err != nil {
		return nil, err
	}
	defer raw.close()
	cp, err := startControlPlaneProcess(ctx, o.ControlPlaneBin, filepath.Join(o.Dir, "cp"), o.ORTLibrary, o.ControlPlaneProfile, o.ControlPlaneProfileWindow)
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	fmt.Fprintf(o.Progress, "control plane pid %d (%s), raw broker pid %d (%s)\n", cp.pid(), cp.remote.APIURL, raw.pid(), raw.url)
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
	if err != nil {
		return nil, err
	}
	if !o.SkipRollout {
		r, err := rolloutCost(ctx, o, cp, raw, art)
		if err != nil {
			return res, fmt.Errorf("rollout: %w", err)
		}
		res.Rollout = r
		fmt.Fprintf(o.Progress, "\n| N | model bytes | rollouts | deploy → all active s | control plane CPU s (idle cores) | CPU ms / device | chunk publishes (client queue drops) | raw fan-out CPU s (time s) | **ratio** | first runs' ratio | control plane RSS before → after MiB | load avg start → end |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(o.Progress, "| %d | %d | %d | %.2f | %.2f (%.3f) | %.2f | %.0f (%.0f) | %.2f (%.2f) | **%.2f** | %.2f | %.0f → %.0f | %.1f → %.1f |\n",
			r.N, r.ModelBytes, len(r.Runs), r.Seconds, r.CPUSeconds, r.IdleCPU, r.CPUPerDeviceMs, r.ChunkPublishes, r.ClientDropped, r.BaselineCPUSeconds, r.BaselineSeconds, r.Ratio, r.FirstRatio, float64(r.RSSBefore)/(1<<20), float64(r.RSSAfter)/(1<<20), r.LoadStart, r.LoadEnd)
		fmt.Fprintln(o.Progress, "\n(medians: of the control plane's rollouts and of the raw fan-outs; the first runs' ratio compares the first of each)")
		fmt.Fprintf(o.Progress, "\nper device during the rollout: %.1f MQTT packets received, %.1f sent by the control plane's broker; %.2f acknowledgement messages\n",
			r.PacketsIn, r.PacketsOut, r.AcksPerDevice)
	}
	if !o.SkipTelemetry {
		t, err := telemetryCost(ctx, o, cp, raw, art)
		if err != nil {
			return res, fmt.Errorf("telemetry: %w", err)
		}
		res.Telemetry = t
		fmt.Fprintf(o.Progress, "\n| reporters | offered /s | payload B | published /s | **ingested /s** | lost (ingest queue drops) | CPU cores | **CPU cores per 1,000/s** | raw: published /s | raw received /s (lost, dropped) | raw CPU cores per 1,000/s | **rate ratio** | CPU ratio | load avg start → end |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(o.Progress, "| %d | %.0f | %d | %.0f | **%.0f** | %d (%.0f) | %.2f | **%.3f** | %.0f | %.0f (%d, %d) | %.3f | **%.3f** | %.2f | %.1f → %.1f |\n",
			t.Reporters, t.Offered, t.PayloadBytes, t.Published, t.Ingested, t.Lost, t.SubscriptionDropped, t.CPU, t.CPUPer1000, t.BaselinePublished, t.BaselineReceived,
			t.BaselineLost, t.BaselineDropped, t.BaselineCPUPer1000, t.Ratio, t.CPURatio, t.LoadStart, t.LoadEnd)
	}
	return res, nil
}

func mkdir(dir string) string {
	_ = os.MkdirAll(dir, 0o750) // a failure shows when the child's log cannot be created
	return dir
}

// metric reads one unlabelled series from the control plane's /metrics.
// settledMetric reads a counter once it has stopped growing for
// settleFor (at most settleMax): the acknowledgements of a rollout's last
// status events go out with the acker's next batch (every second), after
// the rollout's window has closed; read at once they were sometimes none.
func settledMetric(ctx context.Context, c *client.Client, name string) (float64, error) {
	const settleFor, settleMax = 2500 * time.Millisecond, 15 * time.Second
	v, err := metric(ctx, c, name)
	if err != nil {
		return 0, err
	}
	deadline, since := time.Now().Add(settleMax), time.Now()
	for time.Since(since) < settleFor && time.Now().Before(deadline) {
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return 0, err
		}
		w, err := metric(ctx, c, name)
		if err != nil {
			return 0, err
		}
		if w != v {
			v, since = w, time.Now()
		}
	}
	return v, nil
}

func metric(ctx context.Context, c *client.Client, name string) (float64, error) {
	m, err := metricsOf(ctx, c, name)
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("/metrics has no %s", name)
	}
	return v, nil
}

// metricsOf reads the unlabelled series names from one scrape of the
// control plane's /metrics; a series it lacks is absent from the map.
func metricsOf(ctx context.Context, c *client.Client, names ...string) (map[string]float64, error) {
	text, err := c.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(names))
	for _, line := range strings.Split(text, "\n") {
		for _, name := range names {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					out[name] = f
				}
			}
		}
	}
	return out, nil
}

// The control plane's counters a rollout is measured by.
const (
	chunkPublishes = "edgefleet_chunk_publishes_total"
	clientDropped  = "edgefleet_broker_client_dropped_total"
	packetsIn      = "edgefleet_broker_packets_received_total"
	packetsOut     = "edgefleet_broker_packets_sent_total"
	acksPublished  = "edgefleet_report_acks_published_total"
)

func rolloutCost(ctx context.Context, o CostOptions, cp *cpProcess, raw *rawBrokerProcess, art *fraud.Artifact) (*RolloutCost, error) {
	r := &RolloutCost{N: o.N, LoadStart: loadAvg()}
	rt, err := infer.NewRuntime(o.ORTLibrary, nil)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	big, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 2, Rows: 4000})
	if err != nil {
		return nil, err
	}
	model := onnxbuild.Pad(big.ONNX, max(o.ModelBytes-len(big.ONNX)-8, 0))
	devs := devicesFor(o.N)
	agentDir := filepath.Join(o.Dir, "fleet", "agents") // sim's own place for them
	if o.AgentDir != "" {
		// Every agent keeps two versions.
		if err := checkRoom(o.AgentDir, o.N, uint64(2*len(model)+agentDirSlack)); err != nil {
			return nil, err
		}
		if agentDir, err = os.MkdirTemp(o.AgentDir, "fleet-sim-cost-*"); err != nil {
			return nil, fmt.Errorf("--agent-dir: %w", err)
		}
	}
	// The models the agents wrote (gigabytes at 1,000 agents) are of no
	// use once measured; logs and the control plane's data stay in Dir.
	defer os.RemoveAll(agentDir)
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(o.Dir, "fleet"),
		AgentDir:           agentDir,
		Devices:            devs,
		Runtime:            rt,
		Remote:             cp.remote,
		Transport:          sim.TransportTCP,
		HeartbeatInterval:  time.Hour, // no telemetry during the rollout
		FetchRetryInterval: o.FetchRetry,
	})
	if err != nil {
		return nil, err
	}
	defer f.Stop()
	r.RSSBefore = cp.rss()
	t0 := time.Now()
	if err := f.Start(ctx); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Progress, "%d agents started in %.1fs\n", o.N, time.Since(t0).Seconds())
	if err := deployAll(ctx, f, "1", art, 10*time.Minute); err != nil {
		return nil, err
	}
	mv, err := cp.remote.AddModelVersion(ctx, "fraud", "2", model, big.Metadata(), false)
	if err != nil {
		return nil, err
	}
	r.ModelBytes, r.Chunks = mv.Size, mv.ChunkCount
	versions := []string{"2"}
	for k := 1; k < o.Rollouts; k++ { // each a byte shorter than the one before, so no two are the same model
		version := strconv.Itoa(k + 2)
		next, err := cp.remote.AddModelVersion(ctx, "fraud", version, onnxbuild.Pad(big.ONNX, max(o.ModelBytes-len(big.ONNX)-8-k, 0)), big.Metadata(), false)
		if err != nil {
			return nil, err
		}
		if next.ChunkCount != mv.ChunkCount {
			return nil, fmt.Errorf("version %s has %d chunks, version 2 %d", version, next.ChunkCount, mv.ChunkCount)
		}
		versions = append(versions, version)
	}
	mc, err := client.New(cp.remote.APIURL, client.Options{Token: cp.remote.Token})
	if err != nil {
		return nil, err
	}
	defer mc.CloseIdleConnections()

	// Idle: the agents connected, nothing happening.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	i0, err := cp.cpu()
	if err != nil {
		return nil, err
	}
	it := time.Now()
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		return nil, err
	}
	i1, err := cp.cpu()
	if err != nil {
		return nil, err
	}
	r.IdleCPU = (i1 - i0) / time.Since(it).Seconds()

	if o.ControlPlaneProfile != "" && o.ControlPlaneProfileWindow {
		if err := cp.profileWindow(true); err != nil {
			return nil, err
		}
	}
	for k, version := range versions {
		run, err := measureRollout(ctx, o, cp, mc, f, version)
		if err != nil {
			return nil, fmt.Errorf("rollout %d of %d: %w", k+1, len(versions), err)
		}
		fmt.Fprintf(o.Progress, "rollout %d of %d (version %s): %.2f CPU-s in %.2f s, %.0f chunk publishes, %d write syscalls\n", k+1, len(versions), version, run.CPUSeconds, run.Seconds, run.ChunkPublishes, run.Writes)
		r.Runs = append(r.Runs, run)
	}
	if o.ControlPlaneProfile != "" && o.ControlPlaneProfileWindow {
		if err := cp.profileWindow(false); err != nil {
			return nil, err
		}
	}
	r.RSSAfter = cp.rss()
	r.summarize(o.N)
	if err := f.Stop(); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(agentDir); err != nil {
		return nil, fmt.Errorf("the agents' files: %w", err)
	}

	// Baseline: the same chunk payloads to N raw subscribers.
	mf := filepath.Join(o.Dir, "model-2.onnx")
	if err := os.WriteFile(mf, model, 0o600); err != nil {
		return nil, err
	}
	if _, err := raw.do(fmt.Sprintf("chunks %s %d fraud 2", mf, mv.ChunkSize)); err != nil {
		return nil, err
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = "raw-" + d.ID
	}
	topic := topics.Scheme{Prefix: topics.DefaultPrefix}.Chunks("fraud", "2")
	subs, err := connectRaw(ctx, raw.url, ids, nil)
	if err != nil {
		return nil, err
	}
	defer subs.close()
	want := uint64(len(ids)) * uint64(mv.ChunkCount) // per run
	var (
		mu     sync.Mutex
		got    uint64
		target = want
		all    = make(chan struct{}, 1)
	)
	if err := subs.subscribe(topic, func(paho.Client, paho.Message) {
		mu.Lock()
		got++
		if got == target {
			all <- struct{}{}
		}
		mu.Unlock()
	}); err != nil {
		return nil, err
	}
	if o.BaselineProfile != "" {
		if _, err := raw.do("profile " + o.BaselineProfile); err != nil {
			return nil, err
		}
	}
	var secs []float64
	for run := range o.BaselineRuns {
		mu.Lock()
		got, target = 0, want
		mu.Unlock()
		b0, bw0, err := raw.usage()
		if err != nil {
			return nil, err
		}
		bt := time.Now()
		if _, err := raw.do("publish"); err != nil {
			return nil, err
		}
		select {
		case <-all:
		case <-time.After(2 * time.Minute):
			mu.Lock()
			r.BaselineMissing += want - got
			target = 0 // a late delivery must not signal the next run
			mu.Unlock()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		secs = append(secs, time.Since(bt).Seconds())
		// The control plane's window holds every PUBACK of its rollout;
		// this one closes once the broker has had every chunk's.
		if err := awaitRawAcks(ctx, raw); err != nil {
			return nil, err
		}
		b1, bw1, err := raw.usage()
		if err != nil {
			return nil, err
		}
		r.BaselineRunsCPU = append(r.BaselineRunsCPU, b1-b0)
		fmt.Fprintf(o.Progress, "raw fan-out %d of %d: %.2f CPU-s in %.2f s, %d write syscalls\n", run+1, o.BaselineRuns, b1-b0, secs[len(secs)-1], bw1-bw0)
	}
	if o.BaselineProfile != "" {
		if _, err := raw.do("profile-stop"); err != nil {
			return nil, err
		}
	}
	r.BaselineCPUSeconds, r.BaselineSeconds = median(r.BaselineRunsCPU), median(secs)
	if r.BaselineCPUSeconds > 0 {
		r.Ratio = r.CPUSeconds / r.BaselineCPUSeconds
	}
	if len(r.Runs) > 0 && r.BaselineRunsCPU[0] > 0 {
		r.FirstRatio = r.Runs[0].CPUSeconds / r.BaselineRunsCPU[0]
	}
	r.LoadEnd = loadAvg()
	return r, nil
}

// measureRollout deploys version to every agent of f and measures the
// control plane process from the deploy until it has recorded every device
// active.
func measureRollout(ctx context.Context, o CostOptions, cp *cpProcess, mc *client.Client, f *sim.Fleet, version string) (RolloutRun, error) {
	var run RolloutRun
	counters := []string{chunkPublishes, clientDropped, packetsIn, packetsOut, acksPublished}
	before, _ := metricsOf(ctx, mc, counters...) // a series missing reads as 0 on both sides
	c0, w0, err := cp.usage()
	if err != nil {
		return run, err
	}
	start := time.Now()
	if _, err := cp.remote.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: version, Devices: memberIDs(f)}); err != nil {
		return run, err
	}
	if _, err := waitServingTimes(ctx, f, "fraud", version, start, 10*time.Minute, nil); err != nil {
		return run, err
	}
	// The control plane's part ends when it has recorded every device
	// active (their last status events). The asking is in the measured
	// window, so it is kept small: one list of the fleet (a 1,000-device
	// list is tens of milliseconds of the control plane's CPU), then once
	// a second only the devices not yet recorded active.
	if err := awaitRecordedActive(ctx, cp, mc, version, o.N, start); err != nil {
		return run, err
	}
	c1, w1, err := cp.usage()
	if err != nil {
		return run, err
	}
	run.Seconds = time.Since(start).Seconds()
	run.CPUSeconds, run.Writes = c1-c0, w1-w0
	if after, err := metricsOf(ctx, mc, counters...); err == nil {
		run.ChunkPublishes = after[chunkPublishes] - before[chunkPublishes]
		run.ClientDropped = after[clientDropped] - before[clientDropped]
		run.PacketsIn = (after[packetsIn] - before[packetsIn]) / float64(o.N)
		run.PacketsOut = (after[packetsOut] - before[packetsOut]) / float64(o.N)
	}
	// Read last: it waits for the acknowledgements to settle, which also
	// keeps the next rollout's window clear of this one's tail.
	if ack1, err := settledMetric(ctx, mc, acksPublished); err == nil {
		run.AcksPerDevice = (ack1 - before[acksPublished]) / float64(o.N)
	}
	return run, nil
}

// awaitRawAcks waits until the raw broker holds no message unacknowledged,
// at most 10 s (a subscriber that never answers leaves some).
func awaitRawAcks(ctx context.Context, raw *rawBrokerProcess) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := raw.do("unacked")
		if err != nil {
			return err
		}
		if len(f) == 1 && f[0] == "0" || time.Now().After(deadline) {
			return nil
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// awaitRecordedActive waits until the control plane has recorded n
// devices serving version of fraud as active, at most 10 minutes after
// start.
func awaitRecordedActive(ctx context.Context, cp *cpProcess, mc *client.Client, version string, n int, start time.Time) error {
	// Past this many devices behind, one list costs less than asking
	// for each.
	const askEachBelow = 50
	active := func(d api.Device) bool {
		m := d.Reported["fraud"]
		return m != nil && m.ActiveVersion == version && m.State == api.ModelActive
	}
	listBehind := func() ([]string, error) {
		list, err := cp.remote.Devices("")
		if err != nil {
			return nil, err
		}
		if len(list) < n {
			return nil, fmt.Errorf("the control plane lists %d devices, not %d", len(list), n)
		}
		var behind []string
		for _, d := range list {
			if !active(d) {
				behind = append(behind, d.ID)
			}
		}
		return behind, nil
	}
	behind, err := listBehind()
	for err == nil && len(behind) > 0 {
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("the control plane recorded %d of %d devices active after 10m", n-len(behind), n)
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		if len(behind) >= askEachBelow {
			behind, err = listBehind()
			continue
		}
		still := behind[:0]
		for _, id := range behind {
			d, derr := mc.Device(ctx, id)
			if derr != nil {
				return derr
			}
			if !active(d) {
				still = append(still, id)
			}
		}
		behind = still
	}
	return err
}

// rawClients are plain paho clients, one per device id.
type rawClients struct {
	ids     []string
	clients []paho.Client
}

// connectRaw connects one clean-session MQTT 3.1.1 client per id to url,
// 32 at a time, with creds[i] if given (else the id and any password).
func connectRaw(ctx context.Context, url string, ids []string, creds []api.DeviceCredentials) (*rawClients, error) {
	rc := &rawClients{ids: ids, clients: make([]paho.Client, len(ids))}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			user, pass := id, "x"
			if creds != nil {
				user, pass = creds[i].Username, creds[i].Password
			}
			o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).
				SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true).SetOrderMatters(false)
			c := paho.NewClient(o)
			if t := c.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
				errs[i] = fmt.Errorf("connect %s: %v", id, t.Error())
				return
			}
			rc.clients[i] = c
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		rc.close()
		return nil, err
	}
	if ctx.Err() != nil {
		rc.close()
		return nil, ctx.Err()
	}
	return rc, nil
}

// subscribe subscribes every client to topic (QoS 1); a topic holding
// "{id}" is each client's own.
func (rc *rawClients) subscribe(topic string, h paho.MessageHandler) error {
	for i, c := range rc.clients {
		tp := strings.ReplaceAll(topic, "{id}", rc.ids[i])
		if t := c.Subscribe(tp, 1, h); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
			return fmt.Errorf("subscribe %s to %s: %v", rc.ids[i], tp, t.Error())
		}
	}
	return nil
}

func (rc *rawClients) close() {
	for _, c := range rc.clients {
		if c != nil {
			c.Disconnect(0)
		}
	}
}

// reportSource makes real telemetry reports: what an agent serving fraud@2
// at 2 inferences a second sends, its monitoring report built by the drift
// sketches the agent uses from the model's reference bins, synthetic
// transactions and the model's own scores.
type reportSource struct {
	template *efpb.Telemetry
}

func newReportSource(art *fraud.Artifact, version string) (*reportSource, error) {
	g, err := fraud.NewGenerator(7, fraud.Params{})
	if err != nil {
		return nil, err
	}
	const rows = 2
	d := g.Generate(rows)
	r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: version, Rows: rows, Binary: true,
		LatencyEdgesUs: drift.LatencyEdgesMicros()}
	for j, ref := range art.Reference {
		s, err := drift.FromStats(ref)
		if err != nil {
			return nil, err
		}
		for _, row := range d.Rows {
			s.Add(float64(row[j]))
		}
		r.Features = append(r.Features, &efpb.FeatureSketch{Name: ref.GetName(), Counts: s.Counts()})
	}
	pred, _ := drift.NewSketch(drift.PredictionEdges())
	for _, p := range art.Predict(d.Rows) {
		pred.Add(float64(p))
	}
	r.PredictionCounts = pred.Counts()
	lat, _ := drift.NewSketch(drift.LatencyEdgesMicros())
	lat.Add(180)
	lat.Add(240)
	r.LatencyCounts = lat.Counts()
	r.CalibrationCounts = make([]uint64, drift.PredictionBins)
	r.CalibrationPositives = make([]uint64, drift.PredictionBins)
	t := &efpb.Telemetry{ProtocolVersion: efpb.ProtocolVersion, Generation: 2, AgentVersion: "v0.0.0-bench",
		UptimeSeconds: 3600, RssBytes: 24 << 20, TrustVersion: 1,
		Models:     []*efpb.ActiveModel{{Name: "fraud", Version: version, State: efpb.ModelState_MODEL_STATE_ACTIVE, Inferences: 7200}},
		Monitoring: []*efpb.MonitorReport{r}}
	return &reportSource{template: t}, nil
}

// report is device dev's report seq, stamped now.
func (s *reportSource) report(dev string, seq uint64) []byte {
	t := proto.CloneOf(s.template)
	now := time.Now().UnixMilli()
	t.DeviceId, t.Seq, t.TimeUnixMs = dev, seq, now
	t.Monitoring[0].WindowStartUnixMs, t.Monitoring[0].WindowEndUnixMs = now-1000, now
	p, _ := proto.Marshal(t) // a fixed, valid message
	return p
}

// publishStats counts one publishing run.
type publishStats struct {
	acked atomic.Uint64 // publishes the broker acknowledged
}

// publishReports has every client publish one report per interval (its
// seq counting from 1, each at its own phase), QoS 1, waiting for the
// PUBACK like an agent's outbox, until ctx ends.
func publishReports(ctx context.Context, rc *rawClients, src *reportSource, interval time.Duration, st *publishStats) *sync.WaitGroup {
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	var wg sync.WaitGroup
	for i, c := range rc.clients {
		dev := rc.ids[i]
		topic := scheme.Telemetry(dev)
		phase := time.Duration(int64(interval) * int64(i) / int64(len(rc.clients)))
		wg.Go(func() {
			if sleepCtx(ctx, phase) != nil {
				return
			}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for seq := uint64(1); ; seq++ {
				t := c.Publish(topic, 1, false, src.report(dev, seq))
				if t.WaitTimeout(10*time.Second) && t.Error() == nil {
					st.acked.Add(1)
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	return &wg
}

// window runs the publishers for warmup, then measures for duration with
// read (a counter of what arrived) and cpu, stops them and returns the
// window's rates and the total acknowledged.
type windowResult struct {
	published, received, cpu, seconds float64
	acked                             uint64
}

func measureWindow(ctx context.Context, o CostOptions, rc *rawClients, src *reportSource, read func() (float64, error), cpu func() (float64, error)) (windowResult, error) {
	var w windowResult
	interval := time.Duration(float64(time.Second) * float64(len(rc.clients)) / float64(o.ReportRate))
	st := &publishStats{}
	pctx, stop := context.WithCancel(ctx)
	wg := publishReports(pctx, rc, src, interval, st)
	defer func() { stop(); wg.Wait() }()
	if err := sleepCtx(ctx, o.Warmup); err != nil {
		return w, err
	}
	r0, err := read()
	if err != nil {
		return w, err
	}
	c0, err := cpu()
	if err != nil {
		return w, err
	}
	a0, t0 := st.acked.Load(), time.Now()
	if err := sleepCtx(ctx, o.Duration); err != nil {
		return w, err
	}
	r1, err := read()
	if err != nil {
		return w, err
	}
	c1, err := cpu()
	if err != nil {
		return w, err
	}
	a1 := st.acked.Load()
	w.seconds = time.Since(t0).Seconds()
	stop()
	wg.Wait()
	w.published = float64(a1-a0) / w.seconds
	w.received = (r1 - r0) / w.seconds
	w.cpu = (c1 - c0) / w.seconds
	w.acked = st.acked.Load()
	return w, nil
}

func telemetryCost(ctx context.Context, o CostOptions, cp *cpProcess, raw *rawBrokerProcess, art *fraud.Artifact) (*TelemetryCost, error) {
	t := &TelemetryCost{Reporters: o.Reporters, Offered: float64(o.ReportRate), LoadStart: loadAvg()}
	// fraud@1 is the version the reports are about (the rollout part
	// already uploaded it).
	if o.SkipRollout {
		if _, err := cp.remote.AddModelVersion(ctx, "fraud", "1", art.ONNX, art.Metadata(), false); err != nil {
			return nil, err
		}
	}
	src, err := newReportSource(art, "1")
	if err != nil {
		return nil, err
	}
	t.PayloadBytes = len(src.report("load-00000", 1))
	ids := make([]string, o.Reporters)
	creds := make([]api.DeviceCredentials, o.Reporters)
	for i := range ids {
		ids[i] = fmt.Sprintf("load-%05d", i)
		c, err := cp.remote.RegisterDevice(ids[i], map[string]string{"site": fmt.Sprintf("load-%d", i/25)})
		if err != nil {
			return nil, err
		}
		creds[i] = c
	}
	mc, err := client.New(cp.remote.APIURL, client.Options{Token: cp.remote.Token})
	if err != nil {
		return nil, err
	}
	defer mc.CloseIdleConnections()

	// The control plane, with real device credentials.
	rc, err := connectRaw(ctx, creds[0].BrokerURL, ids, creds)
	if err != nil {
		return nil, err
	}
	var acks atomic.Uint64
	if err := rc.subscribe(topics.Scheme{Prefix: topics.DefaultPrefix}.Ack("{id}"), func(paho.Client, paho.Message) { acks.Add(1) }); err != nil {
		rc.close()
		return nil, err
	}
	counted := func() (float64, error) {
		st, err := cp.remote.MonitorStats(ctx)
		return float64(st.Ingested), err
	}
	s0, err := cp.remote.MonitorStats(ctx)
	if err != nil {
		rc.close()
		return nil, err
	}
	sd0, _ := metric(ctx, mc, "edgefleet_broker_subscription_dropped_total")
	w, err := measureWindow(ctx, o, rc, src, counted, cp.cpu)
	if err != nil {
		rc.close()
		return nil, err
	}
	// Drain: every acknowledged report should be aggregated or counted a
	// duplicate.
	var s1 = s0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if s1, err = cp.remote.MonitorStats(ctx); err != nil {
			rc.close()
			return nil, err
		}
		if s1.Ingested+s1.Duplicates-s0.Ingested-s0.Duplicates >= w.acked {
			break
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			rc.close()
			return nil, err
		}
	}
	rc.close()
	if sd1, err := metric(ctx, mc, "edgefleet_broker_subscription_dropped_total"); err == nil {
		t.SubscriptionDropped = sd1 - sd0
	}
	t.WindowSeconds, t.Published, t.Ingested, t.CPU = w.seconds, w.published, w.received, w.cpu
	t.Lost = int64(w.acked) - int64(s1.Ingested+s1.Duplicates-s0.Ingested-s0.Duplicates)
	t.Duplicates = s1.Duplicates - s0.Duplicates
	t.AcksSeen = acks.Load()
	if t.Ingested > 0 {
		t.CPUPer1000 = t.CPU / (t.Ingested / 1000)
	}

	// The baseline: the same clients and reports, a counting subscriber.
	if _, err := raw.do("count"); err != nil {
		return nil, err
	}
	rb, err := connectRaw(ctx, raw.url, ids, nil)
	if err != nil {
		return nil, err
	}
	defer rb.close()
	rawCount := func() (float64, error) {
		f, err := raw.do("stats")
		if err != nil {
			return 0, err
		}
		if len(f) != 2 {
			return 0, fmt.Errorf("raw broker stats: %q", f)
		}
		return strconv.ParseFloat(f[0], 64)
	}
	b0, err := rawCount()
	if err != nil {
		return nil, err
	}
	bw, err := measureWindow(ctx, o, rb, src, rawCount, raw.cpu)
	if err != nil {
		return nil, err
	}
	var b1 float64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if b1, err = rawCount(); err != nil {
			return nil, err
		}
		if b1-b0 >= float64(bw.acked) {
			break
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	f, err := raw.do("stats")
	if err != nil {
		return nil, err
	}
	if len(f) == 2 {
		t.BaselineDropped, _ = strconv.ParseUint(f[1], 10, 64)
	}
	t.BaselinePublished, t.BaselineReceived, t.BaselineCPU = bw.published, bw.received, bw.cpu
	t.BaselineLost = int64(bw.acked) - int64(b1-b0)
	if t.BaselineReceived > 0 {
		t.BaselineCPUPer1000 = t.BaselineCPU / (t.BaselineReceived / 1000)
		t.Ratio = t.Ingested / t.BaselineReceived
	}
	if t.BaselineCPUPer1000 > 0 {
		t.CPURatio = t.CPUPer1000 / t.BaselineCPUPer1000
	}
	t.LoadEnd = loadAvg()
	return t, nil
}

// median of v (v is not modified; 0 for none).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
