package sim

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// TestFleetAgainstRemoteControlPlane runs a small fleet through the proxy
// against a control plane reached only by its REST API and broker URL, as
// `fleet-sim run --api` does, and checks traffic, the proxy's faults and
// the leak check.
func TestFleetAgainstRemoteControlPlane(t *testing.T) {
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })

	cp := fleettest.StartControlPlane(t, rt, nil)
	remote := &RemoteControlPlane{APIURL: cp.APIURL(), Token: cp.Token}

	devs, err := FleetSpec{Sites: 1, DevicesPerSite: 3}.Expand()
	require.NoError(t, err)
	f, err := New(Options{Dir: t.TempDir(), Devices: devs, Remote: remote, Runtime: rt, Proxy: true,
		HeartbeatInterval: time.Second, FetchRetryInterval: 300 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, f.Start(context.Background()))
	t.Cleanup(func() { _ = f.Stop() })
	assert.Nil(t, f.Server(), "remote mode runs no control plane")

	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 1000})
	require.NoError(t, err)
	mv, err := remote.AddModelVersion(context.Background(), "fraud", "1.0.0", art.ONNX, art.Metadata(), false)
	require.NoError(t, err)
	assert.True(t, mv.Checks.Passed)
	_, err = remote.AddModelVersion(context.Background(), "fraud", "1.0.0", art.ONNX, art.Metadata(), false)
	assert.ErrorContains(t, err, "409", "versions are immutable; the API's reason comes through")

	tr, err := f.StartTraffic(TrafficOptions{Model: "fraud", Rate: 20, Seed: 1})
	require.NoError(t, err)
	res, err := remote.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "1.0.0", Selector: "site=site-1"})
	require.NoError(t, err)
	require.Len(t, res.Devices, 3)
	require.Eventually(t, func() bool {
		list, err := remote.Devices("site=site-1")
		if err != nil || len(list) != 3 {
			return false
		}
		for _, d := range list {
			if r := d.Reported["fraud"]; r == nil || r.ActiveVersion != "1.0.0" || r.State != api.ModelActive {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return tr.Stats().OK >= 30 }, 10*time.Second, 10*time.Millisecond)

	// What scenarios read back over the API: a device, the audit log and
	// the monitoring counters (from /metrics).
	assert.True(t, f.Remote())
	d, err := remote.Device("dev-1-2")
	require.NoError(t, err)
	assert.Equal(t, "site-1", d.Labels["site"])
	_, err = remote.Device("dev-9-9")
	assert.ErrorContains(t, err, "404")
	entries, err := remote.Audit(api.AuditQuery{Action: "api.POST /api/v1/deployments", Since: time.Now().Add(-time.Hour), Limit: 5})
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, "ok", entries[0].Result)
	require.Eventually(t, func() bool {
		st, err := f.MonitorStats(context.Background())
		return err == nil && st.Ingested > 0
	}, 30*time.Second, 50*time.Millisecond, "the agents' monitoring reports reach the control plane")
	require.Eventually(t, func() bool {
		res, err := f.ModelMetrics(context.Background(), "fraud", "1.0.0")
		return err == nil && res.Total.Rows > 0 && len(res.Devices) == 3
	}, 30*time.Second, 50*time.Millisecond, "the version's figures, per device, over the API")
	_, err = f.ModelMetrics(context.Background(), "fraud", "9.9.9")
	assert.ErrorContains(t, err, "404")

	// A cut link with refused reconnects for a moment: the device comes back.
	before := f.Proxy().Accepted()
	assert.Equal(t, 1, f.Proxy().Disconnect([]string{"dev-1-2"}, 200*time.Millisecond))
	require.Eventually(t, func() bool { return f.Proxy().Accepted() >= before+2 && f.Proxy().Open() == 3 }, 30*time.Second, 20*time.Millisecond,
		"dev-1-2 is refused at least once, then reconnects")
	in, out := f.Proxy().Bytes("dev-1-2")
	assert.Greater(t, in, uint64(len(art.ONNX)), "the model crossed the proxy")
	assert.Positive(t, out)

	tr.Stop()
	st := tr.Stats()
	assert.Zero(t, st.Failed, st.FirstFailure)
	assert.Equal(t, st.OK, st.ByVersion["1.0.0"])

	// Rollouts over the API (after the traffic: the canary may get 2.0.0).
	_, err = remote.AddModelVersion(context.Background(), "fraud", "2.0.0", art.ONNX, art.Metadata(), false)
	require.NoError(t, err)
	one := 1.0
	ro, err := remote.CreateRollout(context.Background(), api.RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: "site=site-1",
		Stages: []api.RolloutStage{{Canary: 1}, {Percent: 100}}, Gates: api.Gates{MaxFailureRate: &one}}, "ignored")
	require.NoError(t, err)
	_, err = remote.RolloutAction(context.Background(), ro.ID, "pause", api.RollbackRequest{}, "ignored")
	require.NoError(t, err)
	got, err := remote.Rollout(ro.ID, true)
	require.NoError(t, err)
	assert.Equal(t, api.RolloutPaused, got.State)
	_, err = remote.RolloutAction(context.Background(), ro.ID, "promote", api.RollbackRequest{}, "ignored")
	assert.ErrorContains(t, err, "409", "a paused rollout cannot be promoted")
	_, err = remote.RolloutAction(context.Background(), ro.ID, "rollback", api.RollbackRequest{Device: "dev-9-9"}, "ignored")
	assert.ErrorContains(t, err, `device "dev-9-9" was not assigned`, "the narrowing body reached the API")
	got, err = remote.RolloutAction(context.Background(), ro.ID, "rollback", api.RollbackRequest{}, "ignored")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutRolledBack, got.State)

	require.NoError(t, f.Stop())
	rep, err := f.LeakCheck(10 * time.Second)
	assert.NoError(t, err)
	assert.Equal(t, -1, rep.BrokerConns, "not measured for a remote broker")
	assert.Zero(t, rep.ProxyConns)
}
