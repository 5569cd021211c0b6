package signing_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// history is a fleet's trust bundles 1..n as `keys rotate` writes them:
// version 1 signed by the first root; each next version rotates one role's
// key and is signed by the current root, and by the new root too when the
// root rotates.
type history struct {
	envs  []*efpb.Envelope   // envs[i] is version i+1
	roots []*signing.KeyPair // roots[i] is the root of version i+1
	keys  []*signing.KeyPair // every key made, by seed order
}

// makeHistory builds version 1 and one version per rotation ("root",
// "release" or "control"); mut, if set, adjusts a version's bundle before
// it is signed.
func makeHistory(t *testing.T, mut func(version uint64, b *efpb.TrustBundle), rotations ...string) *history {
	t.Helper()
	h := &history{}
	seed := byte(100)
	key := func() *signing.KeyPair {
		seed++
		k := testKey(t, seed)
		h.keys = append(h.keys, k)
		return k
	}
	root, release, control := key(), key(), key()
	add := func(version uint64, signers ...*signing.KeyPair) {
		b := bundle(version, root, release, control)
		if mut != nil {
			mut(version, b)
		}
		// SignMessage, not SignTrustBundle: mut may make a bundle that
		// SignTrustBundle refuses to sign.
		h.envs = append(h.envs, signMsg(t, efpb.PayloadTypeTrustBundle, b, signers...))
		h.roots = append(h.roots, root)
	}
	add(1, root)
	for i, r := range rotations {
		version := uint64(i + 2)
		switch r {
		case "root":
			old := root
			root = key()
			add(version, old, root)
		case "release":
			release = key()
			add(version, root)
		case "control":
			control = key()
			add(version, root)
		default:
			t.Fatalf("makeHistory: unknown rotation %q", r)
		}
	}
	return h
}

// versions returns the envelopes of the given versions, in that order.
func (h *history) versions(vs ...uint64) []*efpb.Envelope {
	out := make([]*efpb.Envelope, len(vs))
	for i, v := range vs {
		out[i] = h.envs[v-1]
	}
	return out
}

// resign returns version v's bundle signed by keys instead.
func (h *history) resign(t *testing.T, v uint64, keys ...*signing.KeyPair) *efpb.Envelope {
	t.Helper()
	env := h.envs[v-1]
	return signMsg(t, efpb.PayloadTypeTrustBundle, mustBundle(t, env), keys...)
}

func mustBundle(t *testing.T, env *efpb.Envelope) *efpb.TrustBundle {
	t.Helper()
	b := &efpb.TrustBundle{}
	require.NoError(t, proto.Unmarshal(env.Payload, b))
	return b
}

