package fleet

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
)

func openTestRegistry(t *testing.T, dir string) (*Registry, *store.DB) {
	t.Helper()
	db, err := store.Open(store.Options{Dir: filepath.Join(dir, "db")})
	require.NoError(t, err)
	r, err := OpenRegistry(db.Namespace("fleet"), nil)
	require.NoError(t, err)
	return r, db
}

// TestRegistryStoresTheNewestUpdate: updates of one device from many
// goroutines are written outside the registry's lock; what is on disk
// afterwards is the state the last update left, not an older encoding
// that lost the race to the store.
func TestRegistryStoresTheNewestUpdate(t *testing.T) {
	dir := t.TempDir()
	r, db := openTestRegistry(t, dir)
	_, err := r.register("dev-1", map[string]string{"site": "a"})
	require.NoError(t, err)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				_, err := r.update("dev-1", func(d *api.Device, _ time.Time) bool {
					d.Reported = map[string]*api.ModelStatus{"fraud": {ActiveVersion: fmt.Sprintf("%d.%d.0", g, i)}}
					return true
				})
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	want, ok := r.Get("dev-1")
	require.True(t, ok)
	require.NoError(t, db.Close())

	r2, db2 := openTestRegistry(t, dir)
	t.Cleanup(func() { _ = db2.Close() })
	got, ok := r2.Get("dev-1")
	require.True(t, ok)
	assert.Equal(t, want.Reported["fraud"].ActiveVersion, got.Reported["fraud"].ActiveVersion,
		"the stored device is the last update's")
}

// TestRegistryLookupsDoNotWaitForTheStore: while one device's write to the
// store is in flight (its persist lock held, as a slow disk would hold
// it), lookups and other devices' updates go on: the ingest and the broker's
// password checks must not queue behind one slow write.
func TestRegistryLookupsDoNotWaitForTheStore(t *testing.T) {
	r, db := openTestRegistry(t, t.TempDir())
	t.Cleanup(func() { _ = db.Close() })
	for _, id := range []string{"dev-a", "dev-b"} {
		_, err := r.register(id, nil)
		require.NoError(t, err)
	}
	r.mu.RLock()
	a := r.devices["dev-a"]
	r.mu.RUnlock()

	a.persistMu.Lock() // dev-a's write "in flight"
	stalled := make(chan error, 1)
	go func() {
		_, err := r.update("dev-a", func(d *api.Device, _ time.Time) bool { d.Online = true; return true })
		stalled <- err
	}()
	// dev-a's update has applied in memory and waits for the store only.
	require.Eventually(t, func() bool { d, ok := r.Get("dev-a"); return ok && d.Online }, time.Minute, 5*time.Millisecond)

	done := make(chan error, 1)
	go func() {
		assert.True(t, r.Exists("dev-b"))
		assert.Len(t, r.List(nil), 2)
		_, err := r.update("dev-b", func(d *api.Device, _ time.Time) bool { d.Online = true; return true })
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("lookups and another device's update waited for dev-a's write")
	}
	select {
	case <-stalled:
		t.Fatal("dev-a's update returned before its write")
	default:
	}
	a.persistMu.Unlock()
	require.NoError(t, <-stalled)
}
