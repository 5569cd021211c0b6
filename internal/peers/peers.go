// Package peers shares model chunks between the agents of one site over a
// hashicorp/memberlist cluster: members are admitted by a credential the
// caller checks, gossip is encrypted with the site's keys, members announce
// which chunks they hold, and a Download fetches missing chunks from peers
// with one member per model fetching from the broker for the site. Peers are
// untrusted: callers verify every chunk against the signed manifest.
// Imported by agent.
package peers

import (
	"bytes"
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
	// at or beyond it are still fetched from peers and the broker, but no
	// peer is known to hold them.
	MaxIndex = 4096
	// MaxChunkBytes bounds the data of one fetched chunk (transfer's max chunk size).
	MaxChunkBytes = 1 << 20
	// MaxMetaBytes bounds a member's credential (memberlist's node meta limit).
	MaxMetaBytes = memberlist.MetaMaxSize
	// maxPending bounds concurrent outgoing requests.
	maxPending = 256
	// serveQueue bounds requests waiting for a serve worker; more are
	// answered busy.
	serveQueue = 64
	// maxWaiters bounds requests held until a chunk arrives.
	maxWaiters    = 512
	maxKeyLen     = 128
	maxNameLen    = 128
	maxSiteLen    = 256
	maxSeenOrigin = 4096
	maxWaitMillis = 60_000
	// maxLocalState bounds the announcements sent in a push/pull.
	maxLocalState = 512
	leaveTimeout  = time.Second
	// replayWindow is how far below the highest request id seen from a
	// member an id may be and still be accepted (once).
	replayWindow = 4096
)

// Defaults of Options.
const (
	DefaultServeWorkers     = 2
	DefaultServeBytesPerSec = 8 << 20
)

// Sentinel errors.
var (
	ErrClosed      = errors.New("peers: node closed")
	ErrUnknownPeer = errors.New("peers: unknown peer")
	ErrNotFound    = errors.New("peers: peer does not hold chunk")
	ErrNotYet      = errors.New("peers: peer has not received the chunk yet")
	ErrBusy        = errors.New("peers: too many requests in flight")
	ErrPeerLeft    = errors.New("peers: peer left the site")
	ErrBlocked     = errors.New("peers: peer is blocked")
	// ErrForeignSite and ErrUnknownMember are wrapped by Admit errors: a
	// member of another site, and one whose credential does not check.
	ErrForeignSite   = errors.New("member of another site")
	ErrUnknownMember = errors.New("unknown member")
)

// ChunkProvider returns the bytes of a chunk this node holds, or false.
// It is called from serve workers, concurrently.
type ChunkProvider func(modelKey string, index uint32) ([]byte, bool)

// Options configure a Node. Zero values have the documented defaults.
type Options struct {
	Name string // unique member name (device id); required
	Site string // required; messages naming another site are dropped
	// BindAddr and BindPort are where the node listens (TCP and UDP);
	// defaults 127.0.0.1 and any free port.
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what other members dial;
	// defaults the bound address (memberlist picks a private address when
	// binding 0.0.0.0) and port.
	AdvertiseAddr string
	AdvertisePort int
	Join          []string // host:port of existing members; empty = start alone
	// Keys encrypt and authenticate every message (AES-GCM, 16, 24 or 32
	// bytes each); the first encrypts, every one decrypts (a rotation in
	// progress). Required.
	Keys [][]byte
	// Meta is this member's credential, shown to every other member (at
	// most MaxMetaBytes); default []byte(Site).
	Meta []byte
	// Admit checks another member's name and Meta before it is let in; an
	// error wrapping ErrForeignSite counts as foreign, any other as
	// unknown. Default: Meta must equal Site.
	Admit func(name string, meta []byte) error
	// ChunkProvider serves requests from peers; nil serves nothing.
	ChunkProvider ChunkProvider
	// ServeWorkers bounds the chunks sent to peers at once; default
	// DefaultServeWorkers. ServeBytesPerSec bounds the bytes sent per
	// second; default DefaultServeBytesPerSec, negative unlimited.
	ServeWorkers     int
	ServeBytesPerSec int64
	// BlockAfter is how many chunks that fail their check a peer may
	// send (Download.Rejected) before it is blocked; default 3.
	BlockAfter int
	// Tune, if set, adjusts memberlist's configuration before the node
	// starts (tests shorten its probe and gossip intervals).
	Tune   func(*memberlist.Config)
	Logger *slog.Logger
}

