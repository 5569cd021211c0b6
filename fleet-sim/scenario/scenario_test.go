package scenario

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/infer"
)

const minimal = `name: t
fleet: {sites: 1, devices_per_site: 2}
`

func TestParseRejectsBadFiles(t *testing.T) {
	reg := NewRegistry()
	tests := []struct {
		name, doc, want string
	}{
		{"unknown top-level key", minimal + "fleeet: {}\n", `line 3: unknown key "fleeet"`},
		{"unknown fleet key", "name: t\nfleet: {sites: 1, devices_per_site: 2, sitez: 3}\n", `line 2: unknown key "sitez"`},
		{"unknown action", minimal + "timeline:\n  - launch: {}\n", `line 4: unknown action "launch"`},
		{"unknown action key", minimal + "timeline:\n  - deploy:\n      model: fraud\n      version: 1\n      selctor: a=b\n", `line 7: unknown key "selctor"`},
		{"inline pick key accepted, bad one refused", minimal + "network: {proxy: true}\ntimeline:\n  - disconnect: {fraction: 0.5, downn: 1s}\n", `line 5: unknown key "downn"`},
		{"two actions in a step", minimal + "timeline:\n  - deploy: {model: a, version: b}\n    sleep: {for: 1s}\n", "two actions"},
		{"step without action", minimal + "timeline:\n  - at: 1s\n", "no action"},
		{"bad duration", minimal + "timeline:\n  - at: soon\n    sleep: {for: 1s}\n", `at "soon"`},
		{"steps out of order", minimal + "timeline:\n  - at: 2s\n    sleep: {}\n  - at: 1s\n    sleep: {}\n", "before the step above it"},
		{"missing params", minimal + "timeline:\n  - deploy: {model: fraud}\n", "line 4: deploy: model and version are required"},
		{"fault without proxy", minimal + "timeline:\n  - disconnect: {fraction: 0.5}\n", "needs network: {proxy: true}"},
		{"unknown assertion", minimal + "assertions:\n  - everything_fine: {}\n", `unknown assertion "everything_fine"`},
		{"bad fleet", "name: t\nfleet: {sites: 0, devices_per_site: 2}\n", "must both be positive"},
		{"no name", "fleet: {sites: 1, devices_per_site: 2}\n", "name is required"},
		{"bad pattern", minimal + "traffic: {model: fraud, rate: 1, params: {pattern: weird}}\n", `pattern "weird"`},
		{"not a mapping", "- a\n", "must be a mapping"},
		{"unknown rollout spec key", minimal + "timeline:\n  - create_rollout:\n      name: r\n      spec: {model: fraud, version: 2.0.0, stagez: []}\n", `line 6: rollout spec: json: unknown field "stagez"`},
		{"invalid rollout spec", minimal + "timeline:\n  - create_rollout:\n      name: r\n      spec: {model: fraud, version: 2.0.0}\n", "line 4: create_rollout:"},
		{"unknown create_rollout key", minimal + "timeline:\n  - create_rollout: {name: r, spek: {}}\n", `unknown key "spek"`},
		{"inference assertion without traffic", minimal + "assertions:\n  - no_failed_inference: {}\n", "needs a traffic section"},
		{"unknown transport", minimal + "network: {transport: udp}\n", `network: transport "udp", want tcp or memory`},
		{"cap under the timeout", minimal + "timeline:\n  - wait_active: {model: fraud, version: 1, timeout: 10s, max_timeout: 5s}\n", "line 4: wait_active: max_timeout 5s is shorter than timeout 10s"},
		{"restart at a phase agents do not report", minimal + "timeline:\n  - restart_control_plane: {down: 1s, phase: active}\n", `line 4: restart_control_plane: phase "active": want one of manifest, downloading, verifying, staging`},
		{"restart min without a phase", minimal + "timeline:\n  - restart_control_plane: {down: 1s, min: 2}\n", "line 4: restart_control_plane: min needs a phase"},
		{"wait_labelled without labels", minimal + "traffic: {model: fraud, rate: 1}\ntimeline:\n  - wait_labelled: {model: fraud, version: 1, min: 10}\n", "line 5: wait_labelled: needs traffic with a label_fraction"},
		{"wait_labelled without min", minimal + "timeline:\n  - wait_labelled: {model: fraud, version: 1}\n", "line 4: wait_labelled: model, version and min"},
		{"wan link without the proxy", minimal + "network: {wan_per_site: 4Mbit}\n", "wan_per_site needs proxy: true"},
		{"bad wan rate", minimal + "network: {proxy: true, wan_per_site: 4 furlongs}\n", `wan_per_site "4 furlongs": want a number`},
		{"lie without peers", minimal + "timeline:\n  - lie: {count: 1}\n", "line 4: lie: needs agent: {peers: {}}"},
		{"bad peers selector", minimal + "agent: {peers: {selector: \"a==\"}}\n", "agent: peers: selector"},
		{"alert window under a bucket", minimal + "monitor: {window: 20s, max_psi: 0.2}\n", "window 20s is shorter than the control plane's 1m0s metric buckets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), reg)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestParseDecodesSteps(t *testing.T) {
	sc, err := Parse([]byte(minimal+`network: {proxy: true}
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 3, pad_bytes: 100, params: {amount_scale: 2}}
  - wait_rollout: {rollout: r, states: [completed], timeout: 20s, max_timeout: 1m}
  - at: 1.5s
    name: storm
    disconnect: {selector: site=site-1, fraction: 0.5, down: 2s}
assertions:
  - all_active: {model: fraud, version: 1.0.0, within: 30s}
`), NewRegistry())
	require.NoError(t, err)
	require.Len(t, sc.Timeline, 3)
	push := sc.Timeline[0].Action.(*PushModel)
	assert.Equal(t, 100, push.PadBytes)
	assert.Equal(t, 2.0, push.Params.AmountScale)
	assert.Equal(t, WaitLimits{Timeout: 20 * time.Second, MaxTimeout: time.Minute}, sc.Timeline[1].Action.(*WaitRollout).WaitLimits)
	d := sc.Timeline[2]
	assert.Equal(t, 1500*time.Millisecond, d.At)
	assert.Equal(t, "storm", d.Name)
	dis := d.Action.(*Disconnect)
	assert.Equal(t, Pick{Selector: "site=site-1", Fraction: 0.5}, dis.Pick)
	assert.Equal(t, 2*time.Second, dis.Down)
	require.Len(t, sc.Assertions, 1)
	assert.Equal(t, 30*time.Second, sc.Assertions[0].Assertion.Deadline())
	assert.Equal(t, 5*time.Minute, sc.Timeout, "default")
}

func TestNiceStep(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{{0.7, 1}, {1.2, 2}, {3, 5}, {7, 10}, {0.03, 0.05}, {140, 200}} {
		assert.InDelta(t, tt.want, niceStep(tt.in), 1e-9, "niceStep(%v)", tt.in)
	}
}

// TestCommittedScenarios runs every short committed scenario (those not
// named *-large.yaml) end to end: real control plane, broker, badger,
// onnxruntime and agents.
func TestCommittedScenarios(t *testing.T) {
	files, err := filepath.Glob("../scenarios/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	for _, file := range files {
		if strings.HasSuffix(file, "-large.yaml") {
			continue
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			sc, err := Load(file, NewRegistry())
			require.NoError(t, err)
			var progress strings.Builder
			rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), Runtime: rt, Progress: &progress})
			require.NoError(t, err)
			dir := t.TempDir()
			require.NoError(t, rep.WriteFiles(dir))
			var sum strings.Builder
			rep.Summary(&sum)
			assert.True(t, rep.Passed, "%s\n%s", sum.String(), progress.String())
			assert.NotEmpty(t, rep.Samples)
			svg, err := os.ReadFile(filepath.Join(dir, "chart.svg"))
			require.NoError(t, err)
			assert.Contains(t, string(svg), "<polyline")
			assert.Contains(t, string(svg), "fraud@")
		})
	}
}

