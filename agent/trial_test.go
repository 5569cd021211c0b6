package agent

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestAgentCommitsAfterHealthPeriod(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.HealthPeriod = 300 * time.Millisecond
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))

	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_PENDING, "1.0.0")
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	st := a.Status()[0]
	assert.False(t, st.OnTrial)
	assert.Equal(t, "1.0.0", st.Serving)
}

func TestAgentReturnsToPreviousOnErrorsDuringTrial(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.HealthPeriod = 200 * time.Millisecond
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")

	// v2 gets a long trial; while it is on trial its session fails.
	a.opts.HealthPeriod = time.Hour // read only by the update loop's checks; set before v2 arrives
	h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
	require.Eventually(t, func() bool {
		st := a.Status()
		return len(st) == 1 && st[0].Serving == "2.0.0" && st[0].OnTrial
	}, 10*time.Second, 10*time.Millisecond)
	// An inference error, as a broken runtime or model would produce: the
	// error path of backend.Infer counts exactly this.
	a.slot("fraud").serving.Load().errors.Add(1)

	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ROLLED_BACK, "1.0.0")
	assert.Contains(t, h.lastStatus("dev-1", "fraud").Reason, "inference errors during the health period")
	st := a.Status()[0]
	assert.Equal(t, "1.0.0", st.Serving)
	assert.Equal(t, "2.0.0", st.FailedVersion)
	assert.NoFileExists(t, a.modelPath("fraud", sha256hex(v2.ONNX)), "the failed version is removed")
	_, version := score(t, a, sampleRows(t, 1))
	assert.Equal(t, "1.0.0", version)
}

// TestAgentAbandonsVersionThatCrashesDuringTrial: the process dies (kill -9)
// each time v2 starts its trial; after MaxActivationAttempts the agent goes
// back to v1 by itself and reports why.
func TestAgentAbandonsVersionThatCrashesDuringTrial(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	cfg, inference := h.writeChildConfig(t, "dev-1", t.TempDir(), "health_period: 300ms")
	c := startChild(t, cfg, inference, "trial:2")
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
	c.waitKilled(t)
	for range 2 { // the trial restarts twice more, and dies each time
		c = startChild(t, cfg, inference, "trial:1")
		c.waitKilled(t)
	}
	c = startChild(t, cfg, inference, "")
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ROLLED_BACK, "1.0.0")
	assert.Contains(t, h.lastStatus("dev-1", "fraud").Reason, "abandoned after 3 restarts during its health period")
	c.stop(t)
}

// TestBadRequestsDoNotCountAgainstATrial: inputs the model refuses (a
// shape onnxruntime will not take, an empty tensor) are the caller's
// fault: 400s that leave a version on trial alone.
func TestBadRequestsDoNotCountAgainstATrial(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")

	a.opts.HealthPeriod = 300 * time.Millisecond // read only by the update loop's checks; set before v2 arrives
	h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
	require.Eventually(t, func() bool {
		st := a.Status()
		return len(st) == 1 && st[0].Serving == "2.0.0" && st[0].OnTrial
	}, 10*time.Second, 10*time.Millisecond)
	for _, in := range [][]oip.Tensor{
		{{Name: "features", Shape: []int64{1, 3}, Data: []float32{1, 2, 3}}},
		{{Name: "features", Shape: []int64{2, 7}, Data: make([]int64, 14)}},
	} {
		_, _, err := a.Infer(context.Background(), "fraud", in)
		require.ErrorIs(t, err, oip.ErrInvalidInput)
	}
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0")
	assert.Equal(t, "2.0.0", a.Status()[0].Active)
	assert.Zero(t, a.slot("fraud").serving.Load().errors.Load())
	assert.EqualValues(t, 2, a.slot("fraud").rejects.Load())
}
