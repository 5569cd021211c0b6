package peers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sync"
	"time"
)

// Defaults of DownloadOptions.
const (
	DefaultSettle        = 1500 * time.Millisecond
	DefaultPeerTimeout   = 10 * time.Second
	DefaultPeerWait      = 5 * time.Second
	DefaultStallTimeout  = 10 * time.Second
	DefaultFetchWorkers  = 8
	DefaultFanout        = 4
	DefaultMaxAttempts   = 3
	DefaultAnnounceEvery = 250 * time.Millisecond
	// reannounceEvery repeats an unchanged announcement, in case gossip
	// lost it.
	reannounceEvery = 5 * time.Second
	stepEvery       = 100 * time.Millisecond
)

// DownloadOptions configure a Download. Zero durations and counts take the
// documented defaults.
type DownloadOptions struct {
	// Key names the model (its sha256, hex); Chunks is its chunk count.
	Key    string
	Chunks uint32
	// Has reports whether the caller holds chunk index (resume: chunks on
	// disk count whatever their source).
	Has func(index uint32) bool
	// Deliver hands chunk bytes from peer from to the caller, who checks
	// them against the signed manifest and then calls Added or Rejected.
	// It may block until ctx ends; false means the bytes were not taken.
	Deliver func(ctx context.Context, index uint32, data []byte, from string) bool
	// Wake tells the caller that BrokerChunks has new chunks; it must not
	// block.
	Wake func()
	// Settle is how long a new download listens for the site's other
	// downloads before it elects the member that fetches from the broker,
	// plus half a Settle for each member ranked above it (settleFor);
	// default DefaultSettle (none when the node is alone). A member that
	// elects itself asks the broker for probationChunks only until it has
	// held the role for Settle.
	Settle time.Duration
	// PeerTimeout bounds one chunk transfer from a peer (on top of Wait);
	// default DefaultPeerTimeout.
	PeerTimeout time.Duration
	// Wait is how long a peer holds a request for a chunk it is still
	// receiving; default DefaultPeerWait.
	Wait time.Duration
	// StallTimeout is how long the member fetching from the broker may
	// announce no progress before another takes over; default
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// Workers bounds the chunks asked of peers at once; default
	// DefaultFetchWorkers. Fanout is how many members fetch a chunk from
	// one member; default DefaultFanout. MaxAttempts is how many peers may
	// fail to deliver a chunk before it is fetched from the broker;
	// default DefaultMaxAttempts.
	Workers, Fanout, MaxAttempts int
	// AnnounceEvery spaces this download's announcements; default
	// DefaultAnnounceEvery.
	AnnounceEvery time.Duration
}

// Download fetches the missing chunks of one model with the site's help.
// One member of the site's downloads of the model (the source, elected by
// rendezvous hashing and kept while it makes progress) fetches chunks that
// no member holds from the broker; the others form a tree per chunk
// (fan-out Fanout, ordered by rendezvous hashing of the chunk index) below
// the source and ask their parent, which holds the request until the chunk
// arrives. A chunk a peer fails to deliver is asked of the source, then of
// any holder, and after MaxAttempts failures it is fetched from the broker
// (BrokerChunks).
type Download struct {
	n      *Node
	o      DownloadOptions
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1
	wg     sync.WaitGroup
	start  time.Time

	// mu guards the fields below. Lock order: Download.mu before Node.mu.
	mu       sync.Mutex
	held     []bool
	have     uint32
	inflight map[uint32]string    // chunk → peer asked
	broker   map[uint32]bool      // chunks to fetch from the broker
	failed   map[uint32][]string  // peers that failed a chunk, in any way
	hard     map[uint32][]string  // of those, the ones whose failure counts (MaxAttempts)
	failedAt map[uint32]time.Time // last failure of each chunk
	attempts map[uint32]int       // failures that count towards MaxAttempts
	// progressAt is when this download last added a chunk (from any
	// source), or started.
	progressAt time.Time
	source     bool
	claimedAt  time.Time // when this member last took up fetching for the site
	leader     string
	quietSince time.Time // when the followed source first went quiet in this member's view (takeOver)
	dirty      bool
	announced  time.Time
	closed     bool
}

