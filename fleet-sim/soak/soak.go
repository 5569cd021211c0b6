// Package soak is fleet-sim's chaos soak: real agents under a fault schedule
// (kills, broker outages, control plane restarts, partitions, corrupted
// chunks, skewed clocks) while rollouts and rollbacks run under traffic,
// with invariants checked as it runs and at the end (docs/testing.md), and
// a JSON and text report with an SVG chart. Imported by fleet-sim.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Options configure a soak. Zero values take the documented defaults.
type Options struct {
	// Agents is the fleet size; default 200. Sites default to one per 50
	// agents, at least 2.
	Agents int
	Sites  int
	// Duration is how long the chaos runs; default 3m. Convergence and
	// the final checks come after it.
	Duration time.Duration
	// Warmup is how long after the chaos starts the resource trends begin;
	// default a quarter of Duration.
	Warmup time.Duration
	// Dir holds the fleet's state (required); ReportDir receives
	// report.json, report.txt and chart.svg ("" writes none).
	Dir       string
	ReportDir string
	// Seed makes the schedule, the picks and the traffic repeatable.
	Seed uint64
	// Heartbeat is the agents' telemetry interval; default 3s.
	Heartbeat time.Duration
	// AgentStoreOnDisk keeps the agents' shared state in a badger on disk
	// with synced commits. By default it is in memory: the store outlives
	// every agent (a killed agent's successor finds what it wrote, as
	// after kill -9, where the page cache survives too), and a thousand
	// agents' synced writes through one shared badger — an msync of its
	// 2 GiB value log each — saturate a 2-core machine long before the
	// control plane (a device has a small badger of its own).
	AgentStoreOnDisk bool
	// TrafficRate is inferences per device per second; default 1. A
	// LabelFraction of them get their label 2s later; default 0.2.
	TrafficRate   float64
	LabelFraction float64
	// ModelPad pads every model version to this many bytes so a download
	// takes several chunks; default 160 KiB (three 64 KiB chunks).
	ModelPad int
	// Faults is the chaos schedule.
	Faults Faults
	// SampleEvery is how often the devices and the process are sampled;
	// default Duration/300 within [1s, 10s].
	SampleEvery time.Duration
	// ConvergeTimeout bounds the wait for every device to converge after
	// the last fault; the wait also gives up after ConvergeStall without
	// a device converging. Defaults 10m and 6m: the stall outlasts an
	// agent's longest back-off before it tries again an update that failed
	// on the way (10 × agent.Options.TransientRetry, 5m).
	ConvergeTimeout time.Duration
	ConvergeStall   time.Duration
	// Bounds are the resource growth limits.
	Bounds Bounds
	// Runtime is a shared onnxruntime; nil opens one from ORTLibrary.
	Runtime    *infer.Runtime
	ORTLibrary string
	// Logger receives the simulator's and the control plane's logs,
	// AgentLogger the agents' (nil: discarded); Progress one line per
	// event worth telling (nil: none).
	Logger      *slog.Logger
	AgentLogger *slog.Logger
	Progress    io.Writer
}

// Faults is the chaos schedule: each kind of fault happens about every
// Every during the chaos phase, at least MinEach times, at jittered times
// drawn from the seed.
type Faults struct {
	// Kill kills KillBatch agents (kill -9 as far as one process can, see
	// sim.Fleet.Kill) and restarts them on their state; default every 10s,
	// 1 per 100 agents (at least 1).
	KillEvery time.Duration
	KillBatch int
	// Broker outage: every agent's link to the broker is cut and refused
	// for BrokerDown, as a broker restart looks to them (the embedded
	// broker lives in the control plane; restarting both is the next
	// kind). Default every 3m, down 3s.
	BrokerEvery time.Duration
	BrokerDown  time.Duration
	// Control plane restart, its embedded broker with it, down for
	// ControlPlaneDown; default every 2m, down 2s. Each restart is also a
	// telemetry check (the stopped control plane's store is read).
	ControlPlaneEvery time.Duration
	ControlPlaneDown  time.Duration
	// Partition cuts one site's agents off the broker for PartitionDown;
	// default every 1m, down 15s.
	PartitionEvery time.Duration
	PartitionDown  time.Duration
	// Corrupt makes the proxy flip a byte in the next CorruptChunks chunk
	// publishes to CorruptFraction of the agents; default every 30s, 2
	// chunks to 5%.
	CorruptEvery    time.Duration
	CorruptChunks   int
	CorruptFraction float64
	// Skew sets the clock of SkewFraction of the agents off by up to
	// MaxSkew either way (a third of them back to true time); default
	// every 45s, 5%, 10m.
	SkewEvery    time.Duration
	SkewFraction float64
	MaxSkew      time.Duration
	// MinEach is the fewest faults of each kind; default 1.
	MinEach int
}

