package soak

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShortSoak is the soak in miniature — 20 agents, 20 s of chaos with
// at least two faults of every kind — so the harness itself runs in
// `make test` and can fail there. Resource trends are reported but not
// judged: 20 s after a warm-up is no base for a slope (TestTrends* check
// the judging). Every wait in it is a condition with a generous bound
// (convergence gives up only after two minutes without progress), so a
// loaded machine slows it down but does not fail it.
func TestShortSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("a 20 s soak")
	}
	dir := t.TempDir()
	var progress bytes.Buffer
	opts := Options{
		Agents:    20,
		Duration:  20 * time.Second,
		Dir:       filepath.Join(dir, "fleet"),
		ReportDir: filepath.Join(dir, "report"),
		Seed:      7,
		Heartbeat: 500 * time.Millisecond,
		Faults: Faults{
			KillEvery:         4 * time.Second,
			BrokerEvery:       time.Minute,
			BrokerDown:        2 * time.Second,
			ControlPlaneEvery: time.Minute,
			ControlPlaneDown:  time.Second,
			PartitionEvery:    time.Minute,
			PartitionDown:     3 * time.Second,
			CorruptEvery:      7 * time.Second,
			SkewEvery:         7 * time.Second,
			SkewFraction:      0.2,
			MinEach:           2,
		},
		Bounds:   Bounds{DisableResource: true},
		Progress: &progress,
	}
	rep, err := Run(context.Background(), opts)
	require.NoError(t, err, "progress:\n%s", progress.String())
	var txt bytes.Buffer
	rep.WriteText(&txt)
	t.Log("\n" + txt.String())
	require.True(t, rep.Passed, "failed: %+v\nprogress:\n%s", rep.Failed(), progress.String())

	counts := map[string]int{}
	for _, f := range rep.Faults {
		counts[f.Kind]++
	}
	for _, k := range FaultKinds {
		assert.GreaterOrEqual(t, counts[k], 2, "%s faults", k)
	}
	final := rep.TelemetryChecks[len(rep.TelemetryChecks)-1]
	assert.Equal(t, "final", final.Why)
	assert.Positive(t, final.Confirmed, "acknowledged reports were followed to the control plane's store")
	assert.GreaterOrEqual(t, len(rep.TelemetryChecks), 3, "each control plane restart checks the store too")
	assert.Positive(t, rep.ServedChecks)
	assert.Positive(t, rep.Rollouts.Started)
	for _, name := range []string{"report.json", "report.txt", "chart.svg"} {
		st, err := os.Stat(filepath.Join(opts.ReportDir, name))
		require.NoError(t, err)
		assert.Positive(t, st.Size(), name)
	}
}
