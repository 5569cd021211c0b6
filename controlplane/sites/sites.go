// Package sites runs site-local sharing from the control plane: each site's
// gossip keys (generated on first use, rotatable), and for every device that
// shares, a signed site document (the keys, its member ticket, its site's
// peer addresses) retained on the device's own topic. Imported by
// controlplane.
package sites

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of Options.
const (
	DefaultTTL        = 30 * 24 * time.Hour
	DefaultKeyOverlap = time.Hour
	DefaultIssueDelay = 500 * time.Millisecond
	// JoinPeers is how many addresses a site document lists: those of
	// the site's first members by id (enough to join: memberlist finds
	// the rest).
	JoinPeers = 8
	// KeySize is the size of a site's gossip keys (AES-256).
	KeySize = 32

	maxAddrLen  = 128
	sweepEvery  = time.Minute
	prefixDev   = "devices/"
	prefixKeys  = "keys/"
	maxSiteLen  = topics.MaxNameLen
	keyIDLength = 8 // bytes of sha256 shown as a key id
)

// Bus publishes on the MQTT bus (QoS 1).
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
}

// Devices is what the service needs of the registry.
type Devices interface {
	// Site returns the device's site label ("" without one) and whether
	// the device is registered.
	Site(id string) (site string, ok bool)
}

