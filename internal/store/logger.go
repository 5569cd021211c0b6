package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger routes badger's printf-style logs to slog under one constant
// message, "badger", with the text in "detail". Badger's INFO maps to slog
// Debug (it is chatty on open and compaction); records below min are dropped
// before they are formatted.
type badgerLogger struct {
	log *slog.Logger
	min slog.Level
}

func newBadgerLogger(log *slog.Logger, min slog.Level) *badgerLogger {
	return &badgerLogger{log: log, min: min}
}

func (b *badgerLogger) emit(level slog.Level, format string, args []any) {
	if level < b.min || !b.log.Enabled(context.Background(), level) {
		return
	}
	b.log.Log(context.Background(), level, "badger", "detail", strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (b *badgerLogger) Errorf(format string, args ...any)   { b.emit(slog.LevelError, format, args) }
func (b *badgerLogger) Warningf(format string, args ...any) { b.emit(slog.LevelWarn, format, args) }
func (b *badgerLogger) Infof(format string, args ...any)    { b.emit(slog.LevelDebug, format, args) }
func (b *badgerLogger) Debugf(format string, args ...any)   { b.emit(slog.LevelDebug-4, format, args) }
