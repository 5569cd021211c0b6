package scenario

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/labels"
)

// Env is what actions and assertions work on: the running fleet, its
// traffic, and what the recorder saw.
type Env struct {
	Fleet    *sim.Fleet
	Scenario *Scenario
	// Traffic is nil when the scenario has none.
	Traffic *sim.Traffic
	// Start is when the timeline started, in real time.
	Start time.Time
	// Clock is the fleet's simulated clock (nil: real time). Scenario
	// durations are simulated: convert them with Real before waiting.
	Clock *sim.Clock
	// Progress receives one-line progress messages (never nil).
	Progress io.Writer

	// Models holds the artifacts pushed so far by "name@version"; only the
	// timeline goroutine touches it.
	Models map[string]*fraud.Artifact

	rec *recorder
	// progress reads the fleet's progress count for waits (Run sets it to
	// the fleet's Progress; nil: none); waits tunes them (zero: defaults).
	progress func() uint64
	waits    waitTuning
	// progressMu guards what watchProgress saw: the fleet's progress count
	// at its last reading, when (real) it last changed (zero: not since
	// the run began), and whether it runs.
	progressMu      sync.Mutex
	progressLast    uint64
	progressAt      time.Time
	progressWatched bool
	// rollouts maps scenario rollout names to ids; only the Run goroutine
	// (timeline, then assertions) touches it.
	rollouts map[string]string
	// retrains maps scenario names of retrain jobs (wait_retrain) to
	// their ids; only the Run goroutine touches it.
	retrains map[string]string
	// mu guards figures, sizes, deployed and shifted.
	mu sync.Mutex
	// shifted is when (control plane clock) traffic was last shifted, by
	// the selector that shift_traffic picked with.
	shifted map[string]time.Time
	figures map[string]any
	// sizes are the pushed versions' sizes by "model@version"; deployed
	// when each was first deployed (simulated, since Start).
	sizes    map[string]uint64
	deployed map[string]time.Duration
}

func (e *Env) setModelSize(key string, size uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sizes == nil {
		e.sizes = map[string]uint64{}
	}
	e.sizes[key] = size
}

// ModelSize is the size of a version pushed in this run ("model@version").
func (e *Env) ModelSize(key string) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.sizes[key]
	return n, ok
}

func (e *Env) markDeployed(key string, at time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.deployed == nil {
		e.deployed = map[string]time.Duration{}
	}
	if _, ok := e.deployed[key]; !ok {
		e.deployed[key] = at
	}
}

// Deployed is when "model@version" was first deployed in this run.
func (e *Env) Deployed(key string) (time.Duration, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.deployed[key]
	return t, ok
}

func (e *Env) markShifted(selector string, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.shifted == nil {
		e.shifted = map[string]time.Time{}
	}
	e.shifted[selector] = at
}

// Shifted is when (on the control plane's clock) shift_traffic last shifted
// the devices of selector.
func (e *Env) Shifted(selector string) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.shifted[selector]
	return t, ok
}

// Since is the simulated time since the timeline started.
func (e *Env) Since() time.Duration { return e.Clock.Simulated(time.Since(e.Start)) }

// Real is the real time a simulated duration d takes.
func (e *Env) Real(d time.Duration) time.Duration { return e.Clock.Real(d) }

// SetFigure records a named figure for the report.
func (e *Env) SetFigure(name string, v any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.figures[name] = v
}

// freeFigure is name, or name_2, name_3 ... when name is taken.
func (e *Env) freeFigure(name string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	free := name
	for i := 2; ; i++ {
		if _, taken := e.figures[free]; !taken {
			return free
		}
		free = fmt.Sprintf("%s_%d", name, i)
	}
}

// withID is the member's labels with its device id as label id, so a
// selector can name one device (id=dev-1-1).
func withID(m *sim.Member) map[string]string {
	l := make(map[string]string, len(m.Device.Labels)+1)
	for k, v := range m.Device.Labels {
		l[k] = v
	}
	if _, ok := l["id"]; !ok {
		l["id"] = m.Device.ID
	}
	return l
}

// Select returns the members whose labels match selector ("" is all; the
// label id matches a device's id).
func (e *Env) Select(selector string) ([]*sim.Member, error) {
	if selector == "" {
		return e.Fleet.Members(), nil
	}
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("selector %q: %w", selector, err)
	}
	var out []*sim.Member
	for _, m := range e.Fleet.Members() {
		if sel.Match(m.Device.Labels) || sel.Match(withID(m)) {
			out = append(out, m)
		}
	}
	return out, nil
}

// Status is the live status of model on the member's current agent.
func Status(m *sim.Member, model string) agent.ModelStatus {
	if a := m.Agent(); a != nil {
		for _, s := range a.Status() {
			if s.Name == model {
				return s
			}
		}
	}
	return agent.ModelStatus{Name: model}
}

// FirstServing is when (since Start) the recorder first saw the device
// serve model@version.
func (e *Env) FirstServing(id, model, version string) (time.Duration, bool) {
	return e.rec.firstServing(id, model+"@"+version)
}

// EverRan returns the devices the recorder ever saw serving or committed on
// model@version.
func (e *Env) EverRan(model, version string) []string {
	return e.rec.everRan(model + "@" + version)
}

// Sample is the fleet at one moment: devices per served "model@version"
// ("model@-" for none) and per update phase. T is in (simulated) seconds
// since the timeline started.
type Sample struct {
	T       float64        `json:"t"`
	Serving map[string]int `json:"serving"`
	Phases  map[string]int `json:"phases,omitempty"`
}

