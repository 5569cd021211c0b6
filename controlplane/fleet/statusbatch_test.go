package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ackLog records acknowledgements and, for each, what the store held for
// the device when it was given (check).
type ackLog struct {
	mu    sync.Mutex
	acks  map[string][]uint64
	check func(dev string, seq uint64)
}

func (a *ackLog) Ack(dev string, seqs ...uint64) {
	for _, s := range seqs {
		if a.check != nil {
			a.check(dev, s)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acks[dev] = append(a.acks[dev], seqs...)
}

func (a *ackLog) of(dev string) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.acks[dev])
}

type testFleet struct {
	*Fleet
	db     *store.DB
	acks   *ackLog
	scheme topics.Scheme
	ingest *ingest.Checker
}

// newTestFleet opens a fleet on the store in dir (kept across "crashes")
// with devs registered if they are not yet.
func newTestFleet(t *testing.T, dir string, delay time.Duration, devs ...string) *testFleet {
	t.Helper()
	db, err := store.Open(store.Options{Dir: filepath.Join(dir, "db")})
	require.NoError(t, err)
	kv := db.Namespace("fleet")
	reg, err := OpenRegistry(kv, nil)
	require.NoError(t, err)
	for _, id := range devs {
		if !reg.Exists(id) {
			_, err := reg.register(id, nil)
			require.NoError(t, err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	ks, err := keys.Load(filepath.Join(dir, "keys"), time.Now(), log)
	require.NoError(t, err)
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	pr := prometheus.NewRegistry()
	tf := &testFleet{db: db, acks: &ackLog{acks: map[string][]uint64{}}, scheme: scheme, ingest: ingest.New(scheme, pr, log)}
	tf.Fleet = New(Options{KV: kv, Sync: db.Sync, Registry: reg, Keys: ks, Scheme: scheme, Ingest: tf.ingest,
		Registerer: pr, Logger: log, Acker: tf.acks, StatusBatchDelay: delay})
	return tf
}

// writes is edgefleet_device_status_writes_total.
func (tf *testFleet) writes() float64 { return float64(tf.statusWrites.Load()) }

// status delivers a status event of dev as the broker would.
func (tf *testFleet) status(t *testing.T, dev string, seq uint64, state efpb.ModelState, version string) {
	t.Helper()
	b, err := proto.Marshal(&efpb.StatusEvent{ProtocolVersion: efpb.ProtocolVersion1, DeviceId: dev, Seq: seq,
		ModelName: "fraud", ModelVersion: version, State: state, ActiveVersion: "1"})
	require.NoError(t, err)
	tf.OnStatus(tf.scheme.Status(dev), b)
}

// stored is the device as the store holds it.
func (tf *testFleet) stored(t *testing.T, dev string) api.Device {
	t.Helper()
	var d api.Device
	require.NoError(t, tf.db.Namespace("fleet").GetJSON(prefixDevices+dev, &d))
	return d
}

// TestStatusAcknowledgedOnlyOnceStored: status events are applied in memory
// at once but written in batches; each is acknowledged only after the
// transaction holding it committed (the store holds that event or a newer
// one when the ack is given), a device's events keep their order (the
// store ends with the newest), and a late older event changes nothing and
// is acknowledged only after the batch too.
func TestStatusAcknowledgedOnlyOnceStored(t *testing.T) {
	devs := []string{"dev-a", "dev-b"}
	tf := newTestFleet(t, t.TempDir(), time.Hour, devs...)
	t.Cleanup(func() { _ = tf.db.Close() })
	tf.acks.check = func(dev string, seq uint64) {
		st := tf.stored(t, dev).Reported["fraud"]
		if assert.NotNil(t, st, "%s acknowledged with nothing stored", dev) {
			assert.GreaterOrEqual(t, st.Seq, seq, "%s seq %d acknowledged before it was stored", dev, seq)
		}
	}
	states := []efpb.ModelState{efpb.ModelState_MODEL_STATE_DOWNLOADING, efpb.ModelState_MODEL_STATE_VERIFYING,
		efpb.ModelState_MODEL_STATE_STAGING, efpb.ModelState_MODEL_STATE_PENDING, efpb.ModelState_MODEL_STATE_ACTIVE}
	for i, st := range states {
		for _, d := range devs {
			tf.status(t, d, uint64(i+1), st, "2")
		}
	}
	tf.status(t, "dev-a", 3, efpb.ModelState_MODEL_STATE_FAILED, "2") // late and older: stale
	for _, d := range devs {
		got, ok := tf.Registry().Get(d)
		require.True(t, ok)
		assert.Equal(t, api.ModelActive, got.Reported["fraud"].State, "applied in memory at once")
		assert.Empty(t, tf.acks.of(d), "nothing acknowledged before the batch is written")
	}
	writes := tf.writes()
	tf.Flush()
	assert.Equal(t, writes+1, tf.writes(), "both devices' 11 events in one transaction")
	assert.Equal(t, []uint64{1, 2, 3, 4, 5, 3}, tf.acks.of("dev-a"))
	assert.Equal(t, []uint64{1, 2, 3, 4, 5}, tf.acks.of("dev-b"))
	for _, d := range devs {
		st := tf.stored(t, d).Reported["fraud"]
		require.NotNil(t, st)
		assert.Equal(t, uint64(5), st.Seq, "%s: the newest event is stored", d)
		assert.Equal(t, api.ModelActive, st.State, d)
	}
}

// TestStatusCrashBeforeTheBatchLosesNothingAcknowledged: the process dies
// with events applied in memory and not yet written. None of them was
// acknowledged, so the device still holds them and resends them to the
// restarted control plane, which stores and acknowledges them; what was
// acknowledged before the crash is on disk.
func TestStatusCrashBeforeTheBatchLosesNothingAcknowledged(t *testing.T) {
	dir := t.TempDir()
	tf := newTestFleet(t, dir, time.Hour, "dev-a")
	tf.status(t, "dev-a", 1, efpb.ModelState_MODEL_STATE_DOWNLOADING, "2")
	tf.Flush()
	require.Equal(t, []uint64{1}, tf.acks.of("dev-a"))
	tf.status(t, "dev-a", 2, efpb.ModelState_MODEL_STATE_VERIFYING, "2")
	tf.status(t, "dev-a", 3, efpb.ModelState_MODEL_STATE_ACTIVE, "2")
	assert.Equal(t, []uint64{1}, tf.acks.of("dev-a"), "2 and 3 wait for their batch")
	require.NoError(t, tf.db.Close()) // the crash: the batch is never written

	tf2 := newTestFleet(t, dir, time.Hour, "dev-a")
	t.Cleanup(func() { _ = tf2.db.Close() })
	st := tf2.stored(t, "dev-a").Reported["fraud"]
	require.NotNil(t, st, "the acknowledged event survived")
	assert.Equal(t, uint64(1), st.Seq)
	// The agent resends what was not acknowledged (1 was).
	tf2.status(t, "dev-a", 2, efpb.ModelState_MODEL_STATE_VERIFYING, "2")
	tf2.status(t, "dev-a", 3, efpb.ModelState_MODEL_STATE_ACTIVE, "2")
	tf2.Flush()
	assert.Equal(t, []uint64{2, 3}, tf2.acks.of("dev-a"))
	st = tf2.stored(t, "dev-a").Reported["fraud"]
	assert.Equal(t, uint64(3), st.Seq)
	assert.Equal(t, api.ModelActive, st.State)
}

// TestStatusNotAcknowledgedWhenTheWriteFails: a batch whose transaction
// fails is not acknowledged (the devices resend) and counted as dropped
// for the store.
func TestStatusNotAcknowledgedWhenTheWriteFails(t *testing.T) {
	tf := newTestFleet(t, t.TempDir(), time.Hour, "dev-a")
	tf.status(t, "dev-a", 1, efpb.ModelState_MODEL_STATE_DOWNLOADING, "2")
	require.NoError(t, tf.db.Close())
	tf.Flush()
	assert.Empty(t, tf.acks.of("dev-a"))
	assert.Equal(t, uint64(1), tf.ingest.Dropped(), "counted as a store drop")
}

// TestStatusBatchesAreWrittenByRun: Run writes a batch StatusBatchDelay
// after its first event, and at once when maxStatusBatch events wait
// (the delay then being far away); many devices' events share one
// transaction per maxDevicesPerWrite devices.
func TestStatusBatchesAreWrittenByRun(t *testing.T) {
	run := func(t *testing.T, tf *testFleet) {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { tf.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() })
	}
	t.Run("after the delay", func(t *testing.T) {
		tf := newTestFleet(t, t.TempDir(), 10*time.Millisecond, "dev-a")
		t.Cleanup(func() { _ = tf.db.Close() })
		run(t, tf)
		for seq := range uint64(3) {
			tf.status(t, "dev-a", seq+1, efpb.ModelState_MODEL_STATE_DOWNLOADING, "2")
			require.Eventually(t, func() bool { return len(tf.acks.of("dev-a")) == int(seq+1) }, time.Minute, time.Millisecond,
				"event %d is written after the delay", seq+1)
		}
	})
	t.Run("when full", func(t *testing.T) {
		const n = maxStatusBatch
		devs := make([]string, n)
		for i := range devs {
			devs[i] = fmt.Sprintf("dev-%04d", i)
		}
		tf := newTestFleet(t, t.TempDir(), time.Hour, devs...)
		t.Cleanup(func() { _ = tf.db.Close() })
		run(t, tf)
		for _, d := range devs {
			tf.status(t, d, 1, efpb.ModelState_MODEL_STATE_ACTIVE, "2")
		}
		require.Eventually(t, func() bool {
			for _, d := range devs {
				if len(tf.acks.of(d)) != 1 {
					return false
				}
			}
			return true
		}, time.Minute, time.Millisecond, "a full batch is written without waiting for the delay")
		assert.Equal(t, float64(n/maxDevicesPerWrite), tf.writes())
	})
}
