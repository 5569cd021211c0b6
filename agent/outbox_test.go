package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func openTestOutbox(t *testing.T, dir string, maxN int, maxBytes int64) (*outbox, func()) {
	t.Helper()
	db, err := store.Open(store.Options{Dir: filepath.Join(dir, "state")})
	require.NoError(t, err)
	o, err := openOutbox(db.Namespace("agent").Namespace("outbox"), maxN, maxBytes, time.Second, testLogger(t))
	require.NoError(t, err)
	return o, func() { _ = db.Close() }
}

// sink collects sent payloads and fails while down is set.
type sink struct {
	mu   sync.Mutex
	down bool
	got  []string
}

func (s *sink) send(_ context.Context, _ reportKind, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return errors.New("broker unreachable")
	}
	s.got = append(s.got, string(b))
	return nil
}

func (s *sink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func (s *sink) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = nil
}

func up() bool { return true }

// ackRange acknowledges first..last.
func ackRange(first, last uint64) []*efpb.SeqRange {
	return []*efpb.SeqRange{{First: first, Last: last}}
}

// pushN queues reports first..last as "r<seq>".
func pushN(t *testing.T, o *outbox, first, last uint64) {
	t.Helper()
	for seq := first; seq <= last; seq++ {
		require.NoError(t, o.push(seq, kindTelemetry, fmt.Appendf(nil, "r%d", seq)))
	}
}

func TestOutboxStoresAndForwardsInOrderAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	o, closeDB := openTestOutbox(t, dir, 100, 1<<20)
	s := &sink{down: true}
	for seq := uint64(1); seq <= 5; seq++ {
		kind := kindTelemetry
		if seq%2 == 0 {
			kind = kindStatus
		}
		require.NoError(t, o.push(seq, kind, fmt.Appendf(nil, "r%d", seq)))
	}
	o.flush(context.Background(), s.send, up)
	assert.Empty(t, s.received())
	assert.Equal(t, 5, o.Len())
	closeDB()

	// Restart on the same directory: nothing was lost, status events and
	// telemetry keep their common order.
	o, closeDB = openTestOutbox(t, dir, 100, 1<<20)
	defer closeDB()
	require.Equal(t, 5, o.Len())
	require.NoError(t, o.push(6, kindTelemetry, []byte("r6")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx, s.send, up) }()
	s.mu.Lock()
	s.down = false
	s.mu.Unlock()
	require.Eventually(t, func() bool { return len(s.received()) == 6 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 6, o.Len(), "sent reports are kept until the control plane acknowledges them")
	o.acked(ackRange(1, 6))
	cancel()
	<-done
	assert.Equal(t, []string{"r1", "r2", "r3", "r4", "r5", "r6"}, s.received())
	assert.Zero(t, o.Len())
	assert.Zero(t, o.Dropped())
}