// Stats are counters of a Node; they only grow.
type Stats struct {
	Malformed uint64 // undecodable or out-of-bounds messages dropped
	Foreign   uint64 // members and messages of another site refused
	Unknown   uint64 // members whose credential did not check, refused
	// Undecryptable are packets and streams no installed key decrypts: a
	// member of another site (another key), an outsider, or a member
	// still on a retired key.
	Undecryptable uint64
	Replayed      uint64 // requests seen before (or too old to tell) dropped
	Relayed       uint64 // announcements relayed on
	Served        uint64 // chunks sent to peers
	ServedB       uint64 // bytes of them
	Busy          uint64 // requests answered busy (serve queue or waiters full)
	Unanswered    uint64 // requests from a sender that is not (yet) a member
	Late          uint64 // responses to no pending request (late or forged)
	Fetched       uint64 // chunks received from peers (before the caller's check)
	FetchedB      uint64 // bytes of them
	Rejected      uint64 // chunks from peers that failed the caller's check
}

// holding is what one peer last announced for one model.
type holding struct {
	bits       []byte // held indexes below MaxIndex; never changed in place
	have       uint32
	total      uint32
	fetching   bool
	source     bool
	leader     string    // the member it takes for the source
	at         time.Time // when announced (received)
	progressAt time.Time // when have last grew
	raw        []byte    // the announcement, for push/pull
}

func (h *holding) holds(index uint32) bool {
	if h.total > 0 && h.have >= h.total && index < h.total {
		return true
	}
	return index < MaxIndex && int(index/8) < len(h.bits) && h.bits[index/8]&(1<<(index%8)) != 0
}

type pendingReq struct {
	peer string
	ch   chan reply // buffered 1; the sole sender removes the entry first
}

type reply struct {
	result int
	data   []byte
	err    error
}

// window is the anti-replay window of one member's request ids.
type window struct {
	max  uint64
	seen map[uint64]struct{}
}

// accept reports whether id is new, and records it.
func (w *window) accept(id uint64) bool {
	if w.max > replayWindow && id <= w.max-replayWindow {
		return false
	}
	if _, dup := w.seen[id]; dup {
		return false
	}
	w.seen[id] = struct{}{}
	if id > w.max {
		w.max = id
		if len(w.seen) > 2*replayWindow {
			for k := range w.seen {
				if w.max > replayWindow && k <= w.max-replayWindow {
					delete(w.seen, k)
				}
			}
		}
	}
	return true
}

type waiter struct {
	req   request
	until time.Time
}

type waitKey struct {
	key   string
	index uint32
}

