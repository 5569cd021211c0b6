package store

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deviceHeapBudget bounds the heap a device-profile DB may hold with ~1000
// small keys. Measured ~1.8 MiB (server profile ~84 MiB); the bound leaves headroom.
const deviceHeapBudget = 8 << 20

// heapInUse returns HeapInuse after a full GC.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// heapOfOpenDB measures the HeapInuse growth of opening a DB and writing
// 1000 small keys, with the DB still open.
func heapOfOpenDB(t *testing.T, p Profile) int64 {
	t.Helper()
	dir := t.TempDir()
	before := heapInUse()
	db, err := Open(Options{Dir: dir, Profile: p, GCInterval: -1})
	require.NoError(t, err)
	kv := db.Namespace("agent/d1")
	val := make([]byte, 100)
	for i := range 1000 {
		require.NoError(t, kv.Set("key/"+strconv.Itoa(i), val))
	}
	require.NoError(t, db.Sync())
	_, err = kv.Get("key/500")
	require.NoError(t, err)
	delta := heapInUse() - before
	runtime.KeepAlive(db)
	require.NoError(t, db.Close())
	return delta
}

func TestDeviceProfileHeap(t *testing.T) {
	device := heapOfOpenDB(t, ProfileDevice)
	server := heapOfOpenDB(t, ProfileServer)
	t.Logf("HeapInuse growth with 1000 keys: device=%.1f MiB server=%.1f MiB",
		float64(device)/(1<<20), float64(server)/(1<<20))
	assert.Less(t, device, int64(deviceHeapBudget), "device profile heap")
	assert.Less(t, device*3, server, "device profile must be far below server defaults")
}
