package scenario

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/internal/hostload"
)

// Waits. Every wait of a scenario (wait_active, wait_phase, wait_labelled,
// wait_rollout, restart_held, and the retry of an assertion until its
// within) goes through Env.wait, which tells a fleet that makes no
// progress from one that is slow but progressing, as on a busy CI runner:
//
//   - The step's timeout (simulated, converted to real time; default a
//     minute of real time) is the nominal bound. A wait whose condition
//     holds before it succeeds at once.
//   - When the timeout passes and the fleet made no progress in the last
//     stall window, the wait fails right there. An assertion reached after
//     its within (a run slowed by a busy machine) is judged so at once.
//   - When it passes while the fleet is still progressing, the wait goes
//     on, and fails once the fleet made no progress for a whole stall
//     window, or at its cap: max_timeout, default 3× the timeout.
//   - The stall window is half the timeout in real time, at least 2s and
//     at most 30s.
//   - Progress is a fleet-wide count that only grows: update phases entered
//     by agents, chunks accepted into downloads, agent restarts, desired
//     states accepted (sim.Progress, read every 250ms without asking
//     agents for their status), plus what the wait
//     itself counts (wait_rollout: a change of the rollout's state or of a
//     stage's device counts; wait_labelled: new labels).
//   - The scenario's timeout still bounds the whole run.
//
// A failed wait says how long it really waited, whether and why it was
// extended, how long since the fleet last progressed, and how loaded the
// process and host were meanwhile (hostload).

// WaitLimits are the keys of every step that waits.
type WaitLimits struct {
	// Timeout is the wait's nominal bound, in simulated time; default a
	// minute of real time. Past it the wait goes on only while the fleet
	// makes progress (see Env.wait).
	Timeout time.Duration `yaml:"timeout"`
	// MaxTimeout caps a wait extended past Timeout, in simulated time;
	// default 3× Timeout.
	MaxTimeout time.Duration `yaml:"max_timeout"`
}

func (l WaitLimits) validate() error {
	if l.Timeout < 0 || l.MaxTimeout < 0 {
		return errors.New("timeout and max_timeout must not be negative")
	}
	if l.MaxTimeout > 0 && l.MaxTimeout < l.Timeout {
		return fmt.Errorf("max_timeout %v is shorter than timeout %v", l.MaxTimeout, l.Timeout)
	}
	return nil
}

// waitTuning times waits; the zero value is the defaults. Tests shorten it.
type waitTuning struct {
	// Poll is how often the condition is checked; default 25ms.
	Poll time.Duration
	// ProgressEvery is how often progress is read; default 250ms.
	ProgressEvery time.Duration
	// MinStall and MaxStall bound the stall window (half the timeout);
	// defaults 2s and 30s.
	MinStall, MaxStall time.Duration
	// Now is the wait's clock; default time.Now. Tests step it, so that a
	// wait's rules play out the same however the machine schedules them.
	Now func() time.Time
}

func (t waitTuning) withDefaults() waitTuning {
	if t.Poll <= 0 {
		t.Poll = 25 * time.Millisecond
	}
	if t.ProgressEvery <= 0 {
		t.ProgressEvery = 250 * time.Millisecond
	}
	if t.MinStall <= 0 {
		t.MinStall = 2 * time.Second
	}
	if t.MaxStall <= 0 {
		t.MaxStall = 30 * time.Second
	}
	if t.Now == nil {
		t.Now = time.Now
	}
	return t
}

// capFactor is the default cap of an extended wait, in timeouts.
const capFactor = 3

// defaultWait bounds a wait whose step gives no timeout: a minute of real
// time, whatever the clock's speed (a simulated minute may be a blink).
const defaultWait = time.Minute

// waited is how a wait that succeeded went.
type waited struct {
	took     time.Duration // real
	extended bool
	named    string // the timeout, as the scenario gave it
}

