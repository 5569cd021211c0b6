package signing_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestVerifyManifestAccepts(t *testing.T) {
	f := newFleet(t)
	m := testManifest()
	got, err := f.v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, m, f.release), testNow)
	require.NoError(t, err)
	assert.True(t, proto.Equal(m, got), "VerifyManifest = %v, want %v", got, m)

	// Signatures by unknown keys beside a valid one are ignored.
	env := signMsg(t, efpb.PayloadTypeManifest, m, testKey(t, 99), f.release)
	_, err = f.v.VerifyManifest(env, testNow)
	require.NoError(t, err)
}

// refusalCase is one envelope a Verifier must refuse, and why.
type refusalCase struct {
	name    string
	env     func(f *fleet) *efpb.Envelope
	now     time.Time // zero means testNow
	want    error
	wantMsg string
}

func TestVerifyManifestRefusals(t *testing.T) {
	manifestEnv := func(f *fleet, m *efpb.Manifest, keys ...*signing.KeyPair) *efpb.Envelope {
		return signMsg(t, efpb.PayloadTypeManifest, m, keys...)
	}
	tests := []refusalCase{
		{
			name: "nil envelope",
			env:  func(*fleet) *efpb.Envelope { return nil },
			want: signing.ErrMalformed,
		},
		{
			name: "unsigned",
			env: func(f *fleet) *efpb.Envelope {
				env := manifestEnv(f, testManifest(), f.release)
				env.Signatures = nil
				return env
			},
			want: signing.ErrUnsigned,
		},
		{
			name:    "wrong key",
			env:     func(f *fleet) *efpb.Envelope { return manifestEnv(f, testManifest(), testKey(t, 99)) },
			want:    signing.ErrThreshold,
			wantMsg: "release role needs 1 valid signature(s), got 0",
		},
		{
			name:    "control key cannot sign manifests",
			env:     func(f *fleet) *efpb.Envelope { return manifestEnv(f, testManifest(), f.control) },
			want:    signing.ErrThreshold,
			wantMsg: "release role needs 1",
		},
		{
			name: "root key cannot sign manifests",
			env:  func(f *fleet) *efpb.Envelope { return manifestEnv(f, testManifest(), f.root) },
			want: signing.ErrThreshold,
		},
		{
			name: "signature over other bytes",
			env: func(f *fleet) *efpb.Envelope {
				other := testManifest()
				other.Version = "6.6.6"
				env := manifestEnv(f, testManifest(), f.release)
				env.Signatures = manifestEnv(f, other, f.release).Signatures
				return env
			},
			want: signing.ErrThreshold,
		},
		{
			name: "payload tampered after signing",
			env: func(f *fleet) *efpb.Envelope {
				env := manifestEnv(f, testManifest(), f.release)
				env.Payload[len(env.Payload)-1] ^= 1
				return env
			},
			want: signing.ErrThreshold,
		},
		{
			name: "signature for another payload type",
			env: func(f *fleet) *efpb.Envelope {
				// Signed as desired state; relabelled as a manifest. The PAE
				// covers the type, so the signature no longer holds.
				env := signMsg(t, efpb.PayloadTypeDesired, testManifest(), f.release)
				env.PayloadType = efpb.PayloadTypeManifest
				return env
			},
			want: signing.ErrThreshold,
		},
		{
			name:    "other payload type",
			env:     func(f *fleet) *efpb.Envelope { return signMsg(t, efpb.PayloadTypeDesired, testManifest(), f.release) },
			want:    signing.ErrWrongPayloadType,
			wantMsg: efpb.PayloadTypeDesired,
		},
		{
			name: "truncated signature",
			env: func(f *fleet) *efpb.Envelope {
				env := manifestEnv(f, testManifest(), f.release)
				env.Signatures[0].Sig = env.Signatures[0].Sig[:10]
				return env
			},
			want: signing.ErrThreshold,
		},
		{
			name: "too many signatures",
			env: func(f *fleet) *efpb.Envelope {
				env := manifestEnv(f, testManifest(), f.release)
				for len(env.Signatures) <= signing.MaxSignatures {
					env.Signatures = append(env.Signatures, env.Signatures[0])
				}
				return env
			},
			want: signing.ErrMalformed,
		},
		{
			name: "expired manifest",
			env: func(f *fleet) *efpb.Envelope {
				m := testManifest()
				m.ExpiresUnix = testNow.Unix()
				return manifestEnv(f, m, f.release)
			},
			want:    signing.ErrExpired,
			wantMsg: "manifest expired at 2026-11-25T12:00:00Z",
		},
		{
			name: "manifest without expiry",
			env: func(f *fleet) *efpb.Envelope {
				m := testManifest()
				m.ExpiresUnix = 0
				return manifestEnv(f, m, f.release)
			},
			want:    signing.ErrMalformed,
			wantMsg: "expires_unix is not set",
		},
		{
			name: "newer protocol version",
			env: func(f *fleet) *efpb.Envelope {
				m := testManifest()
				m.ProtocolVersion = efpb.ProtocolVersion + 1
				return manifestEnv(f, m, f.release)
			},
			want: signing.ErrProtocolVersion,
		},
		{
			name: "signed garbage",
			env: func(f *fleet) *efpb.Envelope {
				env, err := signing.Sign(efpb.PayloadTypeManifest, []byte{0xff, 0xff, 0xff}, f.release)
				require.NoError(t, err)
				return env
			},
			want: signing.ErrMalformed,
		},
		{
			name: "trust bundle expired",
			env: func(f *fleet) *efpb.Envelope {
				m := testManifest()
				m.ExpiresUnix = testNow.Add(365 * 24 * time.Hour).Unix()
				return manifestEnv(f, m, f.release)
			},
			now:     testNow.Add(31 * 24 * time.Hour),
			want:    signing.ErrExpired,
			wantMsg: "trust bundle version 1 expired",
		},
	}
	runRefusals(t, "verify manifest: ", tests, func(v *signing.Verifier, env *efpb.Envelope, now time.Time) (proto.Message, error) {
		return v.VerifyManifest(env, now)
	})
}