func TestUpdateTrustChain(t *testing.T) {
	expiredAt := func(versions ...uint64) func(uint64, *efpb.TrustBundle) {
		return func(v uint64, b *efpb.TrustBundle) {
			for _, e := range versions {
				if v == e {
					b.CreatedUnix = testNow.Add(-48 * time.Hour).Unix()
					b.ExpiresUnix = testNow.Add(-time.Hour).Unix()
				}
			}
		}
	}
	long := make([]string, signing.MaxTrustChainLinks+1)
	for i := range long {
		long[i] = "release"
	}
	tests := []struct {
		name      string
		rotations []string
		mut       func(uint64, *efpb.TrustBundle)
		// trusted is the version the verifier trusts before the walk
		// (0: none; it is provisioned with provisioned's root, default 1).
		trusted     uint64
		provisioned uint64
		chain       func(t *testing.T, h *history) []*efpb.Envelope
		want        uint64 // the trusted version after the walk; 0: refused
		wantErr     error
		wantMsg     string
	}{
		{
			name: "good chain: two root rotations", rotations: []string{"root", "root"}, trusted: 1,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(1, 2, 3) }, want: 3,
		},
		{
			name: "good chain: three root rotations among release and control ones", trusted: 1,
			rotations: []string{"release", "root", "control", "root", "release", "root", "control"},
			chain:     func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 8,
		},
		{
			name: "good chain: versions already trusted are skipped", rotations: []string{"root", "release", "root"}, trusted: 3,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 4,
		},
		{
			name: "good chain: starting after the trusted version", rotations: []string{"root", "release", "root"}, trusted: 2,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(3, 4) }, want: 4,
		},
		{
			name: "good chain: the newest alone, signed by the trusted root", rotations: []string{"release", "control"}, trusted: 1,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(3) }, want: 3,
		},
		{
			name: "good chain: a new device provisioned with the newest root", rotations: []string{"root", "root"}, provisioned: 3,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 3,
		},
		{
			name: "good chain: a new device provisioned with the first root", rotations: []string{"root", "root"},
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 3,
		},
		{
			name: "good chain: the trusted newest again is a no-op", rotations: []string{"root"}, trusted: 2,
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 2,
		},
		{
			name: "expired intermediate: it still authorises its successor", rotations: []string{"root", "root"}, trusted: 1,
			mut:   expiredAt(2),
			chain: func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs }, want: 3,
		},
		{
			name: "expired newest", rotations: []string{"root", "root"}, trusted: 1, mut: expiredAt(3),
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs },
			wantErr: signing.ErrExpired, wantMsg: "update trust chain: expired: trust bundle version 3 expired at",
		},
		{
			name: "missing link inside the chain", rotations: []string{"root", "release", "root"}, trusted: 1,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(1, 2, 4) },
			wantErr: signing.ErrMissingLink, wantMsg: "update trust chain: version 4 follows version 2: trust chain link missing: version 3",
		},
		{
			name: "missing link after the trusted version", rotations: []string{"root", "root"}, trusted: 1,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(3) },
			wantErr: signing.ErrMissingLink,
			wantMsg: "version 3 does not link to trusted version 1: trust chain link missing: version 2 (the root of version 1 did not sign version 3: root role needs 1 valid signature(s), got 0",
		},
		{
			name: "missing links: several versions", rotations: []string{"root", "control", "release", "root"}, trusted: 1,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(5) },
			wantErr: signing.ErrMissingLink, wantMsg: "trust chain link missing: version 2 to 4",
		},
		{
			name: "wrong signer: not the predecessor's root", rotations: []string{"root", "root"}, trusted: 1,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				return []*efpb.Envelope{h.envs[0], h.resign(t, 2, h.roots[1]), h.envs[2]}
			},
			wantErr: signing.ErrThreshold, wantMsg: "version 2: not signed by the root of version 1: root role needs 1 valid signature(s), got 0",
		},
		{
			name: "wrong signer: the new root did not sign its rotation", rotations: []string{"root", "root"}, trusted: 1,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				return []*efpb.Envelope{h.envs[0], h.resign(t, 2, h.roots[0]), h.envs[2]}
			},
			wantErr: signing.ErrThreshold, wantMsg: "version 2: not signed by its own root: root role needs 1",
		},
		{
			name: "wrong signer: a retired root signs the newest", rotations: []string{"root", "release"}, trusted: 1,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				return []*efpb.Envelope{h.envs[1], h.resign(t, 3, h.roots[0])}
			},
			wantErr: signing.ErrThreshold, wantMsg: "version 3: not signed by the root of version 2",
		},
		{
			name: "wrong signer: a new device's root signed none of it", rotations: []string{"root"}, provisioned: 1,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				return []*efpb.Envelope{h.resign(t, 1, h.keys[1]), h.resign(t, 2, h.keys[1], h.roots[1])}
			},
			wantErr: signing.ErrThreshold, wantMsg: "version 2: not signed by the provisioned root key",
		},
		{
			name: "too long", rotations: long, trusted: 1,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.envs },
			wantErr: signing.ErrMalformed, wantMsg: "65 bundles before the newest, at most 64",
		},
		{
			name: "rollback: an older newest", rotations: []string{"root", "root"}, trusted: 3,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(1, 2) },
			wantErr: signing.ErrRollback, wantMsg: "newest version 2, trusted version is 3",
		},
		{
			name: "rollback: the trusted version with other content", rotations: []string{"root"}, trusted: 2,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				b := mustBundle(t, h.envs[1])
				b.ExpiresUnix++
				return []*efpb.Envelope{h.envs[0], signMsg(t, efpb.PayloadTypeTrustBundle, b, h.roots[0], h.roots[1])}
			},
			wantErr: signing.ErrRollback, wantMsg: "version 2 is already trusted with different content",
		},
		{
			name: "versions out of order", rotations: []string{"root"}, trusted: 1,
			chain:   func(_ *testing.T, h *history) []*efpb.Envelope { return h.versions(2, 1) },
			wantErr: signing.ErrMalformed, wantMsg: "version 1 follows version 2",
		},
		{
			name: "malformed link", rotations: []string{"release", "release"}, trusted: 1,
			chain: func(t *testing.T, h *history) []*efpb.Envelope {
				bad, err := signing.Sign(efpb.PayloadTypeTrustBundle, []byte{0x0a, 0xff}, h.roots[0])
				require.NoError(t, err)
				return []*efpb.Envelope{h.envs[0], bad, h.envs[2]}
			},
			wantErr: signing.ErrMalformed, wantMsg: "bundle 2 of 3: malformed: decode trust bundle",
		},
		{
			name: "empty", trusted: 1,
			chain:   func(*testing.T, *history) []*efpb.Envelope { return nil },
			wantErr: signing.ErrMalformed, wantMsg: "no bundles",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := makeHistory(t, tt.mut, tt.rotations...)
			provisioned := max(tt.provisioned, 1)
			v := signing.NewVerifier(h.roots[provisioned-1].Public)
			if tt.trusted > 0 {
				_, err := v.UpdateTrustChain(h.envs[:tt.trusted], testNow)
				require.NoError(t, err, "setting up trust in version %d", tt.trusted)
			}
			got, err := v.UpdateTrustChain(tt.chain(t, h), testNow)
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got.Version, "UpdateTrustChain = version %d, want %d", got.Version, tt.want)
				assert.Equal(t, tt.want, v.Bundle().GetVersion())
				assert.True(t, bytes.Equal(h.envs[tt.want-1].Payload, v.BundleEnvelope().Payload), "the newest envelope is kept for RestoreTrustBundle")
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.wantErr, "UpdateTrustChain = %v, want %v", err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
			assert.Equal(t, tt.trusted, v.Bundle().GetVersion(), "a refused chain changes nothing")
		})
	}
}