// note is what a step's detail adds about the wait: nothing, unless it
// went past its timeout.
func (w waited) note() string {
	if !w.extended {
		return ""
	}
	return fmt.Sprintf(" (past its timeout of %s: the fleet was still progressing)", w.named)
}

// Causes of a waitError.
var (
	errNoProgress = errors.New("no progress")
	errWaitCap    = errors.New("cap reached")
)

// waitError says why a wait gave up and how loaded the process was. It
// wraps errNoProgress, errWaitCap or the context's error.
type waitError struct {
	cause    error
	named    string        // the timeout, as the scenario gave it
	capNamed string        // the cap, likewise
	waited   time.Duration // real
	extended bool
	// sinceProgress is the real time since the fleet last progressed; -1:
	// no progress seen.
	sinceProgress time.Duration
	load          hostload.Load
}

func (e *waitError) Unwrap() error { return e.cause }

func (e *waitError) Error() string {
	last := "no progress seen"
	if e.sinceProgress >= 0 {
		last = "no progress for the last " + roundDur(e.sinceProgress).String()
	}
	var why string
	switch {
	case errors.Is(e.cause, errWaitCap):
		why = fmt.Sprintf("extended past its timeout of %s while the fleet progressed, up to its cap of %s; last progress %s ago",
			e.named, e.capNamed, roundDur(e.sinceProgress))
	case errors.Is(e.cause, errNoProgress) && e.extended:
		why = fmt.Sprintf("extended past its timeout of %s while the fleet progressed, then %s", e.named, last)
	case errors.Is(e.cause, errNoProgress):
		why = fmt.Sprintf("its timeout of %s passed with %s", e.named, last)
	default:
		why = fmt.Sprintf("the scenario ended the wait (%v), %s", e.cause, last)
	}
	return fmt.Sprintf("gave up after %s: %s; load during the wait: %s", roundDur(e.waited), why, e.load)
}

