package controlplane_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// agentVerifier builds what an agent trusts: the root key from its
// credentials, then the trust bundle it finds retained on the trust topic.
func agentVerifier(t *testing.T, creds api.DeviceCredentials, trust message) *signing.Verifier {
	t.Helper()
	root, err := signing.ParsePublicKeyPEM([]byte(creds.RootPublicKey))
	require.NoError(t, err)
	v := signing.NewVerifier(root)
	_, err = v.UpdateTrustBundle(mustEnvelope(t, trust.payload), time.Now())
	require.NoError(t, err, "trust bundle from %s", trust.topic)
	return v
}

func TestManifestPublishedRetainedAndVerifies(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	a := fleettest.TrainedModel(t, 1)
	mv := ts.mustUpload("fraud", "v1", a)

	// A device connecting after the upload finds both retained.
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	trust := receive(t, subscribe(t, c, sc.Trust()), "trust bundle")
	assert.True(t, trust.retained)
	v := agentVerifier(t, creds, trust)

	msg := receive(t, subscribe(t, c, sc.Manifest("fraud", "v1")), "manifest")
	assert.True(t, msg.retained)
	m, err := v.VerifyManifest(mustEnvelope(t, msg.payload), time.Now())
	require.NoError(t, err)
	require.NoError(t, transfer.ValidateManifest(m, transfer.Limits{}))
	sum := sha256.Sum256(a.ONNX)
	assert.Equal(t, sum[:], m.Sha256)
	assert.Equal(t, mv.SHA256, hex.EncodeToString(m.Sha256))
	assert.Equal(t, uint64(len(a.ONNX)), m.Size)
	assert.Equal(t, "fraud", m.Name)
	assert.Equal(t, "v1", m.Version)
	assert.Equal(t, uint32(efpb.ProtocolVersion1), m.ProtocolVersion, "an FP32 model needs only version 1: old agents can take it")
	assert.True(t, proto.Equal(a.Training, m.Training), "training metadata is carried over")
	assert.Len(t, m.TestVectors, len(a.TestVectors))
	assert.InDelta(t, time.Now().Add(controlplane.DefaultManifestTTL).Unix(), m.ExpiresUnix, 60)

	// Signed with the control key instead, it must not verify as a manifest.
	forged, err := signing.SignMessage(efpb.PayloadTypeManifest, m, ts.internals().Keys.Control)
	require.NoError(t, err)
	_, err = v.VerifyManifest(forged, time.Now())
	assert.ErrorIs(t, err, signing.ErrThreshold)
}

