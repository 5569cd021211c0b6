package models

import (
	"sync"
	"time"
)

// fetchLimit counts, per device and model version, the chunks a device
// asked for within a window; a request that would take it past budget
// times the version's chunk count is refused. Windows are fixed (they
// start at a device's first request for the version); counts of windows
// that ended are dropped as new requests come in.
type fetchLimit struct {
	budget int
	window time.Duration

	mu     sync.Mutex
	counts map[fetchKey]*fetchCount
	swept  time.Time
}

type fetchKey struct{ device, model, version string }

type fetchCount struct {
	start  time.Time
	chunks uint64
}

func newFetchLimit(budget int, window time.Duration) *fetchLimit {
	return &fetchLimit{budget: budget, window: window, counts: map[fetchKey]*fetchCount{}}
}

// allow records a request for asked chunks of a version with total
// chunks; false when it is over the budget (and then it is not counted).
func (l *fetchLimit) allow(device, model, version string, asked, total uint32, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) >= l.window {
		for k, c := range l.counts {
			if now.Sub(c.start) >= l.window {
				delete(l.counts, k)
			}
		}
		l.swept = now
	}
	k := fetchKey{device, model, version}
	c := l.counts[k]
	if c == nil || now.Sub(c.start) >= l.window {
		c = &fetchCount{start: now}
		l.counts[k] = c
	}
	if c.chunks+uint64(asked) > uint64(l.budget)*uint64(total) {
		return false
	}
	c.chunks += uint64(asked)
	return true
}