// Node is one member of a site's chunk-sharing cluster.
type Node struct {
	opts    Options
	log     *slog.Logger
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring
	self    memberlist.Node // this member as others dial it; set in New
	bq      *memberlist.TransmitLimitedQueue
	limit   limiter

	seq     atomic.Uint64
	nextID  atomic.Uint64
	crashed atomic.Bool // set by tests: memberlist stopped without leaving

	malformed, foreign, unknown, undecryptable, replayed, relayed, served, servedB, busy,
	unanswered, late, fetched, fetchedB, rejected atomic.Uint64

	// metaMu guards meta (SetMeta replaces it while memberlist reads it).
	metaMu sync.Mutex
	meta   []byte

	// mu guards every field below; no other lock is taken while it is held
	// (memberlist calls the delegate with its own locks held: they come
	// first).
	mu sync.Mutex
	// members are the other live members, copied in the event delegate:
	// memberlist changes the nodes it hands out in place, under its lock.
	members   map[string]memberlist.Node
	holders   map[string]map[string]*holding // modelKey → peer → holding
	own       map[string][]byte              // modelKey → this node's latest announcement
	seen      map[string]uint64              // origin → highest announcement seq seen
	left      map[string]time.Time           // departed member → when (its holdings are kept: forgetMember)
	pending   map[uint64]*pendingReq
	replay    map[string]*window // member → its request ids
	waiters   map[waitKey][]waiter
	nwaiters  int
	downloads map[string]*Download
	strikes   map[string]int
	blocked   map[string]time.Time
	closed    bool

	serveCh   chan request
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New starts a member and joins opts.Join if given.
func New(opts Options) (*Node, error) {
	switch {
	case opts.Name == "" || len(opts.Name) > maxNameLen:
		return nil, fmt.Errorf("peers new: name must be 1..%d bytes", maxNameLen)
	case opts.Site == "" || len(opts.Site) > maxSiteLen:
		return nil, fmt.Errorf("peers new: site must be 1..%d bytes", maxSiteLen)
	case len(opts.Keys) == 0:
		return nil, errors.New("peers new: no gossip key: a site's gossip is always encrypted")
	case len(opts.Meta) > MaxMetaBytes:
		return nil, fmt.Errorf("peers new: meta of %d bytes is over %d", len(opts.Meta), MaxMetaBytes)
	}
	for i, k := range opts.Keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("peers new: key %d: %w", i, err)
		}
	}
	if opts.BindAddr == "" {
		opts.BindAddr = "127.0.0.1"
	}
	if opts.Meta == nil {
		opts.Meta = []byte(opts.Site)
	}
	if opts.ServeWorkers <= 0 {
		opts.ServeWorkers = DefaultServeWorkers
	}
	if opts.ServeBytesPerSec == 0 {
		opts.ServeBytesPerSec = DefaultServeBytesPerSec
	}
	if opts.BlockAfter <= 0 {
		opts.BlockAfter = 3
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	lg = lg.With("component", "peers", "site", opts.Site, "member", opts.Name)
	n := &Node{
		opts:      opts,
		log:       lg,
		meta:      slices.Clone(opts.Meta),
		limit:     limiter{rate: float64(opts.ServeBytesPerSec)},
		members:   map[string]memberlist.Node{},
		holders:   map[string]map[string]*holding{},
		own:       map[string][]byte{},
		seen:      map[string]uint64{},
		left:      map[string]time.Time{},
		pending:   map[uint64]*pendingReq{},
		replay:    map[string]*window{},
		waiters:   map[waitKey][]waiter{},
		downloads: map[string]*Download{},
		strikes:   map[string]int{},
		blocked:   map[string]time.Time{},
		serveCh:   make(chan request, serveQueue),
		stop:      make(chan struct{}),
	}
	// Start at the wall clock so a restarted node's announcements and
	// request ids are newer than its previous life's.
	now := uint64(time.Now().UnixNano())
	n.seq.Store(now)
	n.nextID.Store(now)

	kr, err := memberlist.NewKeyring(cloneKeys(opts.Keys[1:]), slices.Clone(opts.Keys[0]))
	if err != nil {
		return nil, fmt.Errorf("peers new: %w", err)
	}
	n.keyring = kr
	cfg := memberlist.DefaultLANConfig()
	cfg.Name = opts.Name
	cfg.BindAddr = opts.BindAddr
	cfg.BindPort = opts.BindPort
	cfg.AdvertiseAddr = opts.AdvertiseAddr
	cfg.AdvertisePort = opts.AdvertisePort
	cfg.RetransmitMult = 4
	// memberlist LZW-compresses every message by default, streams
	// included, so each chunk a peer serves would be compressed by the
	// sender and expanded by the receiver: about 0.2 CPU-seconds per 10 MiB
	// of model weights on this machine's 2 GHz EPYC (77 MB/s and 125 MB/s
	// in Go's compress/lzw), and the bytes of float weights grow by a third
	// instead of shrinking. Chunks are already as small as they get, and the
	// gossip is small; a receiver takes either form, so members with and
	// without compression interoperate (TestServedChunkIsNotCompressed).
	cfg.EnableCompression = false
	cfg.Keyring = kr
	cfg.GossipVerifyIncoming, cfg.GossipVerifyOutgoing = true, true
	cfg.Delegate = (*delegate)(n)
	cfg.Alive = (*delegate)(n)
	cfg.Merge = (*delegate)(n)
	cfg.Events = (*delegate)(n)
	var fwd io.Writer = io.Discard
	if opts.Logger != nil {
		fwd = slog.NewLogLogger(lg.Handler(), slog.LevelDebug).Writer()
	}
	cfg.Logger = log.New(&logCounter{n: n, next: fwd}, "", 0)
	if opts.Tune != nil {
		opts.Tune(cfg)
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
	// Read once: memberlist changes its node records in place later.
	ln := ml.LocalNode()
	n.self = memberlist.Node{Name: ln.Name, Addr: slices.Clone(ln.Addr), Port: ln.Port}
	for range opts.ServeWorkers {
		n.wg.Add(1)
		go n.serveLoop()
	}
	n.wg.Add(1)
	go n.sweepLoop()
	if len(opts.Join) > 0 {
		if err := n.Join(opts.Join); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = slices.Clone(k)
	}
	return out
}

// Addr is the host:port other members pass to Join (the advertised one).
func (n *Node) Addr() string {
	return net.JoinHostPort(n.self.Addr.String(), strconv.Itoa(int(n.self.Port)))
}

// Name is the member name.
func (n *Node) Name() string { return n.opts.Name }

// Site is the node's site.
func (n *Node) Site() string { return n.opts.Site }

// Join contacts existing members; it fails if none could be reached.
// Addresses of this node itself are skipped.
func (n *Node) Join(addrs []string) error {
	self := n.Addr()
	var others []string
	for _, a := range addrs {
		if a != self && a != "" {
			others = append(others, a)
		}
	}
	if len(others) == 0 {
		return nil
	}
	if _, err := n.ml.Join(others); err != nil {
		return fmt.Errorf("peers join: %w", err)
	}
	return nil
}

// Unreached returns the addresses in addrs (host:port, as Addr and Join
// take them) that are neither this node's nor a live member's: those a
// join should try (again).
func (n *Node) Unreached(addrs []string) []string {
	self := n.Addr()
	n.mu.Lock()
	known := make(map[string]bool, len(n.members))
	for _, m := range n.members {
		known[net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))] = true
	}
	n.mu.Unlock()
	var out []string
	for _, a := range addrs {
		if a != "" && a != self && !known[a] && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// Members returns the names of the other live members.
func (n *Node) Members() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.members))
	for name := range n.members {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// NumMembers is the number of other live members.
func (n *Node) NumMembers() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.members)
}

