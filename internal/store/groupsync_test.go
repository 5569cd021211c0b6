package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every caller returns only after a sync that started after its call has
// finished, and callers that arrive while one runs share the next.
func TestSyncGroupCoversEveryCallerWithFewerSyncs(t *testing.T) {
	g := newSyncGroup()
	var (
		starts   atomic.Uint64 // runs started
		finished atomic.Uint64 // highest start number of a finished run
	)
	run := func() error {
		n := starts.Add(1)
		time.Sleep(20 * time.Millisecond)
		for {
			f := finished.Load()
			if n <= f || finished.CompareAndSwap(f, n) {
				return nil
			}
		}
	}
	const callers = 64
	var wg sync.WaitGroup
	covered := make([]bool, callers)
	for i := range callers {
		wg.Go(func() {
			before := starts.Load() // runs started before this call
			require.NoError(t, g.do(run))
			covered[i] = finished.Load() > before
		})
	}
	wg.Wait()
	for i, ok := range covered {
		assert.True(t, ok, "caller %d returned before a sync that started after its call had finished", i)
	}
	// 64 callers arriving within a 20 ms sync: a handful of runs, not 64.
	assert.Less(t, starts.Load(), uint64(callers/4), "concurrent callers were not grouped")
	assert.GreaterOrEqual(t, starts.Load(), uint64(1))
}

// A failed sync is reported to every caller it was to cover.
func TestSyncGroupReportsTheFailure(t *testing.T) {
	g := newSyncGroup()
	boom := errors.New("disk gone")
	release := make(chan struct{})
	var starts atomic.Int32
	run := func() error {
		if starts.Add(1) == 1 {
			<-release // the first run holds while the others queue behind it
			return nil
		}
		return boom
	}
	first := make(chan error, 1)
	go func() { first <- g.do(run) }()
	require.Eventually(t, func() bool { return starts.Load() == 1 }, 5*time.Second, time.Millisecond)
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- g.do(run) }()
	}
	time.Sleep(20 * time.Millisecond) // let them queue (if not, they run the failing sync themselves: same result)
	close(release)
	require.NoError(t, <-first)
	for range 8 {
		assert.ErrorIs(t, <-errs, boom)
	}
}

// Sync on a real store groups concurrent callers and each caller's write
// is in the store afterwards.
func TestConcurrentSetSyncOnDisk(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), GCInterval: -1})
	require.NoError(t, err)
	defer db.Close()
	var wg sync.WaitGroup
	const writers, writes = 32, 20
	for i := range writers {
		kv := db.Namespace(fmt.Sprintf("agent-%d", i))
		wg.Go(func() {
			for j := range writes {
				assert.NoError(t, kv.SetSync(fmt.Sprintf("k%d", j), []byte{byte(j)}))
			}
		})
	}
	wg.Wait()
	db.syncs.mu.Lock()
	runs := db.syncs.started
	db.syncs.mu.Unlock()
	assert.Less(t, runs, uint64(writers*writes), "every SetSync ran its own sync")
	for i := range writers {
		v, err := db.Namespace(fmt.Sprintf("agent-%d", i)).Get(fmt.Sprintf("k%d", writes-1))
		require.NoError(t, err)
		assert.Equal(t, []byte{writes - 1}, v)
	}
}