// recorder samples every agent's status on an interval; its times are
// simulated.
type recorder struct {
	start time.Time // real
	clock *sim.Clock
	// mu guards everything below.
	mu      sync.Mutex
	first   map[string]map[string]time.Duration // device → model@version → first seen serving
	ever    map[string]map[string]bool          // model@version → devices
	tried   map[string]map[string]bool          // model@version → devices that targeted, served or refused it
	samples []Sample
	models  map[string]bool // model names seen
}

func newRecorder(start time.Time, clock *sim.Clock) *recorder {
	return &recorder{start: start, clock: clock, first: map[string]map[string]time.Duration{}, ever: map[string]map[string]bool{}, tried: map[string]map[string]bool{}, models: map[string]bool{}}
}

// maxSamples bounds the report; beyond it every other sample is dropped.
const maxSamples = 4000

func (r *recorder) sample(f *sim.Fleet, trafficModel string) {
	now := r.clock.Simulated(time.Since(r.start))
	s := Sample{T: now.Seconds(), Serving: map[string]int{}, Phases: map[string]int{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range f.Members() {
		a := m.Agent()
		if a == nil {
			continue
		}
		st := a.Status()
		seen := false
		for _, ms := range st {
			r.models[ms.Name] = true
			if ms.Name == trafficModel {
				seen = true
			}
			key := ms.Name + "@" + ms.Serving
			if ms.Serving == "" {
				key = ms.Name + "@-"
			}
			s.Serving[key]++
			if ms.Phase != "" {
				s.Phases[string(ms.Phase)]++
			}
			for _, v := range []string{ms.Serving, ms.Active, ms.Target, ms.FailedVersion} {
				if v == "" {
					continue
				}
				k := ms.Name + "@" + v
				if r.tried[k] == nil {
					r.tried[k] = map[string]bool{}
				}
				r.tried[k][m.Device.ID] = true
			}
			for _, v := range []string{ms.Serving, ms.Active} {
				if v == "" {
					continue
				}
				k := ms.Name + "@" + v
				if r.ever[k] == nil {
					r.ever[k] = map[string]bool{}
				}
				r.ever[k][m.Device.ID] = true
			}
			if ms.Serving != "" {
				k := ms.Name + "@" + ms.Serving
				if r.first[m.Device.ID] == nil {
					r.first[m.Device.ID] = map[string]time.Duration{}
				}
				if _, ok := r.first[m.Device.ID][k]; !ok {
					r.first[m.Device.ID][k] = now
				}
			}
		}
		if !seen && trafficModel != "" {
			s.Serving[trafficModel+"@-"]++
		}
	}
	r.samples = append(r.samples, s)
	if len(r.samples) > maxSamples {
		kept := r.samples[:0]
		for i, x := range r.samples {
			if i%2 == 0 || i == len(r.samples)-1 {
				kept = append(kept, x)
			}
		}
		r.samples = kept
	}
}

func (r *recorder) firstServing(id, key string) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.first[id][key]
	return d, ok
}

func (r *recorder) everRan(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.ever[key]))
	for id := range r.ever[key] {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func (r *recorder) attemptedBy(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.tried[key]))
	for id := range r.tried[key] {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func (r *recorder) allSamples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Sample(nil), r.samples...)
}

// TargetChecker is implemented by actions and assertions whose validity
// depends on where the control plane runs: remote is true for an external
// one (RunOptions.Remote), where whatever needs the in-process control
// plane's internals or its embedded broker (restarting the broker, say)
// must return an error saying why. Run asks before it starts anything.
type TargetChecker interface {
	CheckTarget(sc *Scenario, remote bool) error
}

// CheckTarget reports, all at once, what in sc cannot run against the
// in-process control plane (remote false) or an external one (remote true).
// Run calls it first; the errors wrap ErrInvalid and name the step's or
// assertion's line and kind.
func (sc *Scenario) CheckTarget(remote bool) error {
	var errs []error
	where := "against the in-process control plane"
	if remote {
		where = "against an external control plane (--api)"
	}
	if remote && sc.Clock.Speed > 1 {
		errs = append(errs, fmt.Errorf("%w: clock: speed %v cannot run %s: its clock is its own and runs in real time, so bake times, "+
			"rate limits, windows and expiries would not pass faster there; run in-process or at speed 1", ErrInvalid, sc.Clock.Speed, where))
	}
	if remote && sc.Network.Transport == sim.TransportMemory {
		errs = append(errs, fmt.Errorf("%w: network: transport memory cannot run %s: in-memory connections reach only the in-process broker", ErrInvalid, where))
	}
	if remote && sc.Monitor != nil {
		errs = append(errs, fmt.Errorf("%w: monitor: cannot run %s: its alert rules are set where it runs (edgefleet serve --alert-max-psi, --alert-min-accuracy, ...), "+
			"not over the API; remove the section (alerts then checks the rules the control plane runs with) or run in-process", ErrInvalid, where))
	}
	for _, st := range sc.Timeline {
		if tc, ok := st.Action.(TargetChecker); ok {
			if err := tc.CheckTarget(sc, remote); err != nil {
				errs = append(errs, fmt.Errorf("%w: line %d: action %s cannot run %s: %v", ErrInvalid, st.Line, st.Kind, where, err))
			}
		}
	}
	for _, c := range sc.Assertions {
		if tc, ok := c.Assertion.(TargetChecker); ok {
			if err := tc.CheckTarget(sc, remote); err != nil {
				errs = append(errs, fmt.Errorf("%w: line %d: assertion %s cannot run %s: %v", ErrInvalid, c.Line, c.Kind, where, err))
			}
		}
	}
	return errors.Join(errs...)
}