// SetKeys replaces the gossip keys: every key in keys is installed, the
// first one encrypts from now on, and keys not in the list are removed.
// Members that have not installed the new first key yet still read this
// node (they hold the old one, which this node keeps while it is listed).
func (n *Node) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("peers set keys: no key")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("peers set keys: key %d: %w", i, err)
		}
	}
	for _, k := range keys {
		if err := n.keyring.AddKey(slices.Clone(k)); err != nil {
			return fmt.Errorf("peers set keys: %w", err)
		}
	}
	if err := n.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("peers set keys: %w", err)
	}
	for _, old := range cloneKeys(n.keyring.GetKeys()) {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := n.keyring.RemoveKey(old); err != nil {
				return fmt.Errorf("peers set keys: %w", err)
			}
		}
	}
	return nil
}

// Keys returns the installed gossip keys, the encrypting one first.
func (n *Node) Keys() [][]byte { return cloneKeys(n.keyring.GetKeys()) }

// SetMeta replaces this member's credential and tells the site.
func (n *Node) SetMeta(meta []byte) error {
	if len(meta) > MaxMetaBytes {
		return fmt.Errorf("peers set meta: %d bytes is over %d", len(meta), MaxMetaBytes)
	}
	n.metaMu.Lock()
	n.meta = slices.Clone(meta)
	n.metaMu.Unlock()
	if err := n.ml.UpdateNode(leaveTimeout); err != nil {
		return fmt.Errorf("peers set meta: %w", err)
	}
	return nil
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		Malformed:     n.malformed.Load(),
		Foreign:       n.foreign.Load(),
		Unknown:       n.unknown.Load(),
		Undecryptable: n.undecryptable.Load(),
		Replayed:      n.replayed.Load(),
		Relayed:       n.relayed.Load(),
		Served:        n.served.Load(),
		ServedB:       n.servedB.Load(),
		Busy:          n.busy.Load(),
		Unanswered:    n.unanswered.Load(),
		Late:          n.late.Load(),
		Fetched:       n.fetched.Load(),
		FetchedB:      n.fetchedB.Load(),
		Rejected:      n.rejected.Load(),
	}
}