func TestDeployPublishesSignedDesiredState(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", map[string]string{"site": "berlin", "hw": "arm64"})
	ts.register("dev-2", map[string]string{"site": "berlin", "hw": "x86_64"})
	ts.register("dev-3", map[string]string{"site": "paris", "hw": "arm64"})
	a1, a2 := fleettest.TrainedModel(t, 1), fleettest.TrainedModel(t, 2)
	ts.mustUpload("fraud", "v1", a1)
	ts.mustUpload("fraud", "v2", a2)
	ts.mustUpload("scorer", "v1", a1)

	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	v := agentVerifier(t, creds, receive(t, subscribe(t, c, sc.Trust()), "trust bundle"))
	desired := subscribe(t, c, sc.Desired("dev-1"))

	next := func(wantGen uint64) *efpb.DesiredState {
		t.Helper()
		msg := receive(t, desired, "desired state")
		d, err := v.VerifyDesired(mustEnvelope(t, msg.payload), time.Now())
		require.NoError(t, err)
		assert.Equal(t, "dev-1", d.DeviceId)
		assert.Equal(t, wantGen, d.Generation)
		assert.InDelta(t, time.Now().Add(controlplane.DefaultDesiredTTL).Unix(), d.ExpiresUnix, 60)
		return d
	}

	res := ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=berlin"})
	assert.Equal(t, []api.DeployedDevice{{ID: "dev-1", Generation: 1}, {ID: "dev-2", Generation: 1}}, res.Devices)
	d := next(1)
	sum1 := sha256.Sum256(a1.ONNX)
	require.Len(t, d.Models, 1)
	assert.Equal(t, "fraud", d.Models[0].Name)
	assert.Equal(t, "v1", d.Models[0].Version)
	assert.Equal(t, sum1[:], d.Models[0].Sha256)

	res = ts.deploy(api.DeployRequest{Model: "fraud", Version: "v2", Selector: "hw=arm64,site!=paris"})
	assert.Equal(t, []api.DeployedDevice{{ID: "dev-1", Generation: 2}}, res.Devices)
	d = next(2)
	require.Len(t, d.Models, 1)
	assert.Equal(t, "v2", d.Models[0].Version)

	// Another model name is added; the fraud assignment stays.
	res = ts.deploy(api.DeployRequest{Model: "scorer", Version: "v1", Devices: []string{"dev-1", "dev-1"}})
	assert.Equal(t, []api.DeployedDevice{{ID: "dev-1", Generation: 3}}, res.Devices)
	d = next(3)
	require.Len(t, d.Models, 2)
	assert.Equal(t, [2]string{"fraud", "v2"}, [2]string{d.Models[0].Name, d.Models[0].Version})
	assert.Equal(t, [2]string{"scorer", "v1"}, [2]string{d.Models[1].Name, d.Models[1].Version})

	// Rollback is a new, higher generation naming the older version.
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	d = next(4)
	assert.Equal(t, "v1", d.Models[0].Version)

	dev, ok := ts.internals().Registry.Get("dev-1")
	require.True(t, ok)
	require.NotNil(t, dev.Desired)
	assert.Equal(t, uint64(4), dev.Desired.Generation)
	assert.Equal(t, []api.Assignment{{Name: "fraud", Version: "v1"}, {Name: "scorer", Version: "v1"}}, dev.Desired.Models)
	dev2, _ := ts.internals().Registry.Get("dev-2")
	assert.Equal(t, uint64(1), dev2.Desired.Generation)
	dev3, _ := ts.internals().Registry.Get("dev-3")
	assert.Nil(t, dev3.Desired)
}

func TestFetchRequestsPublishChunks(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	a := fleettest.TrainedModel(t, 1)
	mv := ts.mustUpload("fraud", "v1", a)
	require.GreaterOrEqual(t, mv.ChunkCount, uint32(1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})

	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	v := agentVerifier(t, creds, receive(t, subscribe(t, c, sc.Trust()), "trust bundle"))
	m, err := v.VerifyManifest(mustEnvelope(t, receive(t, subscribe(t, c, sc.Manifest("fraud", "v1")), "manifest").payload), time.Now())
	require.NoError(t, err)
	chunks := subscribe(t, c, sc.Chunks("fraud", "v1"))

	req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1"})
	require.NoError(t, err)
	publish(t, c, sc.Fetch("dev-1"), req)

	model := make([]byte, m.Size)
	got := map[uint32]bool{}
	for len(got) < len(m.ChunkSha256) {
		msg := receive(t, chunks, "chunk")
		assert.False(t, msg.retained, "chunks are not retained")
		ch := &efpb.Chunk{}
		require.NoError(t, proto.Unmarshal(msg.payload, ch))
		require.Less(t, int(ch.Index), len(m.ChunkSha256))
		sum := sha256.Sum256(ch.Data)
		require.Equal(t, m.ChunkSha256[ch.Index], sum[:], "chunk %d hash", ch.Index)
		copy(model[uint64(ch.Index)*uint64(m.ChunkSize):], ch.Data)
		got[ch.Index] = true
	}
	whole := sha256.Sum256(model)
	assert.Equal(t, m.Sha256, whole[:], "assembled chunks hash to the manifest")
	assert.Equal(t, a.ONNX, model)
	// The counter moves after the publish returns, which may be after the
	// subscriber already holds the chunk.
	assert.Eventually(t, func() bool {
		return metricValue(t, ts, "edgefleet_chunk_publishes_total") == float64(len(m.ChunkSha256))
	},
		10*time.Second, 5*time.Millisecond, "one publish per chunk")
}

