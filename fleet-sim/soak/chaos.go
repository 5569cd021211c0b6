package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

// Fault kinds.
const (
	FaultKill         = "kill"
	FaultBroker       = "broker-outage"
	FaultControlPlane = "control-plane-restart"
	FaultPartition    = "partition"
	FaultCorrupt      = "corrupt-chunks"
	FaultSkew         = "skew-clocks"
)

// FaultKinds lists the kinds in the order the report shows them.
var FaultKinds = []string{FaultKill, FaultBroker, FaultControlPlane, FaultPartition, FaultCorrupt, FaultSkew}

// planned is one fault of the schedule: its kind and when, in seconds
// after the chaos starts.
type planned struct {
	at   float64
	kind string
}

// schedule plans the faults of the chaos phase: each kind about every
// Every, at least MinEach, spread evenly with jitter of a quarter period.
func schedule(o Options, rng *rand.Rand) []planned {
	d := o.Duration.Seconds()
	f := o.Faults
	var out []planned
	for _, k := range []struct {
		kind  string
		every time.Duration
	}{
		{FaultKill, f.KillEvery}, {FaultBroker, f.BrokerEvery}, {FaultControlPlane, f.ControlPlaneEvery},
		{FaultPartition, f.PartitionEvery}, {FaultCorrupt, f.CorruptEvery}, {FaultSkew, f.SkewEvery},
	} {
		n := max(f.MinEach, int(d/k.every.Seconds()))
		period := d / float64(n)
		for i := range n {
			at := period*(float64(i)+0.5) + (rng.Float64()-0.5)*period/2
			out = append(out, planned{at: at, kind: k.kind})
		}
	}
	slices.SortStableFunc(out, func(a, b planned) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	return out
}

// Fault is one fault as it happened.
type Fault struct {
	At      float64 `json:"at_s"`
	Kind    string  `json:"kind"`
	Seconds float64 `json:"seconds"` // how long injecting it took
	What    string  `json:"what"`
	Error   string  `json:"error,omitempty"`
}

// chaos runs the planned faults in order, one at a time, and returns
// when the last has been injected (or ctx ended).
func (s *soak) chaos(ctx context.Context, plan []planned) {
	// Kills run beside the schedule (an agent takes seconds to stop and
	// start on a busy machine; a batch every 10 s would fall behind), the
	// other faults one at a time in order.
	var kills sync.WaitGroup
	defer kills.Wait()
	for i, p := range plan {
		wait := time.Until(s.start.Add(time.Duration(p.at * float64(time.Second))))
		if wait > 0 {
			t := time.NewTimer(wait) // the schedule, not a guess at timing
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return
		}
		if late := s.since() - p.at; late > max(s.opts.Duration.Seconds()/4, 30) {
			// Slow faults (control plane restarts on a busy machine) held
			// the schedule up by more than a quarter of the chaos (30 s at
			// least): the rest is skipped, so the soak ends about when it
			// should.
			s.mu.Lock()
			s.skipped = len(plan) - i
			s.mu.Unlock()
			s.progress("chaos time is up: %d planned faults skipped", len(plan)-i)
			return
		}
		if p.kind == FaultKill {
			victims := s.claim(s.opts.Faults.KillBatch)
			kills.Go(func() {
				s.record(p.kind, func() (string, error) { return s.kill(ctx, victims) })
				s.release(victims)
			})
			continue
		}
		s.record(p.kind, func() (string, error) { return s.inject(ctx, p.kind) })
	}
}

// record runs one fault and records it.
func (s *soak) record(kind string, run func() (string, error)) {
	at := s.since()
	what, err := run()
	ft := Fault{At: at, Kind: kind, Seconds: s.since() - at, What: what}
	if err != nil {
		ft.Error = err.Error()
		s.noteErr("%s: %v", kind, err)
	} else {
		s.progress("%s: %s", kind, what)
	}
	s.mu.Lock()
	s.faults = append(s.faults, ft)
	s.mu.Unlock()
}

// claim picks up to n members no kill is working on and marks them.
func (s *soak) claim(n int) []*sim.Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*sim.Member
	for _, m := range s.pick(len(s.fleet.Members())) {
		if len(out) == n {
			break
		}
		if !s.killing[m.Device.ID] {
			s.killing[m.Device.ID] = true
			out = append(out, m)
		}
	}
	return out
}

func (s *soak) release(ms []*sim.Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range ms {
		delete(s.killing, m.Device.ID)
	}
}

