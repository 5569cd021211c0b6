// Package peers shares model chunks between agents at one site over a
// hashicorp/memberlist cluster: nodes gossip which chunks they hold and fetch
// missing chunks from each other. Peers are untrusted; callers verify every
// fetched chunk against the signed manifest. The agent does not use it yet.
// Imported by nothing yet.
package peers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Limits on what a node accepts from the network.
const (
	// MaxIndex is the highest chunk index an announcement can carry; chunks
	// at or beyond it are not announced (they are still fetched from the broker).
	MaxIndex = 4096
	// MaxChunkBytes bounds the data of one fetched chunk (transfer's max chunk size).
	MaxChunkBytes = 1 << 20
	// maxPending bounds concurrent outgoing Fetch calls.
	maxPending = 64
	// serveQueue bounds requests waiting to be served; more are dropped.
	serveQueue    = 32
	serveWorkers  = 2
	maxKeyLen     = 128
	maxNameLen    = 128
	maxSeenOrigin = 4096
	leaveTimeout  = time.Second
)

// Sentinel errors.
var (
	ErrClosed      = errors.New("peers: node closed")
	ErrUnknownPeer = errors.New("peers: unknown peer")
	ErrNotFound    = errors.New("peers: peer does not hold chunk")
	ErrBusy        = errors.New("peers: too many fetches in flight")
)

// ChunkProvider returns the bytes of a chunk this node holds, or false.
type ChunkProvider func(modelKey string, index uint32) ([]byte, bool)

// Options configure a Node. Zero values have the documented defaults.
type Options struct {
	Name      string   // unique member name (device id); required
	Site      string   // site; only members of the same site are joined; required
	BindAddr  string   // default 127.0.0.1
	BindPort  int      // 0 = any free port
	Join      []string // host:port of existing members; empty = start alone
	Logger    *slog.Logger
	SecretKey []byte // optional memberlist encryption key (16, 24 or 32 bytes)
	// ChunkProvider serves Fetch requests from peers; nil serves nothing.
	ChunkProvider ChunkProvider
}

// Stats are counters of a Node.
type Stats struct {
	Malformed  uint64 // undecodable or out-of-bounds messages dropped
	ForeignMsg uint64 // messages from another site dropped
	Relayed    uint64 // announcements relayed on
	Served     uint64 // chunks served to peers
	Dropped    uint64 // requests dropped because the serve queue was full
	Unanswered uint64 // requests from a sender that is not (yet) a member
}

// holding is what one peer announced for one model.
type holding struct {
	bits []byte // bitmap of held indexes
	at   time.Time
}

// Node is one member of a site's chunk-sharing cluster.
type Node struct {
	opts Options
	log  *slog.Logger
	ml   *memberlist.Memberlist
	bq   *memberlist.TransmitLimitedQueue

	seq    atomic.Uint64
	nextID atomic.Uint64

	malformed, foreign, relayed, served, dropped, unanswered atomic.Uint64

	// mu guards holders, seen, pending and closed.
	mu      sync.Mutex
	holders map[string]map[string]holding // modelKey → peer → holding
	seen    map[string]uint64             // origin → highest seq seen
	pending map[uint64]chan response
	closed  bool

	serveCh   chan request
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New starts a member and joins opts.Join if given.
func New(opts Options) (*Node, error) {
	if opts.Name == "" || len(opts.Name) > maxNameLen {
		return nil, fmt.Errorf("peers new: name must be 1..%d bytes", maxNameLen)
	}
	if opts.Site == "" || len(opts.Site) > 256 {
		return nil, fmt.Errorf("peers new: site must be 1..256 bytes")
	}
	if opts.BindAddr == "" {
		opts.BindAddr = "127.0.0.1"
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	lg = lg.With("component", "peers", "site", opts.Site)
	n := &Node{
		opts:    opts,
		log:     lg,
		holders: map[string]map[string]holding{},
		seen:    map[string]uint64{},
		pending: map[uint64]chan response{},
		serveCh: make(chan request, serveQueue),
		stop:    make(chan struct{}),
	}
	// Start seq at the wall clock so a restarted node's announcements are newer.
	n.seq.Store(uint64(time.Now().UnixNano()))

	cfg := memberlist.DefaultLANConfig()
	cfg.Name = opts.Name
	cfg.BindAddr = opts.BindAddr
	cfg.BindPort = opts.BindPort
	cfg.AdvertisePort = 0
	cfg.RetransmitMult = 4
	cfg.Delegate = (*delegate)(n)
	cfg.Alive = (*delegate)(n)
	cfg.Merge = (*delegate)(n)
	cfg.Events = (*delegate)(n)
	if opts.Logger != nil {
		cfg.Logger = slog.NewLogLogger(lg.Handler(), slog.LevelDebug)
	} else {
		cfg.Logger = log.New(io.Discard, "", 0)
	}
	if len(opts.SecretKey) > 0 {
		cfg.SecretKey = opts.SecretKey
	}
	n.bq = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return n.ml.NumMembers() },
		RetransmitMult: cfg.RetransmitMult,
	}
	ml, err := memberlist.Create(cfg)
	if err != nil {
		return nil, fmt.Errorf("peers new: %w", err)
	}
	n.ml = ml
	for range serveWorkers {
		n.wg.Add(1)
		go n.serveLoop()
	}
	if len(opts.Join) > 0 {
		if err := n.Join(opts.Join); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// Addr is the host:port other members pass to Join.
func (n *Node) Addr() string {
	ln := n.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Name is the member name.
func (n *Node) Name() string { return n.opts.Name }

// Join contacts existing members; it fails if none could be reached.
func (n *Node) Join(addrs []string) error {
	if _, err := n.ml.Join(addrs); err != nil {
		return fmt.Errorf("peers join: %w", err)
	}
	return nil
}

// Members returns the names of the other live members.
func (n *Node) Members() []string {
	var out []string
	for _, m := range n.ml.Members() {
		if m.Name != n.opts.Name {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		Malformed:  n.malformed.Load(),
		ForeignMsg: n.foreign.Load(),
		Relayed:    n.relayed.Load(),
		Served:     n.served.Load(),
		Dropped:    n.dropped.Load(),
		Unanswered: n.unanswered.Load(),
	}
}

// Close leaves the cluster, shuts memberlist down and waits for the node's
// goroutines. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		for id, ch := range n.pending {
			close(ch)
			delete(n.pending, id)
		}
		n.mu.Unlock()
		if err := n.ml.Leave(leaveTimeout); err != nil {
			n.log.Debug("leave failed", "err", err)
		}
		if err := n.ml.Shutdown(); err != nil {
			n.closeErr = fmt.Errorf("peers close: %w", err)
		}
		close(n.stop)
		n.wg.Wait()
	})
	return n.closeErr
}

