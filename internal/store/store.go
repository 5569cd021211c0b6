// Package store is edgefleet's durable key-value state, a thin layer over
// badger tuned for small devices (ProfileDevice) or servers (ProfileServer),
// with prefix namespaces so many agents share one DB, atomic multi-key
// updates and explicit sync at commit points. Imported by agent,
// controlplane/..., fleet-sim/sim and fleet-sim/soak (it reads a stopped
// control plane's persisted report seqs).
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Sentinel errors for branching with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: key not found")
	// ErrEmptyKey: a key was empty.
	ErrEmptyKey = errors.New("store: key is empty")
	// ErrInvalidNamespace: a namespace prefix was empty, had an empty "/"
	// segment, or used badger's reserved "!badger!" prefix.
	ErrInvalidNamespace = errors.New("store: invalid namespace")
	// ErrClosed: the DB was closed.
	ErrClosed = errors.New("store: database is closed")
	// ErrConflict: an Update kept conflicting with concurrent updates.
	ErrConflict = errors.New("store: transaction conflict")
	// ErrTxnTooBig: one Update wrote more than badger commits at once (15%
	// of the memtable: ~150 KiB with ProfileDevice; values above 4 KiB count
	// only their key and a pointer). Split the update.
	ErrTxnTooBig = errors.New("store: transaction too big")
)

// Profile selects a badger tuning.
type Profile int

const (
	// ProfileDevice is the zero value on purpose: a forgotten Profile on a
	// device must not cost the ~90 MiB of heap badger's defaults reserve.
	// 1 MiB memtables (2 of them), no block cache, no compression, small
	// value-log files, badger's logging limited to warnings and errors.
	ProfileDevice Profile = iota
	// ProfileServer keeps badger's defaults (64 MiB memtables, Snappy) with a
	// modest 32 MiB block cache; for the control plane and fleet-sim.
	ProfileServer
)

// String returns "device" or "server".
func (p Profile) String() string {
	switch p {
	case ProfileDevice:
		return "device"
	case ProfileServer:
		return "server"
	default:
		return fmt.Sprintf("Profile(%d)", int(p))
	}
}

// Device profile sizes. The value threshold must stay at or below 15% of
// the memtable (badger's maximum batch size), or badger refuses to open.
const (
	deviceMemTableSize  = 1 << 20
	deviceValueThresh   = 4 << 10
	deviceBaseTableSize = 1 << 20
	deviceIndexCache    = 1 << 20
	deviceVlogFileSize  = 16 << 20
	serverBlockCache    = 32 << 20

	defaultGCInterval = 10 * time.Minute
	gcDiscardRatio    = 0.5
	// gcMaxRounds bounds the rewrites per GC tick so a tick never runs away.
	gcMaxRounds = 16
	// updateAttempts is how often Update runs fn when commits conflict.
	updateAttempts = 10
)

// Options configure Open. The zero value of each field is a documented default.
type Options struct {
	// Dir is the badger directory. Required unless InMemory.
	Dir string
	// InMemory keeps everything in memory (tests, simulations); Dir must be
	// empty. Values are limited to 15% of the memtable size (about 150 KiB
	// with ProfileDevice, 1 MiB with ProfileServer).
	InMemory bool
	// Profile selects the tuning; zero is ProfileDevice.
	Profile Profile
	// Logger receives the store's and badger's logs; nil discards them.
	Logger *slog.Logger
	// GCInterval is how often the value-log garbage collector runs.
	// Zero means 10 minutes; negative disables it. Ignored when InMemory.
	GCInterval time.Duration
	// LockWait is how long Open waits for the directory lock another
	// process holds (a previous instance killed a moment ago, still
	// exiting) before it fails; zero means 10 s, negative not at all.
	LockWait time.Duration
}

// defaultLockWait is Options.LockWait's default.
const defaultLockWait = 10 * time.Second

// DB is an open store. All methods are safe for concurrent use.
type DB struct {
	bdb      *badger.DB
	log      *slog.Logger
	dir      string
	inMemory bool

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	stopGC    chan struct{}  // closed by Close to stop the GC goroutine
	gcDone    sync.WaitGroup // the GC goroutine
	gcRuns    atomic.Int64   // completed GC ticks, observed by tests
	syncs     *syncGroup     // Sync's group commit
}

// Open opens (creating if needed) the store described by opts.
func Open(opts Options) (*DB, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "store")
	bopts, err := badgerOptions(opts, log)
	if err != nil {
		return nil, err
	}
	bdb, err := openWaiting(bopts, opts.LockWait, log)
	if err != nil {
		return nil, fmt.Errorf("store: open %q: %w", opts.Dir, err)
	}
	db := &DB{
		bdb:      bdb,
		log:      log,
		dir:      opts.Dir,
		inMemory: opts.InMemory,
		stopGC:   make(chan struct{}),
		syncs:    newSyncGroup(),
	}
	interval := opts.GCInterval
	if interval == 0 {
		interval = defaultGCInterval
	}
	if !opts.InMemory && interval > 0 {
		db.gcDone.Add(1)
		go db.gcLoop(interval)
	}
	log.Debug("store opened", "dir", opts.Dir, "in_memory", opts.InMemory, "profile", opts.Profile.String())
	return db, nil
}