// An empty outbox does not wake on its tick: a push wakes it, and it ticks
// (to resend what goes unacknowledged) only while reports are queued.
func TestOutboxSleepsWhileEmpty(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 1<<20)
	defer closeDB()
	o.ackTimeout = 20 * time.Millisecond // a tick every 10 ms
	o.cpAcks = true
	var looks atomic.Int64 // one per look at the queue (flush asks connected first)
	connected := func() bool { looks.Add(1); return true }
	s := &sink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx, s.send, connected) }()
	defer func() { cancel(); <-done }()

	require.Eventually(t, func() bool { return looks.Load() >= 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(300 * time.Millisecond) // 30 ticks, were it ticking
	assert.LessOrEqual(t, looks.Load(), int64(2), "the empty outbox woke on its tick")

	require.NoError(t, o.push(1, kindTelemetry, []byte("r1")))
	require.Eventually(t, func() bool { return len(s.received()) == 1 }, 5*time.Second, time.Millisecond, "a push wakes it")
	// Unacknowledged, it is resent on the tick (after ackTimeout, doubling).
	require.Eventually(t, func() bool { return len(s.received()) >= 3 }, 5*time.Second, time.Millisecond, "a queued report is resent on the tick")
	o.acked(ackRange(1, 1))
	require.Eventually(t, func() bool { return o.Len() == 0 }, 5*time.Second, time.Millisecond)
	n := looks.Load()
	time.Sleep(300 * time.Millisecond)
	assert.LessOrEqual(t, looks.Load(), n+2, "emptied again, it stopped ticking")
}

// The broker acknowledged every report, the control plane only some: the
// gap is resent after the ack timeout, with back-off, and nothing else is.
func TestOutboxResendsOnlyTheUnacknowledgedGap(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 1<<20)
	defer closeDB()
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o.now = clk.Now
	o.acked(nil) // this control plane acknowledges
	s := &sink{}
	ctx := context.Background()
	pushN(t, o, 1, 5)
	o.flush(ctx, s.send, up)
	require.Equal(t, []string{"r1", "r2", "r3", "r4", "r5"}, s.received())
	o.acked([]*efpb.SeqRange{{First: 1, Last: 2}, {First: 4, Last: 5}})
	assert.Equal(t, 1, o.Len())

	s.reset()
	clk.Add(o.ackTimeout - time.Millisecond)
	o.flush(ctx, s.send, up)
	assert.Empty(t, s.received(), "not resent before the ack timeout")
	clk.Add(time.Millisecond)
	o.flush(ctx, s.send, up)
	assert.Equal(t, []string{"r3"}, s.received(), "the gap is resent")

	s.reset()
	clk.Add(o.ackTimeout) // the second wait is twice as long
	o.flush(ctx, s.send, up)
	assert.Empty(t, s.received(), "back-off: the second resend waits 2x")
	clk.Add(o.ackTimeout)
	o.flush(ctx, s.send, up)
	assert.Equal(t, []string{"r3"}, s.received())

	o.acked(ackRange(3, 3))
	assert.Zero(t, o.Len())
	assert.Zero(t, o.Dropped())
}

func TestOutboxDropsAReportNeverAcknowledged(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 1<<20)
	defer closeDB()
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o.now = clk.Now
	o.acked(nil)
	o.maxAttempts = 3
	s := &sink{}
	pushN(t, o, 1, 1)
	for range 10 {
		o.flush(context.Background(), s.send, up)
		clk.Add(o.resendMax)
		o.acked(nil) // the control plane acknowledges others meanwhile
	}
	assert.Len(t, s.received(), 3, "sent maxAttempts times")
	assert.Zero(t, o.Len())
	assert.EqualValues(t, 1, o.Dropped(), "then dropped and counted")
}

func TestOutboxResendsOnReconnect(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 1<<20)
	defer closeDB()
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o.now = clk.Now
	o.acked(nil)
	s := &sink{}
	pushN(t, o, 1, 2)
	o.connected()
	o.flush(context.Background(), s.send, up)
	require.Len(t, s.received(), 2)
	s.reset()
	o.connected() // the acknowledgements may have been lost with the connection
	o.flush(context.Background(), s.send, up)
	assert.Equal(t, []string{"r1", "r2"}, s.received())
}

func TestOutboxBoundsReportsInFlight(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 1<<20)
	defer closeDB()
	o.acked(nil)
	o.maxInFlight, o.maxSpan = 3, 100
	s := &sink{}
	pushN(t, o, 1, 10)
	o.flush(context.Background(), s.send, up)
	assert.Equal(t, []string{"r1", "r2", "r3"}, s.received(), "at most maxInFlight wait for an acknowledgement")
	o.acked(ackRange(1, 2))
	o.flush(context.Background(), s.send, up)
	assert.Equal(t, []string{"r1", "r2", "r3", "r4", "r5"}, s.received())

	// The span: 3 is unacknowledged, so nothing 3+maxSpan or later goes.
	o.maxInFlight, o.maxSpan = 100, 5
	o.acked(ackRange(4, 5))
	o.flush(context.Background(), s.send, up)
	assert.Equal(t, []string{"r1", "r2", "r3", "r4", "r5", "r6", "r7"}, s.received())
}

