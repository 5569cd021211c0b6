package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/peers"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Site-local sharing (docs/architecture.md, "Site-local distribution"):
// with PeerOptions.Listen set, the agent reports that it shares, takes the
// signed site document the control plane retains on its own site topic
// (gossip keys, its member ticket, peer addresses), joins its site's
// memberlist cluster, serves the versions it holds and downloads through
// peers.Download. Without a document (an older control plane, no site
// label) it downloads from the broker as always.

// Keys of the agent's persisted state for sharing.
const (
	keySite = "site" // the newest accepted site document (envelope bytes)
)

// PeerOptions configure site-local sharing. The zero value is off.
type PeerOptions struct {
	// Listen is the host:port the member binds (TCP and UDP), e.g.
	// 0.0.0.0:7946; empty turns sharing off. Port 0 takes a free port.
	Listen string
	// Advertise is the host:port other members dial; default the bound
	// address (a private address of the host when binding 0.0.0.0).
	Advertise string
	// Join are members to contact besides those the control plane lists.
	Join []string
	// ServeWorkers and ServeBytesPerSec bound what the device sends to
	// peers; defaults peers.DefaultServeWorkers and
	// peers.DefaultServeBytesPerSec (negative: unlimited).
	ServeWorkers     int
	ServeBytesPerSec int64
	// Settle, PeerTimeout and StallTimeout tune downloads (see
	// peers.DownloadOptions); zero takes its defaults.
	Settle       time.Duration
	PeerTimeout  time.Duration
	StallTimeout time.Duration
	// ServeFilter, when set, may change a chunk the device is about to
	// send a peer: fault injection for tests and fleet-sim (a lying peer).
	// Nil on a real device.
	ServeFilter func(key string, index uint32, data []byte) []byte
	// Tune, when set, adjusts the member's memberlist configuration (see
	// peers.Options.Tune): fleet-sim puts a transport there that can
	// partition a site's LAN. Nil on a real device.
	Tune func(*memberlist.Config)
}

func (o PeerOptions) enabled() bool { return o.Listen != "" }

// sharing is the agent's part in its site: the site document it accepted,
// the member it runs, and what it holds for peers. The update loop owns
// doc and node changes; mu guards what peers' requests read.
type sharing struct {
	a      *Agent
	filter func(key string, index uint32, data []byte) []byte

	// Owned by the update loop.
	doc     *efpb.SitePeers
	docEnv  []byte // its envelope bytes, as persisted
	node    *peers.Node
	joining sync.WaitGroup // joins in flight (they can take a TCP timeout)
	// A join that reached none of the listed members (a busy machine whose
	// join timed out, members not up yet) is tried again (rejoinSite):
	// joinAt is when, joinWait the back-off before it.
	joinBusy atomic.Bool // a join is in flight
	joinAt   time.Time
	joinWait time.Duration

	// Mirrors of node and the document's version for other goroutines
	// (telemetry, metrics, PeerStats).
	nodeRef     atomic.Pointer[peers.Node]
	siteVersion atomic.Uint64

	// wake tells the update loop that a download has chunks for the
	// broker (peers.DownloadOptions.Wake); capacity 1.
	wake chan struct{}

	// mu guards shares and site: read by serve workers and memberlist.
	mu     sync.Mutex
	shares map[string]share // model key (sha256 hex) → where its chunks are
	site   string
}

// share is where the chunks of one held version are: a complete file, or
// a download's part file, whose present chunks the assembler knows.
type share struct {
	path      string
	size      uint64
	chunkSize uint32
	asm       *transfer.Assembler // nil: the file is complete
}

func newSharing(a *Agent) *sharing {
	return &sharing{a: a, filter: a.opts.Peers.ServeFilter, wake: make(chan struct{}, 1), shares: map[string]share{}}
}

