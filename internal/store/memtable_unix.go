//go:build unix

package store

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// dropEmptyMemtables removes the zero-length memtable files (*.mem) a
// crash can leave in dir, so that badger opens it.
//
// badger creates a memtable's write-ahead file and then sizes it; killed
// in between (power loss, kill -9), it leaves an empty file, and the next
// badger.Open fails with "while opening memtables ... Create a new file"
// (badger issue 2207) — a device whose agent would not start again. An
// empty memtable holds no write, and badger itself deletes one it finds
// empty once sized, so removing it loses nothing. It runs only while it
// holds the directory lock badger takes (flock on the directory), so it
// never touches the files of a running instance; when the lock is taken
// it does nothing and Open waits for the lock as usual.
func dropEmptyMemtables(dir string, log *slog.Logger) {
	d, err := os.Open(dir)
	if err != nil {
		return // no directory yet: badger creates it
	}
	defer d.Close()
	if syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return
	}
	defer func() { _ = syscall.Flock(int(d.Fd()), syscall.LOCK_UN) }()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".mem") {
			continue
		}
		if info, err := e.Info(); err != nil || info.Size() != 0 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.Remove(path); err != nil {
			log.Warn("cannot remove an empty memtable file a crash left; badger will refuse to open", "file", path, "err", err)
			continue
		}
		log.Warn("removed an empty memtable file a crash left (it held no write)", "file", path)
	}
}