func TestVerifyDesired(t *testing.T) {
	f := newFleet(t)
	d := testDesired()
	got, err := f.v.VerifyDesired(signMsg(t, efpb.PayloadTypeDesired, d, f.control), testNow)
	require.NoError(t, err)
	assert.True(t, proto.Equal(d, got), "VerifyDesired = %v, want %v", got, d)

	tests := []refusalCase{
		{
			name: "unsigned",
			env: func(f *fleet) *efpb.Envelope {
				return &efpb.Envelope{PayloadType: efpb.PayloadTypeDesired, Payload: []byte{}}
			},
			want: signing.ErrUnsigned,
		},
		{
			name:    "release key cannot sign desired state",
			env:     func(f *fleet) *efpb.Envelope { return signMsg(t, efpb.PayloadTypeDesired, testDesired(), f.release) },
			want:    signing.ErrThreshold,
			wantMsg: "control role needs 1 valid signature(s), got 0",
		},
		{
			name: "wrong key",
			env: func(f *fleet) *efpb.Envelope {
				return signMsg(t, efpb.PayloadTypeDesired, testDesired(), testKey(t, 42))
			},
			want: signing.ErrThreshold,
		},
		{
			name: "manifest payload type",
			env:  func(f *fleet) *efpb.Envelope { return signMsg(t, efpb.PayloadTypeManifest, testDesired(), f.control) },
			want: signing.ErrWrongPayloadType,
		},
		{
			name: "tampered generation",
			env: func(f *fleet) *efpb.Envelope {
				env := signMsg(t, efpb.PayloadTypeDesired, testDesired(), f.control)
				d := testDesired()
				d.Generation = 8
				payload, err := proto.Marshal(d)
				require.NoError(t, err)
				env.Payload = payload
				return env
			},
			want: signing.ErrThreshold,
		},
		{
			name: "expired",
			env: func(f *fleet) *efpb.Envelope {
				d := testDesired()
				d.ExpiresUnix = testNow.Add(-time.Second).Unix()
				return signMsg(t, efpb.PayloadTypeDesired, d, f.control)
			},
			want:    signing.ErrExpired,
			wantMsg: "device dev-1 generation 7",
		},
		{
			name: "no expiry",
			env: func(f *fleet) *efpb.Envelope {
				d := testDesired()
				d.ExpiresUnix = 0
				return signMsg(t, efpb.PayloadTypeDesired, d, f.control)
			},
			want: signing.ErrMalformed,
		},
		{
			name: "newer protocol version",
			env: func(f *fleet) *efpb.Envelope {
				d := testDesired()
				d.ProtocolVersion = 9
				return signMsg(t, efpb.PayloadTypeDesired, d, f.control)
			},
			want: signing.ErrProtocolVersion,
		},
		{
			name: "trust bundle expired",
			env: func(f *fleet) *efpb.Envelope {
				d := testDesired()
				d.ExpiresUnix = testNow.Add(365 * 24 * time.Hour).Unix()
				return signMsg(t, efpb.PayloadTypeDesired, d, f.control)
			},
			now:  testNow.Add(30 * 24 * time.Hour),
			want: signing.ErrExpired,
		},
	}
	runRefusals(t, "verify desired state: ", tests, func(v *signing.Verifier, env *efpb.Envelope, now time.Time) (proto.Message, error) {
		return v.VerifyDesired(env, now)
	})
}

