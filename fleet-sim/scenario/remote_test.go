package scenario

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// startExternalControlPlane runs a control plane on 127.0.0.1 port 0 that
// the test reaches only through its REST API and broker URL, as
// `fleet-sim run --api` does.
func startExternalControlPlane(t *testing.T, rt *infer.Runtime) *sim.RemoteControlPlane {
	t.Helper()
	cp := fleettest.StartControlPlane(t, rt, nil)
	return &sim.RemoteControlPlane{APIURL: cp.APIURL(), Token: cp.Token}
}

const remoteRollout = `name: remote-rollout
fleet: {sites: 2, devices_per_site: 2}
agent: {heartbeat: 300ms, fetch_retry: 300ms}
traffic: {model: fraud, rate: 5, seed: 5}
timeout: 4m
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 1, rows: 1000}
  - deploy: {model: fraud, version: 1.0.0}
  - wait_active: {model: fraud, version: 1.0.0, timeout: 30s}
  - push_model: {model: fraud, version: 2.0.0, seed: 2, rows: 1000}
  - create_rollout:
      name: v2
      spec:
        model: fraud
        version: 2.0.0
        selector: "site!=none"
        bake: 300ms
        gates: {max_failure_rate: 0}
        stages:
          - {name: canary, canary: 1}
          - {name: all, percent: 100}
  - rollout_action: {rollout: v2, action: pause}
  - wait_rollout: {rollout: v2, states: [paused], timeout: 10s}
  - rollout_action: {rollout: v2, action: resume}
  - wait_rollout: {rollout: v2, states: [waiting-promotion], timeout: 60s}
  - rollout_action: {rollout: v2, action: promote}
  - wait_rollout: {rollout: v2, states: [completed], timeout: 60s}
assertions:
  - rollout_state: {rollout: v2, states: [completed]}
  - all_active: {model: fraud, version: 2.0.0}
  - max_attempted: {model: fraud, version: 2.0.0, min: 4, max: 4}
  - all_committed: {model: fraud}
  - no_failed_inference: {min_ok: 20}
  - no_telemetry_lost: {within: 2m}
  - alerts: {model: fraud, quiet: [site-1, site-2]}
`

// TestScenarioAgainstRemoteControlPlane runs staged rollouts (the
// committed one, and one that pauses, resumes and promotes) with the
// rollout, alert and telemetry assertions through an external control
// plane's REST API only, a fresh one each (device ids are registered once).
func TestScenarioAgainstRemoteControlPlane(t *testing.T) {
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })

	committed, err := Load("../scenarios/staged-rollout.yaml", NewRegistry())
	require.NoError(t, err)
	inline, err := Parse([]byte(remoteRollout), NewRegistry())
	require.NoError(t, err)
	for _, tt := range []struct {
		sc *Scenario
		// audited are rollout actions the control plane's audit log must show.
		audited []string
	}{
		{committed, []string{"rollout.create", "rollout.promote", "rollout.completed"}},
		{inline, []string{"rollout.create", "rollout.pause", "rollout.resume", "rollout.promote_requested", "rollout.completed"}},
	} {
		t.Run(tt.sc.Name, func(t *testing.T) {
			remote := startExternalControlPlane(t, rt)
			var progress strings.Builder
			rep, err := Run(context.Background(), tt.sc, RunOptions{WorkDir: t.TempDir(), Runtime: rt, Remote: remote, Progress: &progress})
			require.NoError(t, err)
			var sum strings.Builder
			rep.Summary(&sum)
			require.True(t, rep.Passed, "%s\n%s", sum.String(), progress.String())
			if _, ok := rep.Figures["telemetry_ingested"]; ok || tt.sc == inline {
				assert.Positive(t, rep.Figures["telemetry_ingested"], "counted from the control plane's /metrics")
			}
			require.NotNil(t, rep.Leak)
			assert.Equal(t, -1, rep.Leak.BrokerConns, "not measured for a remote broker")

			// The operator actions went through the API: its audit log has them.
			entries, err := remote.Audit(api.AuditQuery{Action: "rollout."})
			require.NoError(t, err)
			var actions []string
			for _, e := range entries {
				actions = append(actions, e.Action)
			}
			for _, want := range tt.audited {
				assert.Contains(t, actions, want)
			}
			remote.CloseIdleConnections()
		})
	}
}

// brokerRestart stands for an action that needs the in-process broker.
type brokerRestart struct{}

func (brokerRestart) Run(context.Context, *Env) (string, error) {
	return "", errors.New("must not run")
}

func (brokerRestart) CheckTarget(_ *Scenario, remote bool) error {
	if remote {
		return errors.New("it restarts the embedded broker, which an external control plane does not share")
	}
	return nil
}

// TestRemoteRefusesInProcessOnly checks that what cannot work against an
// external control plane is refused before anything starts (the API URL
// is unreachable: a run that started would fail differently), every
// offender named with its line, and that the in-process run refuses an
// alerts assertion without alert rules the same way.
func TestRemoteRefusesInProcessOnly(t *testing.T) {
	reg := NewRegistry()
	reg.RegisterAction("restart_broker", func() Action { return brokerRestart{} })
	sc, err := Parse([]byte(`name: in-process-only
fleet: {sites: 1, devices_per_site: 2}
monitor: {max_psi: 0.25}
network: {transport: memory}
timeline:
  - push_model: {model: fraud, version: 1.0.0}
  - restart_broker: {}
assertions:
  - alerts: {model: fraud, quiet: [site-1]}
`), reg)
	require.NoError(t, err, "valid in-process")
	remote := &sim.RemoteControlPlane{APIURL: "http://127.0.0.1:1", Token: "unused"}
	_, err = Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), Remote: remote})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "network: transport memory cannot run against an external control plane")
	assert.Contains(t, err.Error(), "line 7: action restart_broker cannot run against an external control plane (--api): it restarts the embedded broker")
	assert.Contains(t, err.Error(), "monitor: cannot run against an external control plane (--api): its alert rules are set where it runs")
	assert.NotContains(t, err.Error(), "assertion alerts", "the alerts assertion itself works remotely")
	assert.NotContains(t, err.Error(), "start fleet")

	sc, err = Parse([]byte(`name: no-rules
fleet: {sites: 1, devices_per_site: 2}
assertions:
  - alerts: {model: fraud, quiet: [site-1]}
`), NewRegistry())
	require.NoError(t, err)
	_, err = Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), ORTLibrary: "/nonexistent"})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "line 4: assertion alerts cannot run against the in-process control plane: needs a monitor section")
}

// TestRolloutActionIsChecked: a misspelt rollout action, or a narrowing
// that only a rollback takes, is refused at load time, not mid-run by the
// control plane.
func TestRolloutActionIsChecked(t *testing.T) {
	for _, tt := range []struct{ step, want string }{
		{"{rollout: r, action: promte}", `action "promte": want pause, resume, promote, abort or rollback`},
		{"{rollout: r, action: pause, device: dev-1-1}", "selector and device narrow a rollback only, not pause"},
	} {
		_, err := Parse([]byte(minimal+"timeline:\n  - rollout_action: "+tt.step+"\n"), NewRegistry())
		require.Error(t, err, tt.step)
		assert.ErrorIs(t, err, ErrInvalid)
		assert.Contains(t, err.Error(), "line 4: rollout_action: "+tt.want)
	}
	_, err := Parse([]byte(minimal+"timeline:\n  - rollout_action: {rollout: r, action: rollback, selector: site=site-1}\n"), NewRegistry())
	assert.NoError(t, err)
}
