package models

import (
	"sync"
	"time"
)

// fetchLimit is, per device and model version, a bucket of chunks a
// device may have published (a request is charged the chunks it queues
// anew, see chunkQueue.enqueue): it holds budget times the version's chunk count,
// starts full, and refills at that many per window, continuously. A request
// for more chunks than the bucket holds is refused (and takes nothing).
// Over any long stretch a device gets at most budget copies per window; a
// device that spent its bucket on retries waits only until the few chunks
// it still lacks have refilled, not for a whole window to end. Full
// buckets are forgotten as new requests come in.
type fetchLimit struct {
	budget int
	window time.Duration

	mu      sync.Mutex
	buckets map[fetchKey]*fetchBucket
	swept   time.Time
}

type fetchKey struct{ device, model, version string }

type fetchBucket struct {
	chunks float64 // what it holds at last
	last   time.Time
}

func newFetchLimit(budget int, window time.Duration) *fetchLimit {
	return &fetchLimit{budget: budget, window: window, buckets: map[fetchKey]*fetchBucket{}}
}

// allow takes asked chunks of a version with total chunks from the
// device's bucket; false when the bucket holds fewer (then nothing is
// taken).
func (l *fetchLimit) allow(device, model, version string, asked, total uint32, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	capacity := float64(l.budget) * float64(total)
	refill := func(b *fetchBucket) {
		if d := now.Sub(b.last); d > 0 {
			b.chunks = min(capacity, b.chunks+capacity*d.Seconds()/l.window.Seconds())
			b.last = now
		}
	}
	if now.Sub(l.swept) >= l.window {
		for k, b := range l.buckets {
			if now.Sub(b.last) >= l.window { // refilled: as good as new
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	k := fetchKey{device, model, version}
	b := l.buckets[k]
	if b == nil {
		b = &fetchBucket{chunks: capacity, last: now}
		l.buckets[k] = b
	}
	refill(b)
	if float64(asked) > b.chunks {
		return false
	}
	b.chunks -= float64(asked)
	return true
}
