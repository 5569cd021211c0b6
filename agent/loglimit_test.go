package agent

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestLogLimiter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	now := t0
	l := newLogLimiter(time.Minute, func() time.Time { return now })
	for _, tt := range []struct {
		at        time.Duration // since t0
		kind      string
		ok        bool
		held      uint64
		sinceLast time.Duration
	}{
		{0, "a", true, 0, 0}, // the first line of a kind is written
		{time.Second, "a", false, 0, 0},
		{2 * time.Second, "b", true, 0, 0}, // kinds are limited apart
		{30 * time.Second, "a", false, 0, 0},
		{time.Minute - time.Nanosecond, "a", false, 0, 0},
		{time.Minute, "a", true, 3, time.Minute}, // one per interval, with how many were held back
		{time.Minute + time.Second, "a", false, 0, 0},
		{119 * time.Second, "b", true, 0, 117 * time.Second}, // nothing held back since
		{125 * time.Second, "a", true, 1, 65 * time.Second},
		{124 * time.Second, "a", false, 0, 0}, // a clock stepping back holds lines back
		{10 * time.Minute, "a", true, 1, 475 * time.Second},
	} {
		now = t0.Add(tt.at)
		ok, held, since := l.allow(tt.kind)
		if ok != tt.ok || held != tt.held || since != tt.sinceLast {
			t.Errorf("allow(%q) at +%v = (%v, %d, %v), want (%v, %d, %v)", tt.kind, tt.at, ok, held, since, tt.ok, tt.held, tt.sinceLast)
		}
	}
}

// logRecord is one captured log line.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logCapture is a slog handler that keeps every record at Info and above
// (what a device writes by default) and passes it on to next.
type logCapture struct {
	next slog.Handler
	// attrs are the With attributes of this handler.
	attrs []slog.Attr

	mu   *sync.Mutex
	recs *[]logRecord // guarded by mu
}

// captureLogs returns a logger whose Info and higher records are kept
// (read them with records) and also written to the test's log.
func captureLogs(t *testing.T) (*slog.Logger, *logCapture) {
	c := &logCapture{next: testLogger(t).Handler(), mu: &sync.Mutex{}, recs: &[]logRecord{}}
	return slog.New(c), c
}

func (c *logCapture) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || c.next.Enabled(ctx, l)
}

func (c *logCapture) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
		for _, a := range c.attrs {
			rec.attrs[a.Key] = a.Value.String()
		}
		r.Attrs(func(a slog.Attr) bool {
			rec.attrs[a.Key] = a.Value.String()
			return true
		})
		c.mu.Lock()
		*c.recs = append(*c.recs, rec)
		c.mu.Unlock()
	}
	if c.next.Enabled(ctx, r.Level) {
		return c.next.Handle(ctx, r)
	}
	return nil
}

func (c *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	d := *c
	d.next = c.next.WithAttrs(as)
	d.attrs = append(slices.Clip(c.attrs), as...)
	return &d
}

func (c *logCapture) WithGroup(name string) slog.Handler {
	d := *c
	d.next = c.next.WithGroup(name)
	return &d
}

// records returns the captured records with message msg ("" for all).
func (c *logCapture) records(msg string) []logRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []logRecord
	for _, r := range *c.recs {
		if msg == "" || r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// TestAgentFloodIsCountedNotLogged floods an agent over the real broker
// with malformed payloads and with chunks that do not match the signed
// manifest: the counters count every one, the agent keeps serving, and
// its log holds a bounded number of lines (the first of each kind, then at
// most one per logEvery).
func TestAgentFloodIsCountedNotLogged(t *testing.T) {
	art1, art2 := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	log, logs := captureLogs(t)
	opts.Logger = log
	start := time.Now()
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", art1, art1.ONNX, nil, nil)))
	waitServing(t, a, "fraud", "1.0.0")

	// A v2 download held open (no chunk is served), so the agent listens
	// on its chunk topic. It has enough chunks that the flood of bad ones
	// stays under the count at which the agent gives the download attempt
	// up, and each bad chunk has its own index (the same chunk refused
	// twice from one source ends the attempt too).
	model := onnxbuild.Pad(art2.ONNX, 160*transfer.DefaultChunkSize)
	h.mu.Lock()
	h.serveOnly = func(uint32) bool { return false }
	h.mu.Unlock()
	m2 := h.publishModel("fraud", "2.0.0", art2, model, nil, nil)
	h.desire("dev-1", assign(m2))
	require.Eventually(t, func() bool {
		for _, f := range h.fetchesFor("dev-1") {
			if f.Version == "2.0.0" {
				return true
			}
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "the agent never fetched 2.0.0")

	garbage := []byte{0xff, 0xff, 0xff, 0x0f, 0x01} // not protobuf
	badChunk := func(idx int) []byte {
		b, err := proto.Marshal(&efpb.Chunk{Name: "fraud", Version: "2.0.0", Index: uint32(idx), Data: []byte("not the chunk the manifest signed")})
		require.NoError(t, err)
		return b
	}
	const rounds, perRound = 6, 25 // per kind; the broker's queue to one client holds far more
	dropped0, refused0 := a.Dropped(), a.Refused()
	for r := 1; r <= rounds; r++ {
		for i := range perRound {
			require.NoError(t, h.broker.Publish(h.scheme.Chunks("fraud", "2.0.0"), garbage, false, 1))
			require.NoError(t, h.broker.Publish(h.scheme.Desired("dev-1"), garbage, false, 1))
			require.NoError(t, h.broker.Publish(h.scheme.Chunks("fraud", "2.0.0"), badChunk((r-1)*perRound+i), false, 1))
		}
		// In rounds, each counted before the next: the agent's inbound
		// queue is bounded, and a message it never read is not the
		// agent's to count.
		wantDropped, wantRefused := dropped0+uint64(2*r*perRound), refused0+uint64(r*perRound)
		require.Eventually(t, func() bool { return a.Dropped() >= wantDropped && a.Refused() >= wantRefused },
			30*time.Second, 10*time.Millisecond, "round %d: dropped %d, want %d; refused %d, want %d", r, a.Dropped(), wantDropped, a.Refused(), wantRefused)
		assert.Equal(t, wantDropped, a.Dropped(), "every malformed payload counted once")
		assert.Equal(t, wantRefused, a.Refused(), "every bad chunk counted once")
	}
	_, version := score(t, a, sampleRows(t, 1))
	assert.Equal(t, "1.0.0", version, "the agent serves on")
	st := a.Status()
	require.Len(t, st, 1)
	assert.Equal(t, "2.0.0", st[0].Target, "the download goes on: %d bad chunks are not enough to give it up", rounds*perRound)

	// Three kinds (malformed chunk, malformed desired state, refused
	// chunk): each logs its first line, then at most one per logEvery.
	bound := 3 * (1 + int(time.Since(start)/logEvery) + 1)
	dropLines := logs.records("malformed payload dropped")
	chunkLines := logs.records("chunk refused")
	assert.NotEmpty(t, dropLines, "the first malformed payload is logged")
	assert.NotEmpty(t, chunkLines, "the first refused chunk is logged")
	assert.LessOrEqual(t, len(dropLines)+len(chunkLines), bound,
		"%d payloads dropped and %d chunks refused make %d + %d lines", 2*rounds*perRound, rounds*perRound, len(dropLines), len(chunkLines))
	assert.Less(t, len(logs.records("")), 100, "the whole log stays short")
}