// restoreSite starts sharing with the stored site document, if it still
// checks: the device shares with its site while the broker is away.
func (a *Agent) restoreSite(ctx context.Context) {
	b, err := a.kv.Get(keySite)
	if errors.Is(err, store.ErrNotFound) {
		return
	}
	if err != nil {
		a.log.Warn("stored site document unreadable", "err", err)
		return
	}
	env, err := decodeEnvelope(b)
	if err != nil {
		a.log.Warn("stored site document unreadable", "err", err)
		return
	}
	doc, err := a.verify.VerifySitePeers(env, a.opts.Clock())
	if err != nil {
		// Kept for its version (replays stay refused); the control plane
		// sends a current one.
		a.log.Info("stored site document no longer checks; waiting for a new one", "err", err)
		a.peers.doc, a.peers.docEnv = storedSiteVersion(env), b
		a.peers.siteVersion.Store(a.peers.doc.GetVersion())
		return
	}
	a.peers.doc, a.peers.docEnv = doc, b
	a.peers.siteVersion.Store(doc.GetVersion())
	a.applySite(ctx)
}

// storedSiteVersion is the version of a stored document that no longer
// checks: only its version is used (the replay floor).
func storedSiteVersion(env *efpb.Envelope) *efpb.SitePeers {
	d := &efpb.SitePeers{}
	if err := proto.Unmarshal(env.GetPayload(), d); err != nil {
		return nil
	}
	return &efpb.SitePeers{Version: d.GetVersion(), DeviceId: d.GetDeviceId()}
}

// handleSite takes a site document from the control plane: checked,
// replay-protected by its version, persisted (synced), then acted on.
func (a *Agent) handleSite(ctx context.Context, payload []byte) {
	if !a.opts.Peers.enabled() {
		return
	}
	env, err := decodeEnvelope(payload)
	if err != nil {
		a.drop("site", err)
		return
	}
	refuse := func(reason string) {
		a.refuse(ctx, "", efpb.Refusal_REFUSAL_SITE_DOCUMENT, reason)
	}
	doc, err := a.verify.VerifySitePeers(env, a.opts.Clock())
	if err != nil {
		refuse(fmt.Sprintf("site document refused: %v", err))
		return
	}
	if doc.GetDeviceId() != a.opts.DeviceID {
		refuse(fmt.Sprintf("site document refused: it is for device %q", doc.GetDeviceId()))
		return
	}
	if cur := a.peers.doc; cur != nil {
		switch v := doc.GetVersion(); {
		case v < cur.GetVersion():
			refuse(fmt.Sprintf("site document refused: version %d is older than the accepted version %d (replay)", v, cur.GetVersion()))
			return
		case v == cur.GetVersion():
			if !bytes.Equal(payload, a.peers.docEnv) {
				refuse(fmt.Sprintf("site document refused: version %d was already accepted with different content", v))
			}
			return // the retained copy, redelivered on reconnect
		}
	}
	if err := a.persist(stepSite, func() error { return a.kv.SetSync(keySite, payload) }); err != nil {
		a.writeFailures.Add(1)
		a.log.Error("site document not persisted; not acted on", "err", err)
		return // the control plane's retained copy comes again on reconnect
	}
	a.peers.doc, a.peers.docEnv = doc, payload
	a.peers.siteVersion.Store(doc.GetVersion())
	a.log.Info("site document accepted", "site", doc.GetSite(), "version", doc.GetVersion(), "peers", len(doc.GetPeers()))
	a.applySite(ctx)
	a.sendTelemetry(ctx) // the control plane learns the address now
}