// TestFailingAssertionIsExplained runs a tiny fleet whose assertion cannot
// hold and checks the verdict names the devices and what they run. The
// assertion is retried for a few seconds, so dev-1-1 has settled on the
// version (the explanation then names only dev-1-2).
func TestFailingAssertionIsExplained(t *testing.T) {
	sc, err := Parse([]byte(`name: fails
fleet: {sites: 1, devices_per_site: 2}
agent: {heartbeat: 1s, fetch_retry: 500ms}
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 1}
  - deploy: {model: fraud, version: 1.0.0, devices: [dev-1-1]}
  - wait_active: {model: fraud, version: 1.0.0, selector: "hw=x86", timeout: 100ms}
assertions:
  - all_active: {model: fraud, version: 1.0.0, within: 5s}
  - never_ran: {model: fraud, version: 1.0.0, outside: "site=nowhere"}
`), NewRegistry())
	require.NoError(t, err)
	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir()})
	require.NoError(t, err)
	assert.False(t, rep.Passed)
	require.Len(t, rep.Steps, 3)
	assert.Contains(t, rep.Steps[2].Error, "dev-1-2", "the wait names the device that never got the version")
	require.Len(t, rep.Assertions, 2)
	assert.False(t, rep.Assertions[0].Passed)
	assert.Contains(t, rep.Assertions[0].Explanation, "1 of 2 devices are not on fraud@1.0.0: dev-1-2 serves \"\"")
	assert.False(t, rep.Assertions[1].Passed)
	assert.Contains(t, rep.Assertions[1].Explanation, "dev-1-1")
	require.NotNil(t, rep.Leak)
	assert.Empty(t, rep.Errors, "no leak")
}

