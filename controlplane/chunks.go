package controlplane

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// chunkKey names a model version.
type chunkKey struct{ name, version string }

// chunkQueue holds the chunks devices asked for and not yet published. A
// chunk that is already queued is not queued twice: however many agents
// ask for it while it waits, one publish on the version's chunk topic
// serves them all. The worker serves versions round-robin, one chunk at a
// time, so one large download does not starve another.
type chunkQueue struct {
	wake chan struct{} // capacity 1: "there may be work"
	// window is how long a version's first request waits for more before
	// its chunks go out: agents that start a download together (a deploy
	// to many devices) are then served by one publish of each chunk
	// instead of one per trickle of requests.
	window time.Duration

	// mu guards pending and ring.
	mu      sync.Mutex
	pending map[chunkKey]*pendingChunks
	ring    []chunkKey // versions with queued chunks, in service order
}

type pendingChunks struct {
	queued map[uint32]bool
	order  []uint32  // FIFO of queued indexes
	ready  time.Time // not published before this
}

func newChunkQueue(window time.Duration) *chunkQueue {
	return &chunkQueue{wake: make(chan struct{}, 1), window: window, pending: map[chunkKey]*pendingChunks{}}
}

// enqueue queues indexes (all already validated) and reports how many
// were new; the rest coalesced with queued requests.
func (q *chunkQueue) enqueue(k chunkKey, indexes []uint32, now time.Time) int {
	q.mu.Lock()
	p := q.pending[k]
	if p == nil {
		p = &pendingChunks{queued: map[uint32]bool{}, ready: now.Add(q.window)}
		q.pending[k] = p
		q.ring = append(q.ring, k)
	}
	added := 0
	for _, i := range indexes {
		if !p.queued[i] {
			p.queued[i] = true
			p.order = append(p.order, i)
			added++
		}
	}
	if len(p.order) == 0 { // nothing asked for: do not keep an empty entry
		delete(q.pending, k)
		q.ring = q.ring[:len(q.ring)-1]
	}
	q.mu.Unlock()
	if added > 0 {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return added
}

// next dequeues the next chunk to publish: the first version in service
// order whose collection window has passed. With none ready it returns how
// long until one is (0 when nothing is queued). A chunk asked for again
// after it was dequeued is queued anew: its publish may already be past
// that asker.
func (q *chunkQueue) next(now time.Time) (chunkKey, uint32, bool, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	at := -1
	var wait time.Duration
	for i, k := range q.ring {
		d := q.pending[k].ready.Sub(now)
		if d <= 0 {
			at = i
			break
		}
		if wait == 0 || d < wait {
			wait = d
		}
	}
	if at < 0 {
		return chunkKey{}, 0, false, wait
	}
	k := q.ring[at]
	q.ring = slices.Delete(q.ring, at, at+1)
	p := q.pending[k]
	idx := p.order[0]
	p.order = p.order[1:]
	delete(p.queued, idx)
	if len(p.order) == 0 {
		delete(q.pending, k)
	} else {
		q.ring = append(q.ring, k)
	}
	return k, idx, true, 0
}

// queued is the number of chunks waiting (for tests and metrics).
func (q *chunkQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, p := range q.pending {
		n += len(p.order)
	}
	return n
}

// runChunks is the one worker that publishes queued chunks until ctx ends.
func (s *Server) runChunks(ctx context.Context) {
	for {
		k, idx, ok, wait := s.chunks.next(s.clock())
		if !ok {
			var later <-chan time.Time
			var timer *time.Timer
			if wait > 0 {
				timer = time.NewTimer(wait)
				later = timer.C
			}
			select {
			case <-ctx.Done():
			case <-s.chunks.wake:
			case <-later:
			}
			if timer != nil {
				timer.Stop()
			}
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		s.publishChunk(ctx, k, idx)
	}
}

func (s *Server) publishChunk(ctx context.Context, k chunkKey, idx uint32) {
	rec := s.models.get(k.name, k.version)
	if rec == nil {
		return // validated at enqueue; versions are never deleted
	}
	model, err := s.modelBytes(rec)
	if err != nil {
		s.log.Error("read model for chunk publish failed", "model", k.name, "version", k.version, "err", err)
		return
	}
	data, err := transfer.ChunkData(model, rec.ChunkSize, idx)
	if err != nil {
		s.log.Error("chunk data failed", "model", k.name, "version", k.version, "index", idx, "err", err)
		return
	}
	payload, err := proto.Marshal(&efpb.Chunk{Name: k.name, Version: k.version, Index: idx, Data: data})
	if err != nil {
		s.log.Error("encode chunk failed", "model", k.name, "version", k.version, "index", idx, "err", err)
		return
	}
	if err := s.bus.Publish(ctx, s.scheme.Chunks(k.name, k.version), payload, false); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("publish chunk failed", "model", k.name, "version", k.version, "index", idx, "err", err)
		}
		return
	}
	s.metrics.chunks.Inc()
	s.metrics.chunkBytes.Add(float64(len(data)))
}
