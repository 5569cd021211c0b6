// Package signing is edgefleet's trust model: ed25519 keys, DSSE envelopes,
// trust bundles that name the root, release and control keys, and the
// Verifier an agent uses to accept bundles, manifests and desired states.
// Imported by agent, controlplane/cli, controlplane/fleet, controlplane/keys,
// controlplane/models, controlplane/sites and fleet-sim/sim.
package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
)

// PEM block types of the key files.
const (
	pemPrivateKey = "PRIVATE KEY" // PKCS#8
	pemPublicKey  = "PUBLIC KEY"  // PKIX
)

// KeyID returns the key id of pub: the hex sha256 of the raw public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// KeyPair is an ed25519 signing key with its key id.
type KeyPair struct {
	ID      string
	Public  ed25519.PublicKey
	Private ed25519.PrivateKey
}

// GenerateKey makes a new key pair from r; a nil r means crypto/rand.
// ed25519 reads exactly 32 bytes from r, so a fixed reader gives a fixed key
// (useful in tests).
func GenerateKey(r io.Reader) (*KeyPair, error) {
	if r == nil {
		r = rand.Reader
	}
	pub, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return &KeyPair{ID: KeyID(pub), Public: pub, Private: priv}, nil
}

// keyPairFromPrivate builds a KeyPair from a private key.
func keyPairFromPrivate(priv ed25519.PrivateKey) *KeyPair {
	pub := priv.Public().(ed25519.PublicKey)
	return &KeyPair{ID: KeyID(pub), Public: pub, Private: priv}
}

// WritePrivateKeyFile writes k's private key to path as a PKCS#8 PEM file
// with mode 0600. It refuses to overwrite an existing file, so a key is never
// lost by a mistyped path.
func WritePrivateKeyFile(path string, k *KeyPair) error {
	if k == nil || len(k.Private) != ed25519.PrivateKeySize {
		return fmt.Errorf("write private key %s: %w: not an ed25519 private key", path, ErrMalformed)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.Private)
	if err != nil {
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der})
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	return nil
}

// ReadPrivateKeyFile reads a PKCS#8 PEM ed25519 private key written by
// WritePrivateKeyFile (or by `openssl genpkey -algorithm ed25519`).
func ReadPrivateKeyFile(path string) (*KeyPair, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	block, err := decodeSinglePEM(data, pemPrivateKey)
	if err != nil {
		return nil, fmt.Errorf("read private key %s: %w", path, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read private key %s: %w: %v", path, ErrMalformed, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("read private key %s: %w: key is %T, want ed25519", path, ErrMalformed, key)
	}
	return keyPairFromPrivate(priv), nil
}

// EncodePublicKeyPEM encodes pub as a PKIX "PUBLIC KEY" PEM block.
func EncodePublicKeyPEM(pub ed25519.PublicKey) []byte {
	// MarshalPKIXPublicKey only fails for key types other than ed25519; a
	// key of the wrong length encodes, and ParsePublicKeyPEM refuses it.
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der})
}

// ParsePublicKeyPEM parses one PKIX "PUBLIC KEY" PEM block holding an
// ed25519 key. Anything but whitespace around the block is refused.
func ParsePublicKeyPEM(data []byte) (ed25519.PublicKey, error) {
	block, err := decodeSinglePEM(data, pemPublicKey)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w: %v", ErrMalformed, err)
	}
	pub, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("parse public key: %w: key is %T, want ed25519", ErrMalformed, key)
	}
	return pub, nil
}

// WritePublicKeyFile writes pub to path as a PKIX PEM file (mode 0644),
// replacing any existing file.
func WritePublicKeyFile(path string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("write public key %s: %w: key has %d bytes, want %d", path, ErrMalformed, len(pub), ed25519.PublicKeySize)
	}
	if err := os.WriteFile(path, EncodePublicKeyPEM(pub), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return nil
}

// ReadPublicKeyFile reads a PKIX PEM ed25519 public key.
func ReadPublicKeyFile(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	pub, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("read public key %s: %w", path, err)
	}
	return pub, nil
}

// decodeSinglePEM decodes exactly one PEM block of the given type.
func decodeSinglePEM(data []byte, typ string) (*pem.Block, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found", ErrMalformed)
	}
	if block.Type != typ {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrMalformed, block.Type, typ)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM block has headers (encrypted keys are not supported)", ErrMalformed)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: unexpected data after the PEM block", ErrMalformed)
	}
	return block, nil
}
