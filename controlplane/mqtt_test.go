package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/signing"
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
	a := trainedModel(t, 1)
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
	assert.Equal(t, uint32(efpb.ProtocolVersion), m.ProtocolVersion)
	assert.True(t, proto.Equal(a.Training, m.Training), "training metadata is carried over")
	assert.Len(t, m.TestVectors, len(a.TestVectors))
	assert.InDelta(t, time.Now().Add(DefaultManifestTTL).Unix(), m.ExpiresUnix, 60)

	// Signed with the control key instead, it must not verify as a manifest.
	forged, err := signing.SignMessage(efpb.PayloadTypeManifest, m, ts.keys.Control)
	require.NoError(t, err)
	_, err = v.VerifyManifest(forged, time.Now())
	assert.ErrorIs(t, err, signing.ErrThreshold)
}

func TestDeployPublishesSignedDesiredState(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", map[string]string{"site": "berlin", "hw": "arm64"})
	ts.register("dev-2", map[string]string{"site": "berlin", "hw": "x86_64"})
	ts.register("dev-3", map[string]string{"site": "paris", "hw": "arm64"})
	a1, a2 := trainedModel(t, 1), trainedModel(t, 2)
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
		assert.InDelta(t, time.Now().Add(DefaultDesiredTTL).Unix(), d.ExpiresUnix, 60)
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

	dev, ok := ts.reg.get("dev-1")
	require.True(t, ok)
	require.NotNil(t, dev.Desired)
	assert.Equal(t, uint64(4), dev.Desired.Generation)
	assert.Equal(t, []api.Assignment{{Name: "fraud", Version: "v1"}, {Name: "scorer", Version: "v1"}}, dev.Desired.Models)
	dev2, _ := ts.reg.get("dev-2")
	assert.Equal(t, uint64(1), dev2.Desired.Generation)
	dev3, _ := ts.reg.get("dev-3")
	assert.Nil(t, dev3.Desired)
}

func TestFetchRequestsPublishChunks(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	a := trainedModel(t, 1)
	mv := ts.mustUpload("fraud", "v1", a)
	require.GreaterOrEqual(t, mv.ChunkCount, uint32(1))

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
	assert.Eventually(t, func() bool { return counterValue(t, ts.metrics.chunks) == float64(len(m.ChunkSha256)) },
		10*time.Second, 5*time.Millisecond, "one publish per chunk")
}

func TestFetchLargeModelResumes(t *testing.T) {
	// Chunk distribution is independent of the model's content, so serve a
	// multi-chunk version straight from the index: only the manifest's
	// layout and the blob matter.
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	model := bytes.Repeat([]byte("edgefleet-"), 30_000) // 300 kB: 5 chunks
	rec := addRawModel(t, ts, "big", "v1", model)
	require.Equal(t, uint32(5), rec.ChunkCount)

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

// addRawModel stores a version whose bytes are not a real model (only chunk
// distribution looks at it), signed like any other.
func addRawModel(t *testing.T, ts *testServer, name, version string, model []byte) *modelRecord {
	t.Helper()
	m := &efpb.Manifest{ProtocolVersion: efpb.ProtocolVersion, Name: name, Version: version,
		CreatedUnix: time.Now().Unix(), ExpiresUnix: time.Now().Add(time.Hour).Unix()}
	transfer.FillManifest(m, model, transfer.DefaultChunkSize)
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, ts.keys.Release)
	require.NoError(t, err)
	envBytes, err := proto.Marshal(env)
	require.NoError(t, err)
	sum := hex.EncodeToString(m.Sha256)
	require.NoError(t, ts.writeBlob(sum, model))
	rec := &modelRecord{ModelVersion: api.ModelVersion{Name: name, Version: version, SHA256: sum, Size: m.Size,
		ChunkSize: m.ChunkSize, ChunkCount: uint32(len(m.ChunkSha256)), Created: time.Now()}, Envelope: envBytes}
	require.NoError(t, ts.kv.SetJSON(modelKey(name, version), rec, true))
	ts.models.put(rec)
	return rec
}

