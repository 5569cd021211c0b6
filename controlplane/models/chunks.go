package models

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// chunkKey names a model version and, for chunks a device asked for
// directly (FetchRequest.direct), that device: those go to its own chunk
// topic, where no other device receives them.
type chunkKey struct{ name, version, device string }

// chunkQueue holds the chunks devices asked for and not yet published. A
// chunk that is already queued is not queued twice: however many agents
// ask for it while it waits, one publish on the version's chunk topic
// serves them all. The worker serves versions round-robin, one chunk at a
// time, so one large download does not starve another.
type chunkQueue struct {
	// Capacity 1: "there may be work" for the worker of the versions'
	// shared topics (wake) and for the one of devices' own topics
	// (wakeDirect); see Registry.Run.
	wake, wakeDirect chan struct{}
	// A version's first request waits for more before its chunks go out:
	// agents that start a download together (a deploy to many devices)
	// are then served by one publish of each chunk instead of one per
	// trickle of requests. The round goes out once no request came for
	// window, and at the latest maxWait after the first: a deploy to
	// thousands of devices brings their requests in over a second or two,
	// and every chunk published too early is published again, to every
	// subscriber, for the devices that asked after it. A round a deploy
	// expects goes out maxWait after the last new device asked, while
	// devices keep coming, at the latest collectMax after the first.
	window, maxWait, collectMax time.Duration

	// mu guards pending, ring, expected and sent.
	mu      sync.Mutex
	pending map[chunkKey]*pendingChunks
	ring    []chunkKey // versions with queued chunks, in service order
	// expected counts the devices just told to download a version (a
	// deploy or a rollout wave): its round goes out as soon as that many
	// have asked, instead of on a quiet window that a burst of requests
	// with one gap in it would end too early.
	expected map[chunkKey]*expectation
	// sent is what the shared topic of a version recently carried, and
	// to whom (sentChunks).
	sent map[chunkKey]*sentChunks
}

// sentChunks remembers, for one version's shared topic (or one device's
// own), when each chunk was last published and when each device asked
// first, so that a device asking again for a chunk whose publish already
// went to it is not answered with another publish — which would go to
// every device still downloading the version. At 10,000 devices one
// publish takes seconds to reach them all, and devices that ask again
// while it is on its way made the control plane publish a 16-chunk model
// 100 times (docs/benchmarks.md).
//
// A device's request reached the control plane after its subscription to
// the chunk topic was in place (an agent subscribes before it asks), so
// every publish after its first request was delivered to its session. A
// topic's messages reach a subscriber in the order they were published:
// when the device says which chunk it received last
// (FetchRequest.last_received) and that chunk's publish went to it, a
// chunk published after that one is on its way, however long the round
// takes to drain (at most maxSentGrace), and one published before it was
// lost and goes out again at once. A device that says nothing (an older
// agent, or nothing received yet) is answered on the clock: a chunk
// published after its first request is held back for the grace, the
// round's length so far between minSentGrace and maxSentGrace (a broker
// that dropped the chunk on the device's full queue costs the device the
// grace). A fresh request (FetchRequest.fresh: the first since the agent
// started the download, restarted or reconnected) forgets the device's
// earlier ones: what was published before it may be lost.
type sentChunks struct {
	asked     map[string]time.Time // device → its first request (since its last fresh one)
	published map[uint32]time.Time // chunk → its last publish
	// The round being published (or the last one): its first and latest
	// publish.
	roundStart, roundLast time.Time
}

// The grace of a chunk already on its way to a device (sentChunks).
const (
	minSentGrace = 5 * time.Second
	maxSentGrace = time.Minute
)

// grace is how long a publish is taken to be on its way when the device
// does not say what it received.
func (s *sentChunks) grace() time.Duration {
	return min(max(s.roundLast.Sub(s.roundStart), minSentGrace), maxSentGrace)
}

