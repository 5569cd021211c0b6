package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/fleet-sim/scenario"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FanoutOptions configure Fanout.
type FanoutOptions struct {
	Sizes      []int
	ModelBytes int
	// ProxyMax is the largest N measured through the counting proxy.
	ProxyMax int
	// FetchRetry is the agents' FetchRetryInterval; default 2s.
	FetchRetry time.Duration
	// Transport is sim.TransportTCP or sim.TransportMemory (default);
	// the baseline's subscribers connect the same way.
	Transport  string
	Dir        string
	ORTLibrary string
	Progress   io.Writer
	// AgentDir, if set, is where the agents' model files go (in a
	// directory of their own, removed afterwards) instead of under Dir,
	// e.g. a tmpfs: see sim.Options.AgentDir.
	AgentDir string
	// StoreOnDisk puts the agents' shared store in one badger on disk
	// with synced commits; by default it is in memory, as for Telemetry:
	// 10,000 agents' synced state changes through one store on one disk
	// queued behind each other's fsyncs (a device has its own disk), and
	// devices stalled there asked for the version seconds late.
	StoreOnDisk bool
	// RolloutProfile, if set, is where a CPU profile of the last fleet
	// size's rollout (deploy to every agent serving) is written: the
	// fleet's start, the warm-up version and the baseline left out.
	RolloutProfile string
}

// FanoutResult is one fleet size's rollout against its baseline.
type FanoutResult struct {
	N          int     `json:"n"`
	ModelBytes uint64  `json:"model_bytes"`
	Chunks     uint32  `json:"chunks"`
	ChunkSize  uint32  `json:"chunk_size"`
	Rollout    float64 `json:"rollout_seconds"` // deploy → every agent serving the version
	// RolloutCPU is the process's CPU-seconds (user and system) over the
	// rollout: the control plane, the broker and every agent, in one
	// process.
	RolloutCPU float64 `json:"rollout_cpu_seconds"`
	// FirstActive, MedianActive and P90Active are when the first, the
	// median and the 90th-percentile agent served the version.
	FirstActive  float64 `json:"first_active_seconds"`
	MedianActive float64 `json:"median_active_seconds"`
	P90Active    float64 `json:"p90_active_seconds"`
	// ChunkPublishes is how many chunk publishes the control plane made
	// for the version (the model has Chunks chunks); DirectPublishes of
	// them went to one device's own topic (a late asker's).
	ChunkPublishes  float64 `json:"chunk_publishes"`
	DirectPublishes float64 `json:"direct_chunk_publishes"`
	Baseline        float64 `json:"baseline_seconds"` // first publish → every raw subscriber has every chunk
	Ratio           float64 `json:"ratio"`
	// WireBytesPerAgent is the mean bytes each agent received from the
	// broker during the rollout (MQTT framing and every message, measured
	// by the proxy) divided by the model size; 0 when not measured.
	WireBytesPerAgent float64 `json:"wire_bytes_per_agent_over_model_size,omitempty"`
	// BaselineDropped counts chunk deliveries the raw subscribers missed.
	BaselineMissing uint64  `json:"baseline_missing_deliveries"`
	StartSeconds    float64 `json:"fleet_start_seconds"`
	// Phases says where the rollout's time went: for each phase an update
	// passes (downloading: desired state and manifest accepted, chunks
	// asked for; verifying: every chunk in; staging: file verified and
	// stored), when the median and the last agent entered it, in seconds
	// since the deploy; "active" is when they served the version.
	Phases map[string]PhaseTimes `json:"phases"`
}

// PhaseTimes are the median and last entry into a phase.
type PhaseTimes struct {
	Median float64 `json:"median_seconds"`
	Last   float64 `json:"last_seconds"`
}

// phaseClock records when each agent enters each phase of one update,
// through the agents' phase hook (no polling).
type phaseClock struct {
	t0     time.Time
	mu     sync.Mutex
	at     map[string][]float64 // phase → seconds since t0, one per agent
	staged map[string]bool      // devices that entered staging
}