func TestChunkQueueCoalesces(t *testing.T) {
	q := newChunkQueue(0, 0)
	now := time.Now()
	a, b := chunkKey{"fraud", "v1"}, chunkKey{"fraud", "v2"}
	assert.Equal(t, 3, q.enqueue(a, "dev", []uint32{0, 1, 2}, now))
	assert.Equal(t, 1, q.enqueue(a, "dev", []uint32{2, 1, 3}, now), "queued chunks coalesce")
	assert.Equal(t, 2, q.enqueue(b, "dev", []uint32{0, 0, 1}, now))
	assert.Equal(t, 6, q.queued())

	type item struct {
		k chunkKey
		i uint32
	}
	var order []item
	for {
		k, i, ok, _ := q.next(now)
		if !ok {
			break
		}
		order = append(order, item{k, i})
		if len(order) == 1 {
			// Asked again after dequeue: queued anew (the publish may be
			// past the asker).
			assert.Equal(t, 1, q.enqueue(a, "dev", []uint32{0}, now))
		}
	}
	assert.Equal(t, []item{{a, 0}, {b, 0}, {a, 1}, {b, 1}, {a, 2}, {a, 3}, {a, 0}}, order, "versions are served round-robin")
	assert.Equal(t, 0, q.enqueue(a, "dev", nil, now))
	assert.Equal(t, 0, q.queued())
}

func TestChunkQueueCollectsBeforeTheFirstPublish(t *testing.T) {
	q := newChunkQueue(200*time.Millisecond, time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	a, b := chunkKey{"fraud", "v1"}, chunkKey{"fraud", "v2"}
	q.enqueue(a, "dev", []uint32{0, 1}, t0)
	_, _, ok, wait := q.next(at(50))
	assert.False(t, ok, "inside the window nothing goes out")
	assert.Equal(t, 150*time.Millisecond, wait)
	// Requests inside the window join the same round and keep it open
	// until the requests settle.
	assert.Equal(t, 1, q.enqueue(a, "dev", []uint32{1, 2}, at(100)))
	q.enqueue(b, "dev", []uint32{0}, at(150))
	_, _, ok, wait = q.next(at(250))
	assert.False(t, ok, "v1's round was extended to 300 ms by the request at 100 ms")
	assert.Equal(t, 50*time.Millisecond, wait)

	var got []uint32
	for {
		k, i, ok, _ := q.next(at(300))
		if !ok {
			break
		}
		assert.Equal(t, a, k, "v2's window is still open")
		got = append(got, i)
	}
	assert.Equal(t, []uint32{0, 1, 2}, got)
	k, i, ok, _ := q.next(at(350))
	require.True(t, ok)
	assert.Equal(t, b, k)
	assert.Equal(t, uint32(0), i)
	_, _, ok, wait = q.next(at(1000))
	assert.False(t, ok)
	assert.Zero(t, wait, "nothing queued: wait for a wake-up")
}

func TestChunkQueueWaitsAtMostMaxWait(t *testing.T) {
	q := newChunkQueue(200*time.Millisecond, time.Second)
	t0 := time.Now()
	k := chunkKey{"fraud", "v1"}
	// A request every 100 ms would keep the window open forever.
	for ms := 0; ms <= 1500; ms += 100 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		q.enqueue(k, "dev", []uint32{uint32(ms / 100)}, now)
		if _, _, ok, _ := q.next(now); ok {
			assert.Equal(t, 1000, ms, "the round goes out maxWait after its first request")
			// A round going out is not held up by requests arriving now.
			q.enqueue(k, "dev", []uint32{99}, now.Add(time.Millisecond))
			_, _, ok, _ := q.next(now.Add(2 * time.Millisecond))
			assert.True(t, ok)
			return
		}
	}
	t.Fatal("the round never went out")
}