// onItsWay removes from indexes the chunks whose last publish went to
// device (it asked before it) and is still on its way (sentChunks), given
// the chunk the device received last (index + 1, 0 for none), recording
// the device's request; it returns the rest and how many it removed.
func (s *sentChunks) onItsWay(device string, fresh bool, lastReceived uint32, indexes []uint32, now time.Time) ([]uint32, int) {
	at, known := s.asked[device]
	if fresh || !known {
		s.asked[device] = now
		return indexes, 0
	}
	// The publish the device's last chunk came from, if it came after the
	// device asked: what was published after it has not reached it yet.
	var reached time.Time
	if lastReceived > 0 {
		if pub, ok := s.published[lastReceived-1]; ok && at.Before(pub) {
			reached = pub
		}
	}
	grace := s.grace()
	kept := indexes[:0:0]
	for _, i := range indexes {
		pub, ok := s.published[i]
		var coming bool
		switch {
		case !ok || !at.Before(pub):
			// Never published to the device.
		case !reached.IsZero():
			coming = pub.After(reached) && now.Sub(pub) < maxSentGrace
		default:
			coming = now.Sub(pub) < grace
		}
		if !coming {
			kept = append(kept, i)
		}
	}
	return kept, len(indexes) - len(kept)
}

type expectation struct {
	devices int
	// until is when the expectation lapses: maxWait after it was made or
	// after the last device that asked for the first time, at the latest
	// collectMax after it was made (devices verifying thousands of
	// documents on a few cores ask over tens of seconds, and every round
	// published before the last of them is published again to every
	// device still downloading).
	until time.Time
	made  time.Time
	// direct are devices that asked for the version directly: they count
	// as having asked, or the shared round would wait for them in vain.
	direct map[string]bool
}

type pendingChunks struct {
	queued map[uint32]bool
	order  []uint32        // FIFO of queued indexes
	first  time.Time       // the round's first request
	ready  time.Time       // not published before this
	asked  map[string]bool // devices that asked in this round
	// publishing is set once the round's first chunk was taken.
	publishing bool
}

// newChunkQueue makes a queue whose rounds wait for a quiet window, at
// most maxWait (at least window) after their first request.
func newChunkQueue(window, maxWait time.Duration) *chunkQueue {
	maxWait = max(window, maxWait)
	return &chunkQueue{wake: make(chan struct{}, 1), wakeDirect: make(chan struct{}, 1), window: window, maxWait: maxWait, collectMax: collectFactor * maxWait,
		pending: map[chunkKey]*pendingChunks{}, expected: map[chunkKey]*expectation{}, sent: map[chunkKey]*sentChunks{}}
}

// collectFactor is collectMax over maxWait: with the default ChunkBatchMax
// a round a deploy expects is collected for at most 30 s.
const collectFactor = 15

// askedAgain extends e while devices it expects keep asking for the first
// time. q.mu is held.
func (q *chunkQueue) askedAgain(e *expectation, now time.Time) {
	e.until = minTime(now.Add(q.maxWait), e.made.Add(q.collectMax))
}

// expect records that devices were just told to download k: the next round
// of k waits (within maxWait) until that many devices asked.
func (q *chunkQueue) expect(k chunkKey, devices int, now time.Time) {
	if devices <= 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.expected[k]
	if e == nil || now.After(e.until) {
		e = &expectation{direct: map[string]bool{}, made: now}
		q.expected[k] = e
	}
	e.devices += devices
	q.askedAgain(e, now)
	for k, e := range q.expected { // forget lapsed ones
		if now.After(e.until) {
			delete(q.expected, k)
		}
	}
	for k, s := range q.sent {
		if q.sentLapsed(k, s, now) {
			delete(q.sent, k)
		}
	}
}

// sentLapsed says whether what k's shared topic carried protects nothing
// any more: no round of k is queued and every grace is over. q.mu is held.
func (q *chunkQueue) sentLapsed(k chunkKey, s *sentChunks, now time.Time) bool {
	return q.pending[k] == nil && now.Sub(s.roundLast) > maxSentGrace
}

// asker is the device behind a fetch request and what it said about
// itself (efpb.FetchRequest).
type asker struct {
	device string
	// fresh: the first request since it subscribed (sentChunks).
	fresh bool
	// ownTopic: it receives on its own chunk topic too (lateAsker).
	ownTopic bool
	// lastReceived: the chunk it received last, index + 1 (0: none).
	lastReceived uint32
}

// enqueued is what enqueue did with a request's chunks.
type enqueued struct {
	// added were queued anew; onItsWay were held back as on their way to
	// the device (sentChunks); the rest coalesced with queued requests.
	added, onItsWay int
	// late: the request came after its version's shared round went out,
	// and what the round had carried is queued on the device's own topic.
	late bool
	// refused: afford refused the chunks it would have queued anew;
	// nothing was queued.
	refused bool
}