func badgerOptions(opts Options, log *slog.Logger) (badger.Options, error) {
	switch {
	case opts.InMemory && opts.Dir != "":
		return badger.Options{}, errors.New("store: open: Dir must be empty when InMemory is set")
	case !opts.InMemory && opts.Dir == "":
		return badger.Options{}, errors.New("store: open: Dir is required unless InMemory is set")
	}
	var bo badger.Options
	switch opts.Profile {
	case ProfileDevice:
		bo = badger.DefaultOptions(opts.Dir).
			WithMemTableSize(deviceMemTableSize).
			WithNumMemtables(2).
			WithValueThreshold(deviceValueThresh).
			WithBaseTableSize(deviceBaseTableSize).
			// A zero block cache is only legal without compression and
			// encryption: badger panics otherwise.
			WithCompression(options.None).
			WithBlockCacheSize(0).
			WithIndexCacheSize(deviceIndexCache).
			WithNumLevelZeroTables(2).
			WithNumLevelZeroTablesStall(8).
			// Badger rejects exactly one compactor; two is the minimum.
			WithNumCompactors(2).
			WithNumGoroutines(2).
			WithValueLogFileSize(deviceVlogFileSize).
			WithMetricsEnabled(false).
			WithLogger(newBadgerLogger(log, slog.LevelWarn))
	case ProfileServer:
		bo = badger.DefaultOptions(opts.Dir).
			WithBlockCacheSize(serverBlockCache).
			WithLogger(newBadgerLogger(log, slog.LevelDebug))
	default:
		return badger.Options{}, fmt.Errorf("store: open: unknown profile %d (use ProfileDevice or ProfileServer)", int(opts.Profile))
	}
	// Writes reach the OS on commit (they survive a process kill); SetSync
	// and Update(..., true) add an fsync at commit points for power loss.
	bo = bo.WithSyncWrites(false)
	if opts.InMemory {
		// In memory everything lives in the LSM and badger rejects values
		// above the threshold, so raise it to the largest legal value.
		bo = bo.WithDir("").WithValueDir("").WithInMemory(true).
			WithValueThreshold(min(1<<20, bo.MemTableSize*15/100))
	}
	return bo, nil
}

// gcLoop runs value-log GC every interval until Close.
func (db *DB) gcLoop(interval time.Duration) {
	defer db.gcDone.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-db.stopGC:
			return
		case <-t.C:
		}
		rewrites := 0
		for range gcMaxRounds {
			if err := db.bdb.RunValueLogGC(gcDiscardRatio); err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					db.log.Warn("value log gc failed", "err", err)
				}
				break
			}
			rewrites++
			select {
			case <-db.stopGC:
				return
			default:
			}
		}
		if rewrites > 0 {
			db.log.Debug("value log gc", "rewrites", rewrites)
		}
		db.gcRuns.Add(1)
	}
}

// Close stops the GC goroutine, waits for it, and closes badger. It is
// idempotent; later calls return the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.closed.Store(true)
		close(db.stopGC)
		db.gcDone.Wait()
		if err := db.bdb.Close(); err != nil {
			db.closeErr = fmt.Errorf("store: close: %w", err)
		}
	})
	return db.closeErr
}

// Sync flushes the writes committed before the call to stable storage
// (fsync). Concurrent callers share one sync (syncGroup). A no-op in memory.
func (db *DB) Sync() error {
	if db.closed.Load() {
		return fmt.Errorf("store: sync: %w", ErrClosed)
	}
	if err := db.syncs.do(db.bdb.Sync); err != nil {
		return fmt.Errorf("store: sync: %w", err)
	}
	return nil
}

// Size reports the disk space of the LSM tree (.sst tables and .mem
// write-ahead logs) and of the value log (.vlog), in bytes actually allocated
// on disk where the OS reports it (badger preallocates sparse files).
// In-memory DBs report zeros.
func (db *DB) Size() (lsm, vlog int64) {
	if db.inMemory {
		return 0, 0
	}
	return dirSizes(db.dir)
}

// Namespace returns the key-value view of keys under prefix. Prefixes are
// "/"-separated paths; Namespace("a/b") is the same view as
// Namespace("a").Namespace("b"). An invalid prefix yields a KV whose every
// method returns ErrInvalidNamespace.
func (db *DB) Namespace(prefix string) *KV {
	kv := &KV{db: db}
	if err := validNamespace(prefix); err != nil {
		kv.err = err
		return kv
	}
	kv.prefix = prefix + "/"
	return kv
}

// openWaiting opens badger, retrying while another process holds the
// directory lock, for up to wait (0: defaultLockWait). A process killed
// with SIGKILL holds its lock until the kernel has closed its files; a
// supervisor that restarts it at once must not fail on that.
func openWaiting(bopts badger.Options, wait time.Duration, log *slog.Logger) (*badger.DB, error) {
	if wait == 0 {
		wait = defaultLockWait
	}
	deadline := time.Now().Add(wait)
	pause := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if !bopts.InMemory && !bopts.ReadOnly {
			dropEmptyMemtables(bopts.Dir, log)
		}
		bdb, err := badger.Open(bopts)
		if err == nil || bopts.InMemory || !isLocked(err) || time.Now().Add(pause).After(deadline) {
			return bdb, err
		}
		if attempt == 1 {
			log.Warn("the store's directory is locked by another process; waiting for it", "dir", bopts.Dir, "up_to", wait)
		}
		time.Sleep(pause)
		pause = min(2*pause, 500*time.Millisecond)
	}
}

// isLocked reports whether badger.Open failed on the directory lock.
// badger formats the flock error into its message instead of wrapping it,
// so its text is all there is (TestOpenWaitsForTheDirectoryLock pins it).
func isLocked(err error) bool {
	return strings.Contains(err.Error(), "Cannot acquire directory lock")
}