func runRefusals(t *testing.T, prefix string, tests []refusalCase, verify func(*signing.Verifier, *efpb.Envelope, time.Time) (proto.Message, error)) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t)
			now := tt.now
			if now.IsZero() {
				now = testNow
			}
			got, err := verify(f.v, tt.env(f), now)
			require.Error(t, err, "verify = %v, want error %v", got, tt.want)
			assert.ErrorIs(t, err, tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), prefix), "error %q lacks prefix %q", err, prefix)
			if tt.wantMsg != "" {
				assert.Contains(t, err.Error(), tt.wantMsg)
			}
		})
	}
}

func TestVerifyBeforeAnyBundle(t *testing.T) {
	f := newFleet(t)
	v := signing.NewVerifier(f.root.Public)
	assert.Nil(t, v.Bundle())
	assert.Nil(t, v.BundleEnvelope())
	_, err := v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), f.release), testNow)
	assert.ErrorIs(t, err, signing.ErrNoTrust)
	_, err = v.VerifyDesired(signMsg(t, efpb.PayloadTypeDesired, testDesired(), f.control), testNow)
	assert.ErrorIs(t, err, signing.ErrNoTrust)
}

func TestBadProvisionedRoot(t *testing.T) {
	f := newFleet(t)
	v := signing.NewVerifier(f.root.Public[:16])
	_, err := v.UpdateTrustBundle(f.bundleEnv, testNow)
	require.ErrorIs(t, err, signing.ErrMalformed)
	assert.Contains(t, err.Error(), "provisioned root key has 16 bytes")
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), f.release), testNow)
	assert.ErrorIs(t, err, signing.ErrMalformed)
	_, err = v.RestoreTrustBundle(f.bundleEnv)
	assert.ErrorIs(t, err, signing.ErrMalformed)
}

func TestUpdateTrustBundle(t *testing.T) {
	root, release, control := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	v1 := bundle(1, root, release, control)

	v := signing.NewVerifier(root.Public)
	_, err := v.UpdateTrustBundle(signBundle(t, v1, testKey(t, 50)), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "a first bundle not signed by the provisioned root")
	assert.Contains(t, err.Error(), "update trust bundle: trusted root: root role needs 1 valid signature(s), got 0")
	require.Nil(t, v.Bundle())

	env1 := signBundle(t, v1, root)
	got, err := v.UpdateTrustBundle(env1, testNow)
	require.NoError(t, err)
	assert.True(t, proto.Equal(v1, got))
	assert.True(t, proto.Equal(v1, v.Bundle()))
	assert.True(t, proto.Equal(env1, v.BundleEnvelope()))

	// The same bundle again is a no-op success.
	got, err = v.UpdateTrustBundle(signBundle(t, v1, root), testNow)
	require.NoError(t, err)
	assert.EqualValues(t, 1, got.Version)

	// Same version, other content: refused.
	v1b := bundle(1, root, testKey(t, 4), control)
	_, err = v.UpdateTrustBundle(signBundle(t, v1b, root), testNow)
	require.ErrorIs(t, err, signing.ErrRollback)
	assert.Contains(t, err.Error(), "version 1 is already trusted with different content")

	// A newer bundle is accepted; then the older one is a rollback.
	v2 := bundle(2, root, release, control)
	_, err = v.UpdateTrustBundle(signBundle(t, v2, root), testNow)
	require.NoError(t, err)
	_, err = v.UpdateTrustBundle(env1, testNow)
	require.ErrorIs(t, err, signing.ErrRollback)
	assert.Contains(t, err.Error(), "version 1, trusted version is 2")
	assert.EqualValues(t, 2, v.Bundle().Version, "a refused bundle must not change the trusted one")

	// Callers get copies.
	v.Bundle().Version = 99
	v.BundleEnvelope().Payload[0] ^= 1
	assert.EqualValues(t, 2, v.Bundle().Version)
	_, err = v.RestoreTrustBundle(v.BundleEnvelope())
	require.NoError(t, err, "the stored envelope must be intact")
}