// Blocked returns the peers blocked for sending chunks that failed their
// check, sorted.
func (n *Node) Blocked() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.blocked))
	for p := range n.blocked {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Reject records that peer sent a chunk that failed its check; after
// Options.BlockAfter such chunks the peer is blocked: nothing is fetched
// from it again and its requests are not answered. It reports whether the
// peer is now blocked.
func (n *Node) Reject(peer string) bool {
	n.rejected.Add(1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.blocked[peer]; ok {
		return true
	}
	n.strikes[peer]++
	if n.strikes[peer] < n.opts.BlockAfter {
		return false
	}
	n.blocked[peer] = time.Now()
	for _, byPeer := range n.holders {
		delete(byPeer, peer)
	}
	n.log.Warn("peer blocked: it sent chunks that do not match the signed manifest", "peer", peer, "bad_chunks", n.strikes[peer])
	return true
}

func (n *Node) isBlocked(peer string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.blocked[peer]
	return ok
}

// Close leaves the cluster, shuts memberlist down and waits for the node's
// goroutines. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		for id, p := range n.pending {
			p.ch <- reply{err: ErrClosed}
			delete(n.pending, id)
		}
		downloads := make([]*Download, 0, len(n.downloads))
		for _, d := range n.downloads {
			downloads = append(downloads, d)
		}
		n.mu.Unlock()
		for _, d := range downloads {
			d.Close()
		}
		if !n.crashed.Load() {
			if err := n.ml.Leave(leaveTimeout); err != nil {
				n.log.Debug("leave failed", "err", err)
			}
		}
		if err := n.ml.Shutdown(); err != nil {
			n.closeErr = fmt.Errorf("peers close: %w", err)
		}
		close(n.stop)
		n.wg.Wait()
	})
	return n.closeErr
}

// Hold announces that this node holds every one of total chunks of
// modelKey (a version it serves) until Release. Like Release, it is sent
// to every member directly as well as gossiped: a holder announces nothing
// more, and gossip alone (each message sent a few times to random members)
// missed a member now and then, which then asked others, or the broker,
// for a model its site held (TestDownloadSharesOneBrokerCopy: one member
// had not heard a holder 20 s later, beside load).
func (n *Node) Hold(modelKey string, total uint32) {
	n.announce(announceMsg{Key: modelKey, Total: total, Have: total, Runs: []uint32{0, total}}, true)
}

// Release withdraws what this node announced for modelKey.
func (n *Node) Release(modelKey string) {
	n.mu.Lock()
	_, ok := n.own[modelKey]
	n.mu.Unlock()
	if ok {
		n.announce(announceMsg{Key: modelKey}, true)
		n.mu.Lock()
		delete(n.own, modelKey)
		n.mu.Unlock()
	}
}

// Announce tells the site which chunk indexes of modelKey this node holds
// (sorted or not). It is the low-level form of Hold and Download.
func (n *Node) Announce(modelKey string, have []uint32) {
	idx := slices.Clone(have)
	slices.Sort(idx)
	idx = slices.Compact(idx)
	n.announceIndexes(announceMsg{Key: modelKey}, idx, false)
}

// announceIndexes announces m with the held indexes idx (sorted).
func (n *Node) announceIndexes(m announceMsg, idx []uint32, direct bool) {
	m.Have = uint32(len(idx))
	m.Runs = runsOf(idx)
	// Runs are short for a download that progresses in order; a bitmap
	// is shorter for a scattered one.
	if b := bitsOf(idx); len(m.Runs) > maxRuns*2 || len(b)+8 < len(m.Runs)*4 {
		m.Runs, m.Bits = nil, b
	}
	n.announce(m, direct)
}

// maxDirect bounds an announcement sent to every member directly: one
// datagram, well below memberlist's packet size once encrypted.
const maxDirect = 1024

// announce gossips m as this node's newest announcement of m.Key. direct
// also sends it to every member at once, for news the site must hear
// before gossip would carry it (a download starting, a member taking up
// or giving up fetching for the site): on a busy site gossip reached
// the others only after several of them had each elected itself.
func (n *Node) announce(m announceMsg, direct bool) {
	if m.Key == "" || len(m.Key) > maxKeyLen {
		return
	}
	m.Origin, m.Site, m.Seq = n.opts.Name, n.opts.Site, n.seq.Add(1)
	buf, err := encode(kindAnnounce, m, nil)
	if err != nil {
		n.log.Warn("encode announce failed", "err", err)
		return
	}
	n.mu.Lock()
	n.seen[m.Origin] = m.Seq
	n.own[m.Key] = buf
	var to []memberlist.Node
	if direct && len(buf) <= maxDirect && !n.closed {
		to = make([]memberlist.Node, 0, len(n.members))
		for _, mb := range n.members {
			to = append(to, mb)
		}
	}
	n.mu.Unlock()
	n.bq.QueueBroadcast(&broadcast{origin: m.Origin, key: m.Key, msg: buf})
	for i := range to {
		// Best effort: gossip carries it too.
		if err := n.ml.SendBestEffort(&to[i], buf); err != nil {
			n.log.Debug("direct announce failed", "peer", to[i].Name, "err", err)
		}
	}
}

