package agent

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The harness plays the control plane's part of the protocol over the real
// embedded broker, so agent tests can also publish what a real control plane
// never would: tampered chunks, foreign signatures, replays. The real
// control plane is exercised with real agents in the end-to-end tests.

// models trained once per test binary; training is deterministic.
var (
	modelsOnce sync.Once
	modelV1    *fraud.Artifact
	modelV2    *fraud.Artifact
	modelsErr  error
)

func testModels(t *testing.T) (*fraud.Artifact, *fraud.Artifact) {
	t.Helper()
	modelsOnce.Do(func() {
		modelV1, modelsErr = fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
		if modelsErr == nil {
			modelV2, modelsErr = fraud.TrainArtifact(fraud.TrainConfig{Seed: 2, Rows: 4000})
		}
	})
	require.NoError(t, modelsErr)
	return modelV1, modelV2
}

type creds map[string]string

func (c creds) AuthenticateDevice(user string, pw []byte) bool {
	want, ok := c[user]
	return ok && want == string(pw)
}

type harness struct {
	t                      *testing.T
	broker                 *broker.Broker
	scheme                 topics.Scheme
	root, release, control *signing.KeyPair
	rt                     *infer.Runtime
	creds                  creds

	mu        sync.Mutex
	models    map[string][]byte // "name/version" → bytes; guarded by mu
	corrupt   map[uint32]int    // chunk index → times still to corrupt; guarded by mu
	serveOnly func(idx uint32) bool
	// ownTopic, if set, answers requests that say the device receives on
	// its own chunk topic there, as a control plane answers a device that
	// asked after the version's shared round went out.
	ownTopic bool
	fetches  []*efpb.FetchRequest
	statuses []*efpb.StatusEvent
	gen      map[string]uint64
	// withhold, if set, plays a lagging broker node: retained messages
	// are not sent for a subscription it returns true for.
	withhold func(clientID, filter string) bool
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, creds: creds{}, models: map[string][]byte{}, corrupt: map[uint32]int{}, gen: map[string]uint64{}}
	var err error
	for _, k := range []**signing.KeyPair{&h.root, &h.release, &h.control} {
		*k, err = signing.GenerateKey(nil)
		require.NoError(t, err)
	}
	h.broker, err = broker.New(broker.Options{Addr: "127.0.0.1:0", Scheme: h.scheme, Auth: h.creds,
		WithholdRetained: func(clientID, filter string) bool {
			h.mu.Lock()
			w := h.withhold
			h.mu.Unlock()
			return w != nil && w(clientID, filter)
		}})
	require.NoError(t, err)
	require.NoError(t, h.broker.Start())
	t.Cleanup(func() { _ = h.broker.Close() })

	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	h.rt, err = infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.rt.Close() })

	unsub, err := h.broker.Subscribe(h.scheme.AllFetch(), func(_ string, payload []byte, _ string) { h.onFetch(payload) })
	require.NoError(t, err)
	t.Cleanup(unsub)
	unsub, err = h.broker.Subscribe(h.scheme.AllStatus(), func(_ string, payload []byte, _ string) {
		ev := &efpb.StatusEvent{}
		if proto.Unmarshal(payload, ev) == nil {
			h.mu.Lock()
			h.statuses = append(h.statuses, ev)
			h.mu.Unlock()
		}
	})
	require.NoError(t, err)
	t.Cleanup(unsub)

	now := time.Now()
	b := signing.NewTrustBundle(1, now, now.Add(24*time.Hour),
		[]ed25519.PublicKey{h.root.Public}, []ed25519.PublicKey{h.release.Public}, []ed25519.PublicKey{h.control.Public})
	env, err := signing.SignTrustBundle(b, h.root)
	require.NoError(t, err)
	h.publishRetained(h.scheme.Trust(), env)
	return h
}

func (h *harness) publishRetained(topic string, m proto.Message) {
	h.t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(h.t, err)
	require.NoError(h.t, h.broker.Publish(topic, b, true, 1))
}

