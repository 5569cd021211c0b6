package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// A download asks again when its chunks stop coming at the pace they came
// at, not when the next one is merely FetchRetryInterval late; while its
// requests bring nothing it backs off; and chunks other devices asked for
// keep it from asking for at most stallCap intervals.
func TestChunkPaceStalled(t *testing.T) {
	const r = 2 * time.Second
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	t.Run("no chunk yet: after r, then 2r, then 4r", func(t *testing.T) {
		var p chunkPace
		asked := at(0)
		assert.False(t, p.stalled(at(r-time.Millisecond), asked, r))
		assert.True(t, p.stalled(at(r), asked, r))
		p.quiet++ // asked again at r
		asked = at(r)
		assert.False(t, p.stalled(asked.Add(2*r-time.Millisecond), asked, r), "the second retry waits 2r")
		assert.True(t, p.stalled(asked.Add(2*r), asked, r))
		p.quiet += 5
		assert.False(t, p.stalled(asked.Add(4*r-time.Millisecond), asked, r), "at most 4r")
		assert.True(t, p.stalled(asked.Add(4*r), asked, r))
	})

	t.Run("chunks arriving 3 s apart: waits 6 s, not 2", func(t *testing.T) {
		var p chunkPace
		p.arrived(0, at(0))
		p.arrived(0, at(3*time.Second))
		last := at(3 * time.Second)
		assert.False(t, p.stalled(last.Add(5*time.Second), last, r), "the next chunk is late by the fan-out's pace, not lost")
		assert.True(t, p.stalled(last.Add(6*time.Second), last, r))
	})

	t.Run("a slow pace is believed up to stallCap intervals", func(t *testing.T) {
		var p chunkPace
		p.arrived(0, at(0))
		p.arrived(0, at(time.Minute))
		last := at(time.Minute)
		assert.False(t, p.stalled(last.Add(stallCap*r-time.Millisecond), last, r))
		assert.True(t, p.stalled(last.Add(stallCap*r), last, r))
	})

	t.Run("other devices' chunks keep arriving", func(t *testing.T) {
		var p chunkPace
		own := at(0)
		for d := time.Duration(0); d < stallCap*r; d += 500 * time.Millisecond {
			p.arrived(0, at(d))
			assert.False(t, p.stalled(at(d), own, r), "at %v: the link is busy with the version's chunks", d)
		}
		p.arrived(0, at(stallCap*r))
		assert.True(t, p.stalled(at(stallCap*r), own, r), "a chunk of its own lost among them is asked again")
	})

	t.Run("a chunk resets the back-off", func(t *testing.T) {
		var p chunkPace
		p.quiet = 2
		p.arrived(0, at(0))
		assert.Zero(t, p.quiet)
		assert.True(t, p.stalled(at(r), at(0), r))
	})
}

// The first fetch request of a download, and the first after the agent
// started again, is fresh: the control plane then publishes again what it
// published before (it may have been lost); the retries in between are
// not, and a chunk whose publish is on its way is not published again.
func TestFirstFetchRequestIsFresh(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	h.serveOnly = func(uint32) bool { return false } // nothing arrives: the agent asks again
	dir := t.TempDir()
	opts := h.agentOptions(t, "dev-1", dir)
	a, err := New(opts)
	require.NoError(t, err)
	stop := testkit.Start(t, "agent dev-1", a.Run, a.Ready())
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) >= 3 }, 30*time.Second, 10*time.Millisecond,
		"the agent never asked again")
	stop()
	before := h.fetchesFor("dev-1")
	assert.True(t, before[0].GetFresh(), "the download's first request")
	for i, f := range before[1:] {
		assert.False(t, f.GetFresh(), "retry %d", i+1)
	}

	h.startAgent(t, opts)
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) > len(before) }, 30*time.Second, 10*time.Millisecond,
		"the restarted agent never asked")
	assert.True(t, h.fetchesFor("dev-1")[len(before)].GetFresh(), "the first request after the restart")

	// A reconnect: what was published while the agent was away is lost.
	// (A retry in flight at the disconnect may be delivered again first.)
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) > len(before)+1 }, 30*time.Second, 10*time.Millisecond,
		"the restarted agent never asked again")
	n := len(h.fetchesFor("dev-1"))
	require.True(t, h.broker.Disconnect("dev-1"))
	require.Eventually(t, func() bool {
		for _, f := range h.fetchesFor("dev-1")[n:] {
			if f.GetFresh() {
				return true
			}
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "no fresh request after the reconnect")
}

// A fetch request says which chunk of the download arrived last
// (FetchRequest.last_received, index + 1): the chunks of a topic arrive in
// the order they were published, so the control plane tells what is still
// on its way from what was lost. Nothing arrived: 0; after a reconnect
// what arrived before tells nothing, and the count starts again.
func TestFetchRequestsSayWhichChunkArrivedLast(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	model := onnxbuild.Pad(v1.ONNX, 200_000) // 4 chunks of 64 KiB
	h.mu.Lock()
	h.serveOnly = func(idx uint32) bool { return idx == 0 || idx == 2 } // 1 and 3 lost; 2 arrives last
	h.mu.Unlock()
	h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, model, nil, nil)))

	var again *efpb.FetchRequest
	require.Eventually(t, func() bool {
		fetches := h.fetchesFor("dev-1")
		if len(fetches) < 2 {
			return false
		}
		again = fetches[len(fetches)-1]
		return true
	}, 30*time.Second, 10*time.Millisecond, "the agent never asked again")
	first := h.fetchesFor("dev-1")[0]
	assert.Zero(t, first.GetLastReceived(), "nothing had arrived")
	assert.Equal(t, []uint32{1, 3}, again.GetMissing())
	assert.Equal(t, uint32(3), again.GetLastReceived(), "chunk 2 arrived last")

	n := len(h.fetchesFor("dev-1"))
	require.True(t, h.broker.Disconnect("dev-1"))
	require.Eventually(t, func() bool {
		for _, f := range h.fetchesFor("dev-1")[n:] {
			if f.GetFresh() {
				assert.Zero(t, f.GetLastReceived(), "what arrived on the old connection tells nothing of the new one")
				return true
			}
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "no fresh request after the reconnect")
}