// Announce tells the site which chunk indexes of modelKey this node holds.
// Indexes >= MaxIndex are not announced.
func (n *Node) Announce(modelKey string, have []uint32) {
	if modelKey == "" || len(modelKey) > maxKeyLen {
		return
	}
	bits := make([]byte, 0)
	for _, i := range have {
		if i >= MaxIndex {
			continue
		}
		for int(i/8) >= len(bits) {
			bits = append(bits, 0)
		}
		bits[i/8] |= 1 << (i % 8)
	}
	m := announceMsg{Origin: n.opts.Name, Site: n.opts.Site, Seq: n.seq.Add(1), Key: modelKey, Bits: bits}
	buf, err := encode(kindAnnounce, m)
	if err != nil {
		n.log.Warn("encode announce failed", "err", err)
		return
	}
	n.mu.Lock()
	n.seen[m.Origin] = m.Seq
	n.mu.Unlock()
	n.bq.QueueBroadcast(broadcast(buf))
}

// Holders returns the peers that announced holding chunk index of modelKey,
// freshest announcement first.
func (n *Node) Holders(modelKey string, index uint32) []string {
	if index >= MaxIndex {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	type cand struct {
		name string
		at   time.Time
	}
	var cs []cand
	for name, h := range n.holders[modelKey] {
		if int(index/8) < len(h.bits) && h.bits[index/8]&(1<<(index%8)) != 0 {
			cs = append(cs, cand{name, h.at})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int { return b.at.Compare(a.at) })
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.name
	}
	return out
}

// Fetch asks peer for chunk index of modelKey. The bytes are unverified:
// the caller must check them against the signed manifest.
func (n *Node) Fetch(ctx context.Context, peer, modelKey string, index uint32) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		// Checked first: once the request is out, a fast answer and the
		// cancellation race in the select below.
		return nil, fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, err)
	}
	var target *memberlist.Node
	for _, m := range n.ml.Members() {
		if m.Name == peer && m.Name != n.opts.Name {
			target = m
			break
		}
	}
	if target == nil {
		return nil, fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, ErrUnknownPeer)
	}
	id := n.nextID.Add(1)
	ch := make(chan response, 1)
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		return nil, ErrClosed
	case len(n.pending) >= maxPending:
		n.mu.Unlock()
		return nil, fmt.Errorf("peers fetch: %w", ErrBusy)
	}
	n.pending[id] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.pending, id)
		n.mu.Unlock()
	}()

	buf, err := encode(kindRequest, request{ID: id, From: n.opts.Name, Site: n.opts.Site, Key: modelKey, Index: index})
	if err != nil {
		return nil, fmt.Errorf("peers fetch: %w", err)
	}
	if err := n.ml.SendReliable(target, buf); err != nil {
		return nil, fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, err)
	}
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, ctx.Err())
	case r, ok := <-ch:
		if !ok {
			return nil, ErrClosed
		}
		if !r.OK {
			return nil, fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, ErrNotFound)
		}
		return r.Data, nil
	}
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
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