func TestUpdateTrustBundleRefusals(t *testing.T) {
	root, release, control := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	mutated := func(mut func(b *efpb.TrustBundle)) func(f *fleet) *efpb.Envelope {
		return func(f *fleet) *efpb.Envelope {
			b := bundle(2, root, release, control)
			mut(b)
			// SignMessage, not SignTrustBundle: that would refuse to sign.
			return signMsg(t, efpb.PayloadTypeTrustBundle, b, root)
		}
	}
	tests := []refusalCase{
		{
			name: "unsigned",
			env: func(f *fleet) *efpb.Envelope {
				env := signBundle(t, bundle(2, root, release, control), root)
				env.Signatures = nil
				return env
			},
			want: signing.ErrUnsigned,
		},
		{
			name: "other payload type",
			env: func(f *fleet) *efpb.Envelope {
				return signMsg(t, efpb.PayloadTypeManifest, bundle(2, root, release, control), root)
			},
			want: signing.ErrWrongPayloadType,
		},
		{
			name: "signed by release key",
			env:  func(f *fleet) *efpb.Envelope { return signBundle(t, bundle(2, root, release, control), release) },
			want: signing.ErrThreshold,
		},
		{
			name: "expired",
			env: func(f *fleet) *efpb.Envelope {
				b := bundle(2, root, release, control)
				b.ExpiresUnix = testNow.Unix()
				return signBundle(t, b, root)
			},
			want:    signing.ErrExpired,
			wantMsg: "trust bundle version 2 expired at 2026-11-25T12:00:00Z",
		},
		{name: "version 0", env: mutated(func(b *efpb.TrustBundle) { b.Version = 0 }), want: signing.ErrMalformed, wantMsg: "version must be at least 1"},
		{name: "garbage payload", env: func(f *fleet) *efpb.Envelope {
			env, err := signing.Sign(efpb.PayloadTypeTrustBundle, []byte{0x0a, 0xff}, root)
			require.NoError(t, err)
			return env
		}, want: signing.ErrMalformed, wantMsg: "decode trust bundle"},
		{name: "newer protocol", env: mutated(func(b *efpb.TrustBundle) { b.ProtocolVersion = efpb.ProtocolVersion + 1 }), want: signing.ErrProtocolVersion},
		{name: "no expiry", env: mutated(func(b *efpb.TrustBundle) { b.ExpiresUnix = 0 }), want: signing.ErrMalformed, wantMsg: "expires_unix is not set"},
		{name: "expires before created", env: mutated(func(b *efpb.TrustBundle) { b.CreatedUnix = b.ExpiresUnix + 1 }), want: signing.ErrMalformed, wantMsg: "before created_unix"},
		{name: "other algorithm", env: mutated(func(b *efpb.TrustBundle) { b.Keys[1].Algorithm = "rsa" }), want: signing.ErrMalformed, wantMsg: `keys[1]: algorithm "rsa"`},
		{name: "short key", env: mutated(func(b *efpb.TrustBundle) { b.Keys[2].PublicKey = b.Keys[2].PublicKey[:31] }), want: signing.ErrMalformed, wantMsg: "keys[2]: public_key has 31 bytes"},
		{name: "keyid mismatch", env: mutated(func(b *efpb.TrustBundle) { b.Keys[1].Keyid = b.Keys[2].Keyid }), want: signing.ErrMalformed, wantMsg: "keys[1]: keyid"},
		{name: "key listed twice", env: mutated(func(b *efpb.TrustBundle) { b.Keys = append(b.Keys, b.Keys[0]) }), want: signing.ErrMalformed, wantMsg: "listed twice"},
		{name: "role missing", env: mutated(func(b *efpb.TrustBundle) { b.Roles = b.Roles[:2] }), want: signing.ErrMalformed, wantMsg: "no control role"},
		{name: "role twice", env: mutated(func(b *efpb.TrustBundle) { b.Roles = append(b.Roles, b.Roles[1]) }), want: signing.ErrMalformed, wantMsg: "release role listed twice"},
		{name: "role unspecified", env: mutated(func(b *efpb.TrustBundle) { b.Roles[1].Role = efpb.Role_ROLE_UNSPECIFIED }), want: signing.ErrMalformed, wantMsg: "roles[1]: role is unspecified"},
		{name: "role without keys", env: mutated(func(b *efpb.TrustBundle) { b.Roles[2].Keyids = nil }), want: signing.ErrMalformed, wantMsg: "control role has no keys"},
		{name: "role names unknown key", env: mutated(func(b *efpb.TrustBundle) { b.Roles[1].Keyids = []string{"abc"} }), want: signing.ErrMalformed, wantMsg: `names keyid "abc" that is not in keys`},
		{name: "role names key twice", env: mutated(func(b *efpb.TrustBundle) {
			b.Roles[1].Keyids = append(b.Roles[1].Keyids, b.Roles[1].Keyids[0])
		}), want: signing.ErrMalformed, wantMsg: "twice"},
		{name: "threshold above key count", env: mutated(func(b *efpb.TrustBundle) { b.Roles[1].Threshold = 2 }), want: signing.ErrMalformed, wantMsg: "release role threshold 2 exceeds its 1 key(s)"},
		{name: "huge threshold", env: mutated(func(b *efpb.TrustBundle) { b.Roles[0].Threshold = 0xffffffff }), want: signing.ErrMalformed, wantMsg: "threshold 4294967295"},
	}
	runRefusals(t, "update trust bundle: ", tests, func(v *signing.Verifier, env *efpb.Envelope, now time.Time) (proto.Message, error) {
		b, err := v.UpdateTrustBundle(env, now)
		if err == nil {
			return b, nil
		}
		assert.EqualValues(t, 1, v.Bundle().GetVersion(), "a refused bundle must leave version 1 trusted")
		return nil, err
	})
}