// TestUpdateTrustChainThenDocuments: after the walk, the newest bundle's
// keys sign and the rotated-out ones do not.
func TestUpdateTrustChainThenDocuments(t *testing.T) {
	h := makeHistory(t, nil, "release", "root", "root")
	v := signing.NewVerifier(h.roots[0].Public)
	_, err := v.UpdateTrustChain(h.versions(1), testNow)
	require.NoError(t, err)
	oldRelease := h.keys[1]
	newRelease := h.keys[3]
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), oldRelease), testNow)
	require.NoError(t, err)
	_, err = v.UpdateTrustChain(h.envs, testNow)
	require.NoError(t, err)
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), oldRelease), testNow)
	assert.ErrorIs(t, err, signing.ErrThreshold, "the rotated-out release key")
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), newRelease), testNow)
	assert.NoError(t, err)

	// After a restart the persisted newest is restored, and the chain
	// published again is a no-op.
	restarted := signing.NewVerifier(h.roots[0].Public)
	_, err = restarted.RestoreTrustBundle(v.BundleEnvelope())
	require.NoError(t, err)
	got, err := restarted.UpdateTrustChain(h.envs, testNow)
	require.NoError(t, err)
	assert.EqualValues(t, 4, got.Version)
}

func TestTrustChainEncoding(t *testing.T) {
	h := makeHistory(t, nil, "root", "release")
	b, err := signing.EncodeTrustChain(h.envs)
	require.NoError(t, err)
	got, err := signing.DecodeTrustChain(b)
	require.NoError(t, err)
	require.Len(t, got, 3)
	for i := range got {
		assert.True(t, proto.Equal(h.envs[i], got[i]), "DecodeTrustChain(EncodeTrustChain(chain))[%d] = %v, want %v", i, got[i], h.envs[i])
	}

	// A bare envelope (an older control plane) is a chain of one.
	bare, err := proto.Marshal(h.envs[2])
	require.NoError(t, err)
	got, err = signing.DecodeTrustChain(bare)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.True(t, proto.Equal(h.envs[2], got[0]))

	// An older agent reads the chain as the newest envelope.
	old := &efpb.Envelope{}
	require.NoError(t, proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, old))
	assert.True(t, proto.Equal(h.envs[2], old))

	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"too large", make([]byte, signing.MaxTrustChainSize+1), "262145 bytes, at most 262144"},
		{"not protobuf", []byte{0xff, 0xff, 0xff, 0x0f, 0x01}, "malformed"},
		{"too many bundles", func() []byte {
			tc := &efpb.TrustChain{PayloadType: efpb.PayloadTypeTrustBundle}
			for range signing.MaxTrustChainLinks + 1 {
				tc.Previous = append(tc.Previous, &efpb.Envelope{PayloadType: efpb.PayloadTypeTrustBundle})
			}
			b, err := proto.Marshal(tc)
			require.NoError(t, err)
			return b
		}(), "65 bundles before the newest, at most 64"},
		{"a bundle too large", func() []byte {
			tc := &efpb.TrustChain{PayloadType: efpb.PayloadTypeTrustBundle,
				Previous: []*efpb.Envelope{{Payload: make([]byte, signing.MaxTrustBundleSize)}}}
			b, err := proto.Marshal(tc)
			require.NoError(t, err)
			return b
		}(), "bundle 1 of 2 has"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := signing.DecodeTrustChain(tt.in)
			require.ErrorIs(t, err, signing.ErrMalformed)
			assert.Contains(t, err.Error(), tt.want)
		})
	}

	_, err = signing.EncodeTrustChain(nil)
	assert.Error(t, err)
	_, err = signing.EncodeTrustChain(make([]*efpb.Envelope, signing.MaxTrustChainLinks+2))
	assert.ErrorContains(t, err, "at most 64")
}

// FuzzUpdateTrustChain: arbitrary bytes on the trust topic never panic the
// decoder or the walk, and never install trust the provisioned key did not
// sign.
func FuzzUpdateTrustChain(f *testing.F) {
	root, release, control := testKey(f, 1), testKey(f, 2), testKey(f, 3)
	env, err := signing.SignTrustBundle(bundle(2, root, release, control), root)
	require.NoError(f, err)
	seed, err := signing.EncodeTrustChain([]*efpb.Envelope{env})
	require.NoError(f, err)
	f.Add(seed)
	f.Add([]byte{})
	other := testKey(f, 9)
	f.Fuzz(func(t *testing.T, data []byte) {
		chain, err := signing.DecodeTrustChain(data)
		if err != nil {
			return
		}
		v := signing.NewVerifier(other.Public)
		if _, err := v.UpdateTrustChain(chain, testNow); err == nil {
			t.Fatalf("a chain not signed by the provisioned root was accepted")
		}
	})
}
