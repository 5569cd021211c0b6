package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// score runs rows through the agent's inference API and returns the fraud
// probabilities with the version that answered.
func score(t *testing.T, a *Agent, rows []fraud.Row) ([]float32, string) {
	t.Helper()
	flat := make([]float32, 0, len(rows)*fraud.NumFeatures)
	for _, r := range rows {
		flat = append(flat, r[:]...)
	}
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{fp32(t, "features", []int64{int64(len(rows)), fraud.NumFeatures}, flat)}})
	require.NoError(t, err)
	require.Len(t, resp.Outputs, 1)
	require.NotEmpty(t, resp.ID, "every inference gets an id")
	probs, err := resp.Outputs[0].FP32()
	require.NoError(t, err)
	return probs, resp.ModelVersion
}

func sampleRows(t *testing.T, n int) []fraud.Row {
	t.Helper()
	g, err := fraud.NewGenerator(99, fraud.Params{})
	require.NoError(t, err)
	return g.Generate(n).Rows
}

func TestAgentActivatesAndSwitchesSignedModels(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))

	m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", assign(m1))
	waitServing(t, a, "fraud", "1.0.0")

	rows := sampleRows(t, 16)
	got, version := score(t, a, rows)
	assert.Equal(t, "1.0.0", version)
	assert.InDeltaSlice(t, v1.Predict(rows), got, 1e-5, "onnxruntime on the agent agrees with the trained model")
	require.Eventually(t, func() bool {
		s := h.lastStatus("dev-1", "fraud")
		return s != nil && s.State == efpb.ModelState_MODEL_STATE_ACTIVE && s.ActiveVersion == "1.0.0"
	}, 10*time.Second, 20*time.Millisecond, "the control plane hears that v1 is active")

	// v2 arrives while requests keep flowing: none of them fails.
	m2 := h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)
	var failed, served atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{fp32(t, "features", []int64{1, fraud.NumFeatures}, rows[0][:])}})
			if err != nil {
				failed.Add(1)
			} else {
				served.Add(1)
			}
		}
	})
	h.desire("dev-1", assign(m2))
	waitServing(t, a, "fraud", "2.0.0")
	close(stop)
	wg.Wait()
	assert.Zero(t, failed.Load(), "no inference fails during the swap")
	assert.Positive(t, served.Load())

	got, version = score(t, a, rows)
	assert.Equal(t, "2.0.0", version)
	assert.InDeltaSlice(t, v2.Predict(rows), got, 1e-5)
	st := a.Status()[0]
	assert.Equal(t, "1.0.0", st.Previous, "the previous version stays on disk")
	assert.FileExists(t, a.modelPath("fraud", sha256hex(v1.ONNX)))
}

// servingV2AfterV1 starts dev-1 and updates it from 1.0.0 to 2.0.0: it
// serves v2 with v1 kept on disk as the previous version.
func servingV2AfterV1(t *testing.T) (h *harness, a *Agent, v1 *fraud.Artifact, m1 *efpb.Manifest) {
	t.Helper()
	v1, v2 := testModels(t)
	h = newHarness(t)
	a = h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	m1 = h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	m2 := h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)
	h.desire("dev-1", assign(m1))
	waitServing(t, a, "fraud", "1.0.0")
	h.desire("dev-1", assign(m2))
	waitServing(t, a, "fraud", "2.0.0")
	return h, a, v1, m1
}

func TestAgentRollbackReactivatesPreviousWithoutDownload(t *testing.T) {
	h, a, _, m1 := servingV2AfterV1(t)
	before := len(h.fetchesFor("dev-1"))

	gen := h.desire("dev-1", assign(m1)) // a rollback is a newer generation
	waitServing(t, a, "fraud", "1.0.0")
	assert.Equal(t, gen, a.Generation())
	assert.Len(t, h.fetchesFor("dev-1"), before, "rollback needs no download")
	assert.Equal(t, "2.0.0", a.Status()[0].Previous)
}