func watchPhases(f *sim.Fleet, model, version string, t0 time.Time) *phaseClock {
	pc := &phaseClock{t0: t0, at: map[string][]float64{}, staged: map[string]bool{}}
	for _, m := range f.Members() {
		id := m.Device.ID
		_ = m.SetPhaseHook(func(_ context.Context, mod, ver string, phase agent.Phase) { // fails only for an agent not started: nothing to time
			if mod != model || ver != version {
				return
			}
			pc.mu.Lock()
			pc.at[string(phase)] = append(pc.at[string(phase)], time.Since(pc.t0).Seconds())
			if phase == agent.PhaseStaging {
				pc.staged[id] = true
			}
			pc.mu.Unlock()
		})
	}
	return pc
}

// hasStaged reports whether device id has entered staging: an agent serves
// a new version only after that (the wait polls no other).
func (pc *phaseClock) hasStaged(id string) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.staged[id]
}

func (pc *phaseClock) times(active []float64) map[string]PhaseTimes {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	out := map[string]PhaseTimes{}
	summarise := func(name string, v []float64) {
		if len(v) == 0 {
			return
		}
		v = slices.Clone(v)
		slices.Sort(v)
		out[name] = PhaseTimes{Median: v[len(v)/2], Last: v[len(v)-1]}
	}
	for phase, v := range pc.at {
		summarise(phase, v)
	}
	summarise("active", active)
	return out
}

// Fanout measures, per fleet size, how long a ModelBytes model takes from
// deploy to active on every agent, and the same bytes in the same chunks
// from one publisher to N raw subscribers.
func Fanout(ctx context.Context, o FanoutOptions) ([]FanoutResult, error) {
	if o.Transport == "" {
		o.Transport = sim.TransportMemory
	}
	rt, err := infer.NewRuntime(o.ORTLibrary, nil)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	small, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
	if err != nil {
		return nil, err
	}
	big, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 2, Rows: 4000})
	if err != nil {
		return nil, err
	}
	model := onnxbuild.Pad(big.ONNX, max(o.ModelBytes-len(big.ONNX)-8, 0))
	store, files := "in memory", "under the work directory"
	if o.StoreOnDisk {
		store = "badger on disk, synced commits"
	}
	if o.AgentDir != "" {
		files = "under " + o.AgentDir
	}
	fmt.Fprintf(o.Progress, "agents' shared store: %s; agents' model files: %s\n", store, files)
	fmt.Fprintf(o.Progress, "| N | model bytes | chunks | rollout s (first / median / p90 / all) | raw baseline s | ratio | chunk publishes | wire bytes per agent / model |\n|---|---|---|---|---|---|---|---|\n")
	var out []FanoutResult
	for i, n := range o.Sizes {
		oi := o
		if i < len(o.Sizes)-1 {
			oi.RolloutProfile = ""
		}
		r, err := fanoutOne(ctx, oi, n, rt, small, big, model)
		if err != nil {
			return out, fmt.Errorf("fanout N=%d: %w", n, err)
		}
		wire := "-"
		if r.WireBytesPerAgent > 0 {
			wire = fmt.Sprintf("%.3f", r.WireBytesPerAgent)
		}
		fmt.Fprintf(o.Progress, "| %d | %d | %d | %.2f / %.2f / %.2f / %.2f | %.2f | %.2f | %.0f (%.0f direct) | %s |\n", r.N, r.ModelBytes, r.Chunks,
			r.FirstActive, r.MedianActive, r.P90Active, r.Rollout, r.Baseline, r.Ratio, r.ChunkPublishes, r.DirectPublishes, wire)
		var ph []string
		for _, name := range []string{"downloading", "verifying", "staging", "active"} {
			if p, ok := r.Phases[name]; ok {
				ph = append(ph, fmt.Sprintf("%s %.2f / %.2f", name, p.Median, p.Last))
			}
		}
		fmt.Fprintf(o.Progress, "|   | phases entered, s since deploy (median / last): %s; rollout CPU %.1f s |\n", strings.Join(ph, "; "), r.RolloutCPU)
		out = append(out, r)
	}
	return out, nil
}