// An older control plane never acknowledges: after probeWait on one
// connection with no acknowledgement at all, the outbox deletes what the
// broker accepted, and later reports on their PUBACK; an acknowledgement
// turns that off again, and is remembered across restarts.
func TestOutboxFallsBackWhenTheControlPlaneNeverAcknowledges(t *testing.T) {
	dir := t.TempDir()
	o, closeDB := openTestOutbox(t, dir, 100, 1<<20)
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o.now = clk.Now
	s := &sink{}
	ctx := context.Background()
	o.connected()
	pushN(t, o, 1, 3)
	o.flush(ctx, s.send, up)
	require.Len(t, s.received(), 3)

	clk.Add(o.probeWait - time.Millisecond)
	o.flush(ctx, s.send, up)
	assert.Equal(t, 3, o.Len(), "kept while probing")
	assert.Len(t, s.received(), 3, "and not resent while probing")

	// Disconnected: no decision.
	clk.Add(time.Hour)
	o.flush(ctx, s.send, func() bool { return false })
	assert.Equal(t, 3, o.Len(), "no decision while disconnected")
	// Reconnected: the reports go again and the wait starts over.
	o.connected()
	o.flush(ctx, s.send, up)
	assert.Len(t, s.received(), 6)
	assert.Equal(t, 3, o.Len())
	clk.Add(o.probeWait)
	o.flush(ctx, s.send, up)
	assert.Zero(t, o.Len(), "no acknowledgement for probeWait on one connection: deleted")
	pushN(t, o, 4, 4)
	o.flush(ctx, s.send, up)
	assert.Zero(t, o.Len(), "and deleted on PUBACK from now on")
	assert.Zero(t, o.Dropped())

	// A control plane that acknowledges (upgraded): kept until acknowledged.
	o.acked(nil)
	pushN(t, o, 5, 5)
	o.flush(ctx, s.send, up)
	assert.Equal(t, 1, o.Len())
	closeDB()

	o, closeDB = openTestOutbox(t, dir, 100, 1<<20)
	defer closeDB()
	assert.True(t, o.cpAcks, "that the control plane acknowledges is remembered")
	o.now = clk.Now
	o.connected()
	s.reset()
	o.flush(ctx, s.send, up)
	assert.Equal(t, []string{"r5"}, s.received())
	clk.Add(o.probeWait)
	o.flush(ctx, s.send, up)
	assert.Equal(t, 1, o.Len(), "once it acknowledged, the wait before falling back is fallbackWait")
	clk.Add(o.fallbackWait)
	o.flush(ctx, s.send, up)
	assert.Zero(t, o.Len(), "a control plane downgraded: after fallbackWait, PUBACK again")
}

func TestOutboxDropsOldestWhenFullAndCounts(t *testing.T) {
	dir := t.TempDir()
	o, closeDB := openTestOutbox(t, dir, 3, 1<<20)
	pushN(t, o, 1, 5)
	assert.EqualValues(t, 2, o.Dropped())
	closeDB()
	o, closeDB = openTestOutbox(t, dir, 3, 1<<20)
	defer closeDB()
	assert.EqualValues(t, 2, o.Dropped(), "the loss count survives a restart")
	s := &sink{}
	o.flush(context.Background(), s.send, up)
	assert.Equal(t, []string{"r3", "r4", "r5"}, s.received())
}

func TestOutboxByteBound(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 25)
	defer closeDB()
	// 10-byte reports, 25 bytes allowed: two kept.
	for seq := uint64(1); seq <= 4; seq++ {
		require.NoError(t, o.push(seq, kindTelemetry, []byte("0123456789")))
	}
	assert.Equal(t, 2, o.Len())
	assert.EqualValues(t, 2, o.Dropped())
}
