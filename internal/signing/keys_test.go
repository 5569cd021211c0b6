package signing_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/signing"
)

// RFC 8032 section 7.1, test 1.
const (
	rfcSeed   = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	rfcPublic = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	// sha256 of the raw rfcPublic bytes, computed independently.
	rfcKeyID = "21fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9"
)

func TestGenerateKeyAndKeyID(t *testing.T) {
	seed, err := hex.DecodeString(rfcSeed)
	require.NoError(t, err)
	k, err := signing.GenerateKey(bytes.NewReader(seed))
	require.NoError(t, err)
	assert.Equal(t, rfcPublic, hex.EncodeToString(k.Public))
	assert.Equal(t, rfcKeyID, k.ID)
	assert.Equal(t, rfcKeyID, signing.KeyID(k.Public))

	a, err := signing.GenerateKey(nil)
	require.NoError(t, err)
	b, err := signing.GenerateKey(nil)
	require.NoError(t, err)
	assert.NotEqual(t, a.ID, b.ID, "crypto/rand keys must differ")
	assert.Len(t, a.ID, 64)

	_, err = signing.GenerateKey(bytes.NewReader([]byte("short")))
	assert.Error(t, err, "a reader without 32 bytes must fail")
}

func TestPrivateKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "release.key")
	k := testKey(t, 1)
	require.NoError(t, signing.WritePrivateKeyFile(path, k))

	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	got, err := signing.ReadPrivateKeyFile(path)
	require.NoError(t, err)
	assert.Equal(t, k.ID, got.ID)
	assert.Equal(t, k.Public, got.Public)
	assert.Equal(t, k.Private, got.Private)

	before, err := os.ReadFile(path)
	require.NoError(t, err)
	err = signing.WritePrivateKeyFile(path, testKey(t, 2))
	require.ErrorIs(t, err, os.ErrExist, "an existing key file must not be overwritten")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after, "refused write changed the file")

	assert.Error(t, signing.WritePrivateKeyFile(filepath.Join(dir, "nil.key"), nil))
	_, err = signing.ReadPrivateKeyFile(filepath.Join(dir, "missing.key"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestPrivateKeyFileOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	path := filepath.Join(t.TempDir(), "openssl.key")
	out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	k, err := signing.ReadPrivateKeyFile(path)
	require.NoError(t, err)

	pubPath := filepath.Join(t.TempDir(), "openssl.pub")
	out, err = exec.Command(openssl, "pkey", "-in", path, "-pubout", "-out", pubPath).CombinedOutput()
	require.NoError(t, err, "%s", out)
	pub, err := signing.ReadPublicKeyFile(pubPath)
	require.NoError(t, err)
	assert.Equal(t, k.Public, pub, "openssl's public key must match the one derived from its private key")
}

func TestPublicKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "root.pub")
	k := testKey(t, 3)
	require.NoError(t, signing.WritePublicKeyFile(path, k.Public))
	got, err := signing.ReadPublicKeyFile(path)
	require.NoError(t, err)
	assert.Equal(t, k.Public, got)

	got, err = signing.ParsePublicKeyPEM(signing.EncodePublicKeyPEM(k.Public))
	require.NoError(t, err)
	assert.Equal(t, k.Public, got)

	assert.ErrorIs(t, signing.WritePublicKeyFile(path, k.Public[:5]), signing.ErrMalformed)
}

func TestParsePublicKeyPEMRefusals(t *testing.T) {
	k := testKey(t, 4)
	good := signing.EncodePublicKeyPEM(k.Public)

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	require.NoError(t, err)
	privDER, err := x509.MarshalPKCS8PrivateKey(k.Private)
	require.NoError(t, err)

	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no PEM block"},
		{"not PEM", []byte("hello"), "no PEM block"},
		{"private key block", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), `"PRIVATE KEY", want "PUBLIC KEY"`},
		{"trailing data", append(append([]byte{}, good...), "junk"...), "after the PEM block"},
		{"two blocks", append(append([]byte{}, good...), good...), "after the PEM block"},
		{"ecdsa key", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecDER}), "want ed25519"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}), "malformed"},
		{"short ed25519 key", signing.EncodePublicKeyPEM(k.Public[:31]), "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := signing.ParsePublicKeyPEM(tt.in)
			require.Error(t, err, "ParsePublicKeyPEM(%q) = %x, want error", tt.in, got)
			assert.ErrorIs(t, err, signing.ErrMalformed)
			assert.Contains(t, err.Error(), tt.want)
		})
	}

	// Trailing whitespace is fine.
	got, err := signing.ParsePublicKeyPEM(append(append([]byte{}, good...), "\n\n  "...))
	require.NoError(t, err)
	assert.Equal(t, k.Public, got)
}

func TestReadPrivateKeyFileRefusals(t *testing.T) {
	dir := t.TempDir()
	k := testKey(t, 5)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	require.NoError(t, err)

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"public key file", signing.EncodePublicKeyPEM(k.Public), `"PUBLIC KEY", want "PRIVATE KEY"`},
		{"ecdsa key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), "want ed25519"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("xx")}), "malformed"},
		{"empty", nil, "no PEM block"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, string(rune('a'+i)))
			require.NoError(t, os.WriteFile(path, tt.data, 0o600))
			_, err := signing.ReadPrivateKeyFile(path)
			require.Error(t, err)
			assert.ErrorIs(t, err, signing.ErrMalformed)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), path, "error must name the file")
		})
	}
}

func TestPAE(t *testing.T) {
	tests := []struct {
		typ     string
		payload string
		want    string
	}{
		// The example from the DSSE protocol description.
		{"http://example.com/HelloWorld", "hello world", "DSSEv1 29 http://example.com/HelloWorld 11 hello world"},
		{"", "", "DSSEv1 0  0 "},
		{"t", "a b\x00c", "DSSEv1 1 t 5 a b\x00c"},
	}
	for _, tt := range tests {
		got := string(signing.PAE(tt.typ, []byte(tt.payload)))
		assert.Equal(t, tt.want, got, "PAE(%q, %q)", tt.typ, tt.payload)
	}
}

func TestSign(t *testing.T) {
	k1, k2 := testKey(t, 6), testKey(t, 7)
	payload := []byte("payload")
	env, err := signing.Sign("type/x", payload, k1, k2)
	require.NoError(t, err)
	assert.Equal(t, "type/x", env.PayloadType)
	assert.Equal(t, payload, env.Payload)
	require.Len(t, env.Signatures, 2)
	pae := signing.PAE("type/x", payload)
	for i, k := range []*signing.KeyPair{k1, k2} {
		assert.Equal(t, k.ID, env.Signatures[i].Keyid)
		assert.True(t, ed25519.Verify(k.Public, pae, env.Signatures[i].Sig), "signature %d must cover the PAE", i)
	}
	payload[0] = 'X'
	assert.Equal(t, []byte("payload"), env.Payload, "the envelope must not alias the caller's payload")

	_, err = signing.Sign("type/x", payload)
	assert.Error(t, err, "no keys")
	_, err = signing.Sign("type/x", payload, nil)
	assert.Error(t, err, "nil key")
	_, err = signing.Sign("", payload, k1)
	assert.ErrorIs(t, err, signing.ErrMalformed)
}
