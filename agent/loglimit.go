package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logEvery is how often at most a rate-limited kind of log line is written
// after the first one. Devices log to small flash and slow links: a flood
// of bad payloads must not become a flood of lines. The counters
// (Dropped, Refused) count every one.
const logEvery = time.Minute

// Kinds of rate-limited log lines, besides "drop/<topic kind>" (see
// Agent.drop). The set is fixed in the code, so the limiter's map stays
// this small.
const (
	logKindChunkRefused = "chunk-refused"
	logKindRefused      = "refused"
	logKindNotPersisted = "not-persisted"
)

// logLimiter decides which lines of a kind are written: the first one,
// then at most one per interval, which carries how many were held back
// since the previous one written. Safe for concurrent use.
type logLimiter struct {
	every time.Duration
	now   func() time.Time // elapsed time, not the agent's wall clock

	mu    sync.Mutex
	kinds map[string]*logKind // guarded by mu
}

// logKind is the limiter's record of one kind.
type logKind struct {
	last time.Time // when the last line was written
	held uint64    // lines held back since
}

func newLogLimiter(every time.Duration, now func() time.Time) *logLimiter {
	return &logLimiter{every: every, now: now, kinds: map[string]*logKind{}}
}

// allow reports whether a line of kind is written now and, if so, how many
// lines of kind were held back since the previous one written, and how
// long ago that was (0 for the first line of a kind).
func (l *logLimiter) allow(kind string) (ok bool, held uint64, since time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	k := l.kinds[kind]
	if k == nil {
		l.kinds[kind] = &logKind{last: now}
		return true, 0, 0
	}
	since = now.Sub(k.last)
	if since < l.every {
		k.held++
		return false, 0, 0
	}
	held = k.held
	k.last, k.held = now, 0
	return true, held, since
}

// logLimited writes msg at level if the limiter lets a line of kind
// through; after held-back lines it adds "suppressed" (how many) and
// "since" (how long ago the previous line of kind was written): "N more
// since". A held-back line goes to the debug level instead, so nothing is
// lost for whoever asked for debug logs.
func (a *Agent) logLimited(level slog.Level, kind, msg string, args ...any) {
	ok, held, since := a.logLimit.allow(kind)
	if !ok {
		a.log.Debug(msg, args...)
		return
	}
	if held > 0 {
		args = append(args, "suppressed", held, "since", since.Round(time.Second))
	}
	a.log.Log(context.Background(), level, msg, args...)
}
