package agent

import "slices"

// ModelStatus is a snapshot of one model slot, safe to read from any
// goroutine.
type ModelStatus struct {
	Name     string
	Serving  string // version answering inference now ("" if none)
	Active   string // committed version
	Previous string // kept on disk for rollback
	Target   string // update in progress
	// Phase is where the update to Target stands: a Phase value
	// (PhaseManifest … PhaseStaging), "" when no update is in progress.
	Phase Phase
	// OnTrial is set while Active serves during its health period.
	OnTrial bool
	// FailedVersion and FailureReason describe the last refused update.
	FailedVersion string
	FailureReason string
}

// Status returns a snapshot of every model slot, sorted by name.
func (a *Agent) Status() []ModelStatus {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]ModelStatus, 0, len(a.slots))
	for _, s := range a.slots {
		ms := ModelStatus{Name: s.name}
		if p := s.snap.Load(); p != nil {
			ms = *p
		}
		if m := s.serving.Load(); m != nil {
			ms.Serving = m.version
		}
		out = append(out, ms)
	}
	slices.SortFunc(out, func(x, y ModelStatus) int { return cmpString(x.Name, y.Name) })
	return out
}

// Generation is the highest desired-state generation the agent accepted.
func (a *Agent) Generation() uint64 { return a.gen.Load() }

func (s *slot) snapshot() {
	ms := &ModelStatus{Name: s.name}
	if r := s.st.Active; r != nil {
		ms.Active = r.Version
	}
	if r := s.st.Previous; r != nil {
		ms.Previous = r.Version
	}
	if t := s.st.Target; t != nil {
		ms.Target, ms.Phase = t.Version, t.Phase
	}
	ms.OnTrial = s.st.Trial != nil
	if f := s.st.LastFailure; f != nil {
		ms.FailedVersion, ms.FailureReason = f.Version, f.Reason
	}
	s.snap.Store(ms)
}