// enqueue queues indexes (all already validated) of k for a. afford is
// asked, before anything is queued, whether the device may have the
// chunks that would be queued anew (what the request costs: chunks
// coalesced with queued ones or on their way cost no publish); nil
// affords all.
func (q *chunkQueue) enqueue(k chunkKey, a asker, indexes []uint32, now time.Time, afford func(n int) bool) enqueued {
	var r enqueued
	device := a.device
	q.mu.Lock()
	if k.device == "" {
		s := q.sentTo(k, now)
		indexes, r.onItsWay = s.onItsWay(device, a.fresh, a.lastReceived, indexes, now)
		if a.ownTopic && q.lateAsker(k, s, now) {
			// What the round still has queued reaches the device on the
			// shared topic; the rest goes to it alone, where what was
			// published to it after it asked is on its way as on the
			// shared topic (a throttled link takes seconds for a model).
			indexes = q.notQueued(k, indexes)
			k.device, r.late = device, true
			var held int
			indexes, held = q.sentTo(k, now).onItsWay(device, a.fresh, a.lastReceived, indexes, now)
			r.onItsWay += held
		}
	}
	queue := q.notQueued(k, indexes)
	if afford != nil && len(queue) > 0 && !afford(len(queue)) {
		q.mu.Unlock()
		r.refused = true
		return r
	}
	if k.device != "" {
		// Direct: no round to collect (nobody else receives these), but
		// the device counts for the version's shared round.
		shared := chunkKey{k.name, k.version, ""}
		if e := q.expected[shared]; e != nil && !now.After(e.until) {
			if !e.direct[device] {
				q.askedAgain(e, now)
			}
			e.direct[device] = true
		}
		if p := q.pending[shared]; p != nil && now.Before(p.ready) {
			p.ready = q.readyAt(shared, p, now)
		}
	}
	p := q.pending[k]
	collecting := p != nil && now.Before(p.ready) // a round already going out is not held up
	if p == nil {
		p = &pendingChunks{queued: map[uint32]bool{}, first: now, asked: map[string]bool{}}
		q.pending[k] = p
		q.ring = append(q.ring, k)
		collecting = true
	}
	if collecting {
		if e := q.expected[k]; e != nil && !now.After(e.until) && !p.asked[device] && !e.direct[device] {
			q.askedAgain(e, now)
		}
		p.asked[device] = true
		p.ready = q.readyAt(k, p, now)
	}
	for _, i := range queue {
		p.queued[i] = true
	}
	p.order = append(p.order, queue...)
	r.added = len(queue)
	if len(p.order) == 0 { // nothing asked for (or all on its way): do not keep an empty entry
		delete(q.pending, k)
		q.ring = q.ring[:len(q.ring)-1]
	}
	q.mu.Unlock()
	// Wake the worker for new chunks, and for a round whose time changed:
	// the last expected device asking for chunks already queued adds none
	// but makes the round due now.
	if r.added > 0 || collecting {
		// A direct request may also make the shared round due.
		wake(q.wake)
		if k.device != "" {
			wake(q.wakeDirect)
		}
	}
	return r
}

// notQueued is indexes without those k has queued, each once: what a
// request queues anew. q.mu is held.
func (q *chunkQueue) notQueued(k chunkKey, indexes []uint32) []uint32 {
	p := q.pending[k]
	out := make([]uint32, 0, len(indexes))
	seen := make(map[uint32]bool, len(indexes))
	for _, i := range indexes {
		if !seen[i] && (p == nil || !p.queued[i]) {
			seen[i] = true
			out = append(out, i)
		}
	}
	return out
}

// sentTo is what k's topic recently carried, made anew when none is
// recorded or it protects nothing any more. q.mu is held.
func (q *chunkQueue) sentTo(k chunkKey, now time.Time) *sentChunks {
	s := q.sent[k]
	if s == nil || q.sentLapsed(k, s, now) {
		s = &sentChunks{asked: map[string]time.Time{}, published: map[uint32]time.Time{}}
		q.sent[k] = s
	}
	return s
}

