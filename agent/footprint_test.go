package agent

import (
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The agent's footprint guards: the stable, non-timing parts of the
// figures `make bench-agent` measures (docs/benchmarks.md).

// mapsLibrary says whether process pid has a file whose name contains lib
// mapped.
func mapsLibrary(t *testing.T, pid int, lib string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	require.NoError(t, err)
	return strings.Contains(string(b), lib)
}

// TestIdleAgentDoesNotLoadONNXRuntime runs the agent in a process of its
// own: connected and idle it has not mapped onnxruntime, and its local API
// answers health (live, and not ready); the first model it stages loads
// the library.
func TestIdleAgentDoesNotLoadONNXRuntime(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/<pid>/maps")
	}
	v1, _ := testModels(t)
	h := newHarness(t)
	online := h.onlinePresences(t, "dev-1")

	cfg, inference := h.writeChildConfig(t, "dev-1", t.TempDir())
	c := startChild(t, cfg, inference, "")
	require.Eventually(t, func() bool { return online.Load() > 0 }, 30*time.Second, 10*time.Millisecond,
		"the agent did not come online within 30s")
	pid := c.cmd.Process.Pid
	assert.False(t, mapsLibrary(t, pid, "libonnxruntime"), "an idle agent has not loaded onnxruntime")
	// Not ready: no model serves (none is assigned yet).
	for path, want := range map[string]int{"/v2/health/live": http.StatusOK, "/v2/health/ready": http.StatusBadRequest} {
		resp, err := http.Get("http://" + inference + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, want, resp.StatusCode, "GET %s while idle", path)
	}

	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	assert.True(t, mapsLibrary(t, pid, "libonnxruntime"), "serving a model, the agent has loaded onnxruntime")
	c.stop(t)
}

// TestModelBytesNeverInGoHeap loads a model larger than any request body
// by download and again from disk after a restart, then reads the heap
// profile: no allocation of half the model's size or more was ever made on
// a path through the agent (the file is mapped, hashed and handed to
// onnxruntime, never copied into the Go heap).
func TestModelBytesNeverInGoHeap(t *testing.T) {
	v1, _ := testModels(t)
	const size = 16 << 20
	model, err := fraud.LargeONNX(v1.Model, size, 1)
	require.NoError(t, err)
	h := newHarness(t)
	dir := t.TempDir()
	opts := h.agentOptions(t, "dev-1", dir)
	opts.InferenceMaxBodyBytes = 1 << 20
	first, err := New(opts)
	require.NoError(t, err)
	stop := testkit.Start(t, "agent", first.Run, first.Ready())
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, model, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	stop()

	a := h.startAgent(t, opts) // restores: loads the committed file from disk
	waitServing(t, a, "fraud", "1.0.0")
	rows := sampleRows(t, 4)
	got, _ := score(t, a, rows)
	assert.InDeltaSlice(t, v1.Predict(rows), got, 1e-5, "the large model computes what the small one does")

	runtime.GC() // the profile is as of the last collection
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	for _, r := range recs {
		if r.AllocObjects == 0 || r.AllocBytes/r.AllocObjects < size/2 {
			continue
		}
		var agentPath bool
		var stack []string
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			stack = append(stack, f.Function)
			agentPath = agentPath || strings.Contains(f.Function, "edgefleet/agent.(*Agent)")
			if !more {
				break
			}
		}
		if agentPath {
			t.Errorf("a %d-byte allocation on the agent's path (the model is %d bytes):\n  %s",
				r.AllocBytes/r.AllocObjects, len(model), strings.Join(stack, "\n  "))
		}
	}
}