func TestFetchLargeModelResumes(t *testing.T) {
	// A real model padded to 300 kB: 5 chunks.
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	a := fleettest.TrainedModel(t, 1)
	model := onnxbuild.Pad(a.ONNX, 300_000-len(a.ONNX)-8)
	code, body := ts.upload("big", "v1", model, a.Metadata(), false)
	require.Equal(t, http.StatusCreated, code, "%s", body)
	var rec api.ModelVersion
	require.NoError(t, json.Unmarshal(body, &rec))
	require.Equal(t, uint32(5), rec.ChunkCount)
	ts.deploy(api.DeployRequest{Model: "big", Version: "v1", Devices: []string{"dev-1"}})

	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	chunks := subscribe(t, c, sc.Chunks("big", "v1"))
	req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "big", Version: "v1", Missing: []uint32{3, 1}})
	require.NoError(t, err)
	publish(t, c, sc.Fetch("dev-1"), req)
	var idx []uint32
	for range 2 {
		ch := &efpb.Chunk{}
		require.NoError(t, proto.Unmarshal(receive(t, chunks, "chunk").payload, ch))
		start := int(ch.Index) * int(rec.ChunkSize)
		assert.Equal(t, model[start:min(start+int(rec.ChunkSize), len(model))], ch.Data)
		idx = append(idx, ch.Index)
	}
	assert.ElementsMatch(t, []uint32{1, 3}, idx, "only the missing chunks are sent")
	select {
	case m := <-chunks:
		t.Fatalf("unexpected extra chunk on %s", m.topic)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestMalformedPayloadsAreDropped(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	ts.register("dev-2", nil)
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}

	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		return b
	}
	garbage := []byte{0xff, 0xff, 0xff, 0xff, 0x0f}
	tests := []struct {
		topic   string
		payload []byte
		kind    string
		reason  string
	}{
		{sc.Status("dev-1"), garbage, "status", ingest.Decode},
		{sc.Telemetry("dev-1"), garbage, "telemetry", ingest.Decode},
		{sc.Presence("dev-1"), garbage, "presence", ingest.Decode},
		{sc.Fetch("dev-1"), garbage, "fetch", ingest.Decode},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-2", ModelName: "fraud"}), "status", ingest.DeviceMismatch},
		{sc.Telemetry("dev-1"), enc(&efpb.Telemetry{DeviceId: "dev-2"}), "telemetry", ingest.DeviceMismatch},
		{sc.Presence("dev-1"), enc(&efpb.Presence{DeviceId: ""}), "presence", ingest.DeviceMismatch},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "a/b"}), "status", ingest.Invalid},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-1", ProtocolVersion: 99, ModelName: "fraud"}), "status", ingest.ProtocolVersion},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v9"}), "fetch", ingest.UnknownModel},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1", Missing: []uint32{1 << 20}}), "fetch", ingest.Invalid},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1", Missing: make([]uint32, 1000)}), "fetch", ingest.Invalid},
	}
	for i, tt := range tests {
		publish(t, c, tt.topic, tt.payload)
		require.Eventually(t, func() bool { return ts.Dropped() == uint64(i+1) }, 10*time.Second, 5*time.Millisecond,
			"payload %d on %s: dropped = %d", i, tt.topic, ts.Dropped())
		assert.Equal(t, 1.0, metricValue(t, ts, "edgefleet_mqtt_payloads_dropped_total", "topic_kind", tt.kind, "reason", tt.reason)-
			float64(countBefore(tests[:i], tt.kind, tt.reason)), "payload %d: %s/%s", i, tt.kind, tt.reason)
	}
	// Payloads that reach the handlers without the broker's checks: an
	// unregistered device, a topic outside the scheme, an oversized payload.
	in := ts.internals()
	in.OnStatus(sc.Status("ghost"), enc(&efpb.StatusEvent{DeviceId: "ghost", ModelName: "fraud"}))
	in.OnTelemetry(sc.Telemetry("ghost"), enc(&efpb.Telemetry{DeviceId: "ghost"}))
	in.OnPresence(sc.Presence("ghost"), enc(&efpb.Presence{DeviceId: "ghost"}))
	in.OnFetch(sc.Fetch("ghost"), enc(&efpb.FetchRequest{DeviceId: "ghost", Name: "fraud", Version: "v1"}))
	in.OnStatus("elsewhere/dev/dev-1/status", enc(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "fraud"}))
	in.OnTelemetry(sc.Telemetry("dev-1"), make([]byte, ingest.MaxPayload+1))
	assert.Equal(t, 4.0, sumDropped(t, ts, ingest.UnknownDevice))
	assert.Equal(t, 1.0, metricValue(t, ts, "edgefleet_mqtt_payloads_dropped_total", "topic_kind", "status", "reason", ingest.BadTopic))
	assert.Equal(t, 1.0, metricValue(t, ts, "edgefleet_mqtt_payloads_dropped_total", "topic_kind", "telemetry", "reason", ingest.TooLarge))
	assert.Equal(t, uint64(len(tests)+6), ts.Dropped())

	// Nothing was applied, and the control plane still serves.
	d, _ := ts.internals().Registry.Get("dev-1")
	assert.Empty(t, d.Reported)
	assert.Nil(t, d.Telemetry)
	assert.Zero(t, in.Models.Queued())
	code, _ := ts.do("GET", "/healthz", nil)
	assert.Equal(t, 200, code)
	assert.True(t, c.IsConnected(), "a malformed payload does not cost the device its connection")
}

