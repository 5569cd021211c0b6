package agent

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A node of a clustered broker (NATS) serves a new subscription only the
// retained messages it has replicated so far, and nothing is published
// again to the device. Here the broker withholds the retained desired
// state on the agent's first subscription to it, and the manifest on the
// first subscription to that: the agent gets both by asking again.
func TestRetainedDocumentsAskedForAgainOnALaggingNode(t *testing.T) {
	h := newHarness(t)
	v1, _ := testModels(t)
	const dev = "dev-1"
	m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire(dev, assign(m))

	var mu sync.Mutex
	subscribed := map[string]int{} // guarded by mu
	h.mu.Lock()
	h.withhold = func(clientID, filter string) bool {
		if clientID != dev || (filter != h.scheme.Desired(dev) && filter != h.scheme.Manifest("fraud", "1.0.0")) {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		subscribed[filter]++
		return subscribed[filter] == 1
	}
	h.mu.Unlock()

	opts := h.agentOptions(t, dev, t.TempDir())
	opts.RetainedRecheck = 200 * time.Millisecond
	a := h.startAgent(t, opts)
	waitServing(t, a, "fraud", "1.0.0")

	mu.Lock()
	defer mu.Unlock()
	assert.GreaterOrEqual(t, subscribed[h.scheme.Desired(dev)], 2, "the desired state was withheld once and asked for again")
	assert.GreaterOrEqual(t, subscribed[h.scheme.Manifest("fraud", "1.0.0")], 2, "the manifest was withheld once and asked for again")
}

func TestRetainedRecheckDefaultsToClusters(t *testing.T) {
	for _, tt := range []struct {
		brokers string
		set     time.Duration
		want    time.Duration
	}{
		{"tcp://a:1883", 0, 0},
		{"tcp://a:1883,tcp://b:1883", 0, DefaultRetainedRecheck},
		{"tcp://a:1883,tcp://b:1883", -1, -1},
		{"tcp://a:1883", 5 * time.Second, 5 * time.Second},
	} {
		o := Options{DeviceID: "d", BrokerURL: tt.brokers, RootPublicKey: make([]byte, 32), DataDir: t.TempDir(), RetainedRecheck: tt.set}
		require.NoError(t, o.setDefaults(), tt.brokers)
		assert.Equal(t, tt.want, o.RetainedRecheck, "%s, set %v", tt.brokers, tt.set)
	}
}
