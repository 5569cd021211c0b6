package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// inlineRelease makes a version's bytes fetchable and returns its
// manifest and that manifest's envelope signed by signer, without
// publishing it on the manifest topic.
func (h *harness) inlineRelease(name, version string, model []byte, mutate func(*efpb.Manifest), signer *signing.KeyPair) (*efpb.Manifest, []byte) {
	h.t.Helper()
	v1, _ := testModels(h.t)
	m := h.manifestFor(name, version, v1, model)
	if mutate != nil {
		mutate(m)
	}
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, signer)
	require.NoError(h.t, err)
	b, err := proto.Marshal(env)
	require.NoError(h.t, err)
	h.mu.Lock()
	h.models[name+"/"+version] = model
	h.mu.Unlock()
	return m, b
}

// A manifest carried in the desired state is taken from there: the
// version downloads and activates although nothing was ever published on
// its manifest topic (the agent did not need the subscription).
func TestManifestInTheDesiredStateIsTaken(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	m, env := h.inlineRelease("fraud", "1.0.0", v1.ONNX, nil, h.release)
	as := assign(m)
	as.Manifest = env
	h.desire("dev-1", as)
	waitServing(t, a, "fraud", "1.0.0")
	assert.Zero(t, a.Refused())
}

// A manifest in the desired state that does not pass the checks is not a
// refusal of the version: the desired state may have outlived the
// manifest's renewals (expired), and only the copy on the manifest topic
// is judged. Here the topic has a good copy and the version activates.
func TestInlineManifestThatFailsFallsBackToTheTopic(t *testing.T) {
	v1, _ := testModels(t)
	for _, tc := range []struct {
		name   string
		mutate func(*efpb.Manifest)
		signer func(h *harness) *signing.KeyPair
	}{
		{"expired", func(m *efpb.Manifest) { m.ExpiresUnix = time.Now().Add(-time.Minute).Unix() }, func(h *harness) *signing.KeyPair { return h.release }},
		{"signed by the control key", nil, func(h *harness) *signing.KeyPair { return h.control }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
			_, stale := h.inlineRelease("fraud", "1.0.0", v1.ONNX, tc.mutate, tc.signer(h))
			as := assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil))
			as.Manifest = stale
			h.desire("dev-1", as)
			waitServing(t, a, "fraud", "1.0.0")
			assert.Zero(t, a.Refused(), "the inline copy is not refused, only set aside")
		})
	}
}

// Without a good copy on the topic either, the version is refused for
// what the topic's copy says, as before.
func TestInlineManifestDoesNotHideARefusal(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	tooNew := func(m *efpb.Manifest) { m.Opset = MaxONNXOpset + 1 }
	_, env := h.inlineRelease("fraud", "1.0.0", v1.ONNX, tooNew, h.release)
	as := assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, tooNew, nil))
	as.Manifest = env
	h.desire("dev-1", as)
	st := waitFailed(t, a, "fraud", "1.0.0")
	assert.Contains(t, st.FailureReason, "needs ONNX opset")
}
