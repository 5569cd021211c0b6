//go:build !unix

package store

import "log/slog"

// dropEmptyMemtables does nothing where the directory lock cannot be taken
// the way badger takes it (see memtable_unix.go).
func dropEmptyMemtables(string, *slog.Logger) {}
