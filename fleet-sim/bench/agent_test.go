package bench

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/infer"
)

// TestAgentBenchSmall runs `fleet-sim bench agent` at a small size on a
// freshly built agent binary: the figures are read, nothing fails, and
// the idle process has not loaded onnxruntime while the serving one has.
func TestAgentBenchSmall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "edgefleet-agent")
	out, err := exec.Command("go", "build", "-tags", "nethttpomithttp2", "-o", bin,
		"github.com/edgefleet/edgefleet/agent/cmd/edgefleet-agent").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)

	r, err := Agent(context.Background(), AgentOptions{AgentBin: bin, AgentORTLibrary: lib, ORTLibrary: lib,
		Inferences: 200, SwapModelBytes: 2 << 20, Clients: 3, BigBatch: 64, Steady: 500 * time.Millisecond,
		Settle: 200 * time.Millisecond, Dir: filepath.Join(dir, "work"), Progress: io.Discard})
	require.NoError(t, err)
	assert.False(t, r.Stripped, "a plain go build keeps its symbols")
	assert.Positive(t, r.BinaryBytes)
	assert.False(t, r.IdleORTLoaded, "idle: onnxruntime not loaded")
	assert.True(t, r.ServingORTLoaded)
	assert.Positive(t, r.IdleRSS)
	assert.Greater(t, r.ServingRSS, r.IdleRSS, "serving holds onnxruntime and a model")
	require.NotNil(t, r.Swap)
	assert.Positive(t, r.Swap.Requests)
	assert.Zero(t, r.Swap.Failed, "no request failed across the swap")
	assert.Positive(t, r.Swap.SwapSamples, "requests were answered during the swap window")
	assert.GreaterOrEqual(t, r.Swap.PeakRSS, r.Swap.AfterRSS)
	assert.Positive(t, r.Swap.NewRSS)
}