func TestParseRejectsBadHolds(t *testing.T) {
	reg := NewRegistry()
	hold := "  - hold_at_phase: {model: fraud, version: 2.0.0, phase: staging}\n"
	for _, tt := range []struct{ name, doc, want string }{
		{"unknown phase", minimal + "timeline:\n  - hold_at_phase: {model: fraud, phase: activating}\n", "line 4: hold_at_phase: model and a phase (one of downloading, verifying, staging) are required"},
		{"restart_held alone", minimal + "timeline:\n  - restart_held: {}\n", "line 4: restart_held: needs a hold_at_phase step above it"},
		{"restart_held before the hold", minimal + "timeline:\n  - restart_held: {}\n" + hold, "line 4: restart_held: needs a hold_at_phase step above it"},
		{"interrupted at a phase nobody holds", minimal + "timeline:\n" + hold + "assertions:\n  - interrupted: {phase: verifying, min: 1}\n", "no hold_at_phase step holds agents at verifying"},
		{"interrupted without min", minimal + "timeline:\n" + hold + "assertions:\n  - interrupted: {phase: staging}\n", "min ≥ 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), reg)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// TestScenarioActivationHoldMissFails: an armed agent whose update never
// enters staging (it is not deployed to) makes restart_held fail naming it,
// after restarting the one that was held, and the interrupted assertion
// fails with the count: a mid-activation scenario cannot pass without the
// fault.
func TestScenarioActivationHoldMissFails(t *testing.T) {
	sc, err := Parse([]byte(`name: miss
fleet: {sites: 1, devices_per_site: 2}
agent: {heartbeat: 1s, fetch_retry: 500ms}
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 1}
  - deploy: {model: fraud, version: 1.0.0}
  - wait_active: {model: fraud, version: 1.0.0, timeout: 30s}
  - hold_at_phase: {model: fraud, version: 2.0.0, phase: staging}
  - push_model: {model: fraud, version: 2.0.0, seed: 2}
  - deploy: {model: fraud, version: 2.0.0, devices: [dev-1-1]}
  - restart_held: {timeout: 2s}
assertions:
  - interrupted: {phase: staging, min: 2}
`), NewRegistry())
	require.NoError(t, err)
	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir()})
	require.NoError(t, err)
	assert.False(t, rep.Passed)
	require.Len(t, rep.Steps, 7)
	assert.Contains(t, rep.Steps[6].Error, "1 of 2 armed agents never reached their phase")
	assert.Contains(t, rep.Steps[6].Error, "dev-1-2 serves \"1.0.0\"")
	assert.NotContains(t, rep.Steps[6].Error, "dev-1-1")
	assert.Equal(t, map[string]any{"interrupted_staging": 1}, rep.Figures)
	assert.Equal(t, 1, rep.Restarts)
	require.Len(t, rep.Assertions, 1)
	assert.False(t, rep.Assertions[0].Passed)
	assert.Equal(t, "only 1 agents (of 2 armed) were interrupted in staging, want at least 2", rep.Assertions[0].Explanation)
	assert.Empty(t, rep.Errors, "no leak: the agent still armed stops cleanly")
}

// TestBenchScenariosLoad: the benchmark scenarios (scenarios/bench, run by
// make bench-sharing, too long for make test or make sim) load, so a
// change of the scenario format cannot leave them broken unnoticed.
func TestBenchScenariosLoad(t *testing.T) {
	files, err := filepath.Glob("../scenarios/bench/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		sc, err := Load(file, NewRegistry())
		require.NoError(t, err, file)
		assert.NotEmpty(t, sc.Assertions, "%s asserts nothing", file)
	}
}