func (o *Options) setDefaults() error {
	if o.Dir == "" {
		return errors.New("soak: Dir is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Agents <= 0 {
		o.Agents = 200
	}
	if o.Sites <= 0 {
		o.Sites = max(2, o.Agents/50)
	}
	if o.Sites > o.Agents {
		return fmt.Errorf("soak: %d sites for %d agents", o.Sites, o.Agents)
	}
	def(&o.Duration, 3*time.Minute)
	def(&o.Warmup, o.Duration/4)
	def(&o.Heartbeat, 3*time.Second)
	if o.TrafficRate <= 0 {
		o.TrafficRate = 1
	}
	if o.LabelFraction <= 0 {
		o.LabelFraction = 0.2
	}
	if o.ModelPad <= 0 {
		o.ModelPad = 160 << 10
	}
	def(&o.SampleEvery, min(max(o.Duration/300, time.Second), 10*time.Second))
	def(&o.ConvergeTimeout, 10*time.Minute)
	def(&o.ConvergeStall, 6*time.Minute)
	f := &o.Faults
	def(&f.KillEvery, 10*time.Second)
	if f.KillBatch <= 0 {
		f.KillBatch = max(1, o.Agents/100)
	}
	def(&f.BrokerEvery, 3*time.Minute)
	def(&f.BrokerDown, 3*time.Second)
	def(&f.ControlPlaneEvery, 2*time.Minute)
	def(&f.ControlPlaneDown, 2*time.Second)
	def(&f.PartitionEvery, time.Minute)
	def(&f.PartitionDown, 15*time.Second)
	def(&f.CorruptEvery, 30*time.Second)
	if f.CorruptChunks <= 0 {
		f.CorruptChunks = 2
	}
	if f.CorruptFraction <= 0 {
		f.CorruptFraction = 0.05
	}
	def(&f.SkewEvery, 45*time.Second)
	if f.SkewFraction <= 0 {
		f.SkewFraction = 0.05
	}
	def(&f.MaxSkew, 10*time.Minute)
	if f.MinEach <= 0 {
		f.MinEach = 1
	}
	o.Bounds.setDefaults()
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// model is the model the soak rolls out; versions are its versions, the
// first deployed everywhere before the chaos starts.
const model = "fraud"

var versions = []string{"1.0.0", "2.0.0", "3.0.0", "4.0.0"}

// soak is one run.
type soak struct {
	opts  Options
	start time.Time
	fleet *sim.Fleet
	hist  *history
	led   *ledger
	rng   *rand.Rand // the chaos goroutine's only
	out   io.Writer  // written under outMu: several goroutines report progress
	outMu sync.Mutex

	// mu guards the fields below it.
	mu         sync.Mutex
	violations []Violation
	faults     []Fault
	checks     []TelemetryCheck
	totals     TelemetryCheck // running confirmed/unverifiable
	samples    []DeviceSample
	resources  []Resource
	rollouts   RolloutCounts
	drops      Drops
	killing    map[string]bool // devices a kill is working on
	skipped    int             // planned faults skipped at the end of the chaos
	errs       []string        // harness errors worth reporting (not invariants)

	violationCount atomic.Uint64
	servedChecks   atomic.Uint64
}

// since is seconds since the soak started.
func (s *soak) since() float64 { return time.Since(s.start).Seconds() }

func (s *soak) progress(format string, args ...any) {
	line := fmt.Sprintf("soak %7.1fs: %s\n", s.since(), fmt.Sprintf(format, args...))
	s.outMu.Lock()
	defer s.outMu.Unlock()
	_, _ = io.WriteString(s.out, line)
}

func (s *soak) noteErr(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	if len(s.errs) < 50 {
		s.errs = append(s.errs, fmt.Sprintf("%.1fs: %s", s.since(), msg))
	}
	s.mu.Unlock()
	s.progress("%s", msg)
}

// Run runs a soak and returns its report. The error is for a soak that
// could not run (setup, a fleet that would not start); a soak that ran
// and broke an invariant returns its report with Passed false, and, when
// ReportDir is set, the report files either way.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	devices, err := sim.FleetSpec{Sites: opts.Sites, DevicesPerSite: opts.Agents / opts.Sites}.Expand()
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	s := &soak{opts: opts, hist: newHistory(), led: newLedger(), rng: rand.New(rand.NewPCG(opts.Seed, 0x50a4)), out: opts.Progress,
		killing: map[string]bool{}}
	f, err := sim.New(sim.Options{
		Dir:               opts.Dir,
		Devices:           devices,
		Runtime:           opts.Runtime,
		ORTLibrary:        opts.ORTLibrary,
		Proxy:             true,
		Transport:         sim.TransportMemory,
		InMemoryStore:     !opts.AgentStoreOnDisk,
		HeartbeatInterval: opts.Heartbeat,
		Logger:            opts.Logger,
		AgentLogger:       opts.AgentLogger,
	})
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	s.fleet = f
	s.start = time.Now()
	rep, runErr := s.run(ctx)
	stopErr := f.Stop()
	if rep == nil {
		return nil, errors.Join(runErr, stopErr)
	}
	s.finish(rep, stopErr)
	if opts.ReportDir != "" {
		if err := rep.Write(opts.ReportDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// run starts the fleet and runs the phases; the report is nil when the
// soak could not start.
func (s *soak) run(ctx context.Context) (*Report, error) {
	o := s.opts
	rep := &Report{Agents: len(s.fleet.Members()), Sites: o.Sites, Duration: o.Duration.String(), Seed: o.Seed,
		Started: time.Now().UTC(), Bounds: o.Bounds, Heartbeat: o.Heartbeat.String(), AgentStore: "memory"}
	if o.AgentStoreOnDisk {
		rep.AgentStore = "disk"
	}
	s.progress("preparing %d agents in %d sites", rep.Agents, o.Sites)
	if err := s.fleet.Prepare(ctx); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	// The tap is in place before any agent connects: every desired state
	// and every acknowledgement is seen.
	s.fleet.Proxy().SetTap(tap(topics.Scheme{}, s.hist, s.led))
	if err := s.fleet.StartAgents(ctx); err != nil {
		return nil, fmt.Errorf("soak: start agents: %w", err)
	}
	s.progress("%d agents running", rep.Agents)
	if err := s.pushVersions(ctx); err != nil {
		return nil, err
	}
	if _, err := s.fleet.ControlPlane().Deploy(ctx, api.DeployRequest{Model: model, Version: versions[0], Selector: "site!=none"}); err != nil {
		return nil, fmt.Errorf("soak: deploy %s: %w", versions[0], err)
	}
	if _, err := s.converge(ctx, "initial deployment"); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	traffic, err := s.fleet.StartTraffic(sim.TrafficOptions{Model: model, Rate: o.TrafficRate, Seed: o.Seed + 1,
		LabelFraction: o.LabelFraction, LabelDelay: 2 * time.Second, Served: s.served})
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	defer traffic.Stop()

	// The chaos phase: the sampler, the rollouts and the fault schedule
	// run side by side; the time base restarts here.
	s.start = time.Now()
	rep.Started = s.start.UTC()
	sctx, stopSampler := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.sampleLoop(sctx) })
	noNew := make(chan struct{})
	rdone := make(chan struct{})
	go func() { defer close(rdone); s.rolloutLoop(ctx, noNew) }() // waited on below
	s.chaos(ctx, schedule(o, s.rng))
	rep.LastFault = s.since()
	close(noNew)
	s.progress("chaos over; waiting for the last rollout to end")
	select {
	case <-rdone:
	case <-ctx.Done():
	}

	conv, cerr := s.converge(ctx, "after the last fault")
	rep.Convergence = conv
	if cerr != nil {
		rep.Convergence.Error = cerr.Error()
	}
	rep.Drain = s.drain(ctx)
	rep.Traffic = traffic.Stats()
	s.readDrops(ctx) // the fleet stops next
	traffic.Stop()
	stopSampler()
	wg.Wait()
	rep.Ended = time.Now().UTC()
	return rep, nil
}

// pushVersions uploads every version, each trained on its own seed and
// padded to ModelPad.
func (s *soak) pushVersions(ctx context.Context) error {
	for i, v := range versions {
		art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: s.opts.Seed*31 + uint64(i) + 1, Rows: 2000})
		if err != nil {
			return fmt.Errorf("soak: train %s: %w", v, err)
		}
		if _, err := s.fleet.ControlPlane().AddModelVersion(ctx, model, v, onnxbuild.Pad(art.ONNX, s.opts.ModelPad), art.Metadata(), false); err != nil {
			return fmt.Errorf("soak: upload %s: %w", v, err)
		}
	}
	return nil
}

