package agent

import (
	"context"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The broker's acknowledgement of a fetch request crosses the device's
// link behind the chunks already queued for it: on a 4 Mbit/s link with 64
// chunks of 64 KiB queued, 8 s. An agent whose update loop waited for it
// took no chunk meanwhile, then found its download stalled and asked for
// its whole window again (a lone device moved 1.25–1.9 copies of a 10 MiB
// model over its link; docs/benchmarks.md). Fetch requests now go at QoS
// 0, so there is no acknowledgement to wait for (nor a PUBACK per request
// for the broker to send every device). Here any acknowledgement of a fetch
// request would be lost on the way: the agent must take its chunks,
// asking for each once. An agent that waited for them spent the publish
// timeout (10 s) on each of its three requests.
func TestFetchRequestsDoNotWaitForTheirAcknowledgement(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.FetchRetryInterval = 5 * time.Second // the default: nothing here is slow
	var links []*ackDropper
	var mu sync.Mutex
	fetchTopic := h.scheme.Fetch("dev-1")
	opts.MQTTDial = func(ctx context.Context) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(h.broker.URL(), "tcp://"))
		if err != nil {
			return nil, err
		}
		l := &ackDropper{Conn: c, topic: fetchTopic, ids: map[uint16]bool{}}
		mu.Lock()
		links = append(links, l)
		mu.Unlock()
		return l, nil
	}
	a := h.startAgent(t, opts)
	model := onnxbuild.Pad(v1.ONNX, 200*transfer.DefaultChunkSize)
	m := h.publishModel("fraud", "1.0.0", v1, model, nil, nil)
	h.desire("dev-1", assign(m))

	start := time.Now()
	// Idle, this takes well under a second; an agent that waits for each
	// request's acknowledgement needs at least 30 s.
	require.Eventually(t, func() bool {
		for _, s := range a.Status() {
			if s.Name == "fraud" && s.Serving == "1.0.0" && s.Target == "" {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "not serving 20 s after the deploy; status %+v", a.Status())
	t.Logf("served after %v", time.Since(start))

	dropped, atMostOnce := 0, 0
	mu.Lock()
	for _, l := range links {
		dropped += int(l.dropped.Load())
		atMostOnce += int(l.qos0.Load())
	}
	mu.Unlock()
	fetches := h.fetchesFor("dev-1")
	assert.GreaterOrEqual(t, len(fetches), 3, "the model needs three fetch windows")
	assert.Equal(t, len(fetches), atMostOnce, "every fetch request went at QoS 0")
	assert.Zero(t, dropped, "no fetch request had an acknowledgement to lose")
	asked := map[uint32]int{}
	for _, f := range fetches {
		for _, i := range f.Missing {
			asked[i]++
		}
	}
	assert.Len(t, asked, len(m.ChunkSha256), "every chunk asked for")
	for i, n := range asked {
		assert.Equal(t, 1, n, "chunk %d asked for %d times", i, n)
	}
}

// ackDropper is an MQTT connection that loses the broker's PUBACKs of the
// client's publishes to topic (it reads the packet ids of those publishes
// on their way out).
type ackDropper struct {
	net.Conn
	topic   string
	dropped atomic.Int64 // PUBACKs of the client's publishes to topic, lost
	qos0    atomic.Int64 // the client's QoS 0 publishes to topic

	// mu guards ids and up (Write side); in and out are Read's alone.
	mu      sync.Mutex
	ids     map[uint16]bool // packet ids of the client's publishes to topic
	up      []byte          // the client's bytes not yet parsed
	in, out []byte          // the broker's bytes: not yet parsed, passed on
}

// mqttPacket splits the first complete MQTT packet off b: its type, its
// variable header and payload, and its length in all (0 if incomplete).
func mqttPacket(b []byte) (typ byte, body []byte, n int) {
	size, mult := 0, 1
	for i := 1; i < len(b) && i <= 4; i++ {
		size += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			end := i + 1 + size
			if end > len(b) {
				return 0, nil, 0
			}
			return b[0] >> 4, b[i+1 : end], end
		}
		mult *= 128
	}
	return 0, nil, 0
}

func (c *ackDropper) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.up = append(c.up, p...)
	for {
		typ, body, n := mqttPacket(c.up)
		if n == 0 {
			break
		}
		qos := (c.up[0] >> 1) & 3
		if typ == 3 && len(body) >= 2 {
			tl := int(binary.BigEndian.Uint16(body))
			switch {
			case len(body) < 2+tl || string(body[2:2+tl]) != c.topic:
			case qos == 0:
				c.qos0.Add(1)
			case len(body) >= 2+tl+2:
				c.ids[binary.BigEndian.Uint16(body[2+tl:])] = true
			}
		}
		c.up = c.up[n:]
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *ackDropper) Read(p []byte) (int, error) {
	buf := make([]byte, 32<<10)
	for len(c.out) == 0 {
		n, err := c.Conn.Read(buf)
		c.in = append(c.in, buf[:n]...)
		for {
			typ, body, m := mqttPacket(c.in)
			if m == 0 {
				break
			}
			drop := false
			if typ == 4 && len(body) == 2 {
				c.mu.Lock()
				drop = c.ids[binary.BigEndian.Uint16(body)]
				delete(c.ids, binary.BigEndian.Uint16(body))
				c.mu.Unlock()
			}
			if drop {
				c.dropped.Add(1)
			} else {
				c.out = append(c.out, c.in[:m]...)
			}
			c.in = c.in[m:]
		}
		if err != nil && len(c.out) == 0 {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// On the version's shared chunk topic a device receives the chunks other
// devices asked for too, and on a slow link its own queue behind them.
// While chunks of the version keep arriving the link is busy, not lost: the
// device does not ask again for what it has in flight (each chunk it asked
// again would cross the link twice, to every subscriber). Once the topic
// falls silent it asks again.
func TestStallRetryWaitsWhileTheVersionsChunksArrive(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	h.mu.Lock()
	h.serveOnly = func(uint32) bool { return false } // the test publishes
	h.mu.Unlock()
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.FetchRetryInterval = 2 * time.Second
	a := h.startAgent(t, opts)
	model := onnxbuild.Pad(v1.ONNX, 3*transfer.DefaultChunkSize)
	m := h.publishModel("fraud", "1.0.0", v1, model, nil, nil)
	h.desire("dev-1", assign(m))
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) == 1 }, 30*time.Second, 10*time.Millisecond)

	chunk := func(i uint32) []byte {
		data, err := transfer.ChunkData(model, transfer.DefaultChunkSize, i)
		require.NoError(t, err)
		b, err := proto.Marshal(&efpb.Chunk{Name: "fraud", Version: "1.0.0", Index: i, Data: data})
		require.NoError(t, err)
		return b
	}
	topic := h.scheme.Chunks("fraud", "1.0.0")
	require.NoError(t, h.broker.Publish(topic, chunk(0), false, 1))
	require.Eventually(t, func() bool { return a.ChunksReceived() == 1 }, 30*time.Second, 10*time.Millisecond)
	// Three retry intervals of chunk 0 again, as if for another device
	// behind the same link.
	busy := time.NewTicker(100 * time.Millisecond)
	defer busy.Stop()
	for end := time.Now().Add(3 * opts.FetchRetryInterval); time.Now().Before(end); <-busy.C {
		require.NoError(t, h.broker.Publish(topic, chunk(0), false, 1))
	}
	assert.Len(t, h.fetchesFor("dev-1"), 1, "asked again while the version's chunks kept arriving")

	// Silence: the device asks again for what it lacks.
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) >= 2 }, 30*time.Second, 10*time.Millisecond)
	again := h.fetchesFor("dev-1")[1].Missing
	assert.NotContains(t, again, uint32(0), "a chunk it holds is not asked again")
	h.mu.Lock()
	h.serveOnly = nil
	h.mu.Unlock()
	h.onFetch(mustMarshal(t, &efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "1.0.0", Missing: again}))
	waitServing(t, a, "fraud", "1.0.0")
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return b
}
