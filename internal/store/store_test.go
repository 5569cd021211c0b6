package store

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openTest opens a device-profile DB in a fresh temp dir, closed at cleanup.
func openTest(t testing.TB, adjust func(*Options)) *DB {
	t.Helper()
	opts := Options{Dir: t.TempDir(), GCInterval: -1}
	if adjust != nil {
		adjust(&opts)
	}
	db, err := Open(opts)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, db.Close()) })
	return db
}

// scanAll returns every key/value of kv under prefix, in scan order.
func scanAll(t *testing.T, kv *KV, prefix string) (keys []string, vals map[string]string) {
	t.Helper()
	vals = map[string]string{}
	require.NoError(t, kv.Scan(prefix, func(k string, v []byte) error {
		keys = append(keys, k)
		vals[k] = string(v)
		return nil
	}))
	return keys, vals
}

func TestOpenOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"no dir", Options{}, "Dir is required"},
		{"dir and in-memory", Options{Dir: "x", InMemory: true}, "Dir must be empty"},
		{"unknown profile", Options{InMemory: true, Profile: 7}, "unknown profile 7"},
		{"device in memory", Options{InMemory: true}, ""},
		{"server in memory", Options{InMemory: true, Profile: ProfileServer}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := Open(tt.opts)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			kv := db.Namespace("t")
			require.NoError(t, kv.Set("k", []byte("v")))
			got, err := kv.Get("k")
			require.NoError(t, err)
			assert.Equal(t, "v", string(got))
			require.NoError(t, db.Close())
		})
	}
}

func TestServerProfileOnDisk(t *testing.T) {
	db := openTest(t, func(o *Options) { o.Profile = ProfileServer })
	kv := db.Namespace("cp")
	require.NoError(t, kv.SetSync("rollout/1", []byte("stage-2")))
	got, err := kv.Get("rollout/1")
	require.NoError(t, err)
	assert.Equal(t, "stage-2", string(got))
}

func TestInMemoryLargeValue(t *testing.T) {
	// In memory everything lives in the LSM; a value well above the on-disk
	// value threshold must still be accepted.
	db := openTest(t, func(o *Options) { o.Dir = ""; o.InMemory = true })
	kv := db.Namespace("m")
	big := make([]byte, 100<<10)
	require.NoError(t, kv.Set("big", big))
	got, err := kv.Get("big")
	require.NoError(t, err)
	assert.Len(t, got, len(big))
}

func TestGetSetDelete(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("agent/d1")

	_, err := kv.Get("missing")
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), `"missing"`)

	require.NoError(t, kv.Set("k", []byte("v1")))
	require.NoError(t, kv.Set("k", []byte("v2")))
	got, err := kv.Get("k")
	require.NoError(t, err)
	assert.Equal(t, "v2", string(got))

	// A value above the device value threshold goes to the value log.
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte(i)
	}
	require.NoError(t, kv.SetSync("big", big))
	got, err = kv.Get("big")
	require.NoError(t, err)
	assert.Equal(t, big, got)

	require.NoError(t, kv.Delete("k"))
	_, err = kv.Get("k")
	require.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, kv.Delete("never-existed"))
}

func TestEmptyKeyRejected(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("a")
	ops := map[string]func() error{
		"get":     func() error { _, err := kv.Get(""); return err },
		"set":     func() error { return kv.Set("", []byte("x")) },
		"setsync": func() error { return kv.SetSync("", []byte("x")) },
		"delete":  func() error { return kv.Delete("") },
		"getjson": func() error { var v int; return kv.GetJSON("", &v) },
		"setjson": func() error { return kv.SetJSON("", 1, false) },
	}
	for name, op := range ops {
		err := op()
		assert.ErrorIs(t, err, ErrEmptyKey, name)
	}
}