func (h *harness) onFetch(payload []byte) {
	req := &efpb.FetchRequest{}
	if proto.Unmarshal(payload, req) != nil {
		return
	}
	h.mu.Lock()
	h.fetches = append(h.fetches, req)
	model := h.models[req.Name+"/"+req.Version]
	serveOnly := h.serveOnly
	topic := h.scheme.Chunks(req.Name, req.Version)
	if h.ownTopic && req.OwnTopic {
		topic = h.scheme.DeviceChunks(req.DeviceId)
	}
	h.mu.Unlock()
	if model == nil {
		return
	}
	for _, idx := range req.Missing {
		if serveOnly != nil && !serveOnly(idx) {
			continue
		}
		data, err := transfer.ChunkData(model, transfer.DefaultChunkSize, idx)
		if err != nil {
			continue
		}
		h.mu.Lock()
		if h.corrupt[idx] > 0 {
			h.corrupt[idx]--
			data = append([]byte(nil), data...)
			data[0] ^= 0xff
		}
		h.mu.Unlock()
		b, _ := proto.Marshal(&efpb.Chunk{Name: req.Name, Version: req.Version, Index: idx, Data: data})
		_ = h.broker.Publish(topic, b, false, 1)
	}
}

// onlinePresences counts the online presences dev publishes from now
// until the test ends.
func (h *harness) onlinePresences(t *testing.T, dev string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	unsub, err := h.broker.Subscribe(h.scheme.Presence(dev), func(_ string, payload []byte, _ string) {
		p := &efpb.Presence{}
		if proto.Unmarshal(payload, p) == nil && p.Online {
			n.Add(1)
		}
	})
	require.NoError(t, err)
	t.Cleanup(unsub)
	return &n
}

// manifestFor builds the manifest a release would sign for model bytes.
func (h *harness) manifestFor(name, version string, art *fraud.Artifact, model []byte) *efpb.Manifest {
	m := art.Metadata()
	m.ProtocolVersion = efpb.ProtocolVersion
	m.Name, m.Version = name, version
	m.CreatedUnix = time.Now().Unix()
	m.ExpiresUnix = time.Now().Add(time.Hour).Unix()
	transfer.FillManifest(m, model, transfer.DefaultChunkSize)
	return m
}

// release publishes a signed manifest for model and makes its bytes
// fetchable. mutate may alter the manifest before it is signed; signer
// defaults to the release key.
func (h *harness) publishModel(name, version string, art *fraud.Artifact, model []byte, mutate func(*efpb.Manifest), signer *signing.KeyPair) *efpb.Manifest {
	h.t.Helper()
	m := h.manifestFor(name, version, art, model)
	if mutate != nil {
		mutate(m)
	}
	if signer == nil {
		signer = h.release
	}
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, signer)
	require.NoError(h.t, err)
	h.mu.Lock()
	h.models[name+"/"+version] = model
	h.mu.Unlock()
	h.publishRetained(h.scheme.Manifest(name, version), env)
	return m
}

// desire publishes a signed desired state with the next generation.
func (h *harness) desire(dev string, assignments ...*efpb.ModelAssignment) uint64 {
	h.t.Helper()
	return h.desireState(dev, &efpb.DesiredState{Models: assignments})
}

// desireState publishes ds (its models and shadows) for dev with the next
// generation, signed by the control key.
func (h *harness) desireState(dev string, ds *efpb.DesiredState) uint64 {
	h.t.Helper()
	h.mu.Lock()
	h.gen[dev]++
	gen := h.gen[dev]
	h.mu.Unlock()
	h.signDesired(dev, gen, h.control, ds)
	return gen
}

func (h *harness) desireGen(dev string, gen uint64, signer *signing.KeyPair, assignments ...*efpb.ModelAssignment) {
	h.t.Helper()
	h.signDesired(dev, gen, signer, &efpb.DesiredState{Models: assignments})
}