func TestSignTrustBundleRefusesMalformed(t *testing.T) {
	root, release, control := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	b := bundle(1, root, release, control, signing.WithThreshold(efpb.Role_ROLE_CONTROL, 2))
	_, err := signing.SignTrustBundle(b, root)
	require.ErrorIs(t, err, signing.ErrMalformed)
	assert.Contains(t, err.Error(), "sign trust bundle: ")
	assert.Contains(t, err.Error(), "control role threshold 2 exceeds its 1 key(s)")

	b = signing.NewTrustBundle(1, testNow, testNow.Add(time.Hour), pubs(root), nil, pubs(control))
	_, err = signing.SignTrustBundle(b, root)
	assert.ErrorIs(t, err, signing.ErrMalformed, "a bundle without release keys")

	_, err = signing.SignTrustBundle(bundle(1, root, release, control))
	assert.Error(t, err, "no root keys")
}

func TestNewTrustBundle(t *testing.T) {
	root, release, control := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	// The root key doubles as a control key: listed once in Keys.
	b := signing.NewTrustBundle(5, testNow, testNow.Add(time.Hour), pubs(root), pubs(release), pubs(control, root),
		signing.WithThreshold(efpb.Role_ROLE_CONTROL, 2))
	assert.EqualValues(t, efpb.ProtocolVersion1, b.ProtocolVersion, "a trust bundle needs only version 1: old agents must read it")
	assert.EqualValues(t, 5, b.Version)
	assert.Equal(t, testNow.Unix(), b.CreatedUnix)
	assert.Equal(t, testNow.Add(time.Hour).Unix(), b.ExpiresUnix)
	require.Len(t, b.Keys, 3)
	for _, k := range b.Keys {
		assert.Equal(t, "ed25519", k.Algorithm)
		assert.Equal(t, signing.KeyID(k.PublicKey), k.Keyid)
	}
	want := []*efpb.RoleKeys{
		{Role: efpb.Role_ROLE_ROOT, Keyids: []string{root.ID}, Threshold: 1},
		{Role: efpb.Role_ROLE_RELEASE, Keyids: []string{release.ID}, Threshold: 1},
		{Role: efpb.Role_ROLE_CONTROL, Keyids: []string{control.ID, root.ID}, Threshold: 2},
	}
	require.Len(t, b.Roles, len(want))
	for i := range want {
		assert.True(t, proto.Equal(want[i], b.Roles[i]), "roles[%d] = %v, want %v", i, b.Roles[i], want[i])
	}
	_, err := signing.SignTrustBundle(b, root)
	assert.NoError(t, err)
}