func countBefore(tests []struct {
	topic   string
	payload []byte
	kind    string
	reason  string
}, kind, reason string) int {
	n := 0
	for _, tt := range tests {
		if tt.kind == kind && tt.reason == reason {
			n++
		}
	}
	return n
}

func sumDropped(t *testing.T, ts *testServer, reason string) float64 {
	total := 0.0
	for _, k := range []string{"status", "telemetry", "presence", "fetch"} {
		total += metricValue(t, ts, "edgefleet_mqtt_payloads_dropped_total", "topic_kind", k, "reason", reason)
	}
	return total
}

// metricValue reads a counter or gauge of the control plane's metrics by
// name and label pairs (0 when the series does not exist yet).
func metricValue(t *testing.T, ts *testServer, name string, labels ...string) float64 {
	t.Helper()
	fams, err := ts.internals().Metrics.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func TestDeviceReportsAreRecorded(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		return b
	}

	publish(t, c, sc.Presence("dev-1"), enc(&efpb.Presence{DeviceId: "dev-1", Online: true, AgentVersion: "0.1.0"}))
	require.Eventually(t, func() bool { d, _ := ts.internals().Registry.Get("dev-1"); return d.Online }, 10*time.Second, 5*time.Millisecond)

	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 7, Generation: 2, ModelName: "fraud", ModelVersion: "v2",
		State: efpb.ModelState_MODEL_STATE_ROLLED_BACK, Reason: "test vector 0 mismatch", ActiveVersion: "v1",
	}))
	publish(t, c, sc.Telemetry("dev-1"), enc(&efpb.Telemetry{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 3, UptimeSeconds: 60, AgentVersion: "0.1.1",
		Models: []*efpb.ActiveModel{{Name: "fraud", Version: "v1", State: efpb.ModelState_MODEL_STATE_ACTIVE, Inferences: 42}},
	}))
	require.Eventually(t, func() bool {
		d, _ := ts.internals().Registry.Get("dev-1")
		return d.Telemetry != nil && d.Reported["fraud"] != nil
	}, 10*time.Second, 5*time.Millisecond)

	var d api.Device
	code, body := ts.doJSON("GET", "/api/v1/devices/dev-1", nil, &d)
	require.Equal(t, 200, code, "%s", body)
	st := d.Reported["fraud"]
	assert.Equal(t, api.ModelRolledBack, st.State)
	assert.Equal(t, "v2", st.TargetVersion)
	assert.Equal(t, "v1", st.ActiveVersion)
	assert.Equal(t, "test vector 0 mismatch", st.Reason)
	assert.Equal(t, uint64(2), st.Generation)
	assert.True(t, d.Online)
	assert.Equal(t, "0.1.1", d.AgentVersion)
	assert.Equal(t, uint64(42), d.Telemetry.Models[0].Inferences)
	assert.Equal(t, api.ModelActive, d.Telemetry.Models[0].State)
	assert.False(t, d.LastSeen.IsZero())

	// The status is written through to the store (in the next batch of
	// status events): a registry loaded from it then has it.
	require.Eventually(t, func() bool {
		reloaded, err := fleet.OpenRegistry(ts.internals().KV, nil)
		require.NoError(t, err)
		stored, _ := reloaded.Get("dev-1")
		return stored.Reported["fraud"] != nil && stored.Reported["fraud"].State == api.ModelRolledBack
	}, 10*time.Second, 5*time.Millisecond, "the status event is stored")

	// An older event arriving late does not undo the newer one.
	dropped := ts.Dropped()
	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 5, ModelName: "fraud", ModelVersion: "v2",
		State: efpb.ModelState_MODEL_STATE_DOWNLOADING, ActiveVersion: "v1",
	}))
	require.Eventually(t, func() bool { return ts.Dropped() > dropped }, 10*time.Second, 5*time.Millisecond)
	d, _ = ts.internals().Registry.Get("dev-1")
	assert.Equal(t, api.ModelRolledBack, d.Reported["fraud"].State, "a stale event is dropped")

	// A device-level refusal (no model) is recorded, not dropped.
	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 8, Generation: 2,
		State: efpb.ModelState_MODEL_STATE_FAILED, Reason: "desired state refused: generation 1 is older than the accepted generation 2 (replay)",
	}))
	require.Eventually(t, func() bool { d, _ := ts.internals().Registry.Get("dev-1"); return d.LastRefusal != nil }, 10*time.Second, 5*time.Millisecond)
	d, _ = ts.internals().Registry.Get("dev-1")
	assert.Contains(t, d.LastRefusal.Reason, "replay")

	publish(t, c, sc.Presence("dev-1"), enc(&efpb.Presence{DeviceId: "dev-1", Online: false}))
	require.Eventually(t, func() bool { d, _ := ts.internals().Registry.Get("dev-1"); return !d.Online }, 10*time.Second, 5*time.Millisecond)
}

