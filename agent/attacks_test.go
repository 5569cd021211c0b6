package agent

import (
	"crypto/ed25519"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The threat model as one table: what an attacker who controls the network,
// the broker, a peer, or one online key can send, following TUF/Uptane's
// list of attacks. In every row a real agent serving fraud@1.0.0 (over a
// real broker, with real onnxruntime) is attacked; it must refuse, report
// why (a FAILED status event whose reason names the check), and keep
// serving 1.0.0. docs/security.md explains each row.
//
// Checks added to the agent for this table: the ONNX opset bound
// (MaxONNXOpset) and reporting of refused trust bundles.

// attackEnv is what a row can use: the harness (root, release, control
// keys; a broker on which it may publish anything), the models, a key
// nobody trusts, and a clock offset for the agent.
type attackEnv struct {
	h     *harness
	a     *Agent
	m1    *efpb.Manifest // the serving version's manifest
	other *signing.KeyPair
	skew  *atomic.Int64 // added to the agent's clock, in nanoseconds
}

// sign signs m with payload type pt and the given keys.
func (e *attackEnv) sign(pt string, m proto.Message, keys ...*signing.KeyPair) *efpb.Envelope {
	env, err := signing.SignMessage(pt, m, keys...)
	require.NoError(e.h.t, err)
	return env
}

// desired builds a desired state for dev-1 valid for ttl.
func (e *attackEnv) desired(gen uint64, ttl time.Duration, as ...*efpb.ModelAssignment) *efpb.DesiredState {
	return &efpb.DesiredState{ProtocolVersion: efpb.ProtocolVersion, DeviceId: "dev-1", Generation: gen, Models: as,
		IssuedUnix: time.Now().Unix(), ExpiresUnix: time.Now().Add(ttl).Unix()}
}

// junk publishes one chunk of fraud@2.0.0 as the attacker wrote it; it
// runs on flood's goroutine, so errors are ignored.
func (e *attackEnv) junk(idx uint32, data []byte) {
	b, _ := proto.Marshal(&efpb.Chunk{Name: "fraud", Version: "2.0.0", Index: idx, Data: data})
	_ = e.h.broker.Publish(e.h.scheme.Chunks("fraud", "2.0.0"), b, false, 1)
}

// flood calls publish over and over until the test ends (an attacker who
// keeps sending).
func (e *attackEnv) flood(publish func()) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			publish()
			time.Sleep(time.Millisecond) // pacing the attacker, not waiting for a result
		}
	}()
	e.h.t.Cleanup(func() { close(stop); <-done })
}