// applySite makes the member match the accepted document: started,
// rekeyed, re-ticketed and joined, or stopped.
func (a *Agent) applySite(ctx context.Context) {
	p, doc := a.peers, a.peers.doc
	site := doc.GetSite()
	if p.node != nil && (site == "" || p.node.Site() != site) {
		a.stopSharing()
		a.moveDownloads(ctx)
	}
	if site == "" || len(doc.GetGossipKeys()) == 0 || doc.GetTicket() == nil {
		return
	}
	meta, err := proto.Marshal(doc.GetTicket())
	if err != nil || len(meta) > peers.MaxMetaBytes {
		a.log.Error("member ticket unusable", "bytes", len(meta), "err", err)
		return
	}
	if p.node != nil {
		if err := p.node.SetKeys(doc.GetGossipKeys()); err != nil {
			a.log.Error("gossip keys refused", "err", err)
		}
		if err := p.node.SetMeta(meta); err != nil {
			a.log.Debug("re-advertise member ticket", "err", err)
		}
		if p.node.NumMembers() == 0 {
			a.joinSite(ctx)
		}
		return
	}
	host, port, err := splitListen(a.opts.Peers.Listen)
	if err != nil {
		a.log.Error("peers listen address", "err", err)
		return
	}
	o := peers.Options{
		Name: a.opts.DeviceID, Site: site, BindAddr: host, BindPort: port,
		Keys: doc.GetGossipKeys(), Meta: meta, Admit: a.admitMember,
		ChunkProvider: p.chunk, ServeWorkers: a.opts.Peers.ServeWorkers, ServeBytesPerSec: a.opts.Peers.ServeBytesPerSec,
		Logger: a.opts.Logger, Tune: a.opts.Peers.Tune,
	}
	if adv := a.opts.Peers.Advertise; adv != "" {
		if o.AdvertiseAddr, o.AdvertisePort, err = splitListen(adv); err != nil {
			a.log.Error("peers advertise address", "err", err)
			return
		}
	}
	node, err := peers.New(o)
	if err != nil {
		a.log.Error("join site failed", "site", site, "err", err)
		return
	}
	p.mu.Lock()
	p.site = site
	p.mu.Unlock()
	p.node = node
	p.nodeRef.Store(node)
	a.log.Info("sharing with site", "site", site, "addr", node.Addr())
	a.refreshShares()
	a.joinSite(ctx)
	a.moveDownloads(ctx)
}

// moveDownloads moves the downloads in progress to the path sharing now
// dictates: through the site (and the device's own chunk topic) when it
// shares, the version's shared chunk topic when it stopped.
func (a *Agent) moveDownloads(ctx context.Context) {
	for _, s := range a.slotList() {
		if s.asm == nil || s.st.Target == nil || s.asm.Complete() {
			continue
		}
		if a.peers.node != nil && s.dl == nil {
			a.unsub(ctx, a.topics.Chunks(s.name, s.st.Target.Version))
			a.startPeerDownload(ctx, s)
		}
		a.ensureSub(ctx, a.chunkTopic(s), evChunk)
		a.requestMissing(ctx, s, true)
	}
	for _, sh := range a.shadow.byName {
		if sh.asm == nil || sh.asm.Complete() {
			continue
		}
		if a.peers.node != nil && sh.dl == nil {
			a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
			a.startShadowPeerDownload(ctx, sh)
		}
		a.ensureShadowSub(ctx, sh)
		a.requestShadowChunks(ctx, sh, true)
	}
}

// Back-off of rejoinSite: from joinRetryMin, doubling, at most
// joinRetryMax (a listed member that is gone costs a dial that often).
const (
	joinRetryMin = 2 * time.Second
	joinRetryMax = time.Minute
)

// joinSite contacts the document's peers and the configured ones, in the
// background: a join waits out TCP timeouts of members that are gone.
func (a *Agent) joinSite(ctx context.Context) {
	addrs := append(append([]string(nil), a.peers.doc.GetPeers()...), a.opts.Peers.Join...)
	node := a.peers.node
	if len(addrs) == 0 || node == nil {
		return
	}
	a.peers.joinWait = 0
	a.peers.joinAt = time.Now().Add(joinRetryMin)
	a.peers.joinBusy.Store(true)
	a.peers.joining.Go(func() {
		defer a.peers.joinBusy.Store(false)
		if ctx.Err() != nil {
			return
		}
		if err := node.Join(addrs); err != nil {
			a.log.Debug("join site members", "err", err)
		}
	})
}

// rejoinSite joins again the listed members that are not members of this
// node's cluster, with back-off (it runs on the update loop's retry tick).
// A document is issued once and renewed after weeks, so a join that
// failed — a TCP timeout on a starved machine, members that were not up
// yet — was never tried again: 252 of 1,100 agents of site-sharing-large
// never joined their site beside a test run (docs/benchmarks.md). It also
// merges a site that formed as two clusters.
func (a *Agent) rejoinSite(ctx context.Context) {
	p := a.peers
	if p.node == nil || p.doc == nil || p.joinBusy.Load() || time.Now().Before(p.joinAt) {
		return
	}
	addrs := p.node.Unreached(append(append([]string(nil), p.doc.GetPeers()...), a.opts.Peers.Join...))
	if len(addrs) == 0 {
		p.joinWait = 0
		return
	}
	p.joinWait = min(max(2*p.joinWait, joinRetryMin), joinRetryMax)
	// Spread: the members of a site that failed together do not retry
	// together.
	p.joinAt = time.Now().Add(p.joinWait/2 + rand.N(p.joinWait/2+1))
	node := p.node
	p.joinBusy.Store(true)
	p.joining.Go(func() {
		defer p.joinBusy.Store(false)
		if ctx.Err() != nil {
			return
		}
		if err := node.Join(addrs); err != nil {
			a.log.Debug("join site members again", "addrs", len(addrs), "err", err)
		}
	})
}

