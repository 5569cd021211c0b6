package sim

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// TestMemberCountsPhasesAndHooksOneAgent: every phase entry of every agent
// is counted, a member's user hook sees the phases of the agent it was set
// for and not those of the agent a restart starts, and the progress counts
// only grow across the restart.
func TestMemberCountsPhasesAndHooksOneAgent(t *testing.T) {
	rt, err := infer.NewRuntime("", nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	devs, err := FleetSpec{Sites: 1, DevicesPerSite: 2}.Expand()
	require.NoError(t, err)
	f, err := New(Options{Dir: t.TempDir(), Devices: devs, Runtime: rt, Transport: TransportMemory,
		HeartbeatInterval: time.Second, FetchRetryInterval: 300 * time.Millisecond})
	require.NoError(t, err)
	m := f.Member("dev-1-1")
	require.ErrorContains(t, m.SetPhaseHook(nil), "no running agent", "before Start")
	ctx := context.Background()
	require.NoError(t, f.Start(ctx))
	t.Cleanup(func() { _ = f.Stop() })
	assert.Equal(t, Progress{}, f.Progress())

	var mu sync.Mutex
	var seen []string
	require.NoError(t, m.SetPhaseHook(func(_ context.Context, model, version string, phase agent.Phase) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, model+"@"+version+" "+string(phase))
	}))
	hooked := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}

	deploy := func(version string, seed uint64) {
		t.Helper()
		art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: 1000})
		require.NoError(t, err)
		_, err = f.ControlPlane().AddModelVersion(ctx, "fraud", version, art.ONNX, art.Metadata(), false)
		require.NoError(t, err)
		_, err = f.ControlPlane().Deploy(ctx, api.DeployRequest{Model: "fraud", Version: version, Selector: "site=site-1"})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			for _, m := range f.Members() {
				if a := m.Agent(); a == nil || !serves(a.Status(), "fraud", version) {
					return false
				}
			}
			return true
		}, 30*time.Second, 20*time.Millisecond, "every agent serves %s", version)
	}

	deploy("1.0.0", 1)
	phases := agent.HookPhases()
	for _, mm := range f.Members() {
		for _, p := range phases {
			assert.Equal(t, uint64(1), mm.PhaseEntries("fraud", "1.0.0", p), "%s entered %s once", mm.Device.ID, p)
		}
	}
	assert.Equal(t, []string{"fraud@1.0.0 downloading", "fraud@1.0.0 verifying", "fraud@1.0.0 staging"}, hooked())
	p1 := f.Progress()
	assert.Equal(t, uint64(6), p1.PhaseEntries)
	assert.Positive(t, p1.Chunks)
	assert.Zero(t, p1.Restarts)
	assert.Positive(t, p1.Desired, "each agent accepted a desired state")

	require.NoError(t, f.Restart(ctx, "dev-1-1"))
	p2 := f.Progress()
	assert.Equal(t, uint64(1), p2.Restarts)
	assert.Equal(t, p1.Chunks, p2.Chunks, "the stopped agent's chunks still count")
	assert.Equal(t, p1.Desired, p2.Desired, "the restarted agent resumes its generation")

	deploy("2.0.0", 2)
	assert.Len(t, hooked(), 3, "the hook was for the agent before the restart")
	assert.Equal(t, uint64(1), m.PhaseEntries("fraud", "2.0.0", "staging"), "the restarted agent is observed")
	assert.Equal(t, uint64(2), m.PhaseEntries("fraud", "", "staging"), "any version")
	p3 := f.Progress()
	assert.Equal(t, uint64(12), p3.PhaseEntries)
	assert.Greater(t, p3.Chunks, p2.Chunks)
	assert.Greater(t, p3.Desired, p2.Desired)
	assert.Greater(t, p3.Total(), p2.Total())
}
