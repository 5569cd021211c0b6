package scenario

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

func TestClockIsChecked(t *testing.T) {
	for _, tt := range []struct{ name, doc, want string }{
		{"too slow", minimal + "clock: {speed: 0.5}\n", "line 1: clock: speed 0.5 is outside [1, 3600]"},
		{"too fast", minimal + "clock: {speed: 4000}\n", "clock: speed 4000 is outside [1, 3600]"},
		{"unknown key", minimal + "clock: {sped: 2}\n", `line 3: unknown key "sped" (known: speed)`},
		{"timeout too short in real time", minimal + "clock: {speed: 600}\ntimeout: 2m\n",
			"timeout 2m0s is simulated time: at clock speed 600 it is 200ms of real time, too short to start the fleet; give at least 1h40m0s"},
		{"stage times upside down", minimal + "assertions:\n  - rollout_stage_times: {rollout: v2, min: 30m, max: 10m}\n", "line 4: rollout_stage_times: rollout is required, 0 ≤ min ≤ max"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), NewRegistry())
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// TestClockSpeedSetsTimeout: a timeout left out is five real minutes at
// any speed, --speed (SetSpeed) included; one given is simulated time and
// stays as given.
func TestClockSpeedSetsTimeout(t *testing.T) {
	sc, err := Parse([]byte(minimal), NewRegistry())
	require.NoError(t, err)
	assert.Equal(t, 1.0, sc.Clock.Speed)
	assert.Equal(t, 5*time.Minute, sc.Timeout)
	require.NoError(t, sc.SetSpeed(60))
	assert.Equal(t, 5*time.Hour, sc.Timeout, "5 real minutes at 60×")
	require.NoError(t, sc.SetSpeed(1))
	assert.Equal(t, 5*time.Minute, sc.Timeout)

	sc, err = Parse([]byte(minimal+"clock: {speed: 600}\n"), NewRegistry())
	require.NoError(t, err)
	assert.Equal(t, 50*time.Hour, sc.Timeout)

	sc, err = Parse([]byte(minimal+"timeout: 2m\n"), NewRegistry())
	require.NoError(t, err)
	err = sc.SetSpeed(600)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "timeout 2m0s is simulated time")
	err = sc.SetSpeed(0.5)
	assert.ErrorIs(t, err, ErrInvalid)
	require.NoError(t, sc.SetSpeed(2))
	assert.Equal(t, 2*time.Minute, sc.Timeout)
}

// TestRemoteRefusesClockSpeed: an external control plane runs on its own
// clock, so a speed above 1, from the file or from --speed, is refused
// before anything starts (the API URL is unreachable: a run that started
// would fail differently).
func TestRemoteRefusesClockSpeed(t *testing.T) {
	remote := &sim.RemoteControlPlane{APIURL: "http://127.0.0.1:1", Token: "unused"}
	sc, err := Parse([]byte(minimal+"clock: {speed: 60}\n"), NewRegistry())
	require.NoError(t, err)
	_, err = Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), Remote: remote})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "clock: speed 60 cannot run against an external control plane (--api): its clock is its own")
	assert.NotContains(t, err.Error(), "start fleet")

	sc, err = Parse([]byte(minimal), NewRegistry())
	require.NoError(t, err)
	require.NoError(t, sc.CheckTarget(true), "speed 1 runs anywhere")
	require.NoError(t, sc.SetSpeed(10))
	err = sc.CheckTarget(true)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "clock: speed 10 cannot run against an external control plane")
	assert.NoError(t, sc.CheckTarget(false))
}

// TestSimulatedClockRun runs a small fleet at 600× real time: a 30-minute
// sleep takes three real seconds, labels delayed 10 simulated minutes arrive,
// the report's times are simulated with the real ones beside them, and a
// rollout whose stage bakes 5 minutes fails rollout_stage_times with a
// 30-minute minimum (the assertion can fail).
func TestSimulatedClockRun(t *testing.T) {
	sc, err := Parse([]byte(`name: fast
clock: {speed: 600}
fleet: {sites: 1, devices_per_site: 2}
agent: {heartbeat: 300ms, fetch_retry: 300ms}
traffic: {model: fraud, rate: 10, seed: 3, label_fraction: 1, label_delay: 10m}
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 1, rows: 1000}
  - create_rollout:
      name: v1
      spec: {model: fraud, version: 1.0.0, selector: "site!=none", bake: 5m, gates: {max_failure_rate: 0}, stages: [{name: all, percent: 100}]}
  - wait_rollout: {rollout: v1, states: [completed], timeout: 2h}
  - sleep: {for: 30m}   # 3 real seconds: labels due 10 simulated minutes (1 s) after their prediction arrive with room
assertions:
  - rollout_state: {rollout: v1, states: [completed]}
  - rollout_stage_times: {rollout: v1, min: 30m}
`), NewRegistry())
	require.NoError(t, err)
	var progress strings.Builder
	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), Progress: &progress})
	require.NoError(t, err)
	require.Len(t, rep.Steps, 4, progress.String())
	for _, s := range rep.Steps {
		require.Empty(t, s.Error, "step %d %s\n%s", s.Index, s.Action, progress.String())
	}
	require.Len(t, rep.Assertions, 2)
	assert.True(t, rep.Assertions[0].Passed, rep.Assertions[0].Explanation)
	assert.False(t, rep.Assertions[1].Passed)
	assert.Contains(t, rep.Assertions[1].Explanation, "rollout v1 (completed): stage all passed ")
	assert.Contains(t, rep.Assertions[1].Explanation, "after it started, before 30m0s")
	stages, ok := rep.Figures["rollout_v1_stage_seconds"].(map[string]float64)
	require.True(t, ok, "figures: %v", rep.Figures)
	assert.GreaterOrEqual(t, stages["all"], 300.0, "the 5-minute bake was honoured")

	sleep := rep.Steps[3]
	assert.GreaterOrEqual(t, sleep.Took, 1800.0, "30 simulated minutes")
	assert.GreaterOrEqual(t, sleep.RealTook, 3.0, "three real seconds at 600×")
	assert.Less(t, sleep.RealTook, sleep.Took)
	assert.Equal(t, 600.0, rep.ClockSpeed)
	assert.Greater(t, rep.DurationSeconds, rep.RealSeconds*100, "the run's time is simulated, its real time beside it")
	require.NotEmpty(t, rep.Samples)
	assert.Greater(t, rep.Samples[len(rep.Samples)-1].T, rep.RealSeconds*100, "samples are stamped in simulated seconds")
	require.NotNil(t, rep.Inference)
	assert.Positive(t, rep.Inference.Labelled, "labels delayed 10 simulated minutes (a real second) arrived")
	assert.Contains(t, progress.String(), "simulated clock at 600× real time")
	var sum strings.Builder
	rep.Summary(&sum)
	assert.Contains(t, sum.String(), "at 600× real time")
	assert.Empty(t, rep.Errors, "no leak")
}