// stopSharing leaves the site. Downloads in progress go on from the broker.
func (a *Agent) stopSharing() {
	p := a.peers
	for _, s := range a.slotList() {
		if s.dl != nil {
			s.dl.Close()
			s.dl = nil
			s.inflight = nil // asked on the device topic: ask again on the shared one
		}
	}
	for _, sh := range a.shadow.byName {
		if sh.dl != nil {
			sh.dl.Close()
			sh.dl = nil
			sh.inflight = nil
		}
	}
	if p.node != nil {
		p.joining.Wait()
		if err := p.node.Close(); err != nil {
			a.log.Debug("leave site", "err", err)
		}
		p.node = nil
		p.nodeRef.Store(nil)
	}
	p.mu.Lock()
	p.site = ""
	p.shares = map[string]share{}
	p.mu.Unlock()
}

// admitMember checks another member's ticket: signed by the control key
// of the trust bundle, unexpired, for that member's name and this site.
func (a *Agent) admitMember(name string, meta []byte) error {
	env, err := decodeEnvelope(meta)
	if err != nil {
		return fmt.Errorf("%w: credential is not a ticket: %v", peers.ErrUnknownMember, err)
	}
	t, err := a.verify.VerifyMemberTicket(env, a.opts.Clock())
	if err != nil {
		return fmt.Errorf("%w: %v", peers.ErrUnknownMember, err)
	}
	if t.GetDeviceId() != name {
		return fmt.Errorf("%w: %q shows the ticket of %q", peers.ErrUnknownMember, name, t.GetDeviceId())
	}
	a.peers.mu.Lock()
	site := a.peers.site
	a.peers.mu.Unlock()
	if t.GetSite() != site {
		return fmt.Errorf("%w: %q is of site %q", peers.ErrForeignSite, name, t.GetSite())
	}
	return nil
}

func splitListen(hp string) (string, int, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", hp, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("%q: bad port", hp)
	}
	return host, n, nil
}

// refreshShares makes what peers may fetch match the slots: committed and
// previous versions (complete files) and downloads in progress (their part
// files, chunk by chunk). It runs on the update loop after changes.
func (a *Agent) refreshShares() {
	p := a.peers
	if p.node == nil {
		return
	}
	next := map[string]share{}
	for _, s := range a.slotList() {
		for _, r := range []*modelRef{s.st.Active, s.st.Previous} {
			if r == nil {
				continue
			}
			if m, err := manifestOf(r.Manifest); err == nil {
				next[r.SHA256] = share{path: a.modelPath(s.name, r.SHA256), size: m.GetSize(), chunkSize: m.GetChunkSize()}
			}
		}
		t := s.st.Target
		if t == nil || s.manifest == nil {
			continue
		}
		if _, done := next[t.SHA256]; done {
			continue
		}
		switch {
		case s.asm != nil:
			next[t.SHA256] = share{path: a.partPath(s.name, t.SHA256), size: s.manifest.GetSize(),
				chunkSize: s.manifest.GetChunkSize(), asm: s.asm}
		case fileExists(a.modelPath(s.name, t.SHA256)):
			// Verified and renamed, being staged.
			next[t.SHA256] = share{path: a.modelPath(s.name, t.SHA256), size: s.manifest.GetSize(), chunkSize: s.manifest.GetChunkSize()}
		}
	}
	for _, sh := range a.shadow.byName {
		if sh.manifest == nil || sh.failure != "" {
			continue
		}
		if _, done := next[sh.sha]; done {
			continue
		}
		size, cs := sh.manifest.GetSize(), sh.manifest.GetChunkSize()
		switch {
		case sh.asm != nil:
			next[sh.sha] = share{path: filepath.Join(a.shadowDir(sh.name), sh.sha+".part"), size: size, chunkSize: cs, asm: sh.asm}
		case sh.run != nil:
			next[sh.sha] = share{path: filepath.Join(a.shadowDir(sh.name), sh.sha+".onnx"), size: size, chunkSize: cs}
		}
	}
	p.mu.Lock()
	prev := p.shares
	p.shares = next
	p.mu.Unlock()
	for key, sh := range next {
		if old, ok := prev[key]; sh.asm == nil && (!ok || old.asm != nil) {
			p.node.Hold(key, uint32(transfer.ChunkCount(sh.size, sh.chunkSize)))
		}
	}
	for key := range prev {
		if _, ok := next[key]; !ok {
			p.node.Release(key)
		}
	}
}

