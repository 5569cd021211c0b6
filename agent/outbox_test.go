package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/store"
)

func openTestOutbox(t *testing.T, dir string, maxN int, maxBytes int64) (*outbox, func()) {
	t.Helper()
	db, err := store.Open(store.Options{Dir: filepath.Join(dir, "state")})
	require.NoError(t, err)
	o, err := openOutbox(db.Namespace("agent").Namespace("outbox"), maxN, maxBytes, testLogger(t))
	require.NoError(t, err)
	return o, func() { _ = db.Close() }
}

// sink collects sent payloads and fails while down is set.
type sink struct {
	mu   sync.Mutex
	down bool
	got  []string
}

func (s *sink) send(_ context.Context, b []byte) error {
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

func TestOutboxStoresAndForwardsInOrderAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	o, closeDB := openTestOutbox(t, dir, 100, 1<<20)
	s := &sink{down: true}
	for seq := uint64(1); seq <= 5; seq++ {
		require.NoError(t, o.push(seq, fmt.Appendf(nil, "r%d", seq)))
	}
	o.flush(context.Background(), s.send)
	assert.Empty(t, s.received())
	assert.Equal(t, 5, o.Len())
	closeDB()

	// Restart on the same directory: nothing was lost.
	o, closeDB = openTestOutbox(t, dir, 100, 1<<20)
	defer closeDB()
	require.Equal(t, 5, o.Len())
	require.NoError(t, o.push(6, []byte("r6")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx, 10*time.Millisecond, s.send) }()
	s.mu.Lock()
	s.down = false
	s.mu.Unlock()
	require.Eventually(t, func() bool { return len(s.received()) == 6 }, 5*time.Second, 5*time.Millisecond)
	cancel()
	<-done
	assert.Equal(t, []string{"r1", "r2", "r3", "r4", "r5", "r6"}, s.received())
	assert.Zero(t, o.Len())
	assert.Zero(t, o.Dropped())
}

func TestOutboxDropsOldestWhenFullAndCounts(t *testing.T) {
	dir := t.TempDir()
	o, closeDB := openTestOutbox(t, dir, 3, 1<<20)
	for seq := uint64(1); seq <= 5; seq++ {
		require.NoError(t, o.push(seq, fmt.Appendf(nil, "r%d", seq)))
	}
	assert.EqualValues(t, 2, o.Dropped())
	closeDB()
	o, closeDB = openTestOutbox(t, dir, 3, 1<<20)
	defer closeDB()
	assert.EqualValues(t, 2, o.Dropped(), "the loss count survives a restart")
	s := &sink{}
	o.flush(context.Background(), s.send)
	assert.Equal(t, []string{"r3", "r4", "r5"}, s.received())

}

func TestOutboxByteBound(t *testing.T) {
	o, closeDB := openTestOutbox(t, t.TempDir(), 100, 25)
	defer closeDB()
	// 10-byte reports, 25 bytes allowed: two kept.
	for seq := uint64(1); seq <= 4; seq++ {
		require.NoError(t, o.push(seq, []byte("0123456789")))
	}
	assert.Equal(t, 2, o.Len())
	assert.EqualValues(t, 2, o.Dropped())
}