// signDesired fills in ds for dev and gen, valid for an hour, and
// publishes it signed by signer.
func (h *harness) signDesired(dev string, gen uint64, signer *signing.KeyPair, ds *efpb.DesiredState) {
	h.t.Helper()
	ds.ProtocolVersion, ds.DeviceId, ds.Generation = efpb.ProtocolVersion, dev, gen
	ds.IssuedUnix, ds.ExpiresUnix = time.Now().Unix(), time.Now().Add(time.Hour).Unix()
	env, err := signing.SignMessage(efpb.PayloadTypeDesired, ds, signer)
	require.NoError(h.t, err)
	h.publishRetained(h.scheme.Desired(dev), env)
}

func assign(m *efpb.Manifest) *efpb.ModelAssignment {
	return &efpb.ModelAssignment{Name: m.Name, Version: m.Version, Sha256: m.Sha256}
}

func (h *harness) device(id string) (password string) {
	h.creds[id] = "pw-" + id
	return h.creds[id]
}

// agentOptions returns options for a device registered with the harness.
func (h *harness) agentOptions(t *testing.T, id, dir string) Options {
	return Options{
		DeviceID:           id,
		BrokerURL:          h.broker.URL(),
		Password:           h.device(id),
		RootPublicKey:      h.root.Public,
		DataDir:            dir,
		Runtime:            h.rt,
		InferenceListen:    "127.0.0.1:0",
		HeartbeatInterval:  time.Second,
		FetchRetryInterval: 300 * time.Millisecond,
		Logger:             testLogger(t),
	}
}

// startAgent runs an agent until the test ends.
func (h *harness) startAgent(t *testing.T, opts Options) *Agent {
	t.Helper()
	a, err := New(opts)
	require.NoError(t, err)
	testkit.Run(t, "agent "+opts.DeviceID, a.Run, a.Ready())
	return a
}

// lastStatus is the newest status of model on dev as the control plane
// sees it: the highest sequence number, not the last to arrive. A restarted
// agent sends its unacknowledged events again, older ones included (the
// harness acknowledges none), and the control plane drops those by seq.
func (h *harness) lastStatus(dev, model string) *efpb.StatusEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var last *efpb.StatusEvent
	for _, s := range h.statuses {
		if s.DeviceId == dev && s.ModelName == model && (last == nil || s.Seq >= last.Seq) {
			last = s
		}
	}
	return last
}

func (h *harness) fetchesFor(dev string) []*efpb.FetchRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*efpb.FetchRequest
	for _, f := range h.fetches {
		if f.DeviceId == dev {
			out = append(out, f)
		}
	}
	return out
}

// waitServing waits until the agent serves version of model.
func waitServing(t *testing.T, a *Agent, model, version string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, s := range a.Status() {
			if s.Name == model && s.Serving == version && s.Target == "" {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "agent never served %s@%s; status %+v", model, version, a.Status())
}

// waitFailed waits until the agent records a refused update of version.
func waitFailed(t *testing.T, a *Agent, model, version string) ModelStatus {
	t.Helper()
	var got ModelStatus
	require.Eventually(t, func() bool {
		for _, s := range a.Status() {
			if s.Name == model && s.FailedVersion == version && s.Target == "" {
				got = s
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "agent never refused %s@%s; status %+v", model, version, a.Status())
	return got
}

// fp32 builds an inference input; the data is always finite here.
func fp32(t *testing.T, name string, shape []int64, data []float32) oip.RequestInput {
	t.Helper()
	in, err := oip.NewFP32Input(name, shape, data)
	require.NoError(t, err)
	return in
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testLogger sends the agent's log to the test's own output, which go test
// prints only when the test fails: a flaky failure then explains itself.
// EDGEFLEET_TEST_LOG=1 adds debug records.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("EDGEFLEET_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testWriter forwards lines to t.Log until the test ends; goroutines that
// outlive it (a stopping agent) must not call t.Log afterwards.
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