// StartDownload starts coordinating the download of o.Key with the site.
// The caller must Close it.
func (n *Node) StartDownload(o DownloadOptions) (*Download, error) {
	switch {
	case o.Key == "" || len(o.Key) > maxKeyLen:
		return nil, fmt.Errorf("peers download: key must be 1..%d bytes", maxKeyLen)
	case o.Chunks == 0 || o.Has == nil || o.Deliver == nil:
		return nil, errors.New("peers download: Chunks, Has and Deliver are required")
	}
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.PeerTimeout <= 0 {
		o.PeerTimeout = DefaultPeerTimeout
	}
	if o.Wait <= 0 {
		o.Wait = DefaultPeerWait
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Workers <= 0 {
		o.Workers = DefaultFetchWorkers
	}
	if o.Fanout <= 0 {
		o.Fanout = DefaultFanout
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.AnnounceEvery <= 0 {
		o.AnnounceEvery = DefaultAnnounceEvery
	}
	if o.Wake == nil {
		o.Wake = func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Download{
		n: n, o: o, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), start: time.Now(), progressAt: time.Now(),
		held: make([]bool, o.Chunks), inflight: map[uint32]string{}, broker: map[uint32]bool{},
		failed: map[uint32][]string{}, hard: map[uint32][]string{}, failedAt: map[uint32]time.Time{}, attempts: map[uint32]int{}, dirty: true,
	}
	for i := range o.Chunks {
		if o.Has(i) {
			d.held[i] = true
			d.have++
		}
	}
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		cancel()
		return nil, ErrClosed
	case n.downloads[o.Key] != nil:
		n.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("peers download %s: already downloading", short(o.Key))
	}
	n.downloads[o.Key] = d
	n.mu.Unlock()
	d.wg.Add(1)
	go d.run()
	return d, nil
}

// Added records that the caller holds chunk index now, from any source.
func (d *Download) Added(index uint32) {
	d.mu.Lock()
	if index < d.o.Chunks && !d.held[index] {
		d.held[index] = true
		d.have++
		d.dirty = true
		d.progressAt = time.Now()
	}
	delete(d.inflight, index)
	delete(d.broker, index)
	d.mu.Unlock()
	d.n.chunkArrived(d.o.Key, index)
	d.kick()
}

// Rejected records that the chunk from peer failed the caller's check: the
// chunk is asked of another member, and the peer is blocked after
// Options.BlockAfter such chunks. It reports whether the peer is blocked.
func (d *Download) Rejected(index uint32, from string) bool {
	blocked := d.n.Reject(from)
	d.mu.Lock()
	delete(d.inflight, index)
	d.attempts[index]++
	d.failed[index] = append(d.failed[index], from)
	d.hard[index] = append(d.hard[index], from)
	d.failedAt[index] = time.Now()
	d.mu.Unlock()
	d.kick()
	return blocked
}

// BrokerChunks returns the missing chunks this member is to fetch from the
// broker now, in index order: those nobody at the site holds while this
// member is the source, and those peers failed to deliver.
func (d *Download) BrokerChunks() []uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]uint32, 0, len(d.broker))
	for i := range d.broker {
		if !d.held[i] {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

// Source reports whether this member fetches from the broker for the site,
// and the member it considers the source ("" while it has not decided).
func (d *Download) Source() (self bool, leader string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.source, d.leader
}

// Close stops the download and waits for its goroutines. What this member
// holds of the model stays announced while it is complete (Hold); an
// incomplete download is withdrawn. It is idempotent.
func (d *Download) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	complete := d.have == d.o.Chunks
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	d.n.mu.Lock()
	if d.n.downloads[d.o.Key] == d {
		delete(d.n.downloads, d.o.Key)
	}
	closed := d.n.closed
	d.n.mu.Unlock()
	d.n.releaseKey(d.o.Key)
	if closed {
		return
	}
	if complete {
		d.n.Hold(d.o.Key, d.o.Chunks)
	} else {
		d.n.Release(d.o.Key)
	}
}

func (d *Download) holds(index uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return index < d.o.Chunks && d.held[index]
}

func (d *Download) kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Download) run() {
	defer d.wg.Done()
	t := time.NewTicker(stepEvery)
	defer t.Stop()
	for {
		d.step(time.Now())
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
	}
}