// Holders returns the peers that announced holding chunk index of modelKey,
// freshest announcement first; blocked peers are left out.
func (n *Node) Holders(modelKey string, index uint32) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	type cand struct {
		name string
		at   time.Time
	}
	var cs []cand
	for name, h := range n.holders[modelKey] {
		if _, alive := n.members[name]; alive && h.holds(index) {
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

// Fetch asks peer for chunk index of modelKey. With wait > 0 a peer that
// is downloading the model holds the request up to wait for the chunk to
// arrive (ErrNotYet when it did not). The bytes are unverified: the caller
// must check them against the signed manifest.
func (n *Node) Fetch(ctx context.Context, peer, modelKey string, index uint32, wait time.Duration) ([]byte, error) {
	errf := func(err error) error {
		return fmt.Errorf("peers fetch %s chunk %d from %q: %w", short(modelKey), index, peer, err)
	}
	if err := ctx.Err(); err != nil {
		// Checked first: once the request is out, a fast answer and the
		// cancellation race in the select below.
		return nil, errf(err)
	}
	if n.isBlocked(peer) {
		return nil, errf(ErrBlocked)
	}
	target := n.member(peer)
	if target == nil || peer == n.opts.Name {
		return nil, errf(ErrUnknownPeer)
	}
	id := n.nextID.Add(1)
	ch := make(chan reply, 1)
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		return nil, ErrClosed
	case len(n.pending) >= maxPending:
		n.mu.Unlock()
		return nil, errf(ErrBusy)
	}
	n.pending[id] = &pendingReq{peer: peer, ch: ch}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.pending, id)
		n.mu.Unlock()
	}()
	ms := uint32(min(wait.Milliseconds(), maxWaitMillis))
	buf, err := encode(kindRequest, request{ID: id, From: n.opts.Name, Site: n.opts.Site, Key: modelKey, Index: index, Wait: ms}, nil)
	if err != nil {
		return nil, errf(err)
	}
	if err := n.ml.SendReliable(target, buf); err != nil {
		return nil, errf(err)
	}
	select {
	case <-ctx.Done():
		return nil, errf(ctx.Err())
	case r := <-ch:
		switch {
		case r.err != nil:
			return nil, errf(r.err)
		case r.result == respOK:
			n.fetched.Add(1)
			n.fetchedB.Add(uint64(len(r.data)))
			return r.data, nil
		case r.result == respNotYet:
			return nil, errf(ErrNotYet)
		case r.result == respBusy:
			return nil, errf(ErrBusy)
		default:
			return nil, errf(ErrNotFound)
		}
	}
}

// member returns a copy of a live member's node, nil if there is none.
func (n *Node) member(name string) *memberlist.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	m, ok := n.members[name]
	if !ok {
		return nil
	}
	return &m
}

// setMember records a live member (from the event delegate, under
// memberlist's lock: the node is copied, never kept).
func (n *Node) setMember(m *memberlist.Node) {
	if m.Name == n.opts.Name {
		return
	}
	c := memberlist.Node{Name: m.Name, Addr: slices.Clone(m.Addr), Port: m.Port}
	n.mu.Lock()
	n.members[m.Name] = c
	delete(n.left, m.Name)
	n.mu.Unlock()
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}

