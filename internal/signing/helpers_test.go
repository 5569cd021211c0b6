package signing_test

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// testNow is the clock of every test: the day protocol v1 was frozen.
var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// testKey returns the deterministic key derived from 32 copies of seed.
func testKey(tb testing.TB, seed byte) *signing.KeyPair {
	tb.Helper()
	k, err := signing.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	require.NoError(tb, err)
	return k
}

func pubs(keys ...*signing.KeyPair) []ed25519.PublicKey {
	out := make([]ed25519.PublicKey, len(keys))
	for i, k := range keys {
		out[i] = k.Public
	}
	return out
}

// fleet is a provisioned trust setup: one root, release and control key, a
// Verifier that accepted bundle version 1 naming them.
type fleet struct {
	root, release, control *signing.KeyPair
	v                      *signing.Verifier
	bundleEnv              *efpb.Envelope
}

func newFleet(tb testing.TB) *fleet {
	tb.Helper()
	f := &fleet{root: testKey(tb, 1), release: testKey(tb, 2), control: testKey(tb, 3)}
	f.v = signing.NewVerifier(f.root.Public)
	f.bundleEnv = signBundle(tb, bundle(1, f.root, f.release, f.control), f.root)
	_, err := f.v.UpdateTrustBundle(f.bundleEnv, testNow)
	require.NoError(tb, err)
	return f
}

// bundle builds a bundle valid for 30 days around testNow.
func bundle(version uint64, root, release, control *signing.KeyPair, opts ...signing.BundleOption) *efpb.TrustBundle {
	return signing.NewTrustBundle(version, testNow.Add(-time.Hour), testNow.Add(30*24*time.Hour),
		pubs(root), pubs(release), pubs(control), opts...)
}

func signBundle(tb testing.TB, b *efpb.TrustBundle, keys ...*signing.KeyPair) *efpb.Envelope {
	tb.Helper()
	env, err := signing.SignTrustBundle(b, keys...)
	require.NoError(tb, err)
	return env
}

func testManifest() *efpb.Manifest {
	return &efpb.Manifest{
		ProtocolVersion: efpb.ProtocolVersion,
		Name:            "fraud",
		Version:         "1.0.0",
		Sha256:          bytes.Repeat([]byte{0xab}, 32),
		Size:            1000,
		ChunkSize:       1024,
		ChunkSha256:     [][]byte{bytes.Repeat([]byte{0xab}, 32)},
		CreatedUnix:     testNow.Add(-time.Hour).Unix(),
		ExpiresUnix:     testNow.Add(24 * time.Hour).Unix(),
	}
}

func testDesired() *efpb.DesiredState {
	return &efpb.DesiredState{
		ProtocolVersion: efpb.ProtocolVersion,
		DeviceId:        "dev-1",
		Generation:      7,
		Models:          []*efpb.ModelAssignment{{Name: "fraud", Version: "1.0.0", Sha256: bytes.Repeat([]byte{0xab}, 32)}},
		IssuedUnix:      testNow.Unix(),
		ExpiresUnix:     testNow.Add(24 * time.Hour).Unix(),
	}
}

func signMsg(tb testing.TB, payloadType string, m proto.Message, keys ...*signing.KeyPair) *efpb.Envelope {
	tb.Helper()
	env, err := signing.SignMessage(payloadType, m, keys...)
	require.NoError(tb, err)
	return env
}