// peerView is what the node knows of the site for one model.
type peerView struct {
	hold    map[string]holding // alive, unblocked members that announced the model
	members []string           // alive, unblocked members
	alone   bool               // no other member
}

func (n *Node) view(key string) peerView {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := peerView{hold: map[string]holding{}, alone: len(n.members) == 0}
	for name := range n.members {
		if _, blocked := n.blocked[name]; !blocked {
			v.members = append(v.members, name)
		}
	}
	for name, h := range n.holders[key] {
		if _, alive := n.members[name]; alive {
			v.hold[name] = *h
		}
	}
	return v
}

// step elects the source, assigns chunks to the broker or to peers, and
// announces progress.
func (d *Download) step(now time.Time) {
	v := d.n.view(d.o.Key)
	me := d.n.opts.Name
	// A source that announces no progress for StallTimeout is passed
	// over; any download that announces nothing for two re-announcement
	// periods is presumed gone (memberlist notices a crash later).
	// Members waiting on a stalled source make no progress either: that
	// is no reason to pass them over.
	valid := func(h holding) bool {
		switch {
		case now.Sub(h.at) > 2*reannounceEvery:
			return false
		case h.source:
			return h.total > 0 && h.have >= h.total || now.Sub(h.progressAt) <= d.o.StallTimeout
		}
		return true
	}
	var fetchers []string // live downloads of the model
	for name, h := range v.hold {
		if h.fetching && valid(h) {
			fetchers = append(fetchers, name)
		}
	}
	slices.Sort(fetchers)
	settled := v.alone || now.Sub(d.start) >= d.settleFor(v)

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	wasSource, wasLeader := d.source, d.leader
	d.leader = d.takeOver(d.elect(v, fetchers, settled), wasLeader, now)
	d.source = d.leader == me
	if d.source && !wasSource {
		d.claimedAt = now
	}
	if d.leader != wasLeader {
		d.n.log.Debug("site download source", "key", short(d.o.Key), "source", d.leader, "was", wasLeader, "have", d.have, "fetchers", len(fetchers))
	}
	wakeCaller := false
	if !d.source && wasSource {
		// Stepped down: another source leads; chunks not asked of the
		// broker yet are left to it.
		for i := range d.broker {
			if d.attempts[i] < d.o.MaxAttempts {
				delete(d.broker, i)
			}
		}
	}
	// A member that has just taken up fetching may yet hear of another
	// that did too: it asks the broker for a few chunks only, the most a
	// second source wastes (its requests cannot be called back once they
	// cross the link), until it has held the role for Settle and every
	// download it knows of names it the source — or for probationCap.
	limit := int(d.o.Chunks)
	if d.source && !v.alone {
		held := now.Sub(d.claimedAt)
		named := true
		for _, f := range fetchers {
			named = named && v.hold[f].leader == me
		}
		if held < d.o.Settle || !named && held < probationCap*d.o.Settle {
			limit = probationChunks
		}
	}
	type task struct {
		index uint32
		peer  string
		wait  bool
	}
	var tasks []task
	for i := uint32(0); i < d.o.Chunks && len(d.inflight)+len(tasks) < d.o.Workers; i++ {
		if d.held[i] || d.broker[i] || d.inflight[i] != "" {
			continue
		}
		if d.attempts[i] >= d.o.MaxAttempts {
			d.n.log.Debug("chunk left to the broker", "key", short(d.o.Key), "index", i, "why", "attempts", "failed", d.failed[i])
			d.broker[i] = true
			wakeCaller = true
			continue
		}
		failed := d.failed[i]
		holders := holdersOf(v, d.o.Key, i, me, failed)
		if d.source || d.leader == "" {
			holder := d.holderFor(v, i, now)
			switch {
			case holder != "":
				tasks = append(tasks, task{i, holder, false})
			case d.source && len(d.broker) < limit:
				d.broker[i] = true
				wakeCaller = true
			}
			continue
		}
		peer := ""
		for _, c := range d.parents(i, fetchers) {
			if !slices.Contains(failed, c) {
				peer = c
				break
			}
		}
		if peer == "" && len(holders) > 0 {
			peer = holders[0]
		}
		if peer == "" {
			// Every member to ask failed: wait for another source (the
			// failed one stalls out) or a holder, StallTimeout. Then,
			// while the site still delivers to this download, the
			// members were slow, not gone (a starved machine): ask them
			// again. A site that delivers nothing leaves it to the broker.
			switch {
			case now.Sub(d.failedAt[i]) < d.o.StallTimeout:
			case now.Sub(d.progressAt) < d.o.StallTimeout:
				delete(d.failed, i)
			default:
				d.n.log.Debug("chunk left to the broker", "key", short(d.o.Key), "index", i, "why", "site stalled", "failed", d.failed[i])
				d.broker[i] = true
				wakeCaller = true
			}
			continue
		}
		tasks = append(tasks, task{i, peer, true})
	}
	if d.source {
		// The rest of what nobody holds goes to the broker too: the
		// caller keeps its own window of requests.
		for i := uint32(0); i < d.o.Chunks && len(d.broker) < limit; i++ {
			if !d.held[i] && !d.broker[i] && d.inflight[i] == "" && d.holderFor(v, i, now) == "" {
				d.broker[i] = true
				wakeCaller = true
			}
		}
	}
	for _, t := range tasks {
		d.inflight[t.index] = t.peer
	}
	// The site hears at once that a download starts and who fetches for
	// it (direct); progress goes by gossip.
	direct := d.announced.IsZero() || d.source != wasSource
	if d.leader != wasLeader {
		d.dirty = true // the source waits to be named (probation)
	}
	announce := direct || d.dirty && now.Sub(d.announced) >= d.o.AnnounceEvery ||
		now.Sub(d.announced) >= reannounceEvery
	var idx []uint32
	if announce {
		for i, ok := range d.held {
			if ok {
				idx = append(idx, uint32(i))
			}
		}
		d.dirty, d.announced = false, now
	}
	source, leader := d.source, d.leader
	d.mu.Unlock()

	if announce {
		d.n.announceIndexes(announceMsg{Key: d.o.Key, Total: d.o.Chunks, Fetching: true, Source: source, Leader: leader}, idx, direct)
	}
	for _, t := range tasks {
		d.wg.Add(1)
		go d.fetch(t.index, t.peer, t.wait)
	}
	if wakeCaller {
		d.o.Wake()
	}
}