// handle processes one user message (gossip or reliable); buf is not retained.
func (n *Node) handle(buf []byte, relay bool) {
	kind, hdr, data, err := decode(buf)
	if err != nil {
		n.malformed.Add(1)
		n.log.Debug("dropped malformed message", "err", err)
		return
	}
	switch kind {
	case kindAnnounce:
		var m announceMsg
		if err := unmarshal(hdr, &m); err != nil || len(data) != 0 || m.Origin == "" || len(m.Origin) > maxNameLen ||
			m.Key == "" || len(m.Key) > maxKeyLen || len(m.Bits) > MaxIndex/8 || m.Have > m.Total && m.Total > 0 {
			n.malformed.Add(1)
			return
		}
		if m.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		bits, err := heldSet(&m)
		if err != nil {
			n.malformed.Add(1)
			return
		}
		n.onAnnounce(m, bits, buf, relay)
	case kindRequest:
		var r request
		if err := unmarshal(hdr, &r); err != nil || len(data) != 0 || r.From == "" || len(r.From) > maxNameLen ||
			r.Key == "" || len(r.Key) > maxKeyLen || r.Wait > maxWaitMillis {
			n.malformed.Add(1)
			return
		}
		if r.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		n.onRequest(r)
	case kindResponse:
		var r response
		if err := unmarshal(hdr, &r); err != nil || len(data) > MaxChunkBytes || r.Result != respOK && len(data) != 0 {
			n.malformed.Add(1)
			return
		}
		if r.Site != n.opts.Site {
			n.foreign.Add(1)
			return
		}
		n.mu.Lock()
		p, ok := n.pending[r.ID]
		if ok {
			delete(n.pending, r.ID)
		}
		n.mu.Unlock()
		if !ok {
			n.late.Add(1)
			return
		}
		p.ch <- reply{result: r.Result, data: slices.Clone(data)} // buffered 1, sole sender after delete
	default:
		n.malformed.Add(1)
	}
}

// onAnnounce records an announcement and relays it once (memberlist does not
// re-gossip user broadcasts).
func (n *Node) onAnnounce(m announceMsg, bits, raw []byte, relay bool) {
	if m.Origin == n.opts.Name {
		return
	}
	now := time.Now()
	n.mu.Lock()
	if last, ok := n.seen[m.Origin]; ok && m.Seq <= last {
		n.mu.Unlock()
		return // a copy relayed by another member, or older news
	}
	if _, ok := n.seen[m.Origin]; !ok && len(n.seen) >= maxSeenOrigin {
		n.mu.Unlock()
		n.malformed.Add(1)
		return
	}
	n.seen[m.Origin] = m.Seq
	if _, blocked := n.blocked[m.Origin]; !blocked {
		byPeer := n.holders[m.Key]
		if byPeer == nil {
			byPeer = map[string]*holding{}
			n.holders[m.Key] = byPeer
		}
		h := &holding{bits: bits, have: m.Have, total: m.Total, fetching: m.Fetching, source: m.Source,
			leader: m.Leader, at: now, progressAt: now, raw: slices.Clone(raw)}
		// Progress is judged from when a member took up fetching for
		// the site, not from its last chunk: a member that takes over
		// from a stalled source made no progress during the stall
		// either, and judged by that it was passed over at once, then
		// the next, until every member fetched from the broker itself.
		if old := byPeer[m.Origin]; old != nil && m.Have <= old.have && (old.source || !m.Source) {
			h.progressAt = old.progressAt
		}
		if m.Have == 0 && !m.Fetching {
			delete(byPeer, m.Origin) // withdrawn
			if len(byPeer) == 0 {
				delete(n.holders, m.Key)
			}
		} else {
			byPeer[m.Origin] = h
		}
	}
	downloads := n.downloads[m.Key]
	n.mu.Unlock()
	if downloads != nil {
		downloads.kick()
	}
	if relay {
		n.relayed.Add(1)
		n.bq.QueueBroadcast(&broadcast{origin: m.Origin, key: m.Key, msg: slices.Clone(raw)})
	}
}

// forget marks a member departed and fails requests waiting on it. What
// it announced is kept (out of every view while it is away) until
// purgeLeft: memberlist declares a member of a busy site dead and alive
// again within seconds, and a holder that has finished announces nothing
// more, so dropping its holdings left the site blind to them (its state
// comes back only by a push/pull, 30 s later, which the seen sequence
// then refused as old news: TestDownloadSharesOneBrokerCopy saw one
// holder of four beside load).
func (n *Node) forget(name string) {
	n.mu.Lock()
	delete(n.members, name)
	n.left[name] = time.Now()
	for id, p := range n.pending {
		if p.peer == name {
			p.ch <- reply{err: ErrPeerLeft}
			delete(n.pending, id)
		}
	}
	downloads := make([]*Download, 0, len(n.downloads))
	for _, d := range n.downloads {
		downloads = append(downloads, d)
	}
	n.mu.Unlock()
	for _, d := range downloads {
		d.kick()
	}
}

