package sites

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

type fakeBus struct {
	mu  sync.Mutex
	got map[string][]byte // topic → last retained payload
}

func (b *fakeBus) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if retain {
		b.got[topic] = payload
	}
	return nil
}

type fakeDevices struct {
	mu   sync.Mutex
	site map[string]string // absent: not registered
}

func (d *fakeDevices) Site(id string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.site[id]
	return s, ok
}

type rig struct {
	t   *testing.T
	svc *Service
	bus *fakeBus
	dev *fakeDevices
	ks  *keys.Set
	kv  *store.KV
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ks, err := keys.Load(t.TempDir(), time.Now(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	db, err := store.Open(store.Options{InMemory: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	r := &rig{t: t, bus: &fakeBus{got: map[string][]byte{}}, dev: &fakeDevices{site: map[string]string{}}, ks: ks, kv: db.Namespace("sites")}
	r.svc = r.open()
	return r
}

func (r *rig) open() *Service {
	r.t.Helper()
	svc, err := New(Options{KV: r.kv, Keys: r.ks, Bus: r.bus, Scheme: topics.Scheme{Prefix: "ef/v1"}, Devices: r.dev,
		ModelSize: func(string, string) (uint64, bool) { return 1000, true }})
	require.NoError(r.t, err)
	return svc
}

// doc is the site document last retained for dev, checked as an agent
// checks it.
func (r *rig) doc(dev string) *efpb.SitePeers {
	r.t.Helper()
	r.bus.mu.Lock()
	b := r.bus.got[topics.Scheme{Prefix: "ef/v1"}.Site(dev)]
	r.bus.mu.Unlock()
	require.NotNil(r.t, b, "no site document for %s", dev)
	env := &efpb.Envelope{}
	require.NoError(r.t, proto.Unmarshal(b, env))
	d, err := r.ks.Verifier.VerifySitePeers(env, time.Now())
	require.NoError(r.t, err)
	tenv := d.GetTicket()
	require.NotNil(r.t, tenv)
	ticket, err := r.ks.Verifier.VerifyMemberTicket(tenv, time.Now())
	require.NoError(r.t, err)
	assert.Equal(r.t, dev, ticket.GetDeviceId())
	assert.Equal(r.t, d.GetSite(), ticket.GetSite())
	return d
}

func sharing(addr string, transfers ...*efpb.TransferStats) *efpb.Telemetry {
	return &efpb.Telemetry{Peers: &efpb.PeerStats{Addr: addr, Members: 1}, Transfers: transfers}
}

// TestDocumentsListTheSitesPeers: each sharing device of a site gets a
// signed document with the site's one key, its ticket and the other
// members' addresses; a device of another site gets another key; a new
// document has a higher version.
func TestDocumentsListTheSitesPeers(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.dev.site = map[string]string{"a1": "s1", "a2": "s1", "b1": "s2"}
	r.svc.OnTelemetry("a1", sharing("10.0.0.1:7946"))
	r.svc.OnTelemetry("a2", sharing("10.0.0.2:7946"))
	r.svc.OnTelemetry("b1", sharing("10.0.1.1:7946"))
	_, err := r.svc.issue(ctx)
	require.NoError(t, err)
	a1, a2, b1 := r.doc("a1"), r.doc("a2"), r.doc("b1")
	assert.Equal(t, "s1", a1.GetSite())
	assert.Equal(t, []string{"10.0.0.2:7946"}, a1.GetPeers())
	assert.Equal(t, []string{"10.0.0.1:7946"}, a2.GetPeers())
	assert.Empty(t, b1.GetPeers())
	require.Len(t, a1.GetGossipKeys(), 1)
	assert.Equal(t, a1.GetGossipKeys(), a2.GetGossipKeys(), "one key per site")
	assert.NotEqual(t, a1.GetGossipKeys(), b1.GetGossipKeys(), "another site, another key")

	// Nothing changed: nothing issued. A rotation: new documents, both keys.
	n, err := r.svc.issue(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	id, err := r.svc.RotateKey(ctx, "s1")
	require.NoError(t, err)
	assert.Len(t, id, 16)
	a1b := r.doc("a1")
	assert.Greater(t, a1b.GetVersion(), a1.GetVersion(), "versions only increase")
	require.Len(t, a1b.GetGossipKeys(), 2)
	assert.Equal(t, a1.GetGossipKeys()[0], a1b.GetGossipKeys()[1], "the previous key stays listed for the overlap")
	_, err = r.svc.RotateKey(ctx, "no such/site")
	assert.ErrorIs(t, err, api.ErrInvalid)

	// Restarted: the keys and versions survive; documents are issued again.
	r.svc = r.open()
	_, err = r.svc.PublishRetained(ctx)
	require.NoError(t, err)
	a1c := r.doc("a1")
	assert.Greater(t, a1c.GetVersion(), a1b.GetVersion())
	assert.Equal(t, a1b.GetGossipKeys(), a1c.GetGossipKeys())
}

// TestRevokedDeviceRotatesItsSitesKey: a sharing device that leaves the
// fleet knew its site's key: the site gets a new one.
func TestRevokedDeviceRotatesItsSitesKey(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.dev.site = map[string]string{"a1": "s1", "a2": "s1"}
	r.svc.OnTelemetry("a1", sharing("10.0.0.1:7946"))
	r.svc.OnTelemetry("a2", sharing("10.0.0.2:7946"))
	_, err := r.svc.issue(ctx)
	require.NoError(t, err)
	before := r.doc("a2").GetGossipKeys()[0]
	r.dev.mu.Lock()
	delete(r.dev.site, "a1")
	r.dev.mu.Unlock()
	_, err = r.svc.issue(ctx)
	require.NoError(t, err)
	after := r.doc("a2")
	assert.NotEqual(t, before, after.GetGossipKeys()[0], "a new key")
	assert.Empty(t, after.GetPeers(), "the revoked device is no peer any more")
}

// TestSitesAddsUpTransfers: per site, the WAN and LAN bytes of each model
// version as the devices last reported them, and the ratio to its size.
func TestSitesAddsUpTransfers(t *testing.T) {
	r := newRig(t)
	r.dev.site = map[string]string{"a1": "s1", "a2": "s1", "a3": "s1", "n1": ""}
	tr := func(broker, peer uint64) *efpb.TransferStats {
		return &efpb.TransferStats{ModelName: "fraud", ModelVersion: "1.0.0", BrokerBytes: broker, PeerBytes: peer}
	}
	r.svc.OnTelemetry("a1", sharing("10.0.0.1:7946", tr(1000, 0)))
	r.svc.OnTelemetry("a2", sharing("10.0.0.2:7946", tr(0, 1000)))
	r.svc.OnTelemetry("a3", &efpb.Telemetry{Transfers: []*efpb.TransferStats{tr(1000, 0)}}) // does not share
	r.svc.OnTelemetry("n1", sharing("10.0.9.1:7946", tr(1000, 0)))                          // no site
	got := r.svc.Sites()
	require.Len(t, got, 1)
	assert.Equal(t, api.Site{Name: "s1", Devices: 3, Sharing: 2, Members: 2, Transfers: []api.SiteTransfer{
		{Model: "fraud", Version: "1.0.0", Devices: 3, WANBytes: 2000, PeerBytes: 1000, ModelBytes: 1000, WANRatio: 2},
	}}, got[0])
}