func TestRootRotation(t *testing.T) {
	rootA, rootB := testKey(t, 1), testKey(t, 10)
	release1, release2 := testKey(t, 2), testKey(t, 20)
	control := testKey(t, 3)

	v := signing.NewVerifier(rootA.Public)
	_, err := v.UpdateTrustBundle(signBundle(t, bundle(1, rootA, release1, control), rootA), testNow)
	require.NoError(t, err)
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), release1), testNow)
	require.NoError(t, err)

	// Version 2 rotates root A → B and release 1 → 2.
	v2 := bundle(2, rootB, release2, control)

	_, err = v.UpdateTrustBundle(signBundle(t, v2, rootA), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "rotation signed by the old root only")
	assert.Contains(t, err.Error(), "new root: root role needs 1")

	_, err = v.UpdateTrustBundle(signBundle(t, v2, rootB), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "rotation signed by the new root only")
	assert.Contains(t, err.Error(), "trusted root: root role needs 1")

	env2 := signBundle(t, v2, rootA, rootB)
	_, err = v.UpdateTrustBundle(env2, testNow)
	require.NoError(t, err, "rotation signed by old and new root")
	assert.EqualValues(t, 2, v.Bundle().Version)

	// The old root no longer signs bundles.
	_, err = v.UpdateTrustBundle(signBundle(t, bundle(3, rootA, release1, control), rootA), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "bundle signed only by the rotated-out root")
	_, err = v.UpdateTrustBundle(signBundle(t, bundle(3, rootB, release1, control), rootA), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold)

	// The rotated-out release key no longer signs manifests; the new one does.
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), release1), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "manifest signed by the rotated-out release key")
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), release2), testNow)
	require.NoError(t, err)

	// The new root alone signs the next version.
	_, err = v.UpdateTrustBundle(signBundle(t, bundle(3, rootB, release2, control), rootB), testNow)
	require.NoError(t, err)

	// An expired trusted bundle still authorises its successor.
	later := testNow.Add(60 * 24 * time.Hour)
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), release2), later)
	require.ErrorIs(t, err, signing.ErrExpired)
	v4 := signing.NewTrustBundle(4, later, later.Add(24*time.Hour), pubs(rootB), pubs(release2), pubs(control))
	_, err = v.UpdateTrustBundle(signBundle(t, v4, rootB), later)
	require.NoError(t, err)
	m := testManifest()
	m.ExpiresUnix = later.Add(time.Hour).Unix()
	_, err = v.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, m, release2), later)
	require.NoError(t, err)
}