// roundDur rounds d for a message.
func roundDur(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// waitSpec is one wait.
type waitSpec struct {
	limits WaitLimits // simulated
	// bounds, if set, replaces limits with real times from the wait's
	// start; a nominal bound of 0 has passed already (an assertion checked
	// after its within): the wait goes on only while the fleet progresses.
	bounds *realBounds
	// named, if set, is how messages name the timeout (and the cap is
	// named relative to it).
	named string
	// every, if set, is how often the condition is checked (default the
	// tuning's Poll): longer for a condition that asks the control plane.
	every time.Duration
	// progress, if set, is what this wait counts as progress besides the
	// fleet's: any change of it is progress.
	progress func() uint64
}

// wait calls cond until it holds, by the rules at the top of this file. A
// *waitError says why it gave up.
func (e *Env) wait(ctx context.Context, w waitSpec, cond func() bool) (waited, error) {
	tune := e.waits.withDefaults()
	start := tune.Now()
	nominal, named := e.waitBound(w.limits.Timeout)
	limit, capNamed := e.waitCap(w.limits, nominal)
	timeout := nominal
	if b := w.bounds; b != nil {
		nominal, limit, timeout = max(b.nominal, 0), max(b.limit, 0), b.timeout
	}
	if w.named != "" {
		named, capNamed = w.named, fmt.Sprintf("%d× that", capFactor)
	}
	stall := min(max(timeout/2, tune.MinStall), tune.MaxStall)
	// The counts: the fleet's and the wait's own (0 when absent).
	read := func() [2]uint64 {
		var n [2]uint64
		if e.progress != nil {
			n[0] = e.progress()
		}
		if w.progress != nil {
			n[1] = w.progress()
		}
		return n
	}
	loadStart := hostload.Read()
	last := read()
	// When the fleet last progressed (zero: not seen). With watchProgress
	// running, from its last reading: what changed since counts as fresh.
	var lastProgress time.Time
	if seen, at, ok := e.progressSeen(); ok {
		last[0], lastProgress = seen, at
	}
	nextRead := start.Add(tune.ProgressEvery)
	extended := false
	every := tune.Poll
	if w.every > 0 {
		every = w.every
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	fail := func(cause error) (waited, error) {
		now := tune.Now()
		since := time.Duration(-1)
		if !lastProgress.IsZero() {
			since = now.Sub(lastProgress)
		}
		return waited{}, &waitError{cause: cause, named: named, capNamed: capNamed, waited: now.Sub(start), extended: extended,
			sinceProgress: since, load: hostload.Between(loadStart, hostload.Read())}
	}
	for {
		if cond() {
			return waited{took: tune.Now().Sub(start), extended: extended, named: named}, nil
		}
		now := tune.Now()
		elapsed := now.Sub(start)
		// Read progress on its cadence, and fresh when the timeout is
		// judged.
		if !now.Before(nextRead) || (elapsed >= nominal && !extended) {
			if p := read(); p != last {
				last, lastProgress = p, now
			}
			nextRead = now.Add(tune.ProgressEvery)
		}
		if elapsed >= nominal {
			switch {
			case lastProgress.IsZero() || now.Sub(lastProgress) >= stall:
				return fail(errNoProgress)
			case elapsed >= limit:
				// Past the timeout and still progressing: extended to
				// the cap, even when this check came late and saw both.
				extended = limit > nominal
				return fail(errWaitCap)
			default:
				extended = true
			}
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-tick.C:
		}
	}
}

// progressSeen is watchProgress's last reading of the fleet's progress
// count and when it last changed (zero: not since the run began); ok is
// false when it is not running.
func (e *Env) progressSeen() (seen uint64, at time.Time, ok bool) {
	e.progressMu.Lock()
	defer e.progressMu.Unlock()
	return e.progressLast, e.progressAt, e.progressWatched
}

// realBounds are a wait's nominal bound and cap, from its start, and the
// whole timeout they derive from (it sets the stall window), in real time.
type realBounds struct{ nominal, limit, timeout time.Duration }

// watchProgress notes when the fleet progresses, until ctx ends, so a wait
// that begins after its nominal bound (an assertion checked after its
// within) knows whether the fleet is still moving.
func (e *Env) watchProgress(ctx context.Context) {
	if e.progress == nil {
		return
	}
	tick := time.NewTicker(e.waits.withDefaults().ProgressEvery)
	defer tick.Stop()
	e.progressMu.Lock()
	e.progressLast, e.progressWatched = e.progress(), true
	e.progressMu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p := e.progress()
			e.progressMu.Lock()
			if p != e.progressLast {
				e.progressLast, e.progressAt = p, time.Now()
			}
			e.progressMu.Unlock()
		}
	}
}

// waitBound is the real time a wait with timeout (simulated; 0: the
// default) nominally takes, and the timeout as messages name it.
func (e *Env) waitBound(timeout time.Duration) (time.Duration, string) {
	if timeout <= 0 {
		if e.Clock.Speed() != 1 {
			return defaultWait, defaultWait.String() + " of real time"
		}
		return defaultWait, defaultWait.String()
	}
	return e.Real(timeout), timeout.String()
}

// waitCap is the real time an extended wait may take at most, and how
// messages name it.
func (e *Env) waitCap(l WaitLimits, nominal time.Duration) (time.Duration, string) {
	switch {
	case l.MaxTimeout > 0:
		return max(e.Real(l.MaxTimeout), nominal), l.MaxTimeout.String() + " (its max_timeout)"
	case l.Timeout > 0:
		return capFactor * nominal, fmt.Sprintf("%s (%d× the timeout; max_timeout sets it)", capFactor*l.Timeout, capFactor)
	default:
		named := (capFactor * defaultWait).String()
		if e.Clock.Speed() != 1 {
			named += " of real time"
		}
		return capFactor * nominal, fmt.Sprintf("%s (%d× the timeout; max_timeout sets it)", named, capFactor)
	}
}