func TestRenewExtendsExpiringDocuments(t *testing.T) {
	now := time.Now()
	clock := testkit.NewClock(now)
	ts := newTestServer(t, func(o *controlplane.Options) { o.Clock = clock.Now })
	ts.register("dev-1", nil)
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	in := ts.internals()
	before, err := in.Models.Get("fraud", "v1")
	require.NoError(t, err)

	// Nothing is due yet.
	require.NoError(t, in.Renew(context.Background()))
	same, err := in.Models.Get("fraud", "v1")
	require.NoError(t, err)
	assert.Equal(t, before.Expires, same.Expires)
	d, _ := ts.internals().Registry.Get("dev-1")
	assert.Equal(t, uint64(1), d.Desired.Generation)

	later := now.Add(70 * 24 * time.Hour)
	clock.Set(later)
	require.NoError(t, in.Renew(context.Background()))
	after, err := in.Models.Get("fraud", "v1")
	require.NoError(t, err)
	assert.Equal(t, later.Add(controlplane.DefaultManifestTTL).Unix(), after.Expires.Unix())
	env, err := in.Models.Envelope("fraud", "v1")
	require.NoError(t, err)
	m, err := in.Keys.Verifier.VerifyManifest(mustEnvelope(t, env), later)
	require.NoError(t, err)
	assert.Equal(t, before.SHA256, hex.EncodeToString(m.Sha256), "same model")
	d, _ = ts.internals().Registry.Get("dev-1")
	assert.Equal(t, uint64(2), d.Desired.Generation, "re-issued with the next generation")
	assert.Equal(t, []api.Assignment{{Name: "fraud", Version: "v1"}}, d.Desired.Models)
	assert.Equal(t, later.Add(controlplane.DefaultDesiredTTL).Unix(), d.Desired.Expires.Unix())
}

