package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each connection is handled once. The first was announced twice (by the
// MQTT client's OnConnect and again once the client was stored), and
// handling it twice sent everything a connection sends twice — presence, a
// report per model and a fresh fetch request for the whole of a download
// in progress, which spent the device's fetch budget (the restarts
// scenario stranded a device at "downloading" once a restart and a
// reconnect had spent it).
func TestEachConnectionHandledOnce(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	online := h.onlinePresences(t, "dev-1")
	h.mu.Lock()
	h.serveOnly = func(uint32) bool { return false } // the download stays in progress
	h.mu.Unlock()
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))

	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.FetchRetryInterval = time.Hour // only connections ask
	h.startAgent(t, opts)
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) > 0 }, 10*time.Second, 5*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // room for a second announcement to be handled
	assert.EqualValues(t, 1, online.Load(), "one presence for the first connection")
	assert.Len(t, h.fetchesFor("dev-1"), 1, "one request for the download")

	require.True(t, h.broker.Disconnect("dev-1"))
	require.Eventually(t, func() bool { return online.Load() == 2 }, 10*time.Second, 5*time.Millisecond, "online again")
	time.Sleep(300 * time.Millisecond)
	assert.EqualValues(t, 2, online.Load(), "one presence for the second connection")
	fetches := h.fetchesFor("dev-1")
	require.Len(t, fetches, 2, "one more request after the reconnect")
	assert.True(t, fetches[1].Fresh, "marked fresh: what was published meanwhile may be lost")
}