// waitFetching waits until the agent asks for fraud@2.0.0's chunks.
func (e *attackEnv) waitFetching() {
	require.Eventually(e.h.t, func() bool {
		for _, f := range e.h.fetchesFor("dev-1") {
			if f.Version == "2.0.0" {
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "the agent never fetched 2.0.0")
}

func TestAttacksAreRefused(t *testing.T) {
	art1, art2 := testModels(t)
	v2 := art2.ONNX
	other, err := signing.GenerateKey(nil)
	require.NoError(t, err)

	// v2 publishes fraud@2.0.0 (mutated, signed by signer) and desires it.
	v2With := func(e *attackEnv, mutate func(*efpb.Manifest), signer *signing.KeyPair) {
		e.h.desire("dev-1", assign(e.h.publishModel("fraud", "2.0.0", art2, v2, mutate, signer)))
	}
	// withheld publishes a correct manifest but serves no chunks: the
	// attacker's chunks are the only ones.
	withheld := func(e *attackEnv) {
		e.h.mu.Lock()
		e.h.serveOnly = func(uint32) bool { return false }
		e.h.mu.Unlock()
		v2With(e, nil, nil)
		e.waitFetching()
	}

	rows := []struct {
		attack string
		do     func(e *attackEnv)
		reason string // in the reported FAILED status
	}{
		// Arbitrary software: a model nobody authorised.
		{"arbitrary model: unsigned manifest", func(e *attackEnv) {
			env := e.sign(efpb.PayloadTypeManifest, e.h.manifestFor("fraud", "2.0.0", art2, v2), e.h.release)
			env.Signatures = nil
			e.h.publishRetained(e.h.scheme.Manifest("fraud", "2.0.0"), env)
			e.h.desire("dev-1", assign(e.h.manifestFor("fraud", "2.0.0", art2, v2)))
		}, "manifest refused"},
		{"arbitrary model: manifest signed by an untrusted key", func(e *attackEnv) {
			v2With(e, nil, e.other)
		}, "manifest refused"},
		{"arbitrary model: release signature over other bytes", func(e *attackEnv) {
			m := e.h.manifestFor("fraud", "2.0.0", art2, v2)
			env := e.sign(efpb.PayloadTypeManifest, m, e.h.release)
			m.Hardware = []string{"anything"} // the payload changes after signing
			env.Payload, err = proto.Marshal(m)
			require.NoError(t, err)
			e.h.publishRetained(e.h.scheme.Manifest("fraud", "2.0.0"), env)
			e.h.desire("dev-1", assign(m))
		}, "manifest refused"},
		{"arbitrary model: desired state signed by an untrusted key", func(e *attackEnv) {
			m := e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)
			e.h.desireGen("dev-1", 2, e.other, assign(m))
		}, "desired state refused"},
		{"arbitrary model: bytes that do not hash to the signed sha256", func(e *attackEnv) {
			e.h.mu.Lock()
			for i := range 64 {
				e.h.corrupt[uint32(i)] = 1 << 20
			}
			e.h.mu.Unlock()
			v2With(e, nil, nil)
		}, "did not match the signed manifest"},

		// Compromised online key: the control plane's key alone.
		{"control key alone: manifest signed by the control key", func(e *attackEnv) {
			v2With(e, nil, e.h.control)
		}, "manifest refused"},
		{"control key alone: desired state naming unsigned bytes", func(e *attackEnv) {
			// The attacker also publishes a manifest for its bytes, signed by
			// the only key it holds.
			evil := append([]byte(nil), v2...)
			evil[len(evil)-1] ^= 1
			m := e.h.publishModel("fraud", "2.0.0", art2, evil, nil, e.h.control)
			e.h.desireGen("dev-1", 2, e.h.control, assign(m))
		}, "manifest refused"},

		// Rollback and replay.
		{"replay: an older desired-state generation", func(e *attackEnv) {
			m2 := e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)
			e.h.desireGen("dev-1", 3, e.h.control, assign(e.m1)) // accepted: still 1.0.0
			require.Eventually(t, func() bool { return e.a.Generation() == 3 }, 10*time.Second, 10*time.Millisecond)
			e.h.desireGen("dev-1", 2, e.h.control, assign(m2))
		}, "older than the accepted generation"},
		{"replay: the accepted generation with other content", func(e *attackEnv) {
			e.h.desireGen("dev-1", 1, e.h.control, assign(e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)))
		}, "already accepted with different content"},
		{"rollback: an old signed manifest on the new version's topic", func(e *attackEnv) {
			env := e.sign(efpb.PayloadTypeManifest, e.h.manifestFor("fraud", "1.0.0", art1, art1.ONNX), e.h.release)
			e.h.publishRetained(e.h.scheme.Manifest("fraud", "2.0.0"), env)
			e.h.desire("dev-1", assign(e.h.manifestFor("fraud", "2.0.0", art2, v2)))
		}, "it describes fraud@1.0.0, not fraud@2.0.0"},
		{"rollback: an older trust bundle", func(e *attackEnv) {
			now := time.Now()
			b := signing.NewTrustBundle(1, now, now.Add(time.Hour), []ed25519.PublicKey{e.h.root.Public},
				[]ed25519.PublicKey{e.other.Public}, []ed25519.PublicKey{e.other.Public})
			e.h.publishRetained(e.h.scheme.Trust(), e.sign(efpb.PayloadTypeTrustBundle, b, e.h.root))
		}, "trust bundle refused"},

		// Freeze: stale metadata presented as current.
		{"freeze: expired manifest", func(e *attackEnv) {
			v2With(e, func(m *efpb.Manifest) { m.ExpiresUnix = time.Now().Add(-time.Minute).Unix() }, nil)
		}, "expired"},
		{"freeze: expired desired state", func(e *attackEnv) {
			m := e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)
			ds := e.desired(2, -time.Minute, assign(m))
			e.h.publishRetained(e.h.scheme.Desired("dev-1"), e.sign(efpb.PayloadTypeDesired, ds, e.h.control))
		}, "desired state expired"},
		{"freeze: the trusted bundle has expired", func(e *attackEnv) {
			// Documents valid for two days; the bundle (24 h) has lapsed.
			m := e.h.publishModel("fraud", "2.0.0", art2, v2, func(m *efpb.Manifest) {
				m.ExpiresUnix = time.Now().Add(48 * time.Hour).Unix()
			}, nil)
			e.skew.Store(int64(25 * time.Hour))
			ds := e.desired(2, 48*time.Hour, assign(m))
			e.h.publishRetained(e.h.scheme.Desired("dev-1"), e.sign(efpb.PayloadTypeDesired, ds, e.h.control))
		}, "trust bundle version 1 expired"},

		// Mix and match: valid pieces from different releases.
		{"mix-and-match: desired state names a hash the manifest does not list", func(e *attackEnv) {
			m := e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)
			as := assign(m)
			as.Sha256 = make([]byte, 32) // bytes some other release signed
			as.Sha256[0] = 1
			e.h.desire("dev-1", as)
		}, "but the desired state names"},

		// Endless data.
		{"endless data: declared size beyond the device's limit", func(e *attackEnv) {
			v2With(e, func(m *efpb.Manifest) { m.Size = 1 << 40 }, nil)
		}, "manifest refused"},
		// A burst of junk ends one download attempt; the update fails
		// (for this generation, until a restart) only when the junk keeps
		// coming through every retry.
		{"endless data: chunks longer than the signed chunk size", func(e *attackEnv) {
			withheld(e)
			big := make([]byte, 1<<20) // the manifest's chunk size is smaller
			e.flood(func() { e.junk(0, big) })
		}, "download refused after 3 attempts"},
		{"endless data: more chunks than the manifest lists", func(e *attackEnv) {
			withheld(e)
			var i uint32
			e.flood(func() { i++; e.junk(1000+i%64, []byte("extra")) })
		}, "download refused after 3 attempts"},

		// Wrong target.
		{"wrong hardware", func(e *attackEnv) {
			v2With(e, func(m *efpb.Manifest) { m.Hardware = []string{"riscv64-npu"} }, nil)
		}, "built for"},
		{"wrong runtime", func(e *attackEnv) {
			v2With(e, func(m *efpb.Manifest) { m.Runtime = "tflite" }, nil)
		}, "runtime \"tflite\" is not supported"},
		{"wrong opset", func(e *attackEnv) {
			v2With(e, func(m *efpb.Manifest) { m.Opset = MaxONNXOpset + 1 }, nil)
		}, "opset"},

		// Key rotation: after the root rotates the release key out, its
		// signatures no longer count.
		{"rotated-out release key", func(e *attackEnv) {
			newRelease, err := signing.GenerateKey(nil)
			require.NoError(t, err)
			now := time.Now()
			b := signing.NewTrustBundle(2, now, now.Add(24*time.Hour), []ed25519.PublicKey{e.h.root.Public},
				[]ed25519.PublicKey{newRelease.Public}, []ed25519.PublicKey{e.h.control.Public})
			e.h.publishRetained(e.h.scheme.Trust(), e.sign(efpb.PayloadTypeTrustBundle, b, e.h.root))
			require.Eventually(t, func() bool { return e.a.verify.Bundle().GetVersion() == 2 }, 10*time.Second, 10*time.Millisecond)
			v2With(e, nil, e.h.release) // the old release key
		}, "manifest refused"},
		{"trust bundle signed by a key that is not root", func(e *attackEnv) {
			now := time.Now()
			b := signing.NewTrustBundle(2, now, now.Add(time.Hour), []ed25519.PublicKey{e.other.Public},
				[]ed25519.PublicKey{e.other.Public}, []ed25519.PublicKey{e.other.Public})
			e.h.publishRetained(e.h.scheme.Trust(), e.sign(efpb.PayloadTypeTrustBundle, b, e.other))
		}, "trust bundle refused"},

		// Malformed and confused envelopes.
		{"malformed: a manifest envelope carried as a desired state", func(e *attackEnv) {
			m := e.h.publishModel("fraud", "2.0.0", art2, v2, nil, nil)
			ds := e.desired(2, time.Hour, assign(m))
			e.h.publishRetained(e.h.scheme.Desired("dev-1"), e.sign(efpb.PayloadTypeManifest, ds, e.h.control))
		}, "desired state refused"},
		{"malformed: desired payload that is not a desired state", func(e *attackEnv) {
			env := &efpb.Envelope{PayloadType: efpb.PayloadTypeDesired, Payload: []byte{0xff, 0xff, 0xff, 0x0f, 0x01}}
			s, err := signing.Sign(env.PayloadType, env.Payload, e.h.control)
			require.NoError(t, err)
			e.h.publishRetained(e.h.scheme.Desired("dev-1"), s)
		}, "desired state refused"},
	}

	for _, row := range rows {
		t.Run(row.attack, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			skew := &atomic.Int64{}
			opts := h.agentOptions(t, "dev-1", t.TempDir())
			opts.Clock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			a := h.startAgent(t, opts)
			m1 := h.publishModel("fraud", "1.0.0", art1, art1.ONNX, nil, nil)
			h.desire("dev-1", assign(m1))
			waitServing(t, a, "fraud", "1.0.0")

			row.do(&attackEnv{h: h, a: a, m1: m1, other: other, skew: skew})

			var reported *efpb.StatusEvent
			require.Eventually(t, func() bool {
				reported = h.failure("dev-1", row.reason)
				return reported != nil
			}, 15*time.Second, 10*time.Millisecond, "no FAILED status naming %q; statuses: %v", row.reason, h.reasons("dev-1"))
			for _, s := range a.Status() {
				if s.Name == "fraud" {
					assert.Equal(t, "1.0.0", s.Serving, "the last good model keeps serving")
				}
			}
			_, version := score(t, a, sampleRows(t, 2))
			assert.Equal(t, "1.0.0", version, "inference is answered by the last good model")
		})
	}
}