// A deploy says how many devices will ask: the round waits for them all
// (not for a quiet moment, which a gap in their requests would fake), and
// goes out the moment the last one asks.
func TestChunkQueueWaitsForTheExpectedDevices(t *testing.T) {
	q := newChunkQueue(100*time.Millisecond, 2*time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	k := chunkKey{"fraud", "v2"}
	q.expect(k, 3, t0)
	q.enqueue(k, "dev-1", []uint32{0, 1}, at(10))
	_, _, ok, _ := q.next(at(600))
	assert.False(t, ok, "a 500 ms gap is not the end of the round: two devices have not asked")
	q.enqueue(k, "dev-1", []uint32{0, 1}, at(700)) // a retry counts once
	q.enqueue(k, "dev-2", []uint32{0, 1}, at(800))
	_, _, ok, _ = q.next(at(850))
	assert.False(t, ok)
	select { // drain: the worker has seen the earlier requests
	case <-q.wake:
	default:
	}
	q.enqueue(k, "dev-3", []uint32{0, 1}, at(900))
	select {
	case <-q.wake:
	default:
		t.Fatal("the worker is not woken: the last device's request adds no chunk but makes the round due")
	}
	_, i, ok, _ := q.next(at(900))
	require.True(t, ok, "the last expected device asked: out at once")
	assert.Equal(t, uint32(0), i)

	// Fulfilled: a straggler's round uses the quiet window again.
	_, _, ok, _ = q.next(at(900))
	require.True(t, ok)
	q.enqueue(k, "dev-4", []uint32{1}, at(1000))
	_, _, ok, wait := q.next(at(1000))
	assert.False(t, ok)
	assert.Equal(t, 100*time.Millisecond, wait)
	_, _, ok, _ = q.next(at(1100))
	require.True(t, ok)

	// Devices that never ask hold a round for maxWait at most.
	k3 := chunkKey{"fraud", "v3"}
	q.expect(k3, 5, at(2000))
	q.enqueue(k3, "dev-1", []uint32{0}, at(2000))
	_, _, ok, _ = q.next(at(3999))
	assert.False(t, ok)
	_, _, ok, _ = q.next(at(4000))
	assert.True(t, ok)
}

func TestMalformedPayloadsAreDropped(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	ts.register("dev-2", nil)
	ts.mustUpload("fraud", "v1", trainedModel(t, 1))
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
		{sc.Status("dev-1"), garbage, "status", dropDecode},
		{sc.Telemetry("dev-1"), garbage, "telemetry", dropDecode},
		{sc.Presence("dev-1"), garbage, "presence", dropDecode},
		{sc.Fetch("dev-1"), garbage, "fetch", dropDecode},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-2", ModelName: "fraud"}), "status", dropDeviceMismatch},
		{sc.Telemetry("dev-1"), enc(&efpb.Telemetry{DeviceId: "dev-2"}), "telemetry", dropDeviceMismatch},
		{sc.Presence("dev-1"), enc(&efpb.Presence{DeviceId: ""}), "presence", dropDeviceMismatch},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "a/b"}), "status", dropInvalid},
		{sc.Status("dev-1"), enc(&efpb.StatusEvent{DeviceId: "dev-1", ProtocolVersion: 99, ModelName: "fraud"}), "status", dropProtocolVersion},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v9"}), "fetch", dropUnknownModel},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1", Missing: []uint32{1 << 20}}), "fetch", dropInvalid},
		{sc.Fetch("dev-1"), enc(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1", Missing: make([]uint32, 1000)}), "fetch", dropInvalid},
	}
	for i, tt := range tests {
		publish(t, c, tt.topic, tt.payload)
		require.Eventually(t, func() bool { return ts.Dropped() == uint64(i+1) }, 10*time.Second, 5*time.Millisecond,
			"payload %d on %s: dropped = %d", i, tt.topic, ts.Dropped())
		assert.Equal(t, 1.0, counterValue(t, ts.metrics.dropped.WithLabelValues(tt.kind, tt.reason))-
			float64(countBefore(tests[:i], tt.kind, tt.reason)), "payload %d: %s/%s", i, tt.kind, tt.reason)
	}
	// Payloads that reach the handlers without the broker's checks: an
	// unregistered device, a topic outside the scheme, an oversized payload.
	ts.onStatus(sc.Status("ghost"), enc(&efpb.StatusEvent{DeviceId: "ghost", ModelName: "fraud"}))
	ts.onTelemetry(sc.Telemetry("ghost"), enc(&efpb.Telemetry{DeviceId: "ghost"}))
	ts.onPresence(sc.Presence("ghost"), enc(&efpb.Presence{DeviceId: "ghost"}))
	ts.onFetch(sc.Fetch("ghost"), enc(&efpb.FetchRequest{DeviceId: "ghost", Name: "fraud", Version: "v1"}))
	ts.onStatus("elsewhere/dev/dev-1/status", enc(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "fraud"}))
	ts.onTelemetry(sc.Telemetry("dev-1"), make([]byte, maxIngestPayload+1))
	assert.Equal(t, 4.0, sumDropped(t, ts, dropUnknownDevice))
	assert.Equal(t, 1.0, counterValue(t, ts.metrics.dropped.WithLabelValues("status", dropBadTopic)))
	assert.Equal(t, 1.0, counterValue(t, ts.metrics.dropped.WithLabelValues("telemetry", dropTooLarge)))
	assert.Equal(t, uint64(len(tests)+6), ts.Dropped())

	// Nothing was applied, and the control plane still serves.
	d, _ := ts.reg.get("dev-1")
	assert.Empty(t, d.Reported)
	assert.Nil(t, d.Telemetry)
	assert.Zero(t, ts.chunks.queued())
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
		total += counterValue(t, ts.metrics.dropped.WithLabelValues(k, reason))
	}
	return total
}