func TestNamespaceValidation(t *testing.T) {
	db := openTest(t, nil)
	for _, p := range []string{"", "/a", "a/", "a//b", "!badger!x"} {
		kv := db.Namespace(p)
		err := kv.Set("k", []byte("v"))
		assert.ErrorIs(t, err, ErrInvalidNamespace, "Namespace(%q).Set", p)
		_, err = kv.Get("k")
		assert.ErrorIs(t, err, ErrInvalidNamespace, "Namespace(%q).Get", p)
		assert.ErrorIs(t, kv.Scan("", func(string, []byte) error { return nil }), ErrInvalidNamespace)
		assert.ErrorIs(t, kv.Namespace("ok").Set("k", nil), ErrInvalidNamespace, "child of invalid")
	}
	assert.ErrorIs(t, db.Namespace("ok").Namespace("a/").Set("k", nil), ErrInvalidNamespace)
}

func TestNamespacesIsolate(t *testing.T) {
	db := openTest(t, nil)
	a1 := db.Namespace("agents").Namespace("a1")
	a10 := db.Namespace("agents/a10")
	require.NoError(t, a1.Set("gen", []byte("1")))
	require.NoError(t, a10.Set("gen", []byte("10")))
	require.NoError(t, a10.Set("only-a10", []byte("x")))
	require.NoError(t, a1.Set("z", []byte("z1")))

	got, err := a1.Get("gen")
	require.NoError(t, err)
	assert.Equal(t, "1", string(got))
	got, err = a10.Get("gen")
	require.NoError(t, err)
	assert.Equal(t, "10", string(got))
	_, err = a1.Get("only-a10")
	assert.ErrorIs(t, err, ErrNotFound)

	keys, vals := scanAll(t, a1, "")
	assert.Equal(t, []string{"gen", "z"}, keys, "a1 must not see a10's keys")
	assert.Equal(t, map[string]string{"gen": "1", "z": "z1"}, vals)

	keys, _ = scanAll(t, a10, "")
	assert.Equal(t, []string{"gen", "only-a10"}, keys)

	// The parent sees children as "sub/key"; deleting in one namespace
	// leaves the other alone.
	keys, _ = scanAll(t, db.Namespace("agents"), "")
	assert.Equal(t, []string{"a1/gen", "a1/z", "a10/gen", "a10/only-a10"}, keys)
	require.NoError(t, a1.Delete("gen"))
	got, err = a10.Get("gen")
	require.NoError(t, err)
	assert.Equal(t, "10", string(got))
	assert.Equal(t, "agents/a1", a1.Prefix())
}

func TestScanOrderPrefixAndStop(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("s")
	for _, k := range []string{"m/3", "m/1", "n/1", "m/2", "l"} {
		require.NoError(t, kv.Set(k, []byte(k)))
	}
	keys, _ := scanAll(t, kv, "m/")
	assert.Equal(t, []string{"m/1", "m/2", "m/3"}, keys)
	keys, _ = scanAll(t, kv, "")
	assert.Equal(t, []string{"l", "m/1", "m/2", "m/3", "n/1"}, keys)
	keys, _ = scanAll(t, kv, "nothing")
	assert.Empty(t, keys)

	stop := errors.New("stop")
	var seen int
	err := kv.Scan("", func(string, []byte) error {
		seen++
		if seen == 2 {
			return stop
		}
		return nil
	})
	assert.Same(t, stop, err, "the callback's error is returned as is")
	assert.Equal(t, 2, seen)
}

