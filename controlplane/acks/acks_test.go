package acks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// bus records publishes; a publish fails while fail is set.
type bus struct {
	mu     sync.Mutex
	synced bool // Sync ran before the first publish
	sync   bool // Sync has run
	got    map[string][]*efpb.Ack
	fail   error
}

func (b *bus) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if retain {
		return errors.New("acks must not be retained")
	}
	if b.fail != nil {
		return b.fail
	}
	if len(b.got) == 0 {
		b.synced = b.sync
	}
	a, err := efpb.DecodeAck(payload)
	if err != nil {
		return err
	}
	b.got[topic] = append(b.got[topic], a)
	return nil
}

func newAcker(t *testing.T, b *bus, sync func() error) *Acker {
	t.Helper()
	a, err := New(Options{Bus: b, Sync: sync, Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)
	return a
}

func TestAckerMergesPerDeviceAfterSync(t *testing.T) {
	b := &bus{got: map[string][]*efpb.Ack{}}
	a := newAcker(t, b, func() error { b.mu.Lock(); b.sync = true; b.mu.Unlock(); return nil })
	a.Ack("d1", 3, 1, 2, 2, 7)
	a.Ack("d2", 5)
	a.Ack("d1", 4, 0)
	require.NoError(t, a.Flush(context.Background()))
	var s topics.Scheme
	assert.True(t, b.synced, "the store is synced before anything is acknowledged")
	require.Len(t, b.got[s.Ack("d1")], 1)
	d1 := b.got[s.Ack("d1")][0]
	assert.Equal(t, "d1", d1.DeviceId)
	assert.Equal(t, []string{"1-4", "7-7"}, ranges(d1))
	assert.Equal(t, []string{"5-5"}, ranges(b.got[s.Ack("d2")][0]))

	b.got = map[string][]*efpb.Ack{}
	require.NoError(t, a.Flush(context.Background()))
	assert.Empty(t, b.got, "nothing pending, nothing sent")
}

func TestAckerSplitsLargeBatches(t *testing.T) {
	b := &bus{got: map[string][]*efpb.Ack{}}
	a := newAcker(t, b, nil)
	for s := uint64(1); s <= 2*efpb.MaxAckRanges+10; s++ {
		a.Ack("d1", 2*s) // no two consecutive: one range each
	}
	require.NoError(t, a.Flush(context.Background()))
	var s topics.Scheme
	msgs := b.got[s.Ack("d1")]
	require.Len(t, msgs, 3)
	n := 0
	for _, m := range msgs {
		assert.LessOrEqual(t, len(m.Ranges), efpb.MaxAckRanges)
		n += len(m.Ranges)
	}
	assert.Equal(t, 2*efpb.MaxAckRanges+10, n)
}

func TestAckerPublishesNothingWhenTheSyncFails(t *testing.T) {
	b := &bus{got: map[string][]*efpb.Ack{}}
	a := newAcker(t, b, func() error { return errors.New("disk full") })
	a.Ack("d1", 1)
	err := a.Flush(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "disk full")
	assert.Empty(t, b.got, "what is not durable is not acknowledged: the device resends it")
}

func ranges(a *efpb.Ack) []string {
	var out []string
	for _, r := range a.Ranges {
		out = append(out, fmtRange(r))
	}
	return out
}

func fmtRange(r *efpb.SeqRange) string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// TestDefaultIntervalBatchesWithoutResends: the default interval collects
// a device's reports for a second (a rollout's status events and a fast
// reporter's telemetry share one message) and stays far below the agent's
// default ReportAckTimeout (30 s), past which the agent resends.
func TestDefaultIntervalBatchesWithoutResends(t *testing.T) {
	a := newAcker(t, &bus{got: map[string][]*efpb.Ack{}}, nil)
	assert.Equal(t, DefaultInterval, a.opts.Interval)
	assert.GreaterOrEqual(t, a.opts.Interval, time.Second)
	assert.LessOrEqual(t, 10*a.opts.Interval, 30*time.Second)
}