// counterValue reads a counter's current value.
func counterValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
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
	require.Eventually(t, func() bool { d, _ := ts.reg.get("dev-1"); return d.Online }, 10*time.Second, 5*time.Millisecond)

	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 7, Generation: 2, ModelName: "fraud", ModelVersion: "v2",
		State: efpb.ModelState_MODEL_STATE_ROLLED_BACK, Reason: "test vector 0 mismatch", ActiveVersion: "v1",
	}))
	publish(t, c, sc.Telemetry("dev-1"), enc(&efpb.Telemetry{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 3, UptimeSeconds: 60, AgentVersion: "0.1.1",
		Models: []*efpb.ActiveModel{{Name: "fraud", Version: "v1", State: efpb.ModelState_MODEL_STATE_ACTIVE, Inferences: 42}},
	}))
	require.Eventually(t, func() bool {
		d, _ := ts.reg.get("dev-1")
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

	// The status was written through to the store.
	var stored api.Device
	require.NoError(t, ts.kv.GetJSON(prefixDevices+"dev-1", &stored))
	assert.Equal(t, api.ModelRolledBack, stored.Reported["fraud"].State)

	// An older event arriving late does not undo the newer one.
	dropped := ts.Dropped()
	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 5, ModelName: "fraud", ModelVersion: "v2",
		State: efpb.ModelState_MODEL_STATE_DOWNLOADING, ActiveVersion: "v1",
	}))
	require.Eventually(t, func() bool { return ts.Dropped() > dropped }, 10*time.Second, 5*time.Millisecond)
	d, _ = ts.reg.get("dev-1")
	assert.Equal(t, api.ModelRolledBack, d.Reported["fraud"].State, "a stale event is dropped")

	// A device-level refusal (no model) is recorded, not dropped.
	publish(t, c, sc.Status("dev-1"), enc(&efpb.StatusEvent{
		ProtocolVersion: 1, DeviceId: "dev-1", Seq: 8, Generation: 2,
		State: efpb.ModelState_MODEL_STATE_FAILED, Reason: "desired state refused: generation 1 is older than the accepted generation 2 (replay)",
	}))
	require.Eventually(t, func() bool { d, _ := ts.reg.get("dev-1"); return d.LastRefusal != nil }, 10*time.Second, 5*time.Millisecond)
	d, _ = ts.reg.get("dev-1")
	assert.Contains(t, d.LastRefusal.Reason, "replay")

	publish(t, c, sc.Presence("dev-1"), enc(&efpb.Presence{DeviceId: "dev-1", Online: false}))
	require.Eventually(t, func() bool { d, _ := ts.reg.get("dev-1"); return !d.Online }, 10*time.Second, 5*time.Millisecond)
}

func TestRenewExtendsExpiringDocuments(t *testing.T) {
	now := time.Now()
	clock := newTestClock(now)
	ts := newTestServer(t, func(o *Options) { o.Clock = clock.Now })
	ts.register("dev-1", nil)
	ts.mustUpload("fraud", "v1", trainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	before := ts.models.get("fraud", "v1")

	// Nothing is due yet.
	require.NoError(t, ts.renew(context.Background()))
	assert.Equal(t, before.Expires, ts.models.get("fraud", "v1").Expires)
	d, _ := ts.reg.get("dev-1")
	assert.Equal(t, uint64(1), d.Desired.Generation)

	later := now.Add(70 * 24 * time.Hour)
	clock.Set(later)
	require.NoError(t, ts.renew(context.Background()))
	after := ts.models.get("fraud", "v1")
	assert.Equal(t, later.Add(DefaultManifestTTL).Unix(), after.Expires.Unix())
	m, err := ts.keys.Verifier.VerifyManifest(mustEnvelope(t, after.Envelope), later)
	require.NoError(t, err)
	assert.Equal(t, before.SHA256, hex.EncodeToString(m.Sha256), "same model")
	d, _ = ts.reg.get("dev-1")
	assert.Equal(t, uint64(2), d.Desired.Generation, "re-issued with the next generation")
	assert.Equal(t, []api.Assignment{{Name: "fraud", Version: "v1"}}, d.Desired.Models)
	assert.Equal(t, later.Add(DefaultDesiredTTL).Unix(), d.Desired.Expires.Unix())
}