// TestAgentRefusesBrokenModels: a correctly signed update that cannot work
// (not ONNX, wrong test vectors, bytes that never arrive intact) is refused
// with a reason naming what was wrong, and v1 keeps serving throughout.
// Deliberate attacks are in attacks_test.go, the threat model's one table.
func TestAgentRefusesBrokenModels(t *testing.T) {
	v1, v2 := testModels(t)
	badVectors := func(m *efpb.Manifest) { m.TestVectors[0].Expected[0].Data[0] += 0.5 }

	cases := []struct {
		name    string
		publish func(h *harness) // publishes v2 and desires it
		reason  string
	}{
		{"model bytes that are not ONNX", func(h *harness) {
			junk := []byte(strings.Repeat("not an onnx model ", 500))
			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, junk, nil, nil)))
		}, "load model"},
		{"test vectors that do not match", func(h *harness) {
			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, badVectors, nil)))
		}, "test vectors"},
		{"chunks that never match their hash", func(h *harness) {
			m := h.manifestFor("fraud", "2.0.0", v2, v2.ONNX)
			h.mu.Lock()
			for i := range m.ChunkSha256 {
				h.corrupt[uint32(i)] = 1 << 20
			}
			h.mu.Unlock()
			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
		}, "did not match the signed manifest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
			h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
			waitServing(t, a, "fraud", "1.0.0")

			tc.publish(h)
			st := waitFailed(t, a, "fraud", "2.0.0")
			assert.Contains(t, st.FailureReason, tc.reason)
			assert.Equal(t, "1.0.0", st.Serving, "the last good model keeps serving")
			_, version := score(t, a, sampleRows(t, 2))
			assert.Equal(t, "1.0.0", version)
			require.Eventually(t, func() bool {
				s := h.lastStatus("dev-1", "fraud")
				return s != nil && s.State == efpb.ModelState_MODEL_STATE_FAILED && strings.Contains(s.Reason, tc.reason) &&
					s.ActiveVersion == "1.0.0"
			}, 10*time.Second, 20*time.Millisecond, "the refusal and its reason are reported")
		})
	}
}

func TestAgentRecoversFromCorruptChunk(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	h.mu.Lock()
	h.corrupt[0] = 1 // the first copy of chunk 0 is altered in flight
	h.mu.Unlock()
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	waitServing(t, a, "fraud", "1.0.0")
	assert.Positive(t, a.Refused(), "the altered chunk was refused")
	assert.GreaterOrEqual(t, len(h.fetchesFor("dev-1")), 2, "the agent asked again for the refused chunk")
}

func TestAgentRefusesReplayedDesiredState(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	m2 := h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)
	h.desireGen("dev-1", 5, h.control, assign(m1))
	waitServing(t, a, "fraud", "1.0.0")

	refused := a.Refused()
	h.desireGen("dev-1", 4, h.control, assign(m2)) // an older generation: a replay
	require.Eventually(t, func() bool { return a.Refused() > refused }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, uint64(5), a.Generation())
	assert.Equal(t, "1.0.0", a.Status()[0].Serving)

	refused = a.Refused()
	h.desireGen("dev-1", 6, h.release, assign(m2)) // wrong role
	require.Eventually(t, func() bool { return a.Refused() > refused }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, uint64(5), a.Generation())

	h.desireGen("dev-1", 6, h.control, assign(m2))
	waitServing(t, a, "fraud", "2.0.0")
}