// chunk serves a peer's request from the files the agent holds. It runs on
// the node's serve workers.
func (p *sharing) chunk(key string, index uint32) ([]byte, bool) {
	p.mu.Lock()
	sh, ok := p.shares[key]
	p.mu.Unlock()
	if !ok || sh.chunkSize == 0 || uint64(index) >= uint64(transfer.ChunkCount(sh.size, sh.chunkSize)) {
		return nil, false
	}
	if sh.asm != nil && !sh.asm.Has(index) {
		return nil, false
	}
	start := uint64(index) * uint64(sh.chunkSize)
	n := min(uint64(sh.chunkSize), sh.size-start)
	f, err := os.Open(sh.path)
	if err != nil {
		return nil, false // renamed or removed meanwhile: the asker tries elsewhere
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, int64(start)); err != nil {
		return nil, false
	}
	if p.filter != nil {
		b = p.filter(key, index, b)
	}
	return b, true
}

// startPeerDownload puts a download in progress in the site's hands.
func (a *Agent) startPeerDownload(ctx context.Context, s *slot) {
	if a.peers.node == nil || s.asm == nil || s.dl != nil {
		return
	}
	if dl := a.startSiteDownload(ctx, s.name, s.st.Target.SHA256, s.asm); dl != nil {
		s.dl = dl
		s.inflight = nil
		a.refreshShares()
	}
}

// startShadowPeerDownload puts a challenger's download in the site's
// hands: a challenger scored in shadow on a site's devices crosses its
// link about once, like a served version.
func (a *Agent) startShadowPeerDownload(ctx context.Context, sh *shadow) {
	if a.peers.node == nil || sh.asm == nil || sh.dl != nil {
		return
	}
	if dl := a.startSiteDownload(ctx, sh.name, sh.sha, sh.asm); dl != nil {
		sh.dl = dl
		sh.inflight = nil
		a.refreshShares()
	}
}

// startSiteDownload starts the site's download of the version of model
// name whose sha256 is key into asm; nil when the node refuses it. The
// chunks peers deliver come to the update loop as evPeerChunk events that
// name the download.
func (a *Agent) startSiteDownload(ctx context.Context, name, key string, asm *transfer.Assembler) *peers.Download {
	p := a.peers
	// The download's goroutines may deliver before StartDownload returns:
	// they wait for dl (the events name it, so chunks of a download the
	// loop has since closed are told apart).
	var dl *peers.Download
	started := make(chan struct{})
	dl, err := p.node.StartDownload(peers.DownloadOptions{
		Key:    key,
		Chunks: uint32(asm.Total()),
		Has:    func(i uint32) bool { return asm.Has(i) },
		Deliver: func(dctx context.Context, i uint32, data []byte, from string) bool {
			select {
			case <-started:
			case <-dctx.Done():
				return false
			case <-ctx.Done():
				return false
			}
			ev := event{kind: evPeerChunk, index: i, payload: data, from: from, dl: dl, topic: name}
			select {
			case a.events <- ev:
				return true
			case <-dctx.Done():
				return false
			case <-ctx.Done():
				return false
			}
		},
		Wake: func() {
			select {
			case p.wake <- struct{}{}:
			default:
			}
		},
		Settle: a.opts.Peers.Settle, PeerTimeout: a.opts.Peers.PeerTimeout, StallTimeout: a.opts.Peers.StallTimeout,
	})
	close(started)
	if err != nil {
		a.log.Warn("download without the site", "model", name, "err", err)
		return nil
	}
	return dl
}