func TestUpdateAtomic(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("u")
	require.NoError(t, kv.Set("keep", []byte("old")))

	boom := errors.New("boom")
	err := kv.Update(func(tx *Tx) error {
		require.NoError(t, tx.Set("a", []byte("1")))
		require.NoError(t, tx.Set("keep", []byte("new")))
		require.NoError(t, tx.Delete("keep"))
		return boom
	}, true)
	require.ErrorIs(t, err, boom)

	keys, vals := scanAll(t, kv, "")
	assert.Equal(t, []string{"keep"}, keys, "a failed Update writes nothing")
	assert.Equal(t, "old", vals["keep"])

	// A successful Update commits all writes, and reads its own writes.
	require.NoError(t, kv.Update(func(tx *Tx) error {
		if err := tx.Set("a", []byte("1")); err != nil {
			return err
		}
		got, err := tx.Get("a")
		if err != nil {
			return err
		}
		if string(got) != "1" {
			return fmt.Errorf("read-your-writes: got %q", got)
		}
		if err := tx.SetJSON("b", map[string]int{"n": 2}); err != nil {
			return err
		}
		return tx.Delete("keep")
	}, true))
	keys, _ = scanAll(t, kv, "")
	assert.Equal(t, []string{"a", "b"}, keys)
}

func TestUpdateTooBig(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("big")
	val := make([]byte, 2<<10) // inline in the LSM (below the value threshold)
	err := kv.Update(func(tx *Tx) error {
		for i := range 200 { // ~400 KiB, above the device batch limit
			if err := tx.Set("k"+strconv.Itoa(i), val); err != nil {
				return err
			}
		}
		return nil
	}, false)
	require.ErrorIs(t, err, ErrTxnTooBig)
	keys, _ := scanAll(t, kv, "")
	assert.Empty(t, keys, "a rejected update writes nothing")

	// 40 such values fit in one update.
	require.NoError(t, kv.Update(func(tx *Tx) error {
		for i := range 40 {
			if err := tx.Set("k"+strconv.Itoa(i), val); err != nil {
				return err
			}
		}
		return nil
	}, false))
}

func TestUpdateConcurrentIncrements(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("c")
	require.NoError(t, kv.SetJSON("n", 0, false))

	const workers, each = 4, 50
	var mu sync.Mutex // guards ok and errs
	ok, errs := 0, []error(nil)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				err := kv.Update(func(tx *Tx) error {
					var n int
					if err := tx.GetJSON("n", &n); err != nil {
						return err
					}
					return tx.SetJSON("n", n+1)
				}, false)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					ok++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		assert.ErrorIs(t, err, ErrConflict, "only conflicts may fail")
	}
	var n int
	require.NoError(t, kv.GetJSON("n", &n))
	assert.Equal(t, ok, n, "no increment is lost or duplicated")
	assert.Greater(t, ok, workers*each/2)
}

func TestJSON(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("j")
	type state struct {
		Generation uint64 `json:"generation"`
		Model      string `json:"model"`
	}
	in := state{Generation: 7, Model: "fraud@3"}
	require.NoError(t, kv.SetJSON("desired", in, true))
	var out state
	require.NoError(t, kv.GetJSON("desired", &out))
	assert.Equal(t, in, out)

	require.ErrorIs(t, kv.GetJSON("nope", &out), ErrNotFound)
	require.NoError(t, kv.Set("garbage", []byte("{not json")))
	err := kv.GetJSON("garbage", &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `decode "garbage"`)
	err = kv.SetJSON("ch", make(chan int), false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `encode "ch"`)
}

func TestPersistenceAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	require.NoError(t, err)
	kv := db.Namespace("p")
	for i := range 200 {
		require.NoError(t, kv.Set("k"+strconv.Itoa(i), []byte(strconv.Itoa(i))))
	}
	require.NoError(t, kv.Delete("k7"))
	require.NoError(t, db.Close())

	db, err = Open(Options{Dir: dir})
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	kv = db.Namespace("p")
	got, err := kv.Get("k199")
	require.NoError(t, err)
	assert.Equal(t, "199", string(got))
	_, err = kv.Get("k7")
	assert.ErrorIs(t, err, ErrNotFound)
	n := 0
	require.NoError(t, kv.Scan("", func(string, []byte) error { n++; return nil }))
	assert.Equal(t, 199, n)
}