// served checks one inference answer against the device's history.
func (s *soak) served(device, version string) {
	s.servedChecks.Add(1)
	if !s.hist.assigned(device, model, version) {
		s.violation(device, version, "answered an inference")
	}
}

// Violation is a device seen serving a version it was never sent.
type Violation struct {
	At      float64 `json:"at_s"`
	Device  string  `json:"device"`
	Version string  `json:"version"`
	How     string  `json:"how"`
}

func (s *soak) violation(device, version, how string) {
	if s.violationCount.Add(1) > 20 {
		return
	}
	s.mu.Lock()
	s.violations = append(s.violations, Violation{At: s.since(), Device: device, Version: version, How: how})
	s.mu.Unlock()
}

// DeviceSample is the fleet at one moment: devices per served version
// ("-" none), devices updating, and agents not running.
type DeviceSample struct {
	At       float64        `json:"at_s"`
	Serving  map[string]int `json:"serving"`
	Updating int            `json:"updating"`
}

// sampleLoop samples the devices and the process every SampleEvery until
// ctx ends; each device sample also checks what every agent serves and
// has committed against its history.
func (s *soak) sampleLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.SampleEvery)
	defer t.Stop()
	cpDir := s.fleet.ControlPlaneDir()
	last, lastWatch := time.Now(), time.Now()
	var watch dropWatch
	for {
		if time.Since(lastWatch) >= 5*time.Second {
			lastWatch = time.Now()
			s.watchDrops(ctx, &watch)
		}
		s.sampleDevices()
		r := readResource(s.since(), cpDir)
		s.mu.Lock()
		s.resources = append(s.resources, r)
		s.mu.Unlock()
		if time.Since(last) >= 30*time.Second {
			last = time.Now()
			s.progress("heap %.0f MiB, %d goroutines, %d fds, store %.1f MiB; %d violations",
				float64(r.HeapLive)/(1<<20), r.Goroutines, r.FDs, float64(r.StoreBytes)/(1<<20), s.violationCount.Load())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *soak) sampleDevices() {
	ds := DeviceSample{At: s.since(), Serving: map[string]int{}}
	for _, m := range s.fleet.Members() {
		a := m.Agent()
		if a == nil {
			continue
		}
		serving := "-"
		for _, st := range a.Status() {
			if st.Name != model {
				continue
			}
			for _, v := range []string{st.Serving, st.Active} {
				if v != "" && !s.hist.assigned(m.Device.ID, model, v) {
					s.violation(m.Device.ID, v, "status: serving or committed")
				}
			}
			if st.Serving != "" {
				serving = st.Serving
			}
			if st.Target != "" {
				ds.Updating++
			}
		}
		ds.Serving[serving]++
	}
	s.mu.Lock()
	s.samples = append(s.samples, ds)
	s.mu.Unlock()
}

// Convergence is how the fleet settled: every device serving, committed,
// the version its newest desired state assigns, no update in progress.
type Convergence struct {
	// Converged is true when every device settled; Seconds is how long it
	// took from the start of the wait.
	Converged bool    `json:"converged"`
	Seconds   float64 `json:"seconds"`
	// Versions counts the devices per settled version.
	Versions map[string]int `json:"versions,omitempty"`
	// Unsettled describes a few devices that did not settle.
	Unsettled []string `json:"unsettled,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// converge waits until every device serves, committed, the version the
// control plane last assigned it, with nothing in progress; it gives up
// after ConvergeTimeout, or ConvergeStall without one more device settling.
func (s *soak) converge(ctx context.Context, what string) (Convergence, error) {
	t0 := time.Now()
	best, bestAt := -1, time.Now()
	for {
		c, settled := s.settled()
		c.Seconds = time.Since(t0).Seconds()
		if c.Converged {
			s.progress("converged (%s) in %.1fs: %v", what, c.Seconds, c.Versions)
			return c, nil
		}
		if settled > best {
			best, bestAt = settled, time.Now()
		}
		var why string
		switch {
		case time.Since(t0) > s.opts.ConvergeTimeout:
			why = fmt.Sprintf("not converged within %v", s.opts.ConvergeTimeout)
		case time.Since(bestAt) > s.opts.ConvergeStall:
			why = fmt.Sprintf("no device settled for %v", s.opts.ConvergeStall)
		case ctx.Err() != nil:
			why = ctx.Err().Error()
		}
		if why != "" {
			return c, fmt.Errorf("%s: %s: %d of %d settled; %s", what, why, settled, len(s.fleet.Members()), strings.Join(c.Unsettled, "; "))
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond): // polling the fleet's state
		}
	}
}

// settled compares every device with its newest desired state.
func (s *soak) settled() (Convergence, int) {
	c := Convergence{Versions: map[string]int{}}
	devs, err := s.fleet.ControlPlane().Devices("")
	if err != nil {
		c.Unsettled = []string{"devices: " + err.Error()}
		return c, 0
	}
	desired := make(map[string]string, len(devs))
	for _, d := range devs {
		desired[d.ID] = d.Desired.Version(model)
	}
	n, bad := 0, 0
	for _, m := range s.fleet.Members() {
		want := desired[m.Device.ID]
		st := status(m)
		if want != "" && st.Serving == want && st.Active == want && st.Target == "" {
			n++
			c.Versions[want]++
			continue
		}
		if bad++; len(c.Unsettled) < 5 {
			d := fmt.Sprintf("%s assigned %q serves %q (committed %q", m.Device.ID, want, st.Serving, st.Active)
			if st.Target != "" {
				d += fmt.Sprintf(", updating to %s: %s", st.Target, st.Phase)
			}
			if st.FailedVersion != "" {
				d += fmt.Sprintf(", refused %s: %s", st.FailedVersion, st.FailureReason)
			}
			c.Unsettled = append(c.Unsettled, d+")")
		}
	}
	if bad > len(c.Unsettled) {
		c.Unsettled = append(c.Unsettled, fmt.Sprintf("and %d more", bad-len(c.Unsettled)))
	}
	c.Converged = bad == 0
	return c, n
}

// Drain is how the agents' outboxes emptied after convergence.
type Drain struct {
	Drained bool    `json:"drained"`
	Seconds float64 `json:"seconds"`
	Queued  int     `json:"queued_left"` // -1: could not be read
	Dropped uint64  `json:"dropped_by_outboxes"`
}

// drain waits until every report each agent made before it began is
// acknowledged (new reports keep coming; a device counts once seen so),
// at most ConvergeStall. An outbox's length waits for its
// store, which a thousand agents sharing one badger on a starved machine
// held for minutes: each pass runs aside, and a pass that does not end in
// time ends the drain (Drained false, Queued -1), not the soak.
func (s *soak) drain(ctx context.Context) Drain {
	type passResult struct {
		empty   []string
		queued  int
		dropped uint64
	}
	t0 := time.Now()
	empty := map[string]bool{}
	// Heartbeats go on while the soak drains, and each report waits for the
	// control plane's acknowledgement (sent in rounds), so an outbox is
	// rarely empty: drained means every report made before the drain began
	// is acknowledged.
	upTo := map[string]uint64{}
	for _, m := range s.fleet.Members() {
		if a := m.Agent(); a != nil {
			upTo[m.Device.ID] = a.ReportSeq()
		}
	}
	for {
		pass := make(chan passResult, 1)
		go func() { // may outlive the drain when the store is stuck; it ends with the store
			var r passResult
			for _, m := range s.fleet.Members() {
				a := m.Agent()
				if a == nil {
					continue
				}
				seq, ok := upTo[m.Device.ID]
				if !ok { // no agent when the drain began
					seq = a.ReportSeq()
				}
				q := a.QueuedReportsUpTo(seq)
				r.dropped += a.ReportsDropped()
				if q == 0 {
					r.empty = append(r.empty, m.Device.ID)
				} else {
					r.queued += q
				}
			}
			pass <- r
		}()
		select {
		case r := <-pass:
			for _, id := range r.empty {
				empty[id] = true
			}
			d := Drain{Seconds: time.Since(t0).Seconds(), Queued: r.queued, Dropped: r.dropped}
			if len(empty) == len(s.fleet.Members()) {
				d.Drained, d.Queued = true, 0
				return d
			}
			if time.Since(t0) > s.opts.ConvergeStall || ctx.Err() != nil {
				return d
			}
		case <-time.After(max(s.opts.ConvergeStall-time.Since(t0), time.Second)):
			s.noteErr("drain: the agents' outbox lengths could not be read within %v (their shared store is stuck)", s.opts.ConvergeStall)
			return Drain{Seconds: time.Since(t0).Seconds(), Queued: -1}
		case <-ctx.Done():
			return Drain{Seconds: time.Since(t0).Seconds(), Queued: -1}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond): // polling the outboxes
		}
	}
}

// finish stops nothing (Run stopped the fleet): it runs the final
// telemetry check on the stopped control plane's store, the leak check,
// and judges every invariant.
func (s *soak) finish(rep *Report, stopErr error) {
	if stopErr != nil {
		s.noteErr("stopping the fleet: %v", stopErr)
	}
	s.telemetryCheck("final")
	leak, err := s.fleet.LeakCheck(30 * time.Second)
	rep.Leak = leak
	if err != nil {
		rep.LeakError = err.Error()
	}
	s.mu.Lock()
	rep.Violations = s.violations
	rep.Faults = s.faults
	rep.TelemetryChecks = s.checks
	rep.DeviceSamples = s.samples
	rep.Resources = s.resources
	rep.Rollouts = s.rollouts
	rep.Drops = s.drops
	rep.FaultsSkipped = s.skipped
	rep.HarnessErrors = s.errs
	s.mu.Unlock()
	rep.ViolationCount = s.violationCount.Load()
	rep.ServedChecks = s.servedChecks.Load()
	rep.DesiredStates, rep.DesiredUndecodable = s.hist.counts()
	rep.Warmup = s.opts.Warmup.Seconds()
	rep.Trends = trends(rep.Resources, rep.Warmup, rep.LastFault, rep.Agents, s.opts.Bounds)
	rep.judge()
}

// telemetryCheck reads the stopped control plane's persisted seqs and
// compares them with the acknowledged reports.
func (s *soak) telemetryCheck(why string) {
	persisted, err := readPersisted(s.fleet.ControlPlaneDir())
	if err != nil {
		s.noteErr("telemetry check (%s): %v", why, err)
		if persisted == nil {
			return
		}
	}
	s.mu.Lock()
	c := s.led.check(persisted, s.since(), why, &s.totals)
	s.checks = append(s.checks, c)
	s.mu.Unlock()
	s.progress("telemetry check (%s): %d acknowledged, %d confirmed persisted, %d missing now, %d lost, %d unverifiable",
		why, c.Acked, c.Confirmed, c.Missing, c.Lost, c.Unverifiable)
}

// status is the member's status of the soak's model.
func status(m *sim.Member) (st agent.ModelStatus) {
	if a := m.Agent(); a != nil {
		for _, x := range a.Status() {
			if x.Name == model {
				return x
			}
		}
	}
	return st
}
