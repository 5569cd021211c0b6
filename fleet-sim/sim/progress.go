package sim

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/edgefleet/edgefleet/agent"
)

// Progress counts what the fleet's agents have done since it started:
// update phases entered, chunks accepted into downloads, agent restarts,
// and the desired states they accepted (the sum of each agent's latest
// generation: a rollout moving or rolling back shows there first). Each
// count only grows. Whoever waits on the fleet compares two readings to
// tell a fleet that is slow but progressing from one that is stuck.
type Progress struct {
	PhaseEntries uint64 `json:"phase_entries"`
	Chunks       uint64 `json:"chunks"`
	Restarts     uint64 `json:"restarts"`
	Desired      uint64 `json:"desired_generations"`
}

// Total is the sum of the counts: it changes whenever any of them does.
func (p Progress) Total() uint64 { return p.PhaseEntries + p.Chunks + p.Restarts + p.Desired }

// Progress reads the fleet's progress counts. It takes one lock and a few
// atomic loads per member and asks no agent for its status, so it may be
// read several times a second at 10,000 agents.
func (f *Fleet) Progress() Progress {
	p := Progress{PhaseEntries: f.counts.phases.Load(), Restarts: f.counts.restarts.Load()}
	for _, m := range f.members {
		m.mu.Lock()
		p.Chunks += m.chunksBefore
		if m.cur != nil {
			p.Chunks += m.cur.ChunksReceived()
			p.Desired += m.cur.Generation()
		}
		m.mu.Unlock()
	}
	return p
}

// fleetCounts are the fleet-wide counts every member adds to.
type fleetCounts struct {
	phases   atomic.Uint64 // phase entries, every agent of every member
	restarts atomic.Uint64 // Fleet.Restart calls that stopped an agent
}

// phaseKey names one phase of one update.
type phaseKey struct {
	model, version string
	phase          agent.Phase
}

// boundHook is a user phase hook and the agent it was set for.
type boundHook struct {
	agent *agent.Agent
	hook  agent.PhaseHook
}

// observe returns the phase hook the member installs on its agent a before
// a runs: it counts the entry, then calls the user hook set for a (see
// SetPhaseHook), which may hold a there.
func (m *Member) observe(a *agent.Agent) agent.PhaseHook {
	return func(ctx context.Context, model, version string, phase agent.Phase) {
		m.phaseMu.Lock()
		m.phases[phaseKey{model, version, phase}]++
		m.phaseMu.Unlock()
		m.counts.phases.Add(1)
		if b := m.hook.Load(); b != nil && b.agent == a {
			b.hook(ctx, model, version, phase)
		}
	}
}

// SetPhaseHook sets the phase hook of the member's current agent (nil
// removes it); see agent.PhaseHook for when it is called and what holding
// it does. It applies to that agent only: an agent started later (a
// restart) starts without it. The member counts phase entries whatever
// the hook (PhaseEntries). It fails when no agent has started yet.
func (m *Member) SetPhaseHook(h agent.PhaseHook) error {
	a := m.Agent()
	if a == nil {
		return fmt.Errorf("sim: %s has no running agent", m.Device.ID)
	}
	if h == nil {
		m.hook.Store(nil)
		return nil
	}
	m.hook.Store(&boundHook{agent: a, hook: h})
	return nil
}

// PhaseEntries is how often the member's agents, all of them since the
// fleet started, entered phase (downloading, verifying or staging: the
// phases of agent.PhaseHook) of an update of model to version ("": any
// version). Counted as the agent enters the phase, it sees every entry,
// however short the phase.
func (m *Member) PhaseEntries(model, version string, phase agent.Phase) uint64 {
	m.phaseMu.Lock()
	defer m.phaseMu.Unlock()
	if version != "" {
		return m.phases[phaseKey{model, version, phase}]
	}
	var n uint64
	for k, c := range m.phases {
		if k.model == model && k.phase == phase {
			n += c
		}
	}
	return n
}

// ChunksReceived is how many chunks the member's agents, all of them since
// the fleet started, accepted into their downloads.
func (m *Member) ChunksReceived() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.chunksBefore
	if m.cur != nil {
		n += m.cur.ChunksReceived()
	}
	return n
}