// Options configure a Service. Fields without a documented default are
// required.
type Options struct {
	// KV holds the site keys and what was issued to each device.
	KV      *store.KV
	Keys    *keys.Set
	Bus     Bus
	Scheme  topics.Scheme
	Devices Devices
	// TTL is how long a site document and its ticket are valid; they are
	// issued again when half of it is left. Default DefaultTTL.
	TTL time.Duration
	// KeyOverlap is how long a site's previous gossip key stays listed
	// after a rotation, so members that have not received the new one
	// yet keep talking to those that have; default DefaultKeyOverlap.
	KeyOverlap time.Duration
	// IssueDelay collects the changes of a site (devices coming up
	// together) into one round of documents; default DefaultIssueDelay.
	IssueDelay time.Duration
	// ModelSize returns a model version's size, for Sites' WAN ratio;
	// nil leaves the ratio out.
	ModelSize func(model, version string) (uint64, bool)
	// Clock is the time source; default time.Now.
	Clock      func() time.Time
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// member is what the service keeps of one sharing device (stored as JSON
// under devices/{id}).
type member struct {
	// Addr is where the device's member listens, as its telemetry said
	// ("" before it joined).
	Addr string `json:"addr,omitempty"`
	// Version and Site are those of the last document issued; Expires is
	// when it ends; Digest what it said (site, keys, peers).
	Version uint64    `json:"version,omitempty"`
	Site    string    `json:"site,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
	Digest  string    `json:"digest,omitempty"`
}

// siteKeys are a site's gossip keys, the current one first (stored as
// JSON under keys/{site}).
type siteKeys struct {
	Keys    [][]byte  `json:"keys"`
	Rotated time.Time `json:"rotated,omitzero"`
}

// Service issues site documents. Create it with New, publish with
// PublishRetained at start, and run it with Run.
type Service struct {
	o      Options
	log    *slog.Logger
	wake   chan struct{} // capacity 1
	issued prometheus.Counter

	// mu guards members, keys and dirty. It is a leaf: the registry is
	// asked outside it.
	mu      sync.Mutex
	members map[string]*member
	keys    map[string]*siteKeys
	dirty   bool

	// repMu guards reports: every device's latest telemetry, for Sites.
	repMu   sync.Mutex
	reports map[string]report
}

// New loads what was issued before.
func New(o Options) (*Service, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.KeyOverlap <= 0 {
		o.KeyOverlap = DefaultKeyOverlap
	}
	if o.IssueDelay <= 0 {
		o.IssueDelay = DefaultIssueDelay
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		o: o, log: o.Logger.With("component", "sites"), wake: make(chan struct{}, 1),
		members: map[string]*member{}, keys: map[string]*siteKeys{}, reports: map[string]report{},
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_site_documents_issued_total",
			Help: "Signed site documents (gossip keys, member ticket, peers) issued to devices that share their site's downloads.",
		}),
	}
	err := o.KV.Scan(prefixDev, func(key string, val []byte) error {
		m := &member{}
		if err := o.KV.GetJSON(key, m); err != nil {
			return err
		}
		s.members[strings.TrimPrefix(key, prefixDev)] = m
		return nil
	})
	if err == nil {
		err = o.KV.Scan(prefixKeys, func(key string, _ []byte) error {
			k := &siteKeys{}
			if err := o.KV.GetJSON(key, k); err != nil {
				return err
			}
			s.keys[strings.TrimPrefix(key, prefixKeys)] = k
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("sites: load: %w", err)
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.issued, newCollector(s))
	}
	return s, nil
}

// OnTelemetry records what a device's telemetry says of its sharing: a
// device that reports peer stats shares (its address may still be empty);
// one that does not, does not. A change makes the next round issue
// documents.
func (s *Service) OnTelemetry(dev string, t *efpb.Telemetry) {
	if site, ok := s.o.Devices.Site(dev); ok {
		s.record(dev, site, t)
	} else {
		s.repMu.Lock()
		delete(s.reports, dev) // revoked meanwhile
		s.repMu.Unlock()
	}
	p := t.GetPeers()
	s.mu.Lock()
	m, known := s.members[dev]
	var changed bool
	switch {
	case p == nil && known:
		delete(s.members, dev)
		changed = true
	case p != nil:
		addr := p.GetAddr()
		if validAddr(addr) != nil {
			addr = "" // not dialable: the device still gets its document
		}
		if !known {
			m = &member{}
			s.members[dev] = m
		}
		changed = !known || m.Addr != addr
		m.Addr = addr
	}
	if changed {
		s.dirty = true
	}
	var rec *member
	if changed && m != nil && p != nil {
		c := *m
		rec = &c
	}
	s.mu.Unlock()
	if !changed {
		return
	}
	var err error
	if rec != nil {
		err = s.o.KV.SetJSON(prefixDev+dev, rec, false)
	} else {
		err = s.o.KV.Delete(prefixDev + dev)
	}
	if err != nil {
		s.log.Error("store sharing device failed", "device", dev, "err", err)
	}
	s.kick()
}

func (s *Service) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// validAddr checks a reported member address: host:port, bounded.
func validAddr(a string) error {
	if a == "" || len(a) > maxAddrLen {
		return errors.New("empty or too long")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("port %q", port)
	}
	return nil
}

// PublishRetained issues a fresh document to every sharing device: the
// embedded broker forgets retained messages when it stops, and a key
// rotated while the control plane was down must reach everyone.
func (s *Service) PublishRetained(ctx context.Context) (int, error) {
	s.mu.Lock()
	for _, m := range s.members {
		m.Digest = "" // issue again
	}
	s.mu.Unlock()
	return s.issue(ctx)
}

// Run issues documents after changes (collected for IssueDelay) and
// renews expiring ones, until ctx ends.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			timer := time.NewTimer(s.o.IssueDelay) // real time: batching is about arrivals
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		case <-t.C:
		}
		if _, err := s.issue(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("issue site documents failed", "err", err)
		}
	}
}

// RotateKey gives site a new gossip key; the previous one stays listed for
// KeyOverlap. It returns the new key's id.
func (s *Service) RotateKey(ctx context.Context, site string) (string, error) {
	if err := topics.ValidModelName(site); site == "" || len(site) > maxSiteLen || err != nil {
		return "", api.Errorf(api.ErrInvalid, "site %q: want 1..%d characters of [A-Za-z0-9._-]", site, maxSiteLen)
	}
	k, err := newKey()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	cur := s.keys[site]
	next := &siteKeys{Keys: [][]byte{k}, Rotated: s.o.Clock()}
	if cur != nil && len(cur.Keys) > 0 {
		next.Keys = append(next.Keys, cur.Keys[0])
	}
	s.keys[site] = next
	s.mu.Unlock()
	if err := s.o.KV.SetJSON(prefixKeys+site, next, true); err != nil {
		return "", fmt.Errorf("sites: rotate key of %s: %w", site, err)
	}
	s.log.Info("site gossip key rotated", "site", site, "key", KeyID(k))
	if _, err := s.issue(ctx); err != nil {
		return "", err
	}
	return KeyID(k), nil
}

// KeyID names a gossip key without revealing it.
func KeyID(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:keyIDLength])
}

func newKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("sites: generate gossip key: %w", err)
	}
	return k, nil
}

// planned is one document to issue.
type planned struct {
	dev    string
	site   string
	peers  []string
	keys   [][]byte
	digest string
	prev   member
}

// issue works out every sharing device's document and issues those that
// changed or expire within half their TTL.
func (s *Service) issue(ctx context.Context) (int, error) {
	now := s.o.Clock()
	// The registry first, without the lock: who is where.
	s.mu.Lock()
	ids := make([]string, 0, len(s.members))
	for id := range s.members {
		ids = append(ids, id)
	}
	s.dirty = false
	s.mu.Unlock()
	slices.Sort(ids)
	siteOf := make(map[string]string, len(ids))
	var gone []string
	for _, id := range ids {
		site, ok := s.o.Devices.Site(id)
		if !ok {
			gone = append(gone, id)
			continue
		}
		if topics.ValidModelName(site) != nil || len(site) > maxSiteLen {
			site = "" // a label that cannot name a site shares with nobody
		}
		siteOf[id] = site
	}

	var plan []planned
	var newKeys []string // sites whose keys changed
	s.mu.Lock()
	var rotate []string
	for _, id := range gone {
		// A device revoked while it shared knows its site's key: the site
		// gets a new one (the old one ends with the overlap).
		if m := s.members[id]; m != nil && m.Site != "" && !slices.Contains(rotate, m.Site) {
			rotate = append(rotate, m.Site)
		}
		delete(s.members, id)
	}
	for _, site := range rotate {
		k, err := newKey()
		if err != nil {
			s.mu.Unlock()
			return 0, err
		}
		next := &siteKeys{Keys: [][]byte{k}, Rotated: now}
		if cur := s.keys[site]; cur != nil && len(cur.Keys) > 0 {
			next.Keys = append(next.Keys, cur.Keys[0])
		}
		s.keys[site] = next
		newKeys = append(newKeys, site)
		s.log.Info("site gossip key rotated: a device that shared it left the fleet", "site", site, "key", KeyID(k))
	}
	addrs := map[string][]string{} // site → "id addr" of members with an address
	for _, id := range ids {
		m, site := s.members[id], siteOf[id]
		if m != nil && site != "" && m.Addr != "" {
			addrs[site] = append(addrs[site], id+" "+m.Addr)
		}
	}
	for _, id := range ids {
		m, site := s.members[id], siteOf[id]
		if m == nil {
			continue
		}
		p := planned{dev: id, site: site, prev: *m}
		if site != "" {
			sk := s.keys[site]
			if sk == nil {
				k, err := newKey()
				if err != nil {
					s.mu.Unlock()
					return 0, err
				}
				sk = &siteKeys{Keys: [][]byte{k}}
				s.keys[site] = sk
				newKeys = append(newKeys, site)
			}
			if len(sk.Keys) > 1 && now.Sub(sk.Rotated) >= s.o.KeyOverlap {
				sk.Keys = sk.Keys[:1] // the overlap is over
				newKeys = append(newKeys, site)
			}
			p.keys = sk.Keys
			// The site's first JoinPeers members (by id) are every
			// member's contacts: enough to join, memberlist finds the
			// rest, and a member that comes later changes nobody's
			// document but its own (no round of the whole site's
			// documents per member).
			for _, e := range addrs[site] {
				peerID, addr, _ := strings.Cut(e, " ")
				if peerID != id && len(p.peers) < JoinPeers {
					p.peers = append(p.peers, addr)
				}
			}
		}
		p.digest = digest(p.site, p.keys, p.peers)
		if p.digest == m.Digest && m.Expires.Sub(now) > s.o.TTL/2 {
			continue
		}
		if site == "" && m.Site == "" && m.Digest != "" {
			continue // told to stop sharing already
		}
		plan = append(plan, p)
	}
	keysToStore := map[string]siteKeys{}
	for _, site := range newKeys {
		keysToStore[site] = *s.keys[site]
	}
	s.mu.Unlock()

	for _, id := range gone {
		if err := s.o.KV.Delete(prefixDev + id); err != nil {
			return 0, fmt.Errorf("sites: forget %s: %w", id, err)
		}
	}
	if len(plan) == 0 && len(keysToStore) == 0 {
		return 0, nil
	}
	// Sign every document and record its version (synced) before any is
	// published: a version, once out, is never issued again.
	type out struct {
		dev     string
		payload []byte
		rec     member
	}
	outs := make([]out, 0, len(plan))
	for _, p := range plan {
		rec := member{Addr: p.prev.Addr, Version: max(p.prev.Version+1, uint64(now.UnixMilli())),
			Site: p.site, Expires: now.Add(s.o.TTL), Digest: p.digest}
		payload, err := s.sign(p, rec, now)
		if err != nil {
			return 0, err
		}
		outs = append(outs, out{p.dev, payload, rec})
	}
	err := s.o.KV.Update(func(tx *store.Tx) error {
		for site, k := range keysToStore {
			if err := tx.SetJSON(prefixKeys+site, k); err != nil {
				return err
			}
		}
		for _, o := range outs {
			if err := tx.SetJSON(prefixDev+o.dev, o.rec); err != nil {
				return err
			}
		}
		return nil
	}, true)
	if err != nil {
		return 0, fmt.Errorf("sites: record issued documents: %w", err)
	}
	s.mu.Lock()
	for _, o := range outs {
		if m := s.members[o.dev]; m != nil {
			addr := m.Addr // telemetry may have changed it meanwhile
			*m = o.rec
			m.Addr = addr
			if addr != o.rec.Addr {
				m.Digest = "" // issue again with the new address known
				s.dirty = true
			}
		}
	}
	again := s.dirty
	s.mu.Unlock()
	published := 0
	for _, o := range outs {
		if err := s.o.Bus.Publish(ctx, s.o.Scheme.Site(o.dev), o.payload, true); err != nil {
			// Stored: published again on the next start or reconnect.
			if ctx.Err() != nil {
				return published, ctx.Err()
			}
			s.log.Warn("publish site document failed", "device", o.dev, "err", err)
			continue
		}
		published++
	}
	s.issued.Add(float64(published))
	s.log.Debug("site documents issued", "documents", published)
	if again {
		s.kick()
	}
	return published, nil
}

// sign builds and signs one device's document.
func (s *Service) sign(p planned, rec member, now time.Time) ([]byte, error) {
	doc := &efpb.SitePeers{
		ProtocolVersion: efpb.ProtocolVersion1,
		DeviceId:        p.dev,
		Site:            p.site,
		Version:         rec.Version,
		IssuedUnix:      now.Unix(),
		ExpiresUnix:     rec.Expires.Unix(),
		Peers:           p.peers,
		GossipKeys:      p.keys,
	}
	if p.site != "" {
		ticket, err := signing.SignMessage(efpb.PayloadTypeMemberTicket, &efpb.MemberTicket{
			ProtocolVersion: efpb.ProtocolVersion1, DeviceId: p.dev, Site: p.site, ExpiresUnix: rec.Expires.Unix(),
		}, s.o.Keys.Control)
		if err != nil {
			return nil, fmt.Errorf("sites: sign ticket of %s: %w", p.dev, err)
		}
		doc.Ticket = ticket
	}
	env, err := signing.SignMessage(efpb.PayloadTypeSitePeers, doc, s.o.Keys.Control)
	if err != nil {
		return nil, fmt.Errorf("sites: sign document of %s: %w", p.dev, err)
	}
	// Checked as an agent would, before anything goes out.
	if _, err := s.o.Keys.Verifier.VerifySitePeers(env, now); err != nil {
		return nil, fmt.Errorf("sites: the signed document of %s does not verify with the trust bundle: %w", p.dev, err)
	}
	b, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("sites: encode document of %s: %w", p.dev, err)
	}
	return b, nil
}

func digest(site string, keys [][]byte, peers []string) string {
	h := sha256.New()
	h.Write([]byte(site))
	for _, k := range keys {
		h.Write([]byte{0})
		h.Write(k)
	}
	for _, p := range peers {
		h.Write([]byte{1})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// report is what a device's latest telemetry said that Sites adds up.
type report struct {
	site      string
	sharing   bool
	members   uint32
	bad       uint64
	blocked   int
	transfers []*efpb.TransferStats
}

// record keeps what Sites needs of a device's telemetry.
func (s *Service) record(dev, site string, t *efpb.Telemetry) {
	r := report{site: site, transfers: t.GetTransfers()}
	if len(r.transfers) > maxTransfers {
		r.transfers = r.transfers[:maxTransfers]
	}
	if p := t.GetPeers(); p != nil {
		r.sharing, r.members, r.bad, r.blocked = true, p.GetMembers(), p.GetBadChunks(), len(p.GetBlocked())
	}
	s.repMu.Lock()
	s.reports[dev] = r
	s.repMu.Unlock()
}

// maxTransfers bounds the transfers kept per device (an agent reports 8).
const maxTransfers = 8

// Sites adds up, per site label, what the devices reported since the
// control plane started: who shares, how many members found each other,
// and each model version's bytes from the broker (the site's WAN link) and
// from peers. Devices without a site label are left out.
func (s *Service) Sites() []api.Site {
	type tkey struct{ model, version string }
	type agg struct {
		site api.Site
		tr   map[tkey]*api.SiteTransfer
	}
	by := map[string]*agg{}
	s.repMu.Lock()
	for _, r := range s.reports {
		if r.site == "" {
			continue
		}
		a := by[r.site]
		if a == nil {
			a = &agg{site: api.Site{Name: r.site}, tr: map[tkey]*api.SiteTransfer{}}
			by[r.site] = a
		}
		a.site.Devices++
		if r.sharing {
			a.site.Sharing++
			a.site.Members = max(a.site.Members, int(r.members)+1)
			a.site.BadChunks += r.bad
			a.site.Blocked += r.blocked
		}
		for _, t := range r.transfers {
			k := tkey{t.GetModelName(), t.GetModelVersion()}
			st := a.tr[k]
			if st == nil {
				st = &api.SiteTransfer{Model: k.model, Version: k.version}
				a.tr[k] = st
			}
			st.Devices++
			st.WANBytes += t.GetBrokerBytes()
			st.PeerBytes += t.GetPeerBytes()
		}
	}
	s.repMu.Unlock()
	out := make([]api.Site, 0, len(by))
	for _, a := range by {
		for _, t := range a.tr {
			if s.o.ModelSize != nil {
				if size, ok := s.o.ModelSize(t.Model, t.Version); ok && size > 0 {
					t.ModelBytes = size
					t.WANRatio = float64(t.WANBytes) / float64(size)
				}
			}
			a.site.Transfers = append(a.site.Transfers, *t)
		}
		slices.SortFunc(a.site.Transfers, func(x, y api.SiteTransfer) int {
			return strings.Compare(x.Model+"@"+x.Version, y.Model+"@"+y.Version)
		})
		out = append(out, a.site)
	}
	slices.SortFunc(out, func(x, y api.Site) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// collector exports Sites to Prometheus at scrape time.
type collector struct {
	s                           *Service
	wan, peer, members, sharing *prometheus.Desc
}

func newCollector(s *Service) *collector {
	return &collector{
		s: s,
		wan: prometheus.NewDesc("edgefleet_site_wan_bytes",
			"Bytes of a model version the devices of a site fetched from the broker (the site's WAN link), as they last reported.",
			[]string{"site", "model", "version"}, nil),
		peer: prometheus.NewDesc("edgefleet_site_peer_bytes",
			"Bytes of a model version the devices of a site fetched from their peers (the site's LAN), as they last reported.",
			[]string{"site", "model", "version"}, nil),
		members: prometheus.NewDesc("edgefleet_site_members",
			"The largest number of a site's members one sharing device sees, itself included.", []string{"site"}, nil),
		sharing: prometheus.NewDesc("edgefleet_site_sharing_devices",
			"Devices of a site that share its downloads.", []string{"site"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.wan
	ch <- c.peer
	ch <- c.members
	ch <- c.sharing
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.s.Sites() {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(st.Members), st.Name)
		ch <- prometheus.MustNewConstMetric(c.sharing, prometheus.GaugeValue, float64(st.Sharing), st.Name)
		for _, t := range st.Transfers {
			ch <- prometheus.MustNewConstMetric(c.wan, prometheus.GaugeValue, float64(t.WANBytes), st.Name, t.Model, t.Version)
			ch <- prometheus.MustNewConstMetric(c.peer, prometheus.GaugeValue, float64(t.PeerBytes), st.Name, t.Model, t.Version)
		}
	}
}
