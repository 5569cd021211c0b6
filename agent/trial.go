package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// checkTrials commits versions whose health period passed without an
// inference error, and returns to the previous version when one failed.
func (a *Agent) checkTrials(ctx context.Context) {
	now := a.opts.Clock().UnixNano()
	for _, s := range a.slotList() {
		tr := s.st.Trial
		if tr == nil {
			continue
		}
		if m := s.serving.Load(); m != nil {
			if n := m.errors.Load(); n > 0 {
				a.revertTrial(ctx, s, fmt.Sprintf("%d inference errors during the health period", n))
				continue
			}
		}
		if time.Duration(now-tr.Since) >= a.opts.HealthPeriod {
			s.st.Trial = nil
			a.commitSlot(s)
			a.log.Info("model committed after its health period", "model", s.name, "version", s.st.Active.Version)
			a.report(ctx, s, efpb.ModelState_MODEL_STATE_ACTIVE, s.st.Active.Version, "committed after the health period")
		}
	}
}

// revertTrial returns a slot to its previous version while the agent runs.
func (a *Agent) revertTrial(ctx context.Context, s *slot, reason string) {
	bad := s.st.Active
	if !a.returnToPrevious(s, reason) {
		a.report(ctx, s, efpb.ModelState_MODEL_STATE_ACTIVE, bad.Version, reason+"; no previous version to return to")
		return
	}
	a.log.Warn("returned to the previous version", "model", s.name, "bad", bad.Version, "active", s.st.Active.Version, "reason", reason)
	a.report(ctx, s, efpb.ModelState_MODEL_STATE_ROLLED_BACK, bad.Version, reason)
}

// endTrialAtStart handles a trial that crashed the agent too often; it runs
// during restore, before anything is reported (the failure is reported on
// connect).
func (a *Agent) endTrialAtStart(s *slot, reason string) {
	bad := s.st.Active
	if a.returnToPrevious(s, reason) {
		a.log.Warn("returned to the previous version", "model", s.name, "bad", bad.Version, "reason", reason)
		return
	}
	// Nothing to return to: keep serving what we have.
	if m, err := a.loadModel(s.name, s.st.Active); err == nil {
		s.serving.Store(m)
	}
}

// returnToPrevious loads the previous version, swaps it in and records the
// trial version as failed. It reports false when there is no usable
// previous version; the trial then ends and the version stays.
func (a *Agent) returnToPrevious(s *slot, reason string) bool {
	bad, prev := s.st.Active, s.st.Previous
	if prev == nil {
		s.st.Trial = nil
		a.commitSlot(s)
		return false
	}
	m, err := a.loadModel(s.name, prev)
	if err != nil {
		a.log.Error("previous version does not load", "model", s.name, "version", prev.Version, "err", err)
		s.st.Trial = nil
		a.commitSlot(s)
		return false
	}
	s.st = slotState{
		Active: prev,
		LastFailure: &failure{Version: bad.Version, SHA256: bad.SHA256, Generation: s.st.Trial.Generation,
			Reason: reason, RolledBack: true},
	}
	a.commitSlot(s)
	if old := s.serving.Swap(m); old != nil {
		old.close()
	}
	a.cleanFiles(s)
	return true
}
