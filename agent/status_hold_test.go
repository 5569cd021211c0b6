package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// statesSeen lists the states dev reported for model@version, one per
// sequence number (the harness acknowledges nothing, so resends repeat).
func (h *harness) statesSeen(dev, model, version string) map[efpb.ModelState]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[uint64]bool{}
	out := map[efpb.ModelState]int{}
	for _, s := range h.statuses {
		if s.DeviceId == dev && s.ModelName == model && s.ModelVersion == version && !seen[s.Seq] {
			seen[s.Seq] = true
			out[s.State]++
		}
	}
	return out
}

func waitReported(t *testing.T, h *harness, dev, model string, state efpb.ModelState) {
	t.Helper()
	require.Eventually(t, func() bool {
		s := h.lastStatus(dev, model)
		return s != nil && s.State == state
	}, 30*time.Second, 10*time.Millisecond, "%s never reported %v for %s", dev, state, model)
}

// An update that passes through its phases while their reports wait is
// reported by its outcome alone: one status event instead of four
// (downloading, verifying, staging, active), each a persisted outbox entry,
// a publish and a write on the control plane. With the hold off, every
// phase is reported, as before.
func TestFastUpdateReportsOnlyItsOutcome(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	held := h.agentOptions(t, "held", t.TempDir())
	held.StatusHold = time.Hour // nothing waits that long here: only the outcome goes out
	each := h.agentOptions(t, "each", t.TempDir())
	each.StatusHold = -1
	a := h.startAgent(t, held)
	b := h.startAgent(t, each)
	m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("held", assign(m))
	h.desire("each", assign(m))
	waitServing(t, a, "fraud", "1.0.0")
	waitServing(t, b, "fraud", "1.0.0")
	waitReported(t, h, "held", "fraud", efpb.ModelState_MODEL_STATE_ACTIVE)
	waitReported(t, h, "each", "fraud", efpb.ModelState_MODEL_STATE_ACTIVE)

	held1 := h.statesSeen("held", "fraud", "1.0.0")
	for _, st := range []efpb.ModelState{efpb.ModelState_MODEL_STATE_DOWNLOADING, efpb.ModelState_MODEL_STATE_VERIFYING,
		efpb.ModelState_MODEL_STATE_STAGING} {
		assert.Zero(t, held1[st], "the progress reports were replaced by the outcome; saw %v", held1)
	}
	assert.Positive(t, held1[efpb.ModelState_MODEL_STATE_ACTIVE]) // more than one after a reconnect
	each1 := h.statesSeen("each", "fraud", "1.0.0")
	for _, st := range []efpb.ModelState{efpb.ModelState_MODEL_STATE_DOWNLOADING, efpb.ModelState_MODEL_STATE_VERIFYING,
		efpb.ModelState_MODEL_STATE_STAGING, efpb.ModelState_MODEL_STATE_ACTIVE} {
		assert.Positive(t, each1[st], "with the hold off %v is reported; saw %v", st, each1)
	}
}

// A download that takes longer than the hold is reported as downloading
// once the hold is over, while it still runs: the control plane sees a
// slow device's progress as before, only later by the hold.
func TestSlowDownloadIsReportedAfterTheHold(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	h.serveOnly = func(uint32) bool { return false } // the download makes no progress
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.StatusHold = 200 * time.Millisecond
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))

	waitReported(t, h, "dev-1", "fraud", efpb.ModelState_MODEL_STATE_DOWNLOADING)
	st := a.Status()
	require.Len(t, st, 1)
	assert.Equal(t, PhaseDownloading, st[0].Phase, "reported while the download still runs")

	h.mu.Lock()
	h.serveOnly = nil
	h.mu.Unlock()
	waitServing(t, a, "fraud", "1.0.0")
	waitReported(t, h, "dev-1", "fraud", efpb.ModelState_MODEL_STATE_ACTIVE)
}

// A report still waiting when the agent stops is queued in the outbox,
// not lost: the next start sends it.
func TestHeldReportIsQueuedWhenTheAgentStops(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	h.serveOnly = func(uint32) bool { return false }
	dir := t.TempDir()
	opts := h.agentOptions(t, "dev-1", dir)
	opts.StatusHold = time.Hour
	a, err := New(opts)
	require.NoError(t, err)
	stop := testkit.Start(t, "agent dev-1", a.Run, a.Ready())
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) > 0 }, 30*time.Second, 10*time.Millisecond,
		"the download never started")
	stop()
	assert.Empty(t, h.statesSeen("dev-1", "fraud", "1.0.0"), "held for an hour: nothing sent before the stop")

	h.startAgent(t, opts)
	waitReported(t, h, "dev-1", "fraud", efpb.ModelState_MODEL_STATE_DOWNLOADING)
}