func TestThresholdKOfN(t *testing.T) {
	roots := []*signing.KeyPair{testKey(t, 1), testKey(t, 4), testKey(t, 5)}
	rels := []*signing.KeyPair{testKey(t, 2), testKey(t, 6), testKey(t, 7)}
	control := testKey(t, 3)
	b1 := signing.NewTrustBundle(1, testNow, testNow.Add(time.Hour), pubs(roots[0]), pubs(rels...), pubs(control),
		signing.WithThreshold(efpb.Role_ROLE_RELEASE, 2))
	v := signing.NewVerifier(roots[0].Public)
	_, err := v.UpdateTrustBundle(signBundle(t, b1, roots[0]), testNow)
	require.NoError(t, err)

	m := testManifest()
	dup := signMsg(t, efpb.PayloadTypeManifest, m, rels[0])
	dup.Signatures = append(dup.Signatures, dup.Signatures[0], dup.Signatures[0])
	badSecond := signMsg(t, efpb.PayloadTypeManifest, m, rels[0], rels[1])
	badSecond.Signatures[1].Sig[0] ^= 1
	// A valid signature listed after an invalid one by the same key counts.
	retry := signMsg(t, efpb.PayloadTypeManifest, m, rels[1], rels[0])
	bad := proto.Clone(retry.Signatures[0]).(*efpb.Signature)
	bad.Sig[3] ^= 1
	retry.Signatures = append([]*efpb.Signature{bad}, retry.Signatures...)

	tests := []struct {
		name      string
		env       *efpb.Envelope
		wantValid int // -1: accepted
	}{
		{"one of three", signMsg(t, efpb.PayloadTypeManifest, m, rels[0]), 1},
		{"same key three times", dup, 1},
		{"one valid plus unknown keys", signMsg(t, efpb.PayloadTypeManifest, m, rels[2], roots[0], control, testKey(t, 77)), 1},
		{"second signature corrupt", badSecond, 1},
		{"two of three", signMsg(t, efpb.PayloadTypeManifest, m, rels[2], rels[0]), -1},
		{"three of three", signMsg(t, efpb.PayloadTypeManifest, m, rels...), -1},
		{"corrupt then valid by the same key", retry, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.VerifyManifest(tt.env, testNow)
			if tt.wantValid < 0 {
				require.NoError(t, err)
				return
			}
			var te *signing.ThresholdError
			require.True(t, errors.As(err, &te), "VerifyManifest error = %v, want *ThresholdError", err)
			assert.Equal(t, signing.ThresholdError{Role: efpb.Role_ROLE_RELEASE, Need: 2, Valid: tt.wantValid}, *te)
			assert.ErrorIs(t, err, signing.ErrThreshold)
		})
	}

	// Root 2-of-3: the next bundle needs two of the new roots and the old root.
	b2 := signing.NewTrustBundle(2, testNow, testNow.Add(time.Hour), pubs(roots...), pubs(rels...), pubs(control),
		signing.WithThreshold(efpb.Role_ROLE_ROOT, 2))
	_, err = v.UpdateTrustBundle(signBundle(t, b2, roots[0]), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold)
	assert.Contains(t, err.Error(), "new root: root role needs 2 valid signature(s), got 1")
	_, err = v.UpdateTrustBundle(signBundle(t, b2, roots[1], roots[2]), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "the old root must sign too")
	_, err = v.UpdateTrustBundle(signBundle(t, b2, roots[0], roots[2]), testNow)
	require.NoError(t, err)

	b3 := signing.NewTrustBundle(3, testNow, testNow.Add(time.Hour), pubs(roots...), pubs(rels...), pubs(control),
		signing.WithThreshold(efpb.Role_ROLE_ROOT, 2))
	_, err = v.UpdateTrustBundle(signBundle(t, b3, roots[1], roots[1]), testNow)
	require.ErrorIs(t, err, signing.ErrThreshold, "one root key signing twice counts once")
	_, err = v.UpdateTrustBundle(signBundle(t, b3, roots[1], roots[2]), testNow)
	require.NoError(t, err)
}

func TestRestoreTrustBundle(t *testing.T) {
	rootA, rootB := testKey(t, 1), testKey(t, 10)
	release, control := testKey(t, 2), testKey(t, 3)
	v := signing.NewVerifier(rootA.Public)
	env1 := signBundle(t, bundle(1, rootA, release, control), rootA)
	_, err := v.UpdateTrustBundle(env1, testNow)
	require.NoError(t, err)
	_, err = v.UpdateTrustBundle(signBundle(t, bundle(2, rootB, release, control), rootA, rootB), testNow)
	require.NoError(t, err)
	_, err = v.UpdateTrustBundle(signBundle(t, bundle(3, rootB, release, control), rootB), testNow)
	require.NoError(t, err)
	persisted := v.BundleEnvelope()

	// After a restart the provisioned root cannot verify bundle 3 ...
	restarted := signing.NewVerifier(rootA.Public)
	_, err = restarted.UpdateTrustBundle(persisted, testNow)
	require.ErrorIs(t, err, signing.ErrThreshold)
	// ... so the persisted envelope is restored.
	got, err := restarted.RestoreTrustBundle(persisted)
	require.NoError(t, err)
	assert.EqualValues(t, 3, got.Version)
	_, err = restarted.VerifyManifest(signMsg(t, efpb.PayloadTypeManifest, testManifest(), release), testNow)
	require.NoError(t, err)

	_, err = restarted.RestoreTrustBundle(persisted)
	require.NoError(t, err, "restoring the same bundle twice is a no-op")
	_, err = restarted.RestoreTrustBundle(env1)
	require.ErrorIs(t, err, signing.ErrRollback)

	tampered := proto.Clone(persisted).(*efpb.Envelope)
	tampered.Payload[len(tampered.Payload)-1] ^= 1
	_, err = signing.NewVerifier(rootA.Public).RestoreTrustBundle(tampered)
	assert.Error(t, err, "a tampered persisted bundle")

	wrongSigner := signMsg(t, efpb.PayloadTypeTrustBundle, bundle(5, rootB, release, control), rootA)
	_, err = signing.NewVerifier(rootA.Public).RestoreTrustBundle(wrongSigner)
	assert.ErrorIs(t, err, signing.ErrThreshold, "a bundle not signed by its own root")
}