// TestFetchOnlyAssignedVersionsWithinABudget: one device credential cannot
// make the control plane publish models for nothing. A fetch for a version
// the device was not assigned is dropped (not_assigned) and nothing is
// published; an assigned version may be asked for a few times over within
// the window, then further requests are dropped (rate_limited). A request
// is charged what it costs: asked again without saying it started afresh
// (FetchRequest.fresh), chunks whose publish already went to the device
// are not published again at all (on their way), and cost nothing.
func TestFetchOnlyAssignedVersionsWithinABudget(t *testing.T) {
	ts := newTestServer(t, func(o *controlplane.Options) { o.ChunkBatchWindow = -1 })
	creds := ts.register("dev-1", nil)
	ts.register("dev-2", nil)
	a := fleettest.TrainedModel(t, 1)
	mv := ts.mustUpload("fraud", "v1", a)
	ts.mustUpload("fraud", "v2", fleettest.TrainedModel(t, 2))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v2", Devices: []string{"dev-2"}})
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	fetch := func(version string) {
		t.Helper()
		req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: version, Fresh: true})
		require.NoError(t, err)
		publish(t, c, sc.Fetch("dev-1"), req)
	}
	published := func() float64 { return metricValue(t, ts, "edgefleet_chunk_publishes_total") }

	// v2 is dev-2's, not dev-1's.
	for range 5 {
		fetch("v2")
	}
	require.Eventually(t, func() bool { return sumDropped(t, ts, ingest.NotAssigned) == 5 }, 10*time.Second, 5*time.Millisecond)
	assert.Zero(t, published(), "nothing published for a version the device was not assigned")

	// v1 is dev-1's: DefaultFetchBudget downloads are served, the next is not.
	for i := range models.DefaultFetchBudget - 1 {
		fetch("v1")
		want := float64((i + 1) * int(mv.ChunkCount))
		require.Eventually(t, func() bool { return published() == want }, 10*time.Second, 5*time.Millisecond, "download %d", i+1)
	}
	again, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1"})
	require.NoError(t, err)
	publish(t, c, sc.Fetch("dev-1"), again) // not fresh
	onItsWay := func() float64 { return metricValue(t, ts, "edgefleet_chunk_requests_on_their_way_total") }
	require.Eventually(t, func() bool { return onItsWay() == float64(mv.ChunkCount) }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, float64((models.DefaultFetchBudget-1)*int(mv.ChunkCount)), published(), "on its way: not published again")
	fetch("v1") // the budget's last download: the request on its way cost nothing
	all := float64(models.DefaultFetchBudget * int(mv.ChunkCount))
	require.Eventually(t, func() bool { return published() == all }, 10*time.Second, 5*time.Millisecond)
	fetch("v1")
	require.Eventually(t, func() bool { return sumDropped(t, ts, ingest.RateLimited) == 1 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, all, published())
}

// A device receives the version's signed manifest inside its desired
// state, as published on the manifest topic, unless the control plane is
// told never to (Options.InlineManifestMax, --inline-manifest-max).
func TestDesiredStateCarriesTheManifest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    int
		inline bool
	}{{"default", 0, true}, {"never", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, func(o *controlplane.Options) { o.InlineManifestMax = tc.max })
			creds := ts.register("dev-1", nil)
			ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
			ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
			c := deviceClient(t, creds)
			sc := topics.Scheme{Prefix: creds.TopicPrefix}
			desired := receive(t, subscribe(t, c, sc.Desired("dev-1")), "desired state")
			ds, err := ts.internals().Keys.Verifier.VerifyDesired(mustEnvelope(t, desired.payload), time.Now())
			require.NoError(t, err)
			require.Len(t, ds.Models, 1)
			published := receive(t, subscribe(t, c, sc.Manifest("fraud", "v1")), "manifest")
			if !tc.inline {
				assert.Empty(t, ds.Models[0].Manifest)
				return
			}
			assert.Equal(t, published.payload, ds.Models[0].Manifest, "the manifest as published")
			_, err = ts.internals().Keys.Verifier.VerifyManifest(mustEnvelope(t, ds.Models[0].Manifest), time.Now())
			assert.NoError(t, err)
		})
	}
}
