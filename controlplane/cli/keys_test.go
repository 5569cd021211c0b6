package cli

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func readBundle(t *testing.T, dir string) *efpb.Envelope {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, keys.TrustBundleFile))
	require.NoError(t, err)
	env := &efpb.Envelope{}
	require.NoError(t, proto.Unmarshal(b, env))
	return env
}

func signedManifest(t *testing.T, key *signing.KeyPair) *efpb.Envelope {
	t.Helper()
	m := &efpb.Manifest{ProtocolVersion: efpb.ProtocolVersion, Name: "fraud", Version: "1",
		CreatedUnix: time.Now().Unix(), ExpiresUnix: time.Now().Add(time.Hour).Unix()}
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, key)
	require.NoError(t, err)
	return env
}

func readKey(t *testing.T, path string) *signing.KeyPair {
	t.Helper()
	k, err := signing.ReadPrivateKeyFile(path)
	require.NoError(t, err)
	return k
}

// TestKeysRotate rotates the release key, then the root, then the control
// key, and checks after each step what an agent provisioned with the first
// root does: it follows every bundle, and refuses the rotated-out keys.
func TestKeysRotate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	code, _, stderr := cli(t, "keys", "init", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	rootPub, err := signing.ReadPublicKeyFile(filepath.Join(dir, keys.RootPubFile))
	require.NoError(t, err)
	agent := signing.NewVerifier(rootPub)
	_, err = agent.UpdateTrustBundle(readBundle(t, dir), time.Now())
	require.NoError(t, err)
	oldRelease := readKey(t, filepath.Join(dir, keys.ReleaseKeyFile))
	oldManifest := signedManifest(t, oldRelease)
	_, err = agent.VerifyManifest(oldManifest, time.Now())
	require.NoError(t, err)

	// Release.
	code, out, stderr := cli(t, "keys", "rotate", "--role", "release", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "trust bundle version 2")
	b, err := agent.UpdateTrustBundle(readBundle(t, dir), time.Now())
	require.NoError(t, err, "the agent follows the new bundle")
	assert.Equal(t, uint64(2), b.Version)
	_, err = agent.VerifyManifest(oldManifest, time.Now())
	assert.Error(t, err, "manifests signed by the rotated-out release key are refused")
	newRelease := readKey(t, filepath.Join(dir, keys.ReleaseKeyFile))
	_, err = agent.VerifyManifest(signedManifest(t, newRelease), time.Now())
	assert.NoError(t, err)
	assert.FileExists(t, filepath.Join(dir, keys.ReleaseKeyFile+".v1"), "the old key is kept")

	// Root: signed by the old and the new root.
	oldRoot := readKey(t, filepath.Join(dir, keys.RootKeyFile))
	code, out, stderr = cli(t, "keys", "rotate", "--role", "root", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "New root public key")
	env := readBundle(t, dir)
	assert.Len(t, env.Signatures, 2)
	_, err = agent.UpdateTrustBundle(env, time.Now())
	require.NoError(t, err)
	newRootPub, err := signing.ReadPublicKeyFile(filepath.Join(dir, keys.RootPubFile))
	require.NoError(t, err)
	assert.NotEqual(t, oldRoot.Public, newRootPub)

	// Control, signed by the new root only: the agent follows the chain,
	// and a bundle signed by the old root alone is refused.
	code, _, stderr = cli(t, "keys", "rotate", "--role", "control", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	env = readBundle(t, dir)
	b, err = agent.UpdateTrustBundle(env, time.Now())
	require.NoError(t, err)
	assert.Equal(t, uint64(4), b.Version)
	forged := signing.NewTrustBundle(5, time.Now(), time.Now().Add(time.Hour),
		[]ed25519.PublicKey{oldRoot.Public}, []ed25519.PublicKey{oldRelease.Public}, []ed25519.PublicKey{oldRelease.Public})
	fenv, err := signing.SignTrustBundle(forged, oldRoot)
	require.NoError(t, err)
	_, err = agent.UpdateTrustBundle(fenv, time.Now())
	assert.Error(t, err, "the rotated-out root can no longer sign bundles")

	// The control plane starts with the rotated directory (it checks the
	// bundle lists its release and control keys).
	data := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(data, "keys"), os.DirFS(dir)))
	_, err = controlplane.New(controlplane.Options{DataDir: data})
	assert.NoError(t, err)
}

func TestKeysRotateErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	code, _, stderr := cli(t, "keys", "init", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	code, _, stderr = cli(t, "keys", "rotate", "--role", "god", "--dir", dir)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "want release, control or root")
	code, _, _ = cli(t, "keys", "rotate", "--role", "release")
	assert.Equal(t, 2, code)

	require.NoError(t, os.Remove(filepath.Join(dir, keys.RootKeyFile)))
	code, _, stderr = cli(t, "keys", "rotate", "--role", "release", "--dir", dir)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "offline")
}
