package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// checkTrials commits versions whose health period passed without an
// inference error, and returns to the previous version when one failed.
// It decides again on every tick, so a decision whose write failed is
// simply made again (see transition).
func (a *Agent) checkTrials(ctx context.Context) {
	now := a.opts.Clock().UnixNano()
	elapsed := time.Now() // for the back-off after failed writes: real time
	for _, s := range a.slotList() {
		tr := s.st.Trial
		if tr == nil || elapsed.Before(s.retryAt) {
			continue
		}
		if s.abandon != "" {
			a.revertTrial(ctx, s, s.abandon)
			continue
		}
		if m := s.serving.Load(); m != nil {
			if n := m.errors.Load(); n > 0 {
				a.revertTrial(ctx, s, fmt.Sprintf("%d inference errors during the health period", n))
				continue
			}
		}
		if time.Duration(now-tr.Since) >= a.opts.HealthPeriod {
			next := s.st.clone()
			next.Trial = nil
			if a.transition(ctx, s, stepTrialEnd, next) != nil {
				continue
			}
			a.log.Info("model committed after its health period", "model", s.name, "version", s.st.Active.Version)
			a.report(ctx, s, efpb.ModelState_MODEL_STATE_ACTIVE, s.st.Active.Version, "committed after the health period")
		}
	}
}

// revertTrial returns a slot to its previous version while the agent runs.
func (a *Agent) revertTrial(ctx context.Context, s *slot, reason string) {
	bad := s.st.Active
	back, err := a.returnToPrevious(ctx, s, reason)
	if err != nil {
		return // the trial is as recorded: decided again on a later tick
	}
	s.abandon = ""
	if !back {
		a.report(ctx, s, efpb.ModelState_MODEL_STATE_ACTIVE, bad.Version, reason+"; no previous version to return to")
		return
	}
	a.log.Warn("returned to the previous version", "model", s.name, "bad", bad.Version, "active", s.st.Active.Version, "reason", reason)
	a.report(ctx, s, efpb.ModelState_MODEL_STATE_ROLLED_BACK, bad.Version, reason)
}

// endTrialAtStart handles a trial that crashed the agent too often; it runs
// during restore, before anything is reported (the outcome is reported on
// connect). If that cannot be recorded, the version serves as recorded, on
// trial, and checkTrials gives it up once the write succeeds.
func (a *Agent) endTrialAtStart(ctx context.Context, s *slot, reason string) {
	bad := s.st.Active
	back, err := a.returnToPrevious(ctx, s, reason)
	switch {
	case err != nil:
		s.abandon = reason
	case back:
		a.log.Warn("returned to the previous version", "model", s.name, "bad", bad.Version, "reason", reason)
		return
	}
	a.serveActive(ctx, s)
}

// returnToPrevious ends the trial of the active version: it loads the
// previous version, records the trial version as failed and the previous
// one as active, and only then swaps it in. Without a usable previous
// version the trial just ends and the version stays (back is false). An
// error means the change could not be recorded: nothing changed.
func (a *Agent) returnToPrevious(ctx context.Context, s *slot, reason string) (back bool, err error) {
	bad, prev := s.st.Active, s.st.Previous
	var m *servedModel
	if prev != nil {
		if m, err = a.loadModel(s.name, prev); err != nil {
			a.log.Error("previous version does not load", "model", s.name, "version", prev.Version, "err", err)
			m = nil
		}
	}
	next := s.st.clone()
	next.Trial = nil
	if m == nil {
		return false, a.transition(ctx, s, stepTrialEnd, next)
	}
	next.Active, next.Previous = prev, nil
	next.LastFailure = &failure{Version: bad.Version, SHA256: bad.SHA256, Generation: s.st.Trial.Generation,
		Reason: reason, RolledBack: true}
	if err := a.transition(ctx, s, stepTrialRevert, next); err != nil {
		m.close()
		return false, err
	}
	if old := s.serving.Swap(m); old != nil {
		old.close()
	}
	a.cleanFiles(s)
	return true, nil
}