// kill kills the victims in parallel and restarts them.
func (s *soak) kill(ctx context.Context, victims []*sim.Member) (string, error) {
	var wg sync.WaitGroup
	errs := make([]error, len(victims))
	for i, m := range victims {
		wg.Go(func() { errs[i] = s.fleet.Kill(ctx, m.Device.ID) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	return fmt.Sprintf("killed and restarted %v", idsOf(victims)), nil
}

// pick returns n distinct members at random.
func (s *soak) pick(n int) []*sim.Member {
	ms := s.fleet.Members()
	idx := s.rng.Perm(len(ms))[:min(n, len(ms))]
	out := make([]*sim.Member, len(idx))
	for i, j := range idx {
		out[i] = ms[j]
	}
	return out
}

func idsOf(ms []*sim.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Device.ID
	}
	return out
}

// inject injects one fault and says what it did.
func (s *soak) inject(ctx context.Context, kind string) (string, error) {
	f := s.opts.Faults
	p := s.fleet.Proxy()
	switch kind {
	case FaultBroker:
		n := p.Disconnect(idsOf(s.fleet.Members()), f.BrokerDown)
		return fmt.Sprintf("every link cut (%d connections) and refused for %v", n, f.BrokerDown), nil
	case FaultControlPlane:
		s.readDrops(ctx)
		t0 := time.Now()
		err := s.fleet.RestartControlPlane(ctx, f.ControlPlaneDown, func() { s.telemetryCheck("control plane restart") })
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("control plane and broker restarted, serving again after %v", time.Since(t0).Round(time.Millisecond)), nil
	case FaultPartition:
		site := fmt.Sprintf("site-%d", 1+s.rng.IntN(s.opts.Sites))
		var ids []string
		for _, m := range s.fleet.Members() {
			if m.Device.Labels["site"] == site {
				ids = append(ids, m.Device.ID)
			}
		}
		n := p.Disconnect(ids, f.PartitionDown)
		return fmt.Sprintf("%s (%d agents, %d connections) cut off for %v", site, len(ids), n, f.PartitionDown), nil
	case FaultCorrupt:
		victims := s.pick(max(1, int(f.CorruptFraction*float64(len(s.fleet.Members())))))
		p.CorruptChunks(idsOf(victims), f.CorruptChunks)
		return fmt.Sprintf("next %d chunks to %d agents corrupted (%d corrupted so far)", f.CorruptChunks, len(victims), p.Corrupted()), nil
	case FaultSkew:
		victims := s.pick(max(1, int(f.SkewFraction*float64(len(s.fleet.Members())))))
		healed := 0
		for _, m := range victims {
			if s.rng.IntN(3) == 0 {
				m.SkewClock(0)
				healed++
				continue
			}
			m.SkewClock(time.Duration((s.rng.Float64()*2 - 1) * float64(f.MaxSkew)))
		}
		return fmt.Sprintf("%d clocks skewed by up to ±%v, %d set right", len(victims)-healed, f.MaxSkew, healed), nil
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// RolloutCounts count the rollouts the soak ran, by how they ended.
type RolloutCounts struct {
	Started    int `json:"started"`
	Completed  int `json:"completed"`
	RolledBack int `json:"rolled_back"`
	// Aborted are rollouts that did not end within the bound and were
	// aborted (a stuck rollout is a finding: see Stuck).
	Aborted int `json:"aborted"`
	Other   int `json:"other_terminal"`
	// Stuck describes rollouts that did not end within the bound.
	Stuck []string `json:"stuck,omitempty"`
	// APIErrors counts calls that failed (most while the control plane
	// was down) and were retried.
	APIErrors int `json:"api_errors"`
}

// rolloutBound is how long one rollout may take before the soak aborts it.
const rolloutBound = 5 * time.Minute

// rolloutLoop runs rollouts back to back — to another version, a third of
// them rolled back half-way — until noNew is closed; it returns once the
// rollout in progress then has ended.
func (s *soak) rolloutLoop(ctx context.Context, noNew <-chan struct{}) {
	rng := rand.New(rand.NewPCG(s.opts.Seed, 0x7011))
	cur := versions[0]
	canary := max(1, len(s.fleet.Members())/50)
	for n := 1; ; n++ {
		select {
		case <-noNew:
			return
		case <-ctx.Done():
			return
		default:
		}
		next := cur
		for next == cur {
			next = versions[rng.IntN(len(versions))]
		}
		spec := api.RolloutSpec{Model: model, Version: next, Selector: "site!=none", Bake: api.Duration(2 * time.Second), AutoPromote: true,
			Stages: []api.RolloutStage{{Name: "canary", Canary: canary}, {Name: "third", Percent: 30}, {Name: "all", Percent: 100}}}
		var ro *api.Rollout
		if !s.retry(ctx, noNew, func() (err error) { ro, err = s.fleet.ControlPlane().CreateRollout(ctx, spec, "soak"); return err }) {
			return
		}
		rollback := rng.IntN(3) == 0
		s.mu.Lock()
		s.rollouts.Started++
		s.mu.Unlock()
		end := s.follow(ctx, ro.ID, rollback)
		s.progress("rollout %d to %s: %s", n, next, end)
		s.mu.Lock()
		switch end {
		case api.RolloutCompleted:
			s.rollouts.Completed++
			cur = next
		case api.RolloutRolledBack:
			s.rollouts.RolledBack++
		case api.RolloutAborted:
			s.rollouts.Aborted++
		default:
			s.rollouts.Other++
		}
		s.mu.Unlock()
		if end != api.RolloutCompleted {
			// Some devices may be on next after an abort: the next
			// rollout's version is picked against what most serve.
			cur = s.majorityVersion(cur)
		}
	}
}

// follow watches a rollout until it ends, rolling it back once it passed
// its canary when rollback is set, and aborting it after rolloutBound.
func (s *soak) follow(ctx context.Context, id string, rollback bool) api.RolloutState {
	t0 := time.Now()
	rolledBack := false
	for ctx.Err() == nil {
		ro, err := s.fleet.ControlPlane().Rollout(id, false)
		switch {
		case err != nil:
			s.mu.Lock()
			s.rollouts.APIErrors++
			s.mu.Unlock()
		case ro.State.Terminal():
			return ro.State
		case rollback && !rolledBack && ro.Stage >= 1:
			if _, err := s.fleet.ControlPlane().RolloutAction(ctx, id, api.ActionRollback, api.RollbackRequest{}, "soak"); err == nil {
				rolledBack = true
			}
		case time.Since(t0) > rolloutBound:
			why := ro.Reason
			if ro.Stage >= 0 && ro.Stage < len(ro.Stages) && ro.Stages[ro.Stage].Waiting != "" {
				why = "waiting for " + ro.Stages[ro.Stage].Waiting
			}
			why += "; devices on the way to " + ro.Spec.Version + ": " + s.updating(ro.Spec.Version)
			if full, err := s.fleet.ControlPlane().Rollout(id, true); err == nil {
				why += "; " + s.stageSides(full)
			}
			s.mu.Lock()
			if len(s.rollouts.Stuck) < 10 {
				s.rollouts.Stuck = append(s.rollouts.Stuck, fmt.Sprintf("%s to %s at %.0fs: %s stage %d (%s)", id, ro.Spec.Version, s.since(), ro.State, ro.Stage, why))
			}
			s.mu.Unlock()
			s.noteErr("rollout %s to %s did not end within %v (%s, stage %d: %s); aborting it", id, ro.Spec.Version, rolloutBound, ro.State, ro.Stage, why)
			if _, err := s.fleet.ControlPlane().RolloutAction(ctx, id, api.ActionAbort, api.RollbackRequest{}, "soak"); err != nil {
				s.noteErr("abort %s: %v", id, err)
			}
			t0 = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond): // polling the rollout's state
		}
	}
	return ""
}

// retry calls fn until it succeeds (the control plane may be restarting),
// counting failures; false when ctx ended or stop closed first.
func (s *soak) retry(ctx context.Context, stop <-chan struct{}, fn func() error) bool {
	for {
		if err := fn(); err == nil {
			return true
		}
		s.mu.Lock()
		s.rollouts.APIErrors++
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return false
		case <-stop:
			return false
		case <-time.After(time.Second): // the control plane is coming back
		}
	}
}

// majorityVersion is the version most devices serve (def if none).
func (s *soak) majorityVersion(def string) string {
	count := map[string]int{}
	for _, m := range s.fleet.Members() {
		if v := status(m).Serving; v != "" {
			count[v]++
		}
	}
	best := def
	for v, n := range count {
		if n > count[best] {
			best = v
		}
	}
	return best
}

// updating says where the devices updating to version are: how many in
// each phase, and a few that refused it with their reason.
// stageSides compares, for the devices of a rollout's current stage, what
// the control plane knows with what the agents say: a stage that waits for
// devices that serve the version already waits for the control plane to
// hear of it (its ingest is behind); one that waits for devices with an
// older desired state waits for its publication to reach them.
func (s *soak) stageSides(ro *api.Rollout) string {
	members := map[string]*sim.Member{}
	for _, m := range s.fleet.Members() {
		members[m.Device.ID] = m
	}
	var serving, onTheWay, olderDesired, other, absent int
	for id, rec := range ro.Devices {
		if rec.Stage != ro.Stage || rec.RolledBack {
			continue
		}
		m := members[id]
		if m == nil || m.Agent() == nil {
			absent++
			continue
		}
		st := status(m)
		switch {
		case st.Serving == rec.Want && st.Target == "":
			serving++
		case st.Target == rec.Want:
			onTheWay++
		case m.Agent().Generation() < rec.Generation:
			olderDesired++
		default:
			other++
		}
	}
	return fmt.Sprintf("agents of the stage: %d serve it, %d on the way, %d hold an older desired state than the one issued, %d other, %d not running",
		serving, onTheWay, olderDesired, other, absent)
}

func (s *soak) updating(version string) string {
	phases := map[string]int{}
	var refused []string
	for _, m := range s.fleet.Members() {
		st := status(m)
		switch {
		case st.Target == version:
			phases[string(st.Phase)]++
		case st.FailedVersion == version && len(refused) < 3:
			refused = append(refused, fmt.Sprintf("%s refused it: %s", m.Device.ID, st.FailureReason))
		}
	}
	out := fmt.Sprintf("%v", phases)
	if len(refused) > 0 {
		out += "; " + strings.Join(refused, "; ")
	}
	return out
}