func devicesFor(n int) []sim.Device {
	per := min(n, 25)
	sites := (n + per - 1) / per
	devs, _ := sim.FleetSpec{Sites: sites, DevicesPerSite: per}.Expand()
	return devs[:n]
}

func fanoutOne(ctx context.Context, o FanoutOptions, n int, rt *infer.Runtime, small, big *fraud.Artifact, model []byte) (FanoutResult, error) {
	r := FanoutResult{N: n}
	devs := devicesFor(n)
	agentDir := ""
	if o.AgentDir != "" {
		// Every agent keeps both versions.
		if err := checkRoom(o.AgentDir, n, uint64(len(model)+len(small.ONNX)+agentDirSlack)); err != nil {
			return r, err
		}
		d, err := os.MkdirTemp(o.AgentDir, fmt.Sprintf("fleet-sim-fanout-%d-*", n))
		if err != nil {
			return r, fmt.Errorf("--agent-dir: %w", err)
		}
		defer os.RemoveAll(d)
		agentDir = d
	}
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(o.Dir, fmt.Sprintf("fanout-%d", n)),
		AgentDir:           agentDir,
		Devices:            devs,
		Runtime:            rt,
		Proxy:              n <= o.ProxyMax,
		Transport:          o.Transport,
		HeartbeatInterval:  time.Minute,
		FetchRetryInterval: o.FetchRetry,
		InMemoryStore:      !o.StoreOnDisk,
	})
	if err != nil {
		return r, err
	}
	defer f.Stop()
	if r.StartSeconds, err = startTimed(ctx, f); err != nil {
		return r, err
	}
	cp := f.ControlPlane()
	all := memberIDs(f)
	// Warm up: every agent connected, trusting, serving a small v1.
	if err := deployAll(ctx, f, "1", small, 10*time.Minute); err != nil {
		return r, err
	}
	mv, err := cp.AddModelVersion(ctx, "fraud", "2", model, big.Metadata(), false)
	if err != nil {
		return r, err
	}
	r.ModelBytes, r.Chunks, r.ChunkSize = mv.Size, mv.ChunkCount, mv.ChunkSize
	inBefore := proxyIn(f)
	pubBefore, directBefore := chunkMetric(ctx, f, "edgefleet_chunk_publishes_total"), chunkMetric(ctx, f, "edgefleet_chunk_publishes_direct_total")
	stopProfile := func() error { return nil }
	if o.RolloutProfile != "" {
		if stopProfile, err = StartCPUProfile(o.RolloutProfile); err != nil {
			return r, err
		}
	}
	t0, cpu0 := time.Now(), cpuSeconds()
	phases := watchPhases(f, "fraud", "2", t0)
	if _, err := cp.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "2", Devices: all}); err != nil {
		return r, errors.Join(err, stopProfile())
	}
	times, err := waitServingTimes(ctx, f, "fraud", "2", t0, 10*time.Minute, phases.hasStaged)
	r.Rollout, r.RolloutCPU = time.Since(t0).Seconds(), cpuSeconds()-cpu0
	if err := errors.Join(err, stopProfile()); err != nil {
		return r, err
	}
	r.Phases = phases.times(times)
	slices.Sort(times)
	r.FirstActive, r.MedianActive, r.P90Active = times[0], times[len(times)/2], times[len(times)*9/10]
	r.ChunkPublishes = chunkMetric(ctx, f, "edgefleet_chunk_publishes_total") - pubBefore
	r.DirectPublishes = chunkMetric(ctx, f, "edgefleet_chunk_publishes_direct_total") - directBefore
	if f.Proxy() != nil {
		r.WireBytesPerAgent = float64(proxyIn(f)-inBefore) / float64(n) / float64(mv.Size)
	}
	if err := f.StopAgents(); err != nil {
		return r, err
	}
	base, missing, err := rawBaseline(ctx, devs, model, mv.ChunkSize, o.Transport == sim.TransportMemory)
	if err != nil {
		return r, fmt.Errorf("baseline: %w", err)
	}
	r.Baseline, r.BaselineMissing = base, missing
	r.Ratio = r.Rollout / r.Baseline
	return r, f.Stop()
}

