package agent

import (
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestAgentWalksTrustChain: the agent follows the trust topic's chain
// across two root rotations, refuses a bundle or a chain that skips a link
// with a reason that names the missing version, and keeps the newest
// bundle it accepted across a restart.
func TestAgentWalksTrustChain(t *testing.T) {
	h := newHarness(t) // bundle version 1, root h.root, retained
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	a, err := New(opts)
	require.NoError(t, err)
	stop := testkit.Start(t, "agent dev-1", a.Run, a.Ready())
	waitTrust(t, a, 1)

	// keys rotate: root twice, then release; each bundle signed by the
	// current root, and by the new one when the root rotates.
	key := func() *signing.KeyPair {
		k, err := signing.GenerateKey(nil)
		require.NoError(t, err)
		return k
	}
	rootB, rootC, release2 := key(), key(), key()
	now := time.Now()
	bundleEnv := func(version uint64, root, release *signing.KeyPair, signers ...*signing.KeyPair) *efpb.Envelope {
		b := signing.NewTrustBundle(version, now, now.Add(24*time.Hour), []ed25519.PublicKey{root.Public},
			[]ed25519.PublicKey{release.Public}, []ed25519.PublicKey{h.control.Public})
		env, err := signing.SignTrustBundle(b, signers...)
		require.NoError(t, err)
		return env
	}
	v1 := bundleEnv(1, h.root, h.release, h.root)
	v2 := bundleEnv(2, rootB, h.release, h.root, rootB)
	v3 := bundleEnv(3, rootC, h.release, rootB, rootC)
	v4 := bundleEnv(4, rootC, release2, rootC)
	publishChain := func(chain ...*efpb.Envelope) {
		t.Helper()
		b, err := signing.EncodeTrustChain(chain)
		require.NoError(t, err)
		require.NoError(t, h.broker.Publish(h.scheme.Trust(), b, true, 1))
	}
	refusal := func(substr string) *efpb.StatusEvent {
		t.Helper()
		var ev *efpb.StatusEvent
		require.Eventually(t, func() bool {
			ev = h.failure("dev-1", substr)
			return ev != nil
		}, 30*time.Second, 10*time.Millisecond, "no refusal naming %q; statuses: %v", substr, h.reasons("dev-1"))
		return ev
	}

	// The newest bundle alone (an older control plane): its root is not
	// the one the agent trusts, and version 2 is missing.
	publishChain(v3)
	ev := refusal("trust chain link missing: version 2")
	assert.Equal(t, efpb.Refusal_REFUSAL_TRUST_BUNDLE, ev.Refused, "the status event says a trust bundle was refused")
	assert.Contains(t, ev.Reason, "version 3 does not link to trusted version 1")
	assert.Contains(t, ev.Reason, "root role needs 1 valid signature(s), got 0")
	assert.EqualValues(t, 1, a.TrustVersion())

	// A chain with a hole.
	publishChain(v1, v2, v4)
	ev = refusal("version 4 follows version 2: trust chain link missing: version 3")
	assert.Equal(t, efpb.Refusal_REFUSAL_TRUST_BUNDLE, ev.Refused)
	assert.EqualValues(t, 1, a.TrustVersion())

	// The whole chain: walked to the newest.
	refused := a.Refused()
	publishChain(v1, v2, v3, v4)
	waitTrust(t, a, 4)
	assert.Equal(t, refused, a.Refused(), "the whole chain is accepted")
	m := &efpb.Manifest{ProtocolVersion: efpb.ProtocolVersion, Name: "fraud", Version: "1.0.0",
		CreatedUnix: now.Unix(), ExpiresUnix: now.Add(time.Hour).Unix()}
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, release2)
	require.NoError(t, err)
	_, err = a.verify.VerifyManifest(env, time.Now())
	assert.NoError(t, err, "the newest bundle's release key counts")

	// After a restart with nothing retained, the newest bundle is back
	// from the agent's store.
	stop()
	require.NoError(t, h.broker.Publish(h.scheme.Trust(), nil, true, 1))
	a, err = New(opts)
	require.NoError(t, err)
	testkit.Run(t, "agent dev-1 again", a.Run, a.Ready())
	assert.EqualValues(t, 4, a.TrustVersion(), "restored before the agent is ready")
}

func waitTrust(t *testing.T, a *Agent, version uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return a.TrustVersion() == version }, 30*time.Second, 10*time.Millisecond,
		"the agent trusts bundle version %d, want %d", a.TrustVersion(), version)
}

// TestAgentRetriesDesiredStateAfterNewerBundle: a desired state signed by a
// control key that only the next bundle lists is refused, and accepted once
// that bundle arrives, without being published again.
func TestAgentRetriesDesiredStateAfterNewerBundle(t *testing.T) {
	art1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	waitTrust(t, a, 1)
	m1 := h.publishModel("fraud", "1.0.0", art1, art1.ONNX, nil, nil)

	control2, err := signing.GenerateKey(nil)
	require.NoError(t, err)
	h.desireGen("dev-1", 1, control2, assign(m1))
	require.Eventually(t, func() bool { return h.failure("dev-1", "desired state refused") != nil }, 30*time.Second, 10*time.Millisecond,
		"statuses: %v", h.reasons("dev-1"))

	now := time.Now()
	b := signing.NewTrustBundle(2, now, now.Add(24*time.Hour), []ed25519.PublicKey{h.root.Public},
		[]ed25519.PublicKey{h.release.Public}, []ed25519.PublicKey{control2.Public})
	env, err := signing.SignTrustBundle(b, h.root)
	require.NoError(t, err)
	h.publishRetained(h.scheme.Trust(), env)
	waitServing(t, a, "fraud", "1.0.0")
	assert.EqualValues(t, 1, a.Generation())
}