// takeOver is the leader this download follows now, given the one elect
// picked: a member that followed another source and would take its place
// (the source went quiet in its view) first follows it for takeoverGrace
// more. On a starved machine it is usually the follower that heard
// nothing — its gossip and datagrams late — and every member that took
// over for a moment asked the broker for its probation chunks, which no
// one can call back: at a load average of 12, a site elected itself a
// new source 16 times in 90 s and moved 1.13 copies. A source that did
// die is replaced takeoverGrace later. d.mu is held.
func (d *Download) takeOver(elected, wasLeader string, now time.Time) string {
	me := d.n.opts.Name
	if elected != me || wasLeader == "" || wasLeader == me {
		d.quietSince = time.Time{}
		return elected
	}
	if d.quietSince.IsZero() {
		d.quietSince = now
	}
	if now.Sub(d.quietSince) < takeoverGrace {
		return wasLeader
	}
	d.quietSince = time.Time{}
	return me
}

// takeoverGrace is how long a member keeps following a source that went
// quiet in its view before it takes its place: one more re-announcement
// period, in which a live source is heard from again.
const takeoverGrace = reannounceEvery

// probationChunks is what a member that has just taken up fetching for
// its site asks of the broker at once, until it has held the role for
// Settle and the site's downloads name it, or for probationCap Settles.
// Under load, two members sometimes claimed the role a second apart (their
// downloads started seconds apart, each claim crossed the site late), and
// the one that stepped down had a full window (16 chunks) on the way.
const (
	probationChunks = 4
	probationCap    = 4
)

