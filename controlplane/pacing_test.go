package controlplane_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// A version's shared round is handed to the embedded broker at the pace
// the devices acknowledge it: the broker keeps a copy of each chunk per
// subscriber until its PUBACK, and a round handed over at once held model
// size × devices in the control plane's memory (gigabytes for a 4 MiB
// model to 1,000 agents). Four devices that take the chunks and do not
// acknowledge them yet hold the round at 16 chunks each, one more a second
// at most; once they acknowledge, the rest follows and every device has
// every chunk.
func TestSharedRoundsFollowTheAcknowledgements(t *testing.T) {
	ts := newTestServer(t, nil)
	a := fleettest.TrainedModel(t, 1)
	const chunks = 80
	model := onnxbuild.Pad(a.ONNX, chunks*transfer.DefaultChunkSize-len(a.ONNX)-8-1000)
	code, body := ts.upload("big", "v1", model, a.Metadata(), false)
	require.Equal(t, http.StatusCreated, code, "%s", body)

	ids := []string{"dev-0", "dev-1", "dev-2", "dev-3"}
	creds := map[string]api.DeviceCredentials{}
	for _, id := range ids {
		creds[id] = ts.register(id, nil)
	}
	ts.deploy(api.DeployRequest{Model: "big", Version: "v1", Devices: ids})
	published := func() float64 { return metricValue(t, ts, "edgefleet_chunk_publishes_total") }

	release := make(chan struct{})
	var mu sync.Mutex
	got := map[string]map[uint32]bool{}
	for _, id := range ids {
		c := deviceClient(t, creds[id])
		sc := topics.Scheme{Prefix: creds[id].TopicPrefix}
		got[id] = map[uint32]bool{}
		// paho acknowledges a message once its handler returns.
		tok := c.Subscribe(sc.Chunks("big", "v1"), 1, func(_ paho.Client, m paho.Message) {
			<-release
			ch := &efpb.Chunk{}
			if proto.Unmarshal(m.Payload(), ch) == nil {
				mu.Lock()
				got[id][ch.Index] = true
				mu.Unlock()
			}
		})
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
		req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: id, Name: "big", Version: "v1", Fresh: true})
		require.NoError(t, err)
		publish(t, c, sc.Fetch(id), req)
	}
	releaseAll := sync.OnceFunc(func() { close(release) })
	defer releaseAll()

	require.Eventually(t, func() bool { return published() >= 16 }, 30*time.Second, 5*time.Millisecond, "the round never went out")
	time.Sleep(300 * time.Millisecond)
	held := published()
	assert.LessOrEqual(t, held, 19.0, "16 chunks to each of 4 devices unacknowledged: the round waits (one more a second at most)")

	releaseAll()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if len(got[id]) < chunks {
				return false
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "every device gets every chunk once they acknowledge")
	assert.Equal(t, float64(chunks), published(), "each chunk published once")
	assert.Positive(t, metricValue(t, ts, "edgefleet_chunk_rounds_paced_seconds_total"), "the waits are counted")
	t.Logf("%.0f of %d chunks published while the devices held 16 each", held, chunks)
}
