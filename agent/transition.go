package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// step names a change of a slot's persisted state: in logs, in the reason
// a device reports when the change could not be recorded, and for the
// tests' write fault (Agent.failWrite).
type step string

const (
	// Made by apply, for a new desired state.
	stepManifest step = "manifest" // a new target: its manifest is awaited
	stepRetarget step = "retarget" // the same target, under a newer generation
	stepDrop     step = "drop"     // the target is the active version already
	stepRollback step = "rollback" // the previous version, to reactivate from disk
	stepRemove   step = "remove"   // the model is no longer assigned (a delete)

	// Made as an update moves on.
	stepDownloading step = "downloading" // manifest accepted: PhaseDownloading
	stepVerifying   step = "verifying"   // every chunk in: PhaseVerifying
	stepStaging     step = "staging"     // file complete: PhaseStaging, one activation attempt counted
	stepActivate    step = "activate"    // the target becomes the active version (on trial with a HealthPeriod)
	stepFailure     step = "failure"     // the target is given up, and why is recorded

	// Made by the health period (trial.go).
	stepTrialRestart step = "trial-restart" // restore: the trial (re)starts, counted
	stepTrialEnd     step = "trial-end"     // the trial ends: the version stays
	stepTrialRevert  step = "trial-revert"  // the trial version failed: the previous one is active again

	// Made at restore, or on the tick after it could not be recorded.
	stepFallback step = "fallback" // the active version no longer loads: the previous one takes its place

	// Not a slot's state: the accepted desired state (handleDesired) and
	// site document (handleSite).
	stepGeneration step = "generation"
	stepSite       step = "site"
)

// enters reports whether st puts the target into a phase the PhaseHook
// is called for.
func (st step) enters() bool {
	return st == stepDownloading || st == stepVerifying || st == stepStaging
}

// maxRetryWait caps the back-off between retries of a slot whose writes
// keep failing.
const maxRetryWait = time.Minute

// errStopping is returned by transition when the agent was stopped while
// the PhaseHook ran: the caller goes no further, and the next agent on the
// same state resumes the phase.
var errStopping = errors.New("agent: stopping")

// transition makes next the state of s: every change of a slot's persisted
// state goes through it, and nothing is acted on before it returned nil.
//
// Contract:
//   - next is written, synced, before anything else. Only then is it
//     adopted: s.st = next, and the Status snapshot. A caller builds next on
//     s.st.clone() and acts on it only after transition returned nil.
//   - If st enters a phase (downloading, verifying, staging), the phase is
//     reported, then the PhaseHook runs. If the agent is stopping by then,
//     errStopping is returned: the caller goes no further, as after kill -9
//     right there.
//   - If the write fails, nothing changes: s.st is still what is on disk,
//     the committed version keeps serving, and the caller must not act on
//     next. The failure is counted (StateWriteFailures), logged
//     (rate-limited), and reported when connected: the slot's recorded
//     state, with a reason naming the step. The error is returned; the
//     caller returns.
//
// A failed write is handled as a kill -9 just before it, except that the
// agent lives on: what is on disk is what happens next. Per call site:
//
//   - downloading, verifying, staging, activate, failure, fallback: the
//     slot is resumed on the next tick from its recorded state (resume),
//     the path a restart takes. A failure step re-runs the check that
//     failed, which records its failure once writes succeed; no target is
//     failed because a write failed (that failure could not be recorded
//     either). A staging attempt that ended in this process is not counted
//     twice (slot.attemptEnded). The one case where the committed version
//     cannot keep serving is the fallback: it no longer loads, and the
//     previous version serves once the fallback to it is recorded.
//   - manifest, retarget, drop, rollback, remove (apply): the accepted
//     desired state is applied again on the next tick.
//   - trial-end, trial-revert: nothing to mark: checkTrials decides again
//     on the next tick from the unchanged trial (a trial given up at
//     restore is remembered in slot.abandon until it is recorded).
//   - trial-restart (restore): not retried; this start is not counted and
//     the period runs on from its recorded start.
//   - generation (not a slot: handleDesired): the desired state is
//     handled again on the next tick.
//
// While a step keeps failing its retries back off, from the next tick
// doubling up to maxRetryWait, until that step (or the update) succeeds.
func (a *Agent) transition(ctx context.Context, s *slot, st step, next slotState) error {
	err := a.persist(st, func() error { return a.kv.SetJSON(slotKey(s.name), &next, true) })
	if err != nil {
		err = fmt.Errorf("persist slot %s: %w", s.name, err)
		a.notPersisted(ctx, s, st, err)
		return err
	}
	s.st = next
	s.snapshot()
	if st == s.failedStep {
		s.failedStep, s.retryWait = "", 0 // recovered: the next failure is retried at once
	}
	if st.enters() {
		a.reportSlot(ctx, s)
		if a.enterPhase(ctx, s) {
			return errStopping
		}
	}
	return nil
}

