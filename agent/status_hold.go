package agent

import (
	"time"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// DefaultStatusHold is how long a progress report waits for the next
// state of its update (Options.StatusHold).
const DefaultStatusHold = time.Second

// statusHold coalesces the progress reports of an update. Entering
// downloading, verifying and staging is reported as a status event, and
// on a healthy device an update passes through all three within
// milliseconds: each one a persisted outbox entry, a QoS 1 publish, a
// write on the control plane and part of an acknowledgement — most of a
// rollout's messages per device (docs/benchmarks.md, "the per-device
// part"). A progress report therefore waits up to hold: a newer state of
// the same model replaces it, so a fast update reports only its outcome,
// and a slow one (a large download) is reported after hold as before.
//
// Only progress without a reason waits. An outcome (active, pending,
// failed, rolled back, idle) or a report that explains something (a retry
// after a corrupted download) goes out at once, replacing the model's
// held progress, which it supersedes. A refusal, which is not a state of
// the model, sends the held report first so the order stays true. What
// is held is in memory only: after a crash the agent reports its current
// state on connecting, as it always does.
//
// Owned by the update loop.
type statusHold struct {
	hold  time.Duration // <= 0: nothing waits
	held  map[string]*heldStatus
	timer *time.Timer // fires at the earliest due; nil until the first hold
}

type heldStatus struct {
	ev  *efpb.StatusEvent
	due time.Time // real time
}

// isProgress says whether ev only tells how far an update got.
func isProgress(ev *efpb.StatusEvent) bool {
	if ev.GetReason() != "" || ev.GetRefused() != efpb.Refusal_REFUSAL_UNSPECIFIED {
		return false
	}
	switch ev.GetState() {
	case efpb.ModelState_MODEL_STATE_DOWNLOADING, efpb.ModelState_MODEL_STATE_VERIFYING, efpb.ModelState_MODEL_STATE_STAGING:
		return true
	}
	return false
}

// C is the channel the update loop waits on for held reports coming due;
// nil (never ready) while nothing was held yet.
func (h *statusHold) C() <-chan time.Time {
	if h.timer == nil {
		return nil
	}
	return h.timer.C
}

// emitStatus reports ev, a state of model ev.ModelName, through the hold.
// ev's envelope fields are filled now (its time is when the state was
// entered), its sequence number when it is queued.
func (a *Agent) emitStatus(ev *efpb.StatusEvent) {
	a.fillStatus(ev)
	h := &a.u.status
	prev := h.held[ev.GetModelName()]
	if h.hold <= 0 || !isProgress(ev) {
		delete(h.held, ev.GetModelName()) // superseded by ev
		a.queueStatus(ev)
		return
	}
	if prev != nil {
		prev.ev = ev // the newer progress; the first one's deadline stands
		return
	}
	if h.held == nil {
		h.held = make(map[string]*heldStatus)
	}
	due := time.Now().Add(h.hold)
	h.held[ev.GetModelName()] = &heldStatus{ev: ev, due: due}
	if len(h.held) == 1 {
		h.arm(due) // otherwise armed for an earlier one already
	}
}

// flushHeldBefore queues the held report of model, if any, ahead of a
// report that is not a state of the model (a refusal).
func (a *Agent) flushHeldBefore(model string) {
	if p := a.u.status.held[model]; p != nil {
		delete(a.u.status.held, model)
		a.queueStatus(p.ev)
	}
}

// releaseDueStatus queues the held reports whose wait is over (all of
// them when all is set: the agent is stopping) and re-arms the timer for
// the rest.
func (a *Agent) releaseDueStatus(all bool) {
	h := &a.u.status
	now := time.Now()
	var next time.Time
	for model, p := range h.held {
		if all || !now.Before(p.due) {
			delete(h.held, model)
			a.queueStatus(p.ev)
			continue
		}
		if next.IsZero() || p.due.Before(next) {
			next = p.due
		}
	}
	if !next.IsZero() {
		h.arm(next)
	}
}

// arm makes the timer fire at due (callers arm for the earliest held report).
func (h *statusHold) arm(due time.Time) {
	d := max(time.Until(due), 0)
	if h.timer == nil {
		h.timer = time.NewTimer(d)
		return
	}
	h.timer.Reset(d) // Go 1.23+: no stale value is received after Reset
}

// stop releases the timer.
func (h *statusHold) stop() {
	if h.timer != nil {
		h.timer.Stop()
	}
}
