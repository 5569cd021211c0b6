package signing_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// FuzzVerifyEnvelope feeds arbitrary bytes, decoded as an Envelope, to
// VerifyManifest. It must never panic, every refusal must wrap one of the
// sentinel errors, and an accepted manifest must be unexpired. The keys are
// deterministic, so the seeds (and testdata/fuzz/FuzzVerifyEnvelope) hold
// validly signed envelopes the fuzzer can mutate.
func FuzzVerifyEnvelope(f *testing.F) {
	fl := newFleet(f)
	m := testManifest()
	for _, env := range []*efpb.Envelope{
		signMsg(f, efpb.PayloadTypeManifest, m, fl.release),
		signMsg(f, efpb.PayloadTypeManifest, m, fl.control),
		signMsg(f, efpb.PayloadTypeDesired, testDesired(), fl.control),
		fl.bundleEnv,
		{PayloadType: efpb.PayloadTypeManifest},
	} {
		addEnvelope(f, env)
	}
	fuzzVerify(f, "VerifyManifest", func(env *efpb.Envelope) (int64, error) {
		got, err := fl.v.VerifyManifest(env, testNow)
		return got.GetExpiresUnix(), err
	})
}

// TestFuzzSeedsReachPastSignatures keeps the committed corpus meaningful:
// its signed seeds must still carry valid release signatures (so the fuzzer
// mutates envelopes that get past the signature check), and each must meet
// the fate its name says.
func TestFuzzSeedsReachPastSignatures(t *testing.T) {
	fl := newFleet(t)
	tests := []struct {
		file string
		want error // nil: accepted
	}{
		{"valid_release", nil},
		{"valid_duplicate_sig", nil},
		{"expired_manifest", signing.ErrExpired},
		{"no_expiry", signing.ErrMalformed},
		{"protocol_v3", signing.ErrProtocolVersion},
		{"signed_garbage", signing.ErrMalformed},
		{"signed_by_control", signing.ErrThreshold},
		{"too_many_signatures", signing.ErrMalformed},
		{"unsigned", signing.ErrUnsigned},
		{"trust_bundle", signing.ErrWrongPayloadType},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			env := &efpb.Envelope{}
			require.NoError(t, proto.Unmarshal(readCorpusBytes(t, filepath.Join("testdata", "fuzz", "FuzzVerifyEnvelope", tt.file)), env))
			_, err := fl.v.VerifyManifest(env, testNow)
			if tt.want == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tt.want)
			}
		})
	}
}

// readCorpusBytes reads a one-value "go test fuzz v1" file holding []byte.
func readCorpusBytes(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	header, body, ok := strings.Cut(strings.TrimSpace(string(data)), "\n")
	require.True(t, ok && header == "go test fuzz v1", "%s: not a corpus file", path)
	lit, ok := strings.CutPrefix(body, "[]byte(")
	require.True(t, ok, "%s: not a []byte value", path)
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	require.NoError(t, err, "%s", path)
	return []byte(s)
}

// FuzzVerifyDesired is FuzzVerifyEnvelope for desired states, the other
// document an agent verifies: no panic, every refusal wraps a sentinel, an
// accepted desired state is unexpired and names a device.
func FuzzVerifyDesired(f *testing.F) {
	fl := newFleet(f)
	for _, env := range []*efpb.Envelope{
		signMsg(f, efpb.PayloadTypeDesired, testDesired(), fl.control),
		signMsg(f, efpb.PayloadTypeDesired, testDesired(), fl.release),
		signMsg(f, efpb.PayloadTypeManifest, testManifest(), fl.release),
		{PayloadType: efpb.PayloadTypeDesired},
	} {
		addEnvelope(f, env)
	}
	fuzzVerify(f, "VerifyDesired", func(env *efpb.Envelope) (int64, error) {
		got, err := fl.v.VerifyDesired(env, testNow)
		return got.GetExpiresUnix(), err
	})
}

// addEnvelope adds env's encoding to f's seed corpus.
func addEnvelope(f *testing.F, env *efpb.Envelope) {
	b, err := proto.Marshal(env)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

// fuzzVerify feeds arbitrary bytes, decoded as an Envelope, to verify
// (named name), which returns the accepted document's expiry: it must
// never panic, every refusal must wrap one of the sentinel errors, and an
// accepted document (nil reads as expiry 0) must be unexpired.
func fuzzVerify(f *testing.F, name string, verify func(*efpb.Envelope) (expiresUnix int64, err error)) {
	sentinels := []error{
		signing.ErrUnsigned, signing.ErrWrongPayloadType, signing.ErrThreshold, signing.ErrExpired,
		signing.ErrMalformed, signing.ErrProtocolVersion,
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env := &efpb.Envelope{}
		if err := proto.Unmarshal(data, env); err != nil {
			return
		}
		expires, err := verify(env)
		if err != nil {
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("%s error %q wraps no sentinel", name, err)
		}
		if expires <= testNow.Unix() {
			t.Fatalf("%s accepted a document expiring at %d", name, expires)
		}
	})
}

// FuzzParsePublicKeyPEM: a root key file is operator input; anything
// accepted is an ed25519 public key.
func FuzzParsePublicKeyPEM(f *testing.F) {
	fl := newFleet(f)
	f.Add(signing.EncodePublicKeyPEM(fl.root.Public))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := signing.ParsePublicKeyPEM(data)
		if err == nil && len(k) != 32 {
			t.Fatalf("ParsePublicKeyPEM accepted a %d-byte key", len(k))
		}
	})
}