func TestAgentDropsMalformedPayloads(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", assign(m1))
	waitServing(t, a, "fraud", "1.0.0")

	// Hold a v2 download open so the agent listens on its chunk topic.
	_, v2 := testModels(t)
	h.mu.Lock()
	h.serveOnly = func(uint32) bool { return false }
	h.mu.Unlock()
	h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
	require.Eventually(t, func() bool { return len(h.fetchesFor("dev-1")) >= 2 }, 10*time.Second, 10*time.Millisecond)

	// And a second model whose manifest was never published, so the agent
	// listens on that manifest topic.
	h.desire("dev-1", assign(h.manifestFor("fraud", "2.0.0", v2, v2.ONNX)),
		&efpb.ModelAssignment{Name: "other", Version: "9.9.9", Sha256: make([]byte, 32)})
	require.Eventually(t, func() bool {
		for _, s := range a.Status() {
			if s.Name == "other" && s.Phase == "manifest" {
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond)

	garbage := []byte{0xff, 0xff, 0xff, 0x0f, 0x01} // field 2^25, wire type 7: not protobuf
	for _, topic := range []string{
		h.scheme.Trust(),
		h.scheme.Desired("dev-1"),
		h.scheme.Chunks("fraud", "2.0.0"),
	} {
		require.NoError(t, h.broker.Publish(topic, garbage, false, 1))
	}
	// Retained, as manifests are: the agent reports the manifest phase
	// before its SUBACK is back, and would miss a plain publish made then.
	require.NoError(t, h.broker.Publish(h.scheme.Manifest("other", "9.9.9"), garbage, true, 1))
	assert.Eventually(t, func() bool { return a.Dropped() >= 4 }, 10*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, a.Dropped(), uint64(4), "every malformed payload is counted (status %+v)", a.Status())
	_, version := score(t, a, sampleRows(t, 1))
	assert.Equal(t, "1.0.0", version, "and the agent keeps serving")
}

func TestConfigNeedsRootKey(t *testing.T) {
	cfg, err := ParseConfig([]byte("device_id: d1\nbroker_url: tcp://127.0.0.1:1883\ndata_dir: /tmp/x\n"))
	require.NoError(t, err)
	_, err = cfg.Options()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "root_public_key is required")

	_, err = ParseConfig([]byte("device_id: d1\nbroker_ulr: tcp://x\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 2", "unknown keys are reported with their line")
	assert.Contains(t, err.Error(), "broker_ulr")

	_, err = New(Options{DeviceID: "d1", BrokerURL: "tcp://127.0.0.1:1", DataDir: t.TempDir()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "RootPublicKey is required")
}

// TestAgentFetchesLargeModelInWindows: a model of 200+ chunks is fetched
// with at most fetchWindow chunks in flight, so a broker's per-client queue
// never overflows, and it activates.
func TestAgentFetchesLargeModelInWindows(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	model := onnxbuild.Pad(v1.ONNX, 200*transfer.DefaultChunkSize)
	m := h.publishModel("fraud", "1.0.0", v1, model, nil, nil)
	require.Greater(t, len(m.ChunkSha256), 200)
	h.desire("dev-1", assign(m))
	waitServing(t, a, "fraud", "1.0.0")

	requested := 0
	for _, f := range h.fetchesFor("dev-1") {
		assert.LessOrEqual(t, len(f.Missing), fetchWindow, "a fetch request stays within the window")
		requested += len(f.Missing)
	}
	t.Logf("%d chunks, %d fetch requests asking for %d chunks", len(m.ChunkSha256), len(h.fetchesFor("dev-1")), requested)
	assert.GreaterOrEqual(t, requested, len(m.ChunkSha256))
}

func TestServerMetadataReportsAgentVersion(t *testing.T) {
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.Version = "1.4.2"
	a := h.startAgent(t, opts)
	for _, p := range []string{"/v2", "/v2/"} {
		resp, err := http.Get("http://" + a.InferenceAddr() + p)
		require.NoError(t, err)
		var md oip.ServerMetadata
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&md))
		resp.Body.Close()
		assert.Equal(t, "1.4.2", md.Version, p)
	}
}

// A downloaded version is hashed chunk by chunk as it arrives, not whole
// again (openDownloaded); the whole-file hash is what every later load from
// disk checks. A version file damaged on disk after its activation is never
// served by a rollback to it.
func TestRollbackChecksTheModelFileOnDisk(t *testing.T) {
	h, a, v1, m1 := servingV2AfterV1(t)

	path := a.modelPath("fraud", sha256hex(v1.ONNX))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(b)/2] ^= 0xff // a flipped bit in the ONNX doc, loadable as it is
	require.NoError(t, os.WriteFile(path, b, 0o600))

	h.desire("dev-1", assign(m1))
	st := waitFailed(t, a, "fraud", "1.0.0")
	assert.Contains(t, st.FailureReason, "sha256 differs from the manifest")
	assert.Equal(t, "2.0.0", a.Status()[0].Serving, "the current version keeps serving")
}