func TestVerifierConcurrent(t *testing.T) {
	f := newFleet(t)
	manifestEnv := signMsg(t, efpb.PayloadTypeManifest, testManifest(), f.release)
	desiredEnv := signMsg(t, efpb.PayloadTypeDesired, testDesired(), f.control)
	bundles := make([]*efpb.Envelope, 20)
	for i := range bundles {
		bundles[i] = signBundle(t, bundle(uint64(i+2), f.root, f.release, f.control), f.root)
	}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				_, err := f.v.VerifyManifest(manifestEnv, testNow)
				assert.NoError(t, err)
				_, err = f.v.VerifyDesired(desiredEnv, testNow)
				assert.NoError(t, err)
				_ = f.v.Bundle()
				_ = f.v.BundleEnvelope()
			}
		})
	}
	// Two writers race through the same bundles: each version is installed
	// once, the loser sees a no-op or a rollback, never a torn state.
	for range 2 {
		wg.Go(func() {
			for _, env := range bundles {
				_, err := f.v.UpdateTrustBundle(env, testNow)
				if err != nil {
					assert.ErrorIs(t, err, signing.ErrRollback)
				}
			}
		})
	}
	wg.Wait()
	assert.EqualValues(t, 21, f.v.Bundle().Version)
}

// TestVerifySiteDocuments: the site document and the member ticket are
// control-role documents: checked like a desired state, each under its own
// payload type, so one cannot stand in for another.
func TestVerifySiteDocuments(t *testing.T) {
	f := newFleet(t)
	exp := testNow.Add(time.Hour).Unix()
	ticket := &efpb.MemberTicket{ProtocolVersion: 1, DeviceId: "dev-1", Site: "s1", ExpiresUnix: exp}
	doc := &efpb.SitePeers{ProtocolVersion: 1, DeviceId: "dev-1", Site: "s1", Version: 3, ExpiresUnix: exp,
		GossipKeys: [][]byte{bytes.Repeat([]byte{1}, 32)}, Ticket: signMsg(t, efpb.PayloadTypeMemberTicket, ticket, f.control)}

	gotDoc, err := f.v.VerifySitePeers(signMsg(t, efpb.PayloadTypeSitePeers, doc, f.control), testNow)
	require.NoError(t, err)
	assert.True(t, proto.Equal(doc, gotDoc))
	gotTicket, err := f.v.VerifyMemberTicket(gotDoc.Ticket, testNow)
	require.NoError(t, err)
	assert.True(t, proto.Equal(ticket, gotTicket))

	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"ticket signed by the release key", func() error {
			_, err := f.v.VerifyMemberTicket(signMsg(t, efpb.PayloadTypeMemberTicket, ticket, f.release), testNow)
			return err
		}(), signing.ErrThreshold},
		{"a desired state's signature as a ticket", func() error {
			_, err := f.v.VerifyMemberTicket(signMsg(t, efpb.PayloadTypeDesired, ticket, f.control), testNow)
			return err
		}(), signing.ErrWrongPayloadType},
		{"a ticket as a site document", func() error {
			_, err := f.v.VerifySitePeers(signMsg(t, efpb.PayloadTypeMemberTicket, doc, f.control), testNow)
			return err
		}(), signing.ErrWrongPayloadType},
		{"expired ticket", func() error {
			_, err := f.v.VerifyMemberTicket(gotDoc.Ticket, testNow.Add(2*time.Hour))
			return err
		}(), signing.ErrExpired},
		{"site document without expiry", func() error {
			d := proto.Clone(doc).(*efpb.SitePeers)
			d.ExpiresUnix = 0
			_, err := f.v.VerifySitePeers(signMsg(t, efpb.PayloadTypeSitePeers, d, f.control), testNow)
			return err
		}(), signing.ErrMalformed},
	} {
		assert.ErrorIs(t, tc.err, tc.want, tc.name)
	}
}