// handlePeerChunk takes a chunk a peer sent: checked like any chunk; one
// that fails the check counts against the peer.
func (a *Agent) handlePeerChunk(ctx context.Context, ev event) {
	if sh := a.shadow.byName[ev.topic]; sh != nil && sh.dl != nil && sh.dl == ev.dl {
		a.addShadowChunk(ctx, sh, ev.index, ev.payload, ev.from)
		return
	}
	s := a.slot(ev.topic)
	if s == nil || s.dl == nil || s.dl != ev.dl || s.asm == nil {
		return // a download since closed or restarted
	}
	added, err := s.asm.Add(ev.index, ev.payload)
	if err != nil {
		a.peerChunkRefused(s.dl, s.name, ev, err)
		return
	}
	s.dl.Added(ev.index)
	if !added {
		return
	}
	a.transfers.add(s.name, s.st.Target.Version, 0, uint64(len(ev.payload)))
	a.chunkAccepted(ctx, s, ev.index)
}

// peerChunkRefused counts a chunk from a peer that failed its check
// against the peer.
func (a *Agent) peerChunkRefused(dl *peers.Download, model string, ev event, err error) {
	a.refused.Add(1)
	a.peerBad.Add(1)
	blocked := dl.Rejected(ev.index, ev.from)
	a.logLimited(slog.LevelWarn, logKindChunkRefused, "chunk from a peer refused", "model", model,
		"index", ev.index, "peer", ev.from, "peer_blocked", blocked, "err", err)
}

// onPeerWake asks the broker for chunks the site left to this member.
func (a *Agent) onPeerWake(ctx context.Context) {
	for _, s := range a.slotList() {
		if s.dl != nil && s.asm != nil && !s.asm.Complete() {
			a.requestMissing(ctx, s, false)
		}
	}
	for _, sh := range a.shadow.byName {
		if sh.dl != nil && sh.asm != nil && !sh.asm.Complete() {
			a.requestShadowChunks(ctx, sh, false)
		}
	}
}

// PeerStats is the agent's part in its site's sharing, as telemetry
// reports it: nil when sharing is off. Safe from any goroutine.
func (a *Agent) PeerStats() *efpb.PeerStats {
	if !a.opts.Peers.enabled() {
		return nil
	}
	ps := &efpb.PeerStats{SiteVersion: a.peers.siteVersion.Load(), BadChunks: a.peerBad.Load()}
	if n := a.peers.nodeRef.Load(); n != nil {
		st := n.Stats()
		ps.Addr = n.Addr()
		ps.Members = uint32(n.NumMembers())
		ps.ServedChunks, ps.ServedBytes = st.Served, st.ServedB
		// Another site's members hold another key: what no key decrypts
		// counts as foreign too.
		ps.Foreign, ps.Unknown, ps.Replayed = st.Foreign+st.Undecryptable, st.Unknown, st.Replayed
		blocked := n.Blocked()
		ps.Blocked = blocked[:min(len(blocked), 16)]
	}
	return ps
}

// transferLog counts the bytes of recent downloads by source.
type transferLog struct {
	mu   sync.Mutex
	list []*efpb.TransferStats // newest first, at most maxTransfers
}

const maxTransfers = 8

func (l *transferLog) add(name, version string, broker, peer uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, t := range l.list {
		if t.ModelName == name && t.ModelVersion == version {
			t.BrokerBytes += broker
			t.PeerBytes += peer
			if i > 0 {
				copy(l.list[1:i+1], l.list[:i])
				l.list[0] = t
			}
			return
		}
	}
	t := &efpb.TransferStats{ModelName: name, ModelVersion: version, BrokerBytes: broker, PeerBytes: peer}
	l.list = append([]*efpb.TransferStats{t}, l.list...)
	if len(l.list) > maxTransfers {
		l.list = l.list[:maxTransfers]
	}
}

func (l *transferLog) snapshot() []*efpb.TransferStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*efpb.TransferStats, len(l.list))
	for i, t := range l.list {
		out[i] = proto.Clone(t).(*efpb.TransferStats)
	}
	return out
}

// Transfers returns the bytes of the agent's recent downloads by source,
// newest first. Safe from any goroutine.
func (a *Agent) Transfers() []*efpb.TransferStats { return a.transfers.snapshot() }