func proxyIn(f *sim.Fleet) uint64 {
	p := f.Proxy()
	if p == nil {
		return 0
	}
	var in uint64
	for _, m := range f.Members() {
		i, _ := p.Bytes(m.Device.ID)
		in += i
	}
	return in
}

// startTimed starts the fleet and returns how long that took in seconds.
func startTimed(ctx context.Context, f *sim.Fleet) (float64, error) {
	t0 := time.Now()
	err := f.Start(ctx)
	return time.Since(t0).Seconds(), err
}

// runtimeAndModel opens the shared onnxruntime and trains the small fraud
// model the scale and telemetry benchmarks deploy.
func runtimeAndModel(ortLib string) (*infer.Runtime, *fraud.Artifact, error) {
	rt, err := infer.NewRuntime(ortLib, nil)
	if err != nil {
		return nil, nil, err
	}
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
	if err != nil {
		_ = rt.Close()
		return nil, nil, err
	}
	return rt, art, nil
}

// memberIDs are the fleet's device ids.
func memberIDs(f *sim.Fleet) []string {
	ms := f.Members()
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.Device.ID
	}
	return ids
}

// deployAll uploads art as fraud@version, deploys it to every device and
// waits until every agent serves it.
func deployAll(ctx context.Context, f *sim.Fleet, version string, art *fraud.Artifact, timeout time.Duration) error {
	cp := f.ControlPlane()
	if _, err := cp.AddModelVersion(ctx, "fraud", version, art.ONNX, art.Metadata(), false); err != nil {
		return err
	}
	if _, err := cp.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: version, Devices: memberIDs(f)}); err != nil {
		return err
	}
	return waitServing(ctx, f, "fraud", version, timeout)
}

// waitServing polls until every agent serves model@version.
func waitServing(ctx context.Context, f *sim.Fleet, model, version string, timeout time.Duration) error {
	_, err := waitServingTimes(ctx, f, model, version, time.Now(), timeout, nil)
	return err
}

// fullPassEvery is how often waitServingTimes asks every agent, not only
// those its candidates filter names.
const fullPassEvery = 5 * time.Second