func (n *Node) serve(req request) {
	resp := response{ID: req.ID, Site: n.opts.Site}
	if p := n.opts.ChunkProvider; p != nil {
		if data, ok := p(req.Key, req.Index); ok && len(data) <= MaxChunkBytes {
			resp.OK, resp.Data = true, data
		}
	}
	var target *memberlist.Node
	for _, m := range n.ml.Members() {
		if m.Name == req.From {
			target = m
			break
		}
	}
	if target == nil {
		// Only members get answers, so a request cannot aim chunks at an
		// arbitrary address. A peer that has just joined may not be
		// merged into this node's view yet; it times out and retries.
		n.unanswered.Add(1)
		n.log.Debug("request from a non-member left unanswered", "peer", req.From)
		return
	}
	buf, err := encode(kindResponse, resp)
	if err != nil {
		return
	}
	if err := n.ml.SendReliable(target, buf); err != nil {
		n.log.Debug("send chunk failed", "peer", req.From, "err", err)
		return
	}
	if resp.OK {
		n.served.Add(1)
	}
}

// handle processes one user message (gossip or reliable); buf is not retained.
func (n *Node) handle(buf []byte) {
	kind, payload, err := decode(buf)
	if err != nil {
		n.malformed.Add(1)
		n.log.Debug("dropped malformed message", "err", err)
		return
	}
	switch kind {
	case kindAnnounce:
		var m announceMsg
		if err := unmarshal(payload, &m); err != nil || m.Origin == "" || len(m.Origin) > maxNameLen ||
			m.Key == "" || len(m.Key) > maxKeyLen || len(m.Bits) > MaxIndex/8 {
			n.malformed.Add(1)
			return
		}
		if m.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		n.onAnnounce(m, buf)
	case kindRequest:
		var r request
		if err := unmarshal(payload, &r); err != nil || r.From == "" || len(r.Key) > maxKeyLen {
			n.malformed.Add(1)
			return
		}
		if r.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		select {
		case n.serveCh <- r:
		default:
			n.dropped.Add(1)
		}
	case kindResponse:
		var r response
		if err := unmarshal(payload, &r); err != nil || len(r.Data) > MaxChunkBytes {
			n.malformed.Add(1)
			return
		}
		if r.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		n.mu.Lock()
		ch, ok := n.pending[r.ID]
		if ok {
			delete(n.pending, r.ID)
		}
		n.mu.Unlock()
		if ok {
			ch <- r // buffered 1, sole sender after delete
		}
	default:
		n.malformed.Add(1)
	}
}

// onAnnounce records an announcement and relays it once (memberlist does not
// re-gossip user broadcasts).
func (n *Node) onAnnounce(m announceMsg, raw []byte) {
	if m.Origin == n.opts.Name {
		return
	}
	n.mu.Lock()
	if last, ok := n.seen[m.Origin]; ok && m.Seq <= last {
		n.mu.Unlock()
		return
	}
	if _, ok := n.seen[m.Origin]; !ok && len(n.seen) >= maxSeenOrigin {
		n.mu.Unlock()
		n.malformed.Add(1)
		return
	}
	n.seen[m.Origin] = m.Seq
	byPeer := n.holders[m.Key]
	if byPeer == nil {
		byPeer = map[string]holding{}
		n.holders[m.Key] = byPeer
	}
	byPeer[m.Origin] = holding{bits: m.Bits, at: time.Now()}
	n.mu.Unlock()
	n.relayed.Add(1)
	n.bq.QueueBroadcast(broadcast(slices.Clone(raw)))
}

// forget drops what a departed member announced.
func (n *Node) forget(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for key, byPeer := range n.holders {
		delete(byPeer, name)
		if len(byPeer) == 0 {
			delete(n.holders, key)
		}
	}
}

// broadcast is one queued user broadcast.
type broadcast []byte

func (b broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b broadcast) Message() []byte                       { return b }
func (b broadcast) Finished()                             {}

// delegate implements memberlist's delegate interfaces for Node.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.opts.Site) > limit {
		return nil
	}
	return []byte(d.opts.Site)
}

func (d *delegate) NotifyMsg(buf []byte) { (*Node)(d).handle(buf) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bq.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(bool) []byte                 { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

// NotifyAlive refuses members of another site.
func (d *delegate) NotifyAlive(peer *memberlist.Node) error {
	if string(peer.Meta) != d.opts.Site {
		d.foreign.Add(1)
		return fmt.Errorf("peers: member %q is of site %q, not %q", peer.Name, peer.Meta, d.opts.Site)
	}
	return nil
}

// NotifyMerge refuses to merge with a cluster containing another site.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if string(p.Meta) != d.opts.Site {
			d.foreign.Add(1)
			return fmt.Errorf("peers: member %q is of site %q, not %q", p.Name, p.Meta, d.opts.Site)
		}
	}
	return nil
}

func (d *delegate) NotifyJoin(*memberlist.Node)       {}
func (d *delegate) NotifyUpdate(*memberlist.Node)     {}
func (d *delegate) NotifyLeave(peer *memberlist.Node) { (*Node)(d).forget(peer.Name) }