// maxStagger bounds how many half-Settle steps a download waits beyond
// Settle before it elects itself.
const maxStagger = 4

// settleFor is how long this download listens for the site's others
// before it may elect itself: Settle, plus half a Settle for each live
// member that ranks above it for the model (at most maxStagger). The
// site's downloads of a deployment start together, and on a busy site
// their announcements can take longer than Settle to cross: without
// the stagger each member that had heard no one elected itself, and
// each fetched a window from the broker before it stepped down. With it,
// the highest-ranked member that downloads goes first and the others
// hear it before their turn. A member that does not download only delays
// the ones below it, by at most maxStagger half-Settles.
func (d *Download) settleFor(v peerView) time.Duration {
	rank := func(name string) uint64 { return score(d.o.Key, math.MaxUint32, name) }
	mine, ahead := rank(d.n.opts.Name), 0
	for _, m := range v.members {
		if rank(m) > mine {
			ahead++
		}
	}
	return d.o.Settle + time.Duration(min(ahead, maxStagger))*d.o.Settle/2
}

// elect picks the member that fetches from the broker: a live source
// keeps its place while it makes progress (the one ranked highest if two
// claim it); with none, the highest-ranked live download once the
// download has settled. d.mu is held.
func (d *Download) elect(v peerView, fetchers []string, settled bool) string {
	me := d.n.opts.Name
	rank := func(name string) uint64 { return score(d.o.Key, math.MaxUint32, name) }
	best := ""
	for _, f := range fetchers {
		if v.hold[f].source && (best == "" || rank(f) > rank(best)) {
			best = f
		}
	}
	switch {
	case d.source && (best == "" || rank(me) > rank(best)):
		return me
	case best != "":
		return best
	case !settled:
		return ""
	}
	best = me
	for _, f := range fetchers {
		if rank(f) > rank(best) {
			best = f
		}
	}
	return best
}

