package bench

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

func TestFanoutSmall(t *testing.T) {
	profile := filepath.Join(t.TempDir(), "rollout.pprof")
	agentDir := t.TempDir()
	var out bytes.Buffer
	res, err := Fanout(context.Background(), FanoutOptions{Sizes: []int{3}, ModelBytes: 200_000, ProxyMax: 10,
		FetchRetry: 300 * time.Millisecond, AgentDir: agentDir, Dir: t.TempDir(), Progress: &out, RolloutProfile: profile})
	require.NoError(t, err)
	require.Len(t, res, 1)
	r := res[0]
	assert.Equal(t, 3, r.N)
	assert.InDelta(t, 200_000, float64(r.ModelBytes), 100)
	assert.Equal(t, uint32(4), r.Chunks, "200 kB in 64 KiB chunks")
	assert.Positive(t, r.Rollout)
	assert.Positive(t, r.Baseline)
	assert.Zero(t, r.BaselineMissing, "every raw subscriber got every chunk")
	assert.GreaterOrEqual(t, r.ChunkPublishes, float64(r.Chunks), "read from /metrics")
	assert.GreaterOrEqual(t, r.DirectPublishes, 0.0, "read from /metrics")
	assert.LessOrEqual(t, r.DirectPublishes, r.ChunkPublishes)
	assert.Contains(t, out.String(), "agents' shared store: in memory; agents' model files: under "+agentDir)
	left, err := os.ReadDir(agentDir)
	require.NoError(t, err)
	assert.Empty(t, left, "the agents' files are removed from --agent-dir")
	assert.GreaterOrEqual(t, r.WireBytesPerAgent, 1.0, "each agent received at least the model")
	assert.LessOrEqual(t, r.FirstActive, r.MedianActive)
	for _, phase := range []string{"downloading", "verifying", "staging", "active"} {
		require.Contains(t, r.Phases, phase, "every agent passed through %s", phase)
	}
	assert.Less(t, r.Phases["downloading"].Median, r.Phases["verifying"].Median)
	assert.LessOrEqual(t, r.Phases["staging"].Last, r.Phases["active"].Last)
	assert.Positive(t, r.RolloutCPU, "the rollout's CPU-seconds")
	b, err := os.ReadFile(profile)
	require.NoError(t, err, "the rollout's profile is written")
	require.Greater(t, len(b), 2)
	assert.Equal(t, []byte{0x1f, 0x8b}, b[:2], "a pprof profile is gzipped protobuf")
}

func TestFanoutNeedsRoomInTheAgentDir(t *testing.T) {
	dir := t.TempDir()
	free, ok := freeBytes(dir)
	if !ok {
		t.Skip("free space is not measured on this system")
	}
	assert.NoError(t, checkRoom(dir, 2, free/4))
	err := checkRoom(dir, 2, free/2+1<<30)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "2 agents need about")
}

func TestScaleSmall(t *testing.T) {
	// Over TCP here; TestFanoutSmall covers the in-memory transport.
	res, err := Scale(context.Background(), ScaleOptions{Sizes: []int{3}, Transport: sim.TransportTCP, Dir: t.TempDir(), Progress: io.Discard})
	require.NoError(t, err)
	require.Len(t, res, 1)
	assert.Positive(t, res[0].GoroutinesPerAgent)
	assert.Positive(t, res[0].HeapBytes)
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"fanout", "--n", "0"}, {"scale", "--n", "x"},
		{"fanout", "--cpu-profile-window"}, {"scale", "--cpu-profile", "p", "--cpu-profile-window"}} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, Main(context.Background(), args, &out, &errOut), "Main(%q)", args)
		assert.NotEmpty(t, errOut.String())
	}
}
