package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// An agent receives on its own chunk topic from its first connection and
// says so in its fetch requests (FetchRequest.own_topic): a control plane
// sends a device that asks after a version's shared round went out what
// the round carried there. Chunks arriving there feed a served version's
// download and a challenger's alike.
func TestChunksOnTheDeviceTopicFeedDownloads(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	h.mu.Lock()
	h.ownTopic = true
	h.mu.Unlock()
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", assign(m1))
	waitServing(t, a, "fraud", "1.0.0")
	fetches := h.fetchesFor("dev-1")
	require.NotEmpty(t, fetches)
	for _, f := range fetches {
		assert.True(t, f.OwnTopic, "every request says the device receives on its own topic")
		assert.False(t, f.Direct, "and none asks for its own topic only: the site does not share")
	}

	// A challenger, served on the device's topic as well.
	m2 := h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)
	h.desireState("dev-1", &efpb.DesiredState{Models: []*efpb.ModelAssignment{assign(m1)},
		Shadows: []*efpb.ShadowAssignment{{Name: "fraud", Version: "2.0.0", Sha256: m2.Sha256}}})
	require.Eventually(t, func() bool {
		for _, tr := range a.Transfers() {
			if tr.ModelVersion == "2.0.0" && tr.BrokerBytes == uint64(len(v2.ONNX)) {
				return true
			}
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "the challenger downloaded from the device's own topic")
}