// lateAsker says whether a request for k's chunks comes after k's last
// shared round went out and belongs to no new round: no round of k is
// being collected, and no devices were told to download k since that
// round began (a rollout's next wave asks for a round of its own). Such a
// device, if it receives on its own topic, is sent what the round carried
// there: another round would go to every device still downloading the
// version — at 10,000 devices, some of whose requests came in after a
// pause longer than ChunkBatchMax, four more rounds of 16 chunks to
// thousands of devices that had them (docs/benchmarks.md). q.mu is held.
func (q *chunkQueue) lateAsker(k chunkKey, s *sentChunks, now time.Time) bool {
	if s.roundStart.IsZero() {
		return false // no round went out within maxSentGrace
	}
	if p := q.pending[k]; p != nil && !p.publishing {
		return false // a round to join
	}
	e := q.expected[k]
	return e == nil || now.After(e.until) || !e.made.After(s.roundStart)
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Kinds of chunks a worker takes from the queue (take).
const (
	anyChunks    = iota
	sharedChunks // of the versions' shared topics
	directChunks // of devices' own topics
)

// next dequeues the next chunk to publish: the first version in service
// order whose collection window has passed. With none ready it returns how
// long until one is (0 when nothing is queued). A chunk asked for again
// after it was dequeued is queued anew: its publish may already be past
// that asker.
func (q *chunkQueue) next(now time.Time) (chunkKey, uint32, bool, time.Duration) {
	return q.take(now, anyChunks)
}

// take is next for one kind of chunks.
func (q *chunkQueue) take(now time.Time, kind int) (chunkKey, uint32, bool, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	at := -1
	var wait time.Duration
	for i, k := range q.ring {
		if direct := k.device != ""; kind == sharedChunks && direct || kind == directChunks && !direct {
			continue
		}
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
	if s := q.sent[k]; s != nil {
		if !p.publishing {
			p.publishing, s.roundStart = true, now
		}
		s.published[idx], s.roundLast = now, now
	}
	p.order = p.order[1:]
	delete(p.queued, idx)
	if len(p.order) == 0 {
		delete(q.pending, k)
	} else {
		q.ring = append(q.ring, k)
	}
	return k, idx, true, 0
}

// readyAt is when a collecting round of k goes out, given a request now:
// with an expectation, once every expected device asked, or maxWait after
// the last new device asked (at most collectMax after the first request);
// without one, once requests paused for window (at most maxWait after the
// first).
func (q *chunkQueue) readyAt(k chunkKey, p *pendingChunks, now time.Time) time.Time {
	if q.window == 0 || k.device != "" {
		return now // batching off, or one device's own chunks
	}
	latest := p.first.Add(q.maxWait)
	if e := q.expected[k]; e != nil && !now.After(e.until) {
		asked := len(p.asked)
		for d := range e.direct {
			if !p.asked[d] {
				asked++
			}
		}
		if asked >= e.devices {
			delete(q.expected, k) // fulfilled: later requests are stragglers
			return now
		}
		return minTime(p.first.Add(q.collectMax), e.until)
	}
	return minTime(now.Add(q.window), latest)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
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

// Run publishes queued chunks until ctx ends, after it checked the
// stored model files (VerifyFiles). Two workers publish: one the chunks of
// the versions' shared topics (QoS 1), one those devices asked for on
// their own topics (QoS 0). A QoS 1 publish on the embedded broker takes
// each subscriber's session lock for a packet id, and mochi holds that
// lock while it writes to the subscriber's connection: a device behind a
// full link holds the shared worker up for as long as its link needs to
// take one packet. The members of sharing sites fetch on their own
// topics, so they no longer wait behind it: with one worker, a broker-only
// site beside sharing sites held their sources for seconds at a time, and
// the sites fell back to the broker (1.9 copies each, idle).
func (r *Registry) Run(ctx context.Context) {
	if bad := r.VerifyFiles(ctx); bad > 0 {
		r.log.Error("corrupt model files found at start", "versions", bad)
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.publishLoop(ctx, sharedChunks, r.chunks.wake) })
	wg.Go(func() { r.publishLoop(ctx, directChunks, r.chunks.wakeDirect) })
	wg.Wait()
}

// The pace of a version's shared round on the embedded broker
// (awaitBroker): mochi copies a QoS 1 publish for each subscriber and
// keeps the copy until the subscriber's PUBACK, so a round handed over
// at once holds model size × devices downloading (up to the agents'
// fetch window, 8 MiB, per device): 2.3–3.5 GiB for a 4 MiB model to
// 1,000 agents, and the control plane spent its CPU faulting that memory
// in (docs/benchmarks.md).
const (
	// roundDepth is how many messages per connected client the broker
	// may hold unacknowledged before the next shared chunk waits: 1 MiB
	// of chunks per device, far more than a socket buffer takes, so a
	// device's link stays busy, and a whole 1 MiB model's round goes out
	// unpaced (at 8, a 10,000-agent rollout of one took 59–70 s against
	// 61–62 unpaced in alternating runs: no better, maybe worse).
	roundDepth = 16
	// roundPaceMax bounds the wait for one chunk: devices whose links
	// died hold their messages until the broker gives up on them, and
	// the round must not stop for them.
	roundPaceMax  = time.Second
	roundPacePoll = 5 * time.Millisecond
)

// awaitBroker waits, where the bus says what its broker holds, until it
// holds fewer than roundDepth unacknowledged messages per connected
// client, at most roundPaceMax, and counts the wait.
func (r *Registry) awaitBroker(ctx context.Context) {
	b, ok := r.opts.Bus.(backlogger)
	if !ok {
		return
	}
	full := func() bool {
		unacked, clients := b.Backlog()
		return unacked >= roundDepth*max(clients, 1)
	}
	if !full() {
		return
	}
	start := time.Now()
	defer func() { r.metrics.paced.Add(time.Since(start).Seconds()) }()
	poll := time.NewTicker(roundPacePoll)
	defer poll.Stop()
	deadline := time.NewTimer(roundPaceMax)
	defer deadline.Stop()
	for full() {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-poll.C:
		}
	}
}

// publishLoop publishes the queued chunks of one kind until ctx ends.
// Between two publishes on the versions' shared topics it waits for the
// broker (awaitBroker); a round's first chunk, after the worker found
// nothing to publish, goes out at once.
func (r *Registry) publishLoop(ctx context.Context, kind int, wake <-chan struct{}) {
	midRound := false
	for {
		if midRound {
			r.awaitBroker(ctx)
		}
		// Real time, not the clock: batching is about network arrivals.
		k, idx, ok, wait := r.chunks.take(time.Now(), kind)
		midRound = ok && kind == sharedChunks
		if !ok {
			var later <-chan time.Time
			var timer *time.Timer
			if wait > 0 {
				timer = time.NewTimer(wait)
				later = timer.C
			}
			select {
			case <-ctx.Done():
			case <-wake:
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
		r.publishChunk(ctx, k, idx)
	}
}

func (r *Registry) publishChunk(ctx context.Context, k chunkKey, idx uint32) {
	rec := r.get(k.name, k.version)
	if rec == nil {
		return // validated at enqueue; versions are never deleted
	}
	payload, size, err := r.chunkPayload(rec, idx)
	if err != nil {
		r.log.Error("chunk publish failed", "model", k.name, "version", k.version, "index", idx, "err", err)
		return
	}
	topic := r.opts.Scheme.Chunks(k.name, k.version)
	if k.device != "" {
		topic = r.opts.Scheme.DeviceChunks(k.device)
	}
	// A device's own chunks at most once where the bus can: the device
	// asks again for what does not come, and a QoS 0 publish never waits
	// for the device's connection. A version's shared topic stays at QoS
	// 1: the broker's in-flight quota paces what it sends a slow device,
	// where QoS 0 overflowed its queue of pending writes and the
	// broker-only sites of site-sharing-200-large moved 31 copies instead
	// of 10 (docs/benchmarks.md). A device's own window (16 chunks) fits.
	publish := func() error { return r.opts.Bus.Publish(ctx, topic, payload, false) }
	if p, ok := r.opts.Bus.(atMostOncePublisher); ok && k.device != "" {
		publish = func() error { return p.PublishAtMostOnce(ctx, topic, payload) }
	}
	if err := publish(); err != nil {
		if ctx.Err() == nil {
			r.log.Warn("publish chunk failed", "model", k.name, "version", k.version, "index", idx, "err", err)
		}
		return
	}
	r.metrics.chunks.Inc()
	r.metrics.chunkBytes.Add(float64(size))
	if k.device != "" {
		r.metrics.directChunks.Inc()
	}
}

// chunkPayload is the encoded efpb.Chunk idx of rec and the size of its
// data. A bus only reads what it publishes and nothing writes to a cached
// payload, so one encoding serves every publish of the chunk (a version's
// bytes never change).
func (r *Registry) chunkPayload(rec *record, idx uint32) ([]byte, int, error) {
	key := fmt.Sprintf("%s/%s/%d", rec.Name, rec.Version, idx)
	if p := r.payloads.get(key); p != nil {
		start := uint64(idx) * uint64(rec.ChunkSize) // idx was validated at enqueue
		return p, int(min(start+uint64(rec.ChunkSize), rec.Size) - start), nil
	}
	model, err := r.modelBytes(rec)
	if err != nil {
		return nil, 0, fmt.Errorf("read model: %w", err)
	}
	data, err := transfer.ChunkData(model, rec.ChunkSize, idx)
	if err != nil {
		return nil, 0, err
	}
	payload, err := proto.Marshal(&efpb.Chunk{Name: rec.Name, Version: rec.Version, Index: idx, Data: data})
	if err != nil {
		return nil, 0, fmt.Errorf("encode chunk: %w", err)
	}
	r.payloads.put(key, payload)
	return payload, len(data), nil
}

// ExpectFetches tells the chunk queue that devices devices were just told
// to download model@version (a deploy or a rollout wave): the version's
// next round waits, within ChunkBatchMax, until that many asked.
func (r *Registry) ExpectFetches(model, version string, devices int) {
	r.chunks.expect(chunkKey{model, version, ""}, devices, time.Now())
}

// Queued is the number of chunks waiting to be published.
func (r *Registry) Queued() int { return r.chunks.queued() }

// OnFetch handles a device's fetch request (topic .../dev/{id}/fetch):
// the chunks it lists (all when none) join the version's next round, or,
// asked for directly, go to the device's own chunk topic.
func (r *Registry) OnFetch(topic string, payload []byte) {
	const kind = topics.KindFetch
	in := r.opts.Ingest
	req := &efpb.FetchRequest{}
	dev, ok := in.Decode(kind, topic, payload, req)
	if !ok {
		return
	}
	registered, assigned := r.opts.Devices.MayFetch(dev, req.Name, req.Version)
	if !registered {
		in.Drop(kind, ingest.UnknownDevice, topic, nil)
		return
	}
	if topics.ValidModelName(req.Name) != nil || topics.ValidModelVersion(req.Version) != nil {
		in.Drop(kind, ingest.Invalid, topic, fmt.Errorf("model %q version %q", req.Name, req.Version))
		return
	}
	rec := r.get(req.Name, req.Version)
	if rec == nil {
		in.Drop(kind, ingest.UnknownModel, topic, fmt.Errorf("model %s version %s does not exist", req.Name, req.Version))
		return
	}
	n := rec.ChunkCount
	if uint64(len(req.Missing)) > uint64(n) {
		in.Drop(kind, ingest.Invalid, topic, fmt.Errorf("%d indexes asked for, the model has %d chunks", len(req.Missing), n))
		return
	}
	missing := req.Missing
	if len(missing) == 0 {
		missing = make([]uint32, n)
		for i := range missing {
			missing[i] = uint32(i)
		}
	}
	for _, i := range missing {
		if i >= n {
			in.Drop(kind, ingest.Invalid, topic, fmt.Errorf("chunk index %d, the model has %d chunks", i, n))
			return
		}
	}
	if req.LastReceived > n {
		in.Drop(kind, ingest.Invalid, topic, fmt.Errorf("last chunk received %d, the model has %d chunks", req.LastReceived, n))
		return
	}
	if !assigned {
		in.Drop(kind, ingest.NotAssigned, topic, fmt.Errorf("device %s asked for %s@%s, which it was not assigned", dev, req.Name, req.Version))
		return
	}
	k := chunkKey{req.Name, req.Version, ""}
	if req.Direct {
		k.device = dev
	}
	// The budget is charged for what the request costs: the chunks it has
	// published anew.
	afford := func(queued int) bool {
		return r.fetch.allow(dev, req.Name, req.Version, uint32(queued), n, r.opts.Clock())
	}
	e := r.chunks.enqueue(k, asker{device: dev, fresh: req.Fresh, ownTopic: req.OwnTopic, lastReceived: req.LastReceived}, missing, time.Now(), afford)
	if e.refused {
		in.Drop(kind, ingest.RateLimited, topic, fmt.Errorf("device %s asked for %s@%s's chunks beyond its budget (%d times over, refilled over %s)",
			dev, req.Name, req.Version, r.opts.FetchBudget, r.opts.FetchWindow))
		return
	}
	r.metrics.onItsWay.Add(float64(e.onItsWay))
	if e.late {
		r.metrics.lateAskers.Inc()
	}
	r.log.Debug("fetch request", "device", dev, "model", req.Name, "version", req.Version, "direct", req.Direct,
		"late", e.late, "asked", len(missing), "queued", e.added, "on_its_way", e.onItsWay)
}