// parents are the members to ask for chunk index, in order: this member's
// parent in the chunk's tree, then the source. d.mu is held.
func (d *Download) parents(index uint32, fetchers []string) []string {
	me := d.n.opts.Name
	list := []string{me}
	for _, f := range fetchers {
		if f != d.leader {
			list = append(list, f)
		}
	}
	slices.SortFunc(list, func(a, b string) int {
		sa, sb := score(d.o.Key, index, a), score(d.o.Key, index, b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return cmpStrings(a, b)
	})
	p := slices.Index(list, me)
	if lvl := p / d.o.Fanout; lvl > 0 {
		return []string{list[lvl-1], d.leader}
	}
	return []string{d.leader}
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// holdersOf are the live members holding chunk index, not in failed,
// ordered for this member by rendezvous hashing (spreading the members
// that ask across the holders).
func holdersOf(v peerView, key string, index uint32, me string, failed []string) []string {
	var out []string
	for name, h := range v.hold {
		if h.holds(index) && !slices.Contains(failed, name) {
			out = append(out, name)
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		sa, sb := score(key, index, me+"\x00"+a), score(key, index, me+"\x00"+b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return cmpStrings(a, b)
	})
	return out
}

// holderFor is the member to fetch chunk index from when the chunk is to
// come from a holder (this member is the source, or none is elected yet),
// "" for none: a holder that has not failed the chunk; else, while the
// site still delivers to this download, one that was only slow (busy, not
// there yet, no answer in time). Before, a source that took over from a
// member it had waited on in vain (slow, on a starved machine) fetched
// from the broker every chunk that member held by then, which was all of
// them once it had finished: a few chunks per hand-over, 0.01–0.14 copies
// per site in site-sharing-200-large. d.mu is held.
func (d *Download) holderFor(v peerView, index uint32, now time.Time) string {
	me := d.n.opts.Name
	if h := holdersOf(v, d.o.Key, index, me, d.failed[index]); len(h) > 0 {
		return h[0]
	}
	if now.Sub(d.progressAt) >= d.o.StallTimeout {
		return ""
	}
	if h := holdersOf(v, d.o.Key, index, me, d.hard[index]); len(h) > 0 {
		d.failed[index] = slices.Clone(d.hard[index]) // asked again: forget the slow ones
		return h[0]
	}
	return ""
}

// fetch asks peer for chunk index and hands what it gets to the caller.
func (d *Download) fetch(index uint32, peer string, wait bool) {
	defer d.wg.Done()
	var w time.Duration
	if wait {
		w = d.o.Wait
	}
	ctx, cancel := context.WithTimeout(d.ctx, w+d.o.PeerTimeout)
	data, err := d.n.Fetch(ctx, peer, d.o.Key, index, w)
	cancel()
	if err == nil && d.o.Deliver(d.ctx, index, data, peer) {
		return // Added or Rejected follows
	}
	// Waiting for a chunk that has not reached the site is no failure of
	// the peer asked; waiting for one others already hold is.
	count := err != nil && d.ctx.Err() == nil && (!errors.Is(err, ErrNotYet) || d.n.siteHolds(d.o.Key, index))
	// A peer that left (a source stopped or restarted mid-transfer) is out
	// of the site's view already: the chunk goes to the next member, and
	// the departure uses none of its attempts, or every member it had
	// asked would fetch it from the broker. Nor does a peer that was only
	// slow — busy, not there yet, no answer in time: on a starved machine
	// every member is, and counting it sent chunks to the broker for the
	// whole site (5.5 copies per site of 10 beside a test run). Only a
	// peer that says it does not hold what it announced counts (bad bytes
	// count in Rejected).
	gone := errors.Is(err, ErrPeerLeft) || errors.Is(err, ErrUnknownPeer)
	slow := !errors.Is(err, ErrNotFound)
	d.mu.Lock()
	if d.inflight[index] == peer {
		delete(d.inflight, index)
	}
	if count {
		if !gone && !slow {
			d.attempts[index]++
			d.hard[index] = append(d.hard[index], peer)
		}
		d.failed[index] = append(d.failed[index], peer)
		d.failedAt[index] = time.Now()
	}
	d.mu.Unlock()
	if count {
		d.n.log.Debug("chunk not delivered by peer", "key", short(d.o.Key), "index", index, "peer", peer, "err", err)
	}
	d.kick()
}

// siteHolds reports whether a live member announced holding chunk index.
func (n *Node) siteHolds(key string, index uint32) bool {
	v := n.view(key)
	for _, h := range v.hold {
		if h.holds(index) {
			return true
		}
	}
	return false
}

// score is the rendezvous hash of a member for a chunk (index
// math.MaxUint32 ranks the source).
func score(key string, index uint32, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], index)
	h.Write(b[:])
	h.Write([]byte(name))
	x := h.Sum64()
	// splitmix64's finaliser: FNV's low bits mix poorly.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