// waitServingTimes polls until every agent serves model@version and
// returns when (seconds since t0) each was first seen serving it. A non-nil
// candidate says which agents can serve it by now (e.g. those whose update
// reached staging): the others are asked only every fullPassEvery, so that
// the wait costs little beside a large fleet it measures.
func waitServingTimes(ctx context.Context, f *sim.Fleet, model, version string, t0 time.Time, timeout time.Duration, candidate func(id string) bool) ([]float64, error) {
	deadline := time.Now().Add(timeout)
	seen := map[string]float64{}
	var lastFull time.Time
	for {
		pass := time.Now()
		full := candidate == nil || pass.Sub(lastFull) >= fullPassEvery
		if full {
			lastFull = pass
		}
		done := 0
		for _, m := range f.Members() {
			if _, ok := seen[m.Device.ID]; ok {
				done++
				continue
			}
			if !full && !candidate(m.Device.ID) {
				continue
			}
			if scenario.Status(m, model).Serving == version {
				seen[m.Device.ID] = time.Since(t0).Seconds()
				done++
			}
		}
		if done == len(f.Members()) {
			out := make([]float64, 0, len(seen))
			for _, v := range seen {
				out = append(out, v)
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of %d agents serve %s@%s after %v", done, len(f.Members()), model, version, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		// Polling (agents have no change feed): each pass costs N Status
		// calls and runs on the cores the fleet is measured on, so it
		// waits three times as long as a pass took (at most a quarter of a
		// core; at 10,000 agents back-to-back passes took 18 CPU-s of a
		// rollout). The times it reports are late by up to one wait.
		case <-time.After(max(20*time.Millisecond, 3*time.Since(pass))):
		}
	}
}

// agentDirSlack is what an agent's directory holds beside its two model
// versions (directories, a download's state), rounded up.
const agentDirSlack = 16 << 10

// checkRoom refuses a directory without room for n agents' perAgent bytes:
// a tmpfs that filled up half-way would fail downloads and leave the run
// waiting out its timeout.
func checkRoom(dir string, n int, perAgent uint64) error {
	need := uint64(n) * perAgent
	if free, ok := freeBytes(dir); ok && free < need {
		return fmt.Errorf("--agent-dir %s: %d MiB free, %d agents need about %d MiB", dir, free>>20, n, need>>20)
	}
	return nil
}

// chunkMetric reads the counter name (edgefleet_chunk_publishes_total or
// another without labels) from the in-process control plane's /metrics
// (-1 if unavailable).
func chunkMetric(ctx context.Context, f *sim.Fleet, name string) float64 {
	srv := f.Server()
	if srv == nil {
		return -1
	}
	c, err := client.New(srv.APIURL(), client.Options{Token: f.APIToken()})
	if err != nil {
		return -1
	}
	v, err := metric(ctx, c, name)
	if err != nil {
		return -1
	}
	return v
}

type allowAll struct{}

func (allowAll) AuthenticateDevice(string, []byte) bool { return true }

// rawBaseline starts a broker of the same package and settings as the
// control plane's embedded one, connects one raw paho subscriber per
// device to the chunk topic, publishes the model's chunks through the
// broker's inline client (the control plane's own publish path) and
// returns the time until every subscriber has every chunk.
func rawBaseline(ctx context.Context, devs []sim.Device, model []byte, chunkSize uint32, inMemory bool) (seconds float64, missing uint64, err error) {
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Scheme: scheme, Auth: allowAll{}, InMemory: inMemory})
	if err != nil {
		return 0, 0, err
	}
	if err := b.Start(); err != nil {
		return 0, 0, err
	}
	defer b.Close()
	topic := scheme.Chunks("baseline", "1")
	chunks := transfer.ChunkCount(uint64(len(model)), chunkSize)
	var payloads [][]byte
	for i := range uint32(chunks) {
		data, err := transfer.ChunkData(model, chunkSize, i)
		if err != nil {
			return 0, 0, err
		}
		p, _ := proto.Marshal(&efpb.Chunk{Name: "baseline", Version: "1", Index: i, Data: data})
		payloads = append(payloads, p)
	}
	var received atomic.Uint64
	want := uint64(len(devs)) * uint64(chunks)
	allDone := make(chan struct{})
	var doneOnce sync.Once
	clients := make([]paho.Client, len(devs))
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Disconnect(0)
			}
		}
	}()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	errs := make([]error, len(devs))
	for i, d := range devs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			o := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(d.ID).SetUsername(d.ID).SetPassword("x").
				SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true).SetOrderMatters(false)
			if inMemory {
				o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) { return b.DialInMemory(ctx) })
			}
			c := paho.NewClient(o)
			if t := c.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
				errs[i] = fmt.Errorf("connect %s: %v", d.ID, t.Error())
				return
			}
			clients[i] = c
			t := c.Subscribe(topic, 1, func(paho.Client, paho.Message) {
				if received.Add(1) == want {
					doneOnce.Do(func() { close(allDone) })
				}
			})
			if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
				errs[i] = fmt.Errorf("subscribe %s: %v", d.ID, t.Error())
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	for _, p := range payloads {
		// QoS 1, as the control plane publishes a version's shared chunks
		// (models.Registry.publishChunk).
		if err := b.Publish(topic, p, false, 1); err != nil {
			return 0, 0, err
		}
	}
	select {
	case <-allDone:
	case <-time.After(2 * time.Minute):
		return time.Since(t0).Seconds(), want - received.Load(), nil
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	return time.Since(t0).Seconds(), 0, nil
}