// leftRetention is how long a departed member's announcements are kept
// in case it comes back.
const leftRetention = 10 * time.Minute

// purgeLeft drops what members departed before cutoff announced, and
// their announcement sequence: a member back after that starts afresh.
func (n *Node) purgeLeft(cutoff time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, at := range n.left {
		if at.After(cutoff) {
			continue
		}
		delete(n.left, name)
		delete(n.seen, name)
		for key, byPeer := range n.holders {
			delete(byPeer, name)
			if len(byPeer) == 0 {
				delete(n.holders, key)
			}
		}
	}
}

// localState is this node's view for a joining member: the latest
// announcement of each member it knows, its own included.
func (n *Node) localState() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	var msgs [][]byte
	for _, raw := range n.own {
		msgs = append(msgs, raw)
	}
	for _, byPeer := range n.holders {
		for name, h := range byPeer {
			if _, alive := n.members[name]; alive && len(msgs) < maxLocalState {
				msgs = append(msgs, h.raw)
			}
		}
	}
	var out []byte
	for _, m := range msgs {
		out = appendFrame(out, m)
	}
	return out
}

func (n *Node) mergeState(buf []byte) {
	for i := 0; len(buf) > 0 && i < maxLocalState; i++ {
		m, rest, ok := nextFrame(buf)
		if !ok {
			n.malformed.Add(1)
			return
		}
		if len(m) > 0 && m[0] == kindAnnounce {
			n.handle(m, false)
		} else {
			n.malformed.Add(1)
		}
		buf = rest
	}
}

// logCounter passes memberlist's log on and counts what no key decrypted:
// memberlist reports that only in its log.
type logCounter struct {
	n    *Node
	next io.Writer
}

func (l *logCounter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("Decrypt packet failed")) || bytes.Contains(p, []byte("could decrypt")) ||
		bytes.Contains(p, []byte("remote state is not encrypted")) {
		l.n.undecryptable.Add(1)
	}
	return l.next.Write(p)
}

// broadcast is one queued announcement; a newer one of the same origin
// and model replaces it in the queue.
type broadcast struct {
	origin, key string
	msg         []byte
}

func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*broadcast)
	return ok && o.origin == b.origin && o.key == b.key
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// delegate implements memberlist's delegate interfaces for Node.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	if len(d.meta) > limit {
		return nil
	}
	return slices.Clone(d.meta)
}

func (d *delegate) NotifyMsg(buf []byte) { (*Node)(d).handle(buf, true) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bq.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(bool) []byte { return (*Node)(d).localState() }
func (d *delegate) MergeRemoteState(buf []byte, _ bool) {
	(*Node)(d).mergeState(buf)
}

// NotifyAlive admits a member only if its credential checks.
func (d *delegate) NotifyAlive(peer *memberlist.Node) error { return d.admit(peer) }

// NotifyMerge refuses to merge with a cluster holding a member that would
// not be admitted.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if err := d.admit(p); err != nil {
			return err
		}
	}
	return nil
}

func (d *delegate) admit(peer *memberlist.Node) error {
	if peer.Name == d.opts.Name {
		d.metaMu.Lock()
		same := bytes.Equal(peer.Meta, d.meta)
		d.metaMu.Unlock()
		if same {
			return nil
		}
	}
	var err error
	if d.opts.Admit != nil {
		err = d.opts.Admit(peer.Name, peer.Meta)
	} else if string(peer.Meta) != d.opts.Site {
		err = fmt.Errorf("%w: %q is of site %q, not %q", ErrForeignSite, peer.Name, peer.Meta, d.opts.Site)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrForeignSite):
		d.foreign.Add(1)
	default:
		d.unknown.Add(1)
	}
	return fmt.Errorf("peers: member %q refused: %w", peer.Name, err)
}

func (d *delegate) NotifyJoin(peer *memberlist.Node)   { (*Node)(d).setMember(peer) }
func (d *delegate) NotifyUpdate(peer *memberlist.Node) { (*Node)(d).setMember(peer) }
func (d *delegate) NotifyLeave(peer *memberlist.Node)  { (*Node)(d).forget(peer.Name) }
