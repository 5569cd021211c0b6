package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/hostload"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// RunOptions configure Run. Zero values are documented defaults.
type RunOptions struct {
	// WorkDir holds the fleet's state; default a temporary directory that
	// is removed afterwards.
	WorkDir string
	// Remote, if set, runs against an external control plane.
	Remote *sim.RemoteControlPlane
	// Runtime is a shared onnxruntime (tests); nil opens one.
	Runtime    *infer.Runtime
	ORTLibrary string
	// Progress receives one line per step and a status line per
	// ProgressInterval (default 1s); nil discards.
	Progress         io.Writer
	ProgressInterval time.Duration
	// Logger receives the simulator's and control plane's logs,
	// AgentLogger the agents'; nil discards.
	Logger      *slog.Logger
	AgentLogger *slog.Logger
}

// Run runs a scenario: it starts the fleet, runs the timeline with traffic
// and the recorder going, checks the assertions, stops everything and
// checks for leaks. The error is for failures to run at all; a run whose
// assertions or steps failed returns a Report with Passed false.
func Run(ctx context.Context, sc *Scenario, opts RunOptions) (*Report, error) {
	if err := sc.CheckTarget(opts.Remote != nil); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	var progress io.Writer = io.Discard
	if opts.Progress != nil {
		progress = &lockedWriter{w: opts.Progress}
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = time.Second
	}
	dir := opts.WorkDir
	if dir == "" {
		d, err := os.MkdirTemp("", "fleet-sim-*")
		if err != nil {
			return nil, fmt.Errorf("scenario: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	devices, err := sc.Fleet.Expand()
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	var clock *sim.Clock // nil: real time
	if sc.Clock.Speed > 1 {
		if clock, err = sim.NewClock(sc.Clock.Speed); err != nil {
			return nil, fmt.Errorf("scenario: %w", err)
		}
	}
	wan, _ := parseRate(sc.Network.WANPerSite) // validated
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(dir, "fleet"),
		Devices:            devices,
		Remote:             opts.Remote,
		Runtime:            opts.Runtime,
		ORTLibrary:         opts.ORTLibrary,
		Proxy:              sc.Network.Proxy,
		Transport:          sc.Network.Transport,
		Peers:              sc.Agent.Peers.pick(),
		InMemoryStore:      sc.Agent.Store == "memory",
		WANPerSite:         wan,
		HeartbeatInterval:  sc.Agent.Heartbeat,
		FetchRetryInterval: sc.Agent.FetchRetry,
		Monitor:            sc.Monitor.options(),
		Clock:              clock,
		Logger:             opts.Logger,
		AgentLogger:        opts.AgentLogger,
	})
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	rep := &Report{Scenario: sc.Name, File: sc.File, Devices: len(devices), Started: time.Now().UTC()}
	if clock != nil {
		rep.ClockSpeed = clock.Speed()
		fmt.Fprintf(progress, "fleet-sim: %s: simulated clock at %g× real time\n", sc.Name, clock.Speed())
	}
	fmt.Fprintf(progress, "fleet-sim: %s: starting %d agents\n", sc.Name, len(devices))
	ctx, cancel := context.WithTimeout(ctx, clock.Real(sc.Timeout))
	defer cancel()
	startBegin := time.Now()
	if err := f.Start(ctx); err != nil {
		_ = f.Stop()
		return nil, fmt.Errorf("scenario: start fleet: %w", err)
	}
	rep.StartSeconds = time.Since(startBegin).Seconds()
	fmt.Fprintf(progress, "fleet-sim: %d agents ready in %.2fs\n", len(devices), rep.StartSeconds)

	env := &Env{Fleet: f, Scenario: sc, Start: time.Now(), Clock: clock, Progress: progress,
		Models: map[string]*fraud.Artifact{}, figures: map[string]any{}, rollouts: map[string]string{}, retrains: map[string]string{},
		progress: func() uint64 { return f.Progress().Total() }}
	loadStart := hostload.Read()
	env.rec = newRecorder(env.Start, clock)
	if t := sc.Traffic; t != nil {
		tp, _ := t.Params.Fraud() // validated at load
		sites := map[string]fraud.Params{}
		for s, p := range t.Sites {
			sites[s], _ = p.Fraud()
		}
		tr, err := f.StartTraffic(sim.TrafficOptions{Model: t.Model, Rate: t.Rate, Seed: t.Seed, Params: tp, SiteParams: sites,
			LabelFraction: t.LabelFraction, LabelDelay: t.LabelDelay, CSV: t.csv})
		if err != nil {
			_ = f.Stop()
			return nil, fmt.Errorf("scenario: %w", err)
		}
		env.Traffic = tr
	}
	trafficModel := ""
	if sc.Traffic != nil {
		trafficModel = sc.Traffic.Model
	}

	// The recorder and progress printer run until the assertions are done.
	bgCtx, bgStop := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Go(func() {
		tick := time.NewTicker(sc.SampleInterval)
		defer tick.Stop()
		env.rec.sample(f, trafficModel)
		for {
			select {
			case <-bgCtx.Done():
				env.rec.sample(f, trafficModel)
				return
			case <-tick.C:
				env.rec.sample(f, trafficModel)
			}
		}
	})
	bg.Go(func() { env.watchProgress(bgCtx) })
	bg.Go(func() {
		tick := time.NewTicker(opts.ProgressInterval)
		defer tick.Stop()
		for {
			select {
			case <-bgCtx.Done():
				return
			case <-tick.C:
				fmt.Fprintln(progress, env.statusLine())
			}
		}
	})

	rep.Steps = runTimeline(ctx, env, progress)
	rep.Assertions = runAssertions(ctx, env, progress)

	bgStop()
	bg.Wait()
	if env.Traffic != nil {
		env.Traffic.Stop()
		st := env.Traffic.Stats()
		rep.Inference = &st
	}
	rep.Samples = env.rec.allSamples()
	rep.Figures = env.figures
	rep.Restarts = 0
	for _, m := range f.Members() {
		rep.Restarts += m.Restarts()
	}
	if p := f.Proxy(); p != nil {
		var in, out uint64
		for _, m := range f.Members() {
			i, o := p.Bytes(m.Device.ID)
			in, out = in+i, out+o
		}
		rep.Network = &NetworkFigures{BytesToDevices: in, BytesFromDevices: out, Connections: p.Accepted(), CorruptedChunks: p.Corrupted()}
	}
	rep.DurationSeconds = env.Since().Seconds()
	load := hostload.Since(loadStart)
	rep.Load = &load
	if clock != nil {
		rep.RealSeconds = time.Since(env.Start).Seconds()
	}

	fmt.Fprintf(progress, "fleet-sim: stopping %d agents\n", len(devices))
	if err := f.Stop(); err != nil {
		rep.Errors = append(rep.Errors, "stop: "+err.Error())
	}
	leak, err := f.LeakCheck(10 * time.Second)
	rep.Leak = &leak
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	rep.Passed = len(rep.Errors) == 0
	for _, s := range rep.Steps {
		if s.Error != "" {
			rep.Passed = false
		}
	}
	for _, a := range rep.Assertions {
		if !a.Passed {
			rep.Passed = false
		}
	}
	return rep, nil
}

func runTimeline(ctx context.Context, env *Env, progress io.Writer) []StepResult {
	var out []StepResult
	for i, st := range env.Scenario.Timeline {
		r := StepResult{Index: i + 1, Line: st.Line, Action: st.Kind, Name: st.Name, At: st.At.Seconds()}
		if wait := st.At - env.Since(); wait > 0 {
			t := time.NewTimer(env.Real(wait))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if err := ctx.Err(); err != nil {
			r.Error = "scenario timeout before this step: " + err.Error()
			out = append(out, r)
			break
		}
		realStart := time.Now()
		r.Started = env.Since().Seconds()
		detail, err := st.Action.Run(ctx, env)
		r.Took = env.Since().Seconds() - r.Started
		if env.Clock != nil {
			r.RealStarted = realStart.Sub(env.Start).Seconds()
			r.RealTook = time.Since(realStart).Seconds()
		}
		r.Detail = detail
		if err != nil {
			r.Error = err.Error()
		}
		out = append(out, r)
		if err != nil {
			fmt.Fprintf(progress, "fleet-sim: %s step %d %s (line %d) FAILED: %v\n", env.stamp(r.Started, r.RealStarted), r.Index, st.Kind, st.Line, err)
			break // later steps assume this one worked
		}
		fmt.Fprintf(progress, "fleet-sim: %s step %d %s: %s\n", env.stamp(r.Started, r.RealStarted), r.Index, st.Kind, detail)
	}
	return out
}

func runAssertions(ctx context.Context, env *Env, progress io.Writer) []AssertionResult {
	var out []AssertionResult
	for _, c := range env.Scenario.Assertions {
		r := AssertionResult{Kind: c.Kind, Line: c.Line}
		var why string
		check := func() bool {
			var ok bool
			ok, why = c.Assertion.Check(env)
			return ok
		}
		r.Passed = check()
		// An assertion with a within is retried by the rule of every wait:
		// until within (from the start of the run), and past it while the
		// fleet progresses, up to 3× within. A run slowed by a busy machine
		// may reach its assertions after within: they are judged at once,
		// and retried only if the fleet is still moving.
		if d := c.Assertion.Deadline(); !r.Passed && d > 0 {
			since := env.Since()
			if limit := capFactor*d - since; limit > 0 {
				b := &realBounds{nominal: env.Real(d - since), limit: env.Real(limit), timeout: env.Real(d)}
				named := fmt.Sprintf("%v (within, from the start of the run)", d)
				_, err := env.wait(ctx, waitSpec{bounds: b, named: named}, check)
				if r.Passed = err == nil; !r.Passed {
					why += "; " + err.Error()
				}
			}
		}
		if !r.Passed {
			r.Explanation = why
			fmt.Fprintf(progress, "fleet-sim: FAIL %s (line %d): %s\n", c.Kind, c.Line, why)
		} else {
			fmt.Fprintf(progress, "fleet-sim: ok   %s (line %d)\n", c.Kind, c.Line)
		}
		out = append(out, r)
	}
	return out
}

// statusLine summarises the fleet now: versions served and phases.
func (e *Env) statusLine() string {
	s := e.rec.allSamplesLast()
	line := "fleet-sim: " + e.stamp(e.Since().Seconds(), time.Since(e.Start).Seconds())
	for _, k := range sortedKeys(s.Serving) {
		line += fmt.Sprintf(" %s=%d", k, s.Serving[k])
	}
	for _, k := range sortedKeys(s.Phases) {
		line += fmt.Sprintf(" [%s %d]", k, s.Phases[k])
	}
	if e.Traffic != nil {
		st := e.Traffic.Stats()
		line += fmt.Sprintf(" inferences ok=%d failed=%d", st.OK, st.Failed)
	}
	return line
}

// stamp formats a moment of the timeline for progress lines: simulated
// seconds, and the real ones when the clock is sped up.
func (e *Env) stamp(simulated, wall float64) string {
	if e.Clock == nil {
		return fmt.Sprintf("%6.2fs", simulated)
	}
	return fmt.Sprintf("%8.1fs (real %6.2fs)", simulated, wall)
}

func (r *recorder) allSamplesLast() Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) == 0 {
		return Sample{}
	}
	return r.samples[len(r.samples)-1]
}

// ErrFailed is returned by Summary's callers when a report did not pass.
var ErrFailed = errors.New("scenario failed")

// lockedWriter serialises progress lines from the timeline and the status
// printer.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
