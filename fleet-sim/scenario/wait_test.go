package scenario

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fastWaits shortens waits so their rules play out in milliseconds: a
// timeout of 100ms has a stall window of 50ms.
var fastWaits = waitTuning{Poll: time.Millisecond, ProgressEvery: 5 * time.Millisecond, MinStall: 10 * time.Millisecond, MaxStall: time.Second}

// waitEnv is an Env with only what waits use: real time, a progress count
// read by progress.
func waitEnv(progress func() uint64) *Env {
	return &Env{progress: progress, waits: fastWaits}
}

// stepClock is a clock that moves step at every reading: a wait on it
// sees the same times however late the machine runs its loop.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func newStepClock() *stepClock { return &stepClock{now: time.Unix(1e9, 0)} }

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}

func (c *stepClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// TestWaitRules: a wait that holds succeeds; the fleet making no progress
// ends it at its timeout; progress past the timeout extends it until the
// fleet stalls or the cap; every failure says how long it waited, why, and
// how loaded the process was. Progress is driven by the reads themselves
// and time by a clock that steps at each reading, so no outcome depends on
// how fast this machine is (a loaded run once woke the loop after both the
// timeout and the cap had passed).
func TestWaitRules(t *testing.T) {
	const timeout = 100 * time.Millisecond
	always := func() func() uint64 { // progress at every read
		var n atomic.Uint64
		return func() uint64 { return n.Add(1) }
	}
	never := func() func() uint64 { return func() uint64 { return 7 } }
	// untilAfter progresses at every read until the reads made after the
	// timeout (from the wait's start) number three.
	untilAfter := func(clock *stepClock, start *time.Time) func() uint64 {
		var n, after uint64
		return func() uint64 {
			if clock.Since(*start) >= timeout {
				after++
				if after > 3 {
					return n
				}
			}
			n++
			return n
		}
	}
	tests := []struct {
		name     string
		limits   WaitLimits
		progress func(clock *stepClock, start *time.Time) func() uint64
		// holdAfter makes the condition hold once this long has passed
		// (0: never).
		holdAfter    time.Duration
		wantErr      error
		wantExtended bool
		minWaited    time.Duration
		wantText     []string
	}{
		{name: "holds at once", limits: WaitLimits{Timeout: timeout}, progress: func(*stepClock, *time.Time) func() uint64 { return never() }, holdAfter: time.Nanosecond},
		{name: "progress past the timeout extends it until the condition holds", limits: WaitLimits{Timeout: timeout},
			progress: func(*stepClock, *time.Time) func() uint64 { return always() }, holdAfter: 2 * timeout, wantExtended: true, minWaited: 2 * timeout},
		{name: "no progress fails at the timeout", limits: WaitLimits{Timeout: timeout},
			progress: func(*stepClock, *time.Time) func() uint64 { return never() }, wantErr: errNoProgress, minWaited: timeout,
			wantText: []string{"gave up after ", ": its timeout of 100ms passed with no progress seen; load during the wait: ", " CPUs"}},
		{name: "progress that stops after the timeout fails once it stalled", limits: WaitLimits{Timeout: timeout},
			progress: untilAfter, wantErr: errNoProgress, wantExtended: true, minWaited: timeout + 50*time.Millisecond,
			wantText: []string{"extended past its timeout of 100ms while the fleet progressed, then no progress for the last ", "load during the wait: "}},
		{name: "progress that never stops hits the cap", limits: WaitLimits{Timeout: timeout},
			progress: func(*stepClock, *time.Time) func() uint64 { return always() }, wantErr: errWaitCap, wantExtended: true, minWaited: 3 * timeout,
			wantText: []string{"up to its cap of 300ms (3× the timeout; max_timeout sets it); last progress ", "load during the wait: "}},
		{name: "max_timeout sets the cap", limits: WaitLimits{Timeout: timeout, MaxTimeout: 150 * time.Millisecond},
			progress: func(*stepClock, *time.Time) func() uint64 { return always() }, wantErr: errWaitCap, wantExtended: true, minWaited: 150 * time.Millisecond,
			wantText: []string{"up to its cap of 150ms (its max_timeout)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newStepClock()
			start := clock.Now()
			env := waitEnv(tt.progress(clock, &start))
			env.waits.Now = clock.Now
			cond := func() bool { return tt.holdAfter > 0 && clock.Since(start) >= tt.holdAfter }
			res, err := env.wait(context.Background(), waitSpec{limits: tt.limits}, cond)
			waitedFor := clock.Since(start)
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, tt.wantExtended, res.extended, "extended")
				assert.GreaterOrEqual(t, res.took, tt.minWaited)
				if tt.wantExtended {
					assert.Contains(t, res.note(), "past its timeout of 100ms: the fleet was still progressing")
				} else {
					assert.Empty(t, res.note())
				}
				return
			}
			require.ErrorIs(t, err, tt.wantErr)
			var we *waitError
			require.ErrorAs(t, err, &we)
			assert.Equal(t, tt.wantExtended, we.extended, "extended")
			assert.GreaterOrEqual(t, we.waited, tt.minWaited)
			assert.LessOrEqual(t, we.waited, waitedFor)
			assert.Positive(t, we.load.Seconds, "the load is over the wait")
			for _, s := range tt.wantText {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

// TestWaitEndsWithTheScenario: the scenario's context bounds every wait.
func TestWaitEndsWithTheScenario(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := waitEnv(func() uint64 { return 0 })
	_, err := env.wait(ctx, waitSpec{limits: WaitLimits{Timeout: time.Hour}}, func() bool { cancel(); return false })
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "the scenario ended the wait (context canceled)")
}

// TestWaitCountsItsOwnProgress: what a wait counts itself (a rollout's
// stages) extends it like the fleet's progress.
func TestWaitCountsItsOwnProgress(t *testing.T) {
	env := waitEnv(nil)
	clock := newStepClock()
	env.waits.Now = clock.Now
	var n atomic.Uint64
	start := clock.Now()
	res, err := env.wait(context.Background(), waitSpec{limits: WaitLimits{Timeout: 50 * time.Millisecond}, progress: func() uint64 { return n.Add(1) }},
		func() bool { return clock.Since(start) >= 80*time.Millisecond })
	require.NoError(t, err)
	assert.True(t, res.extended)
}

func TestWaitLimitsValidate(t *testing.T) {
	for _, tt := range []struct {
		in   WaitLimits
		want error
	}{
		{WaitLimits{}, nil},
		{WaitLimits{Timeout: time.Second, MaxTimeout: time.Second}, nil},
		{WaitLimits{MaxTimeout: time.Second}, nil},
		{WaitLimits{Timeout: 2 * time.Second, MaxTimeout: time.Second}, errors.New("max_timeout 1s is shorter than timeout 2s")},
		{WaitLimits{Timeout: -time.Second}, errors.New("timeout and max_timeout must not be negative")},
	} {
		got := tt.in.validate()
		if tt.want == nil {
			assert.NoError(t, got, "%+v.validate()", tt.in)
		} else {
			assert.EqualError(t, got, tt.want.Error(), "%+v.validate()", tt.in)
		}
	}
}

// TestWaitAfterItsTimeout: an assertion checked after its within (nominal
// bound 0) is retried only while the fleet is moving, as watchProgress saw
// it before the wait began.
func TestWaitAfterItsTimeout(t *testing.T) {
	b := &realBounds{nominal: 0, limit: time.Minute, timeout: 20 * time.Millisecond}

	stuck := waitEnv(func() uint64 { return 1 })
	_, err := stuck.wait(context.Background(), waitSpec{bounds: b, named: "20s (within, from the start of the run)"}, func() bool { return false })
	require.ErrorIs(t, err, errNoProgress)
	assert.Contains(t, err.Error(), "its timeout of 20s (within, from the start of the run) passed with no progress seen")

	// The fleet moved before the wait began, after watchProgress's last
	// reading: that counts, and the wait goes on to its next check.
	var n atomic.Uint64
	moving := waitEnv(func() uint64 { return n.Load() })
	moving.waits.Now = newStepClock().Now // the two checks within the stall window, however late the second runs
	moving.progressWatched = true
	n.Store(1)
	checks := 0
	res, err := moving.wait(context.Background(), waitSpec{bounds: b}, func() bool { checks++; return checks == 2 })
	require.NoError(t, err)
	assert.True(t, res.extended)
}
