package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
)

// These tests run a real control plane and real agents that share their
// site's downloads over memberlist on loopback (real sockets).

// sharer runs an agent that shares with its site.
func (f *fleet) sharer(id, site string, mod func(*agent.Options)) *agent.Agent {
	f.t.Helper()
	labels := map[string]string{}
	if site != "" {
		labels["site"] = site
	}
	return f.cp.StartAgent(f.t, f.rt, id, labels, func(o *agent.Options) {
		o.Peers = agent.PeerOptions{Listen: "127.0.0.1:0", Settle: 300 * time.Millisecond}
		if mod != nil {
			mod(o)
		}
	})
}

func waitPeers(t *testing.T, a *agent.Agent, members int) {
	t.Helper()
	require.Eventually(t, func() bool {
		ps := a.PeerStats()
		return ps != nil && ps.SiteVersion > 0 && ps.Addr != "" && ps.Members == uint32(members)
	}, 60*time.Second, 20*time.Millisecond, "peer stats: %v, want %d members", a.PeerStats(), members)
}

// pushPadded uploads a trained fraud model padded to about size bytes, so
// that it has many chunks.
func (f *fleet) pushPadded(version string, seed uint64, size int) api.ModelVersion {
	f.t.Helper()
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: 2000})
	require.NoError(f.t, err)
	mv, err := f.cp.AddModelVersion(context.Background(), "fraud", version, onnxbuild.Pad(art.ONNX, size), art.Metadata(), false)
	require.NoError(f.t, err)
	return mv
}

func transferOf(a *agent.Agent, version string) (broker, peer uint64) {
	for _, tr := range a.Transfers() {
		if tr.ModelVersion == version {
			return tr.BrokerBytes, tr.PeerBytes
		}
	}
	return 0, 0
}

// TestSiteSharesOneDownload: the devices of a site that share find each
// other through the control plane's signed site documents (another site's,
// and a device that does not share, stay out), and a deploy to all of
// them crosses the broker about once for the site; the rest comes from
// peers, every chunk checked. The device that does not share downloads
// from the broker as always.
func TestSiteSharesOneDownload(t *testing.T) {
	f := startFleet(t)
	var s1 []*agent.Agent
	for i := range 3 {
		s1 = append(s1, f.sharer(fmt.Sprintf("s1-%d", i), "s1", nil))
	}
	other := f.sharer("s2-0", "s2", nil)
	plain := f.cp.StartAgent(t, f.rt, "s1-plain", map[string]string{"site": "s1"}, nil)
	for _, a := range s1 {
		waitPeers(t, a, 2)
	}
	waitPeers(t, other, 0)
	assert.Nil(t, plain.PeerStats(), "a device that does not share reports no peers")

	mv := f.pushPadded("1.0.0", 1, 1<<20)
	require.Greater(t, mv.ChunkCount, uint32(8))
	_, err := f.cp.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "1.0.0", Selector: "site!=none"})
	require.NoError(t, err)
	f.waitReported("fraud", "1.0.0", "s1-0", "s1-1", "s1-2", "s2-0", "s1-plain")

	var siteBroker, sitePeer uint64
	for _, a := range s1 {
		b, p := transferOf(a, "1.0.0")
		assert.Equal(t, mv.Size, b+p, "every byte of the model came from the broker or a peer")
		siteBroker += b
		sitePeer += p
	}
	t.Logf("site s1: %d bytes from the broker, %d from peers, model %d bytes", siteBroker, sitePeer, mv.Size)
	// Without sharing the site would fetch 3 copies; two sources elected
	// at once (gossip slowed by a busy machine) may double some chunks.
	assert.Less(t, siteBroker, 2*mv.Size, "site s1 fetched %d bytes from the broker for a %d-byte model", siteBroker, mv.Size)
	assert.Positive(t, sitePeer)
	b, p := transferOf(other, "1.0.0")
	assert.Equal(t, mv.Size, b, "alone at its site, s2-0 fetched everything from the broker")
	assert.Zero(t, p)
	b, _ = transferOf(plain, "1.0.0")
	assert.Equal(t, mv.Size, b, "the device that does not share used the broker path")
	for _, a := range append(s1, other) {
		ps := a.PeerStats()
		assert.Zero(t, ps.BadChunks, "no peer sent a bad chunk")
		assert.Zero(t, ps.Unknown, "no unknown member tried to join")
	}
}
