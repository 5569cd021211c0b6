package peers

import (
	"encoding/binary"
	"sync"
	"time"
)

// sweepEvery is how often requests held for a chunk are checked for
// expiry.
const sweepEvery = 100 * time.Millisecond

// onRequest checks a request for replay and queues it for a serve worker.
// It runs on memberlist's goroutines and never blocks.
func (n *Node) onRequest(r request) {
	n.mu.Lock()
	if _, blocked := n.blocked[r.From]; blocked {
		n.mu.Unlock()
		n.unanswered.Add(1)
		return
	}
	w := n.replay[r.From]
	if w == nil {
		if len(n.replay) >= maxSeenOrigin {
			n.mu.Unlock()
			n.malformed.Add(1)
			return
		}
		w = &window{seen: map[uint64]struct{}{}}
		n.replay[r.From] = w
	}
	fresh := w.accept(r.ID)
	n.mu.Unlock()
	if !fresh {
		n.replayed.Add(1)
		return
	}
	select {
	case n.serveCh <- r:
	default:
		n.busy.Add(1)
	}
}

// serveLoop answers queued requests from peers.
func (n *Node) serveLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case req := <-n.serveCh:
			n.serve(req)
		}
	}
}

// serve answers one request: the chunk if this node holds it, else it
// holds the request until the chunk arrives (a download in progress and a
// request that may wait), else not found.
func (n *Node) serve(req request) {
	target := n.member(req.From)
	if target == nil {
		// Only members get answers, so a request cannot aim chunks at an
		// arbitrary address. A peer that has just joined may not be
		// merged into this node's view yet; it times out and retries.
		n.unanswered.Add(1)
		n.log.Debug("request from a non-member left unanswered", "peer", req.From)
		return
	}
	resp := response{ID: req.ID, Site: n.opts.Site, Result: respNotFound}
	var data []byte
	if p := n.opts.ChunkProvider; p != nil {
		if b, ok := p(req.Key, req.Index); ok && len(b) <= MaxChunkBytes {
			resp.Result, data = respOK, b
		}
	}
	if resp.Result != respOK && req.Wait > 0 && !req.expired {
		switch n.park(req) {
		case parked:
			return
		case full:
			resp.Result = respBusy
			n.busy.Add(1)
		}
	}
	if resp.Result != respOK && req.expired {
		resp.Result = respNotYet
	}
	buf, err := encode(kindResponse, resp, data)
	if err != nil {
		return
	}
	if resp.Result == respOK && !n.limit.wait(len(buf), n.stop) {
		return
	}
	if err := n.ml.SendReliable(target, buf); err != nil {
		n.log.Debug("send chunk failed", "peer", req.From, "err", err)
		return
	}
	if resp.Result == respOK {
		n.served.Add(1)
		n.servedB.Add(uint64(len(data)))
	}
}

type parkResult int

const (
	parked parkResult = iota
	full
	notDownloading
)

// park holds req until its chunk arrives (chunkArrived) or its wait ends
// (the sweeper answers not yet). Only a model being downloaded here parks.
func (n *Node) park(req request) parkResult {
	n.mu.Lock()
	d := n.downloads[req.Key]
	switch {
	case d == nil:
		n.mu.Unlock()
		return notDownloading
	case n.nwaiters >= maxWaiters:
		n.mu.Unlock()
		return full
	}
	k := waitKey{req.Key, req.Index}
	n.waiters[k] = append(n.waiters[k], waiter{req: req, until: time.Now().Add(time.Duration(req.Wait) * time.Millisecond)})
	n.nwaiters++
	n.mu.Unlock()
	// The chunk may have arrived between the provider's answer and the
	// parking: then nobody would wake the request.
	if d.holds(req.Index) {
		n.release(req.Key, req.Index, false)
	}
	return parked
}

// chunkArrived answers the requests held for chunk index of key.
func (n *Node) chunkArrived(key string, index uint32) { n.release(key, index, false) }

// release hands the requests held for (key, index) back to the serve
// workers: to be served now, or (expired) answered not yet.
func (n *Node) release(key string, index uint32, expired bool) {
	k := waitKey{key, index}
	n.mu.Lock()
	ws := n.waiters[k]
	delete(n.waiters, k)
	n.nwaiters -= len(ws)
	n.mu.Unlock()
	n.requeue(ws, expired)
}

// releaseKey hands back every request held for key (its download ended).
func (n *Node) releaseKey(key string) {
	var ws []waiter
	n.mu.Lock()
	for k, list := range n.waiters {
		if k.key == key {
			ws = append(ws, list...)
			n.nwaiters -= len(list)
			delete(n.waiters, k)
		}
	}
	n.mu.Unlock()
	n.requeue(ws, false)
}

func (n *Node) requeue(ws []waiter, expired bool) {
	if len(ws) == 0 {
		return
	}
	// Not from the caller's goroutine: it may be a serve worker (the
	// queue could be full) or the caller's update loop.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for _, w := range ws {
			w.req.expired = expired
			select {
			case n.serveCh <- w.req:
			case <-n.stop:
				return
			}
		}
	}()
}

// sweepLoop answers held requests whose wait ended, and forgets members
// that left long ago.
func (n *Node) sweepLoop() {
	defer n.wg.Done()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case now := <-t.C:
			n.purgeLeft(now.Add(-leftRetention))
			var expired []waiter
			n.mu.Lock()
			for k, list := range n.waiters {
				keep := list[:0]
				for _, w := range list {
					if now.After(w.until) {
						expired = append(expired, w)
					} else {
						keep = append(keep, w)
					}
				}
				n.nwaiters -= len(list) - len(keep)
				if len(keep) == 0 {
					delete(n.waiters, k)
				} else {
					n.waiters[k] = keep
				}
			}
			n.mu.Unlock()
			n.requeue(expired, true)
		}
	}
}

// limiter paces the bytes a node sends to peers: each send reserves its
// share of time after the previous one.
type limiter struct {
	rate float64 // bytes per second; ≤ 0 unlimited
	mu   sync.Mutex
	next time.Time // guarded by mu
}

// wait blocks until n bytes may be sent; false if stop closed meanwhile.
func (l *limiter) wait(n int, stop <-chan struct{}) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	d := time.Until(at)
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// appendFrame and nextFrame frame the announcements of a push/pull.
func appendFrame(out, msg []byte) []byte {
	out = binary.AppendUvarint(out, uint64(len(msg)))
	return append(out, msg...)
}

func nextFrame(buf []byte) (msg, rest []byte, ok bool) {
	n, w := binary.Uvarint(buf)
	if w <= 0 || n > maxMsgBytes || uint64(len(buf)-w) < n {
		return nil, nil, false
	}
	return buf[w : w+int(n)], buf[w+int(n):], true
}