// persist runs write, the store write of step st. Tests fail it through
// failWrite, as a full or failing disk would.
func (a *Agent) persist(st step, write func() error) error {
	if f := a.failWrite; f != nil {
		if err := f(string(st)); err != nil {
			return err
		}
	}
	return write()
}

// notPersisted handles a failed write of s's state at step st: it marks
// what the next tick retries (the rule is at transition), backs off, and
// counts, logs and reports the failure.
func (a *Agent) notPersisted(ctx context.Context, s *slot, st step, err error) {
	a.writeFailures.Add(1)
	s.failedStep = st
	s.retryAt = time.Now().Add(s.retryWait)
	s.retryWait = a.backOff(s.retryWait)
	retry := "resume"
	switch st {
	case stepManifest, stepRetarget, stepDrop, stepRollback, stepRemove:
		if !a.u.reapply { // once per apply
			a.u.reapply = true
			a.u.reapplyAt = time.Now().Add(a.u.reapplyWait)
			a.u.reapplyWait = a.backOff(a.u.reapplyWait)
		}
		retry = "apply the desired state again"
	case stepTrialEnd, stepTrialRevert:
		retry = "decide the trial again"
	case stepTrialRestart:
		retry = "none: this start is not counted"
	default:
		s.retry = true
	}
	a.logLimited(slog.LevelError, logKindNotPersisted, "state not persisted; not acted on",
		"model", s.name, "step", st, "retry", retry, "err", err)
	state, version, reason := a.slotReport(s)
	note := fmt.Sprintf("could not record step %s (%v); the recorded state stands and is retried", st, err)
	if reason != "" {
		note = reason + "; " + note
	}
	a.report(ctx, s, state, version, note)
}

// backOff returns the wait after wait: the first retry is on the next
// tick, then the wait doubles up to maxRetryWait.
func (a *Agent) backOff(wait time.Duration) time.Duration {
	return min(max(2*wait, a.opts.FetchRetryInterval), maxRetryWait)
}

// retryTransitions runs on the update loop's tick and retries what failed
// writes left undone; the rule is at transition.
func (a *Agent) retryTransitions(ctx context.Context) {
	if p := a.u.retryDesired; p != nil {
		a.u.retryDesired = nil
		a.handleDesired(ctx, p)
	}
	now := time.Now()
	if a.u.reapply && a.u.applied != nil && !now.Before(a.u.reapplyAt) {
		a.apply(ctx, a.u.applied)
	}
	for _, s := range a.slotList() {
		if s.retry && !now.Before(s.retryAt) {
			s.retry = false
			a.resume(ctx, s)
		}
	}
}

// StateWriteFailures counts writes of the agent's persisted state that
// failed. Nothing was acted on for them: the agent stays where its disk
// says, keeps serving its committed versions, and retries.
func (a *Agent) StateWriteFailures() uint64 { return a.writeFailures.Load() }