func TestCloseIdempotentAndUseAfterClose(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), GCInterval: time.Millisecond})
	require.NoError(t, err)
	kv := db.Namespace("x")
	require.NoError(t, kv.Set("k", []byte("v")))
	require.NoError(t, db.Close())
	require.NoError(t, db.Close())

	_, err = kv.Get("k")
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, kv.Set("k", nil), ErrClosed)
	assert.ErrorIs(t, kv.Scan("", func(string, []byte) error { return nil }), ErrClosed)
	assert.ErrorIs(t, db.Sync(), ErrClosed)
}

func TestValueLogGCLoopRunsAndStops(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), GCInterval: 2 * time.Millisecond})
	require.NoError(t, err)
	kv := db.Namespace("gc")
	big := make([]byte, 8<<10)
	for i := range 50 {
		require.NoError(t, kv.Set("k"+strconv.Itoa(i%5), big))
	}
	require.Eventually(t, func() bool { return db.gcRuns.Load() >= 3 },
		5*time.Second, time.Millisecond, "gc loop must tick")
	require.NoError(t, db.Close())
	runs := db.gcRuns.Load()
	// Close waited for the goroutine, so the counter can no longer move.
	assert.Equal(t, runs, db.gcRuns.Load())
}

func TestSize(t *testing.T) {
	db := openTest(t, nil)
	kv := db.Namespace("sz")
	big := make([]byte, 32<<10) // above the value threshold: value log
	for i := range 64 {
		require.NoError(t, kv.Set("k"+strconv.Itoa(i), big))
	}
	require.NoError(t, db.Sync())
	lsm, vlog := db.Size()
	t.Logf("size: lsm=%d vlog=%d", lsm, vlog)
	assert.Positive(t, lsm)
	assert.GreaterOrEqual(t, vlog, int64(64*32<<10), "2 MiB of values are in the value log")

	mem := openTest(t, func(o *Options) { o.Dir = ""; o.InMemory = true })
	lsm, vlog = mem.Size()
	assert.Zero(t, lsm)
	assert.Zero(t, vlog)
}

func BenchmarkSet(b *testing.B) {
	for _, p := range []Profile{ProfileDevice, ProfileServer} {
		b.Run(p.String(), func(b *testing.B) {
			db := openTest(b, func(o *Options) { o.Profile = p })
			kv := db.Namespace("bench")
			val := make([]byte, 64)
			i := 0
			for b.Loop() {
				if err := kv.Set("key-"+strconv.Itoa(i%10000), val); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, p := range []Profile{ProfileDevice, ProfileServer} {
		b.Run(p.String(), func(b *testing.B) {
			db := openTest(b, func(o *Options) { o.Profile = p })
			kv := db.Namespace("bench")
			val := make([]byte, 64)
			for i := range 10000 {
				if err := kv.Set("key-"+strconv.Itoa(i), val); err != nil {
					b.Fatal(err)
				}
			}
			i := 0
			for b.Loop() {
				if _, err := kv.Get("key-" + strconv.Itoa(i%10000)); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestOpenWaitsForTheDirectoryLock: a store whose directory is still
// locked (by an instance killed a moment ago, here one still open) is
// opened once the lock is released, within LockWait; with no wait the
// error names the lock.
func TestOpenWaitsForTheDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	first, err := Open(Options{Dir: dir, GCInterval: -1})
	require.NoError(t, err)

	_, err = Open(Options{Dir: dir, GCInterval: -1, LockWait: -1})
	require.Error(t, err, "the directory is locked")
	assert.Contains(t, err.Error(), "lock")

	opened := make(chan error, 1)
	go func() {
		db, err := Open(Options{Dir: dir, GCInterval: -1, LockWait: time.Minute})
		if err == nil {
			err = db.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		t.Fatalf("opened while the other instance held the lock: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, first.Close())
	select {
	case err := <-opened:
		require.NoError(t, err, "opened once the lock was released")
	case <-time.After(30 * time.Second):
		t.Fatal("Open did not notice the released lock")
	}
}
