package sim

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestFleetInMemory runs agents that reach the in-process broker through
// in-memory connections, through the proxy (faults, byte counts) and
// without it, and checks the leak check counts those connections too.
func TestFleetInMemory(t *testing.T) {
	rt, err := infer.NewRuntime("", nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 1000})
	require.NoError(t, err)

	for _, proxy := range []bool{true, false} {
		devs, err := FleetSpec{Sites: 1, DevicesPerSite: 3}.Expand()
		require.NoError(t, err)
		var logs testkit.Buffer
		dir, agentDir := t.TempDir(), ""
		if !proxy {
			agentDir = t.TempDir() // the agents' files elsewhere (fleet-sim bench fanout --agent-dir)
		}
		f, err := New(Options{Dir: dir, AgentDir: agentDir, Devices: devs, Runtime: rt, Proxy: proxy, Transport: TransportMemory,
			HeartbeatInterval: time.Second, FetchRetryInterval: 300 * time.Millisecond,
			AgentLogger: slog.New(slog.NewTextHandler(&logs, nil))})
		require.NoError(t, err)
		require.NoError(t, f.Start(context.Background()))
		t.Cleanup(func() { _ = f.Stop() })
		require.Eventually(t, func() bool { return f.Server().BrokerInMemoryConns() == 6 }, 30*time.Second, 10*time.Millisecond,
			"proxy=%v: one in-memory connection per agent, two ends each (have %d ends)", proxy, f.Server().BrokerInMemoryConns())

		ctx := context.Background()
		_, err = f.ControlPlane().AddModelVersion(ctx, "fraud", "1.0.0", art.ONNX, art.Metadata(), false)
		require.NoError(t, err)
		_, err = f.ControlPlane().Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "1.0.0", Selector: "site=site-1"})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			for _, m := range f.Members() {
				if a := m.Agent(); a == nil || !serves(a.Status(), "fraud", "1.0.0") {
					return false
				}
			}
			return true
		}, 30*time.Second, 20*time.Millisecond, "proxy=%v: every agent serves 1.0.0", proxy)

		filesDir := filepath.Join(dir, "agents")
		if agentDir != "" {
			filesDir = agentDir
			assert.NoDirExists(t, filepath.Join(dir, "agents"), "nothing of the agents under Dir")
		}
		for _, d := range devs {
			models, err := filepath.Glob(filepath.Join(filesDir, d.ID, "*", "*", "*.onnx"))
			require.NoError(t, err)
			assert.Len(t, models, 1, "proxy=%v: %s's model file under %s", proxy, d.ID, filesDir)
		}

		if proxy {
			in, _ := f.Proxy().Bytes("dev-1-1")
			assert.Greater(t, in, uint64(len(art.ONNX)), "the model crossed the in-memory proxy")
			before := f.Proxy().Accepted()
			assert.Equal(t, 1, f.Proxy().Disconnect([]string{"dev-1-2"}, 200*time.Millisecond))
			require.Eventually(t, func() bool { return f.Proxy().Accepted() >= before+2 && f.Proxy().Open() == 3 },
				30*time.Second, 20*time.Millisecond, "dev-1-2 is refused at least once, then reconnects")
		}

		for _, d := range devs { // fleet-sim run --agent-log-level
			assert.Contains(t, logs.String(), `msg="model active" device=`+d.ID, "proxy=%v: %s's log names it", proxy, d.ID)
		}

		require.NoError(t, f.Stop())
		rep, err := f.LeakCheck(10 * time.Second)
		assert.NoError(t, err, "proxy=%v", proxy)
		assert.Zero(t, rep.BrokerConns, "proxy=%v: measured, and none left", proxy)
	}
}

func TestMemoryTransportNeedsTheInProcessControlPlane(t *testing.T) {
	devs, err := FleetSpec{Sites: 1, DevicesPerSite: 1}.Expand()
	require.NoError(t, err)
	_, err = New(Options{Dir: t.TempDir(), Devices: devs, Transport: TransportMemory, Remote: &RemoteControlPlane{APIURL: "http://127.0.0.1:1"}})
	assert.ErrorContains(t, err, "in-process control plane")
	_, err = New(Options{Dir: t.TempDir(), Devices: devs, Transport: "udp"})
	assert.ErrorContains(t, err, `transport "udp"`)
}

func serves(st []agent.ModelStatus, model, version string) bool {
	for _, s := range st {
		if s.Name == model && s.Serving == version {
			return true
		}
	}
	return false
}