// TestAttackMalformedPayloadsAreDropped: bytes that are not protobuf at all
// on every topic the agent reads are counted and dropped, and it serves on.
func TestAttackMalformedPayloadsAreDropped(t *testing.T) {
	art1, _ := testModels(t)
	h := newHarness(t)
	a := h.startAgent(t, h.agentOptions(t, "dev-1", t.TempDir()))
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", art1, art1.ONNX, nil, nil)))
	waitServing(t, a, "fraud", "1.0.0")
	dropped := a.Dropped()
	garbage := []byte{0xff, 0xff, 0xff, 0x0f, 0x01}
	require.NoError(t, h.broker.Publish(h.scheme.Desired("dev-1"), garbage, false, 1))
	require.NoError(t, h.broker.Publish(h.scheme.Trust(), garbage, false, 1))
	require.Eventually(t, func() bool { return a.Dropped() >= dropped+2 }, 10*time.Second, 10*time.Millisecond)
	_, version := score(t, a, sampleRows(t, 2))
	assert.Equal(t, "1.0.0", version)
}

// failure returns dev's newest FAILED status whose reason contains substr.
func (h *harness) failure(dev, substr string) *efpb.StatusEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.statuses) - 1; i >= 0; i-- {
		s := h.statuses[i]
		if s.DeviceId == dev && s.State == efpb.ModelState_MODEL_STATE_FAILED && strings.Contains(s.Reason, substr) {
			return s
		}
	}
	return nil
}

func (h *harness) reasons(dev string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, s := range h.statuses {
		if s.DeviceId == dev && s.Reason != "" {
			out = append(out, s.Reason)
		}
	}
	return out
}
