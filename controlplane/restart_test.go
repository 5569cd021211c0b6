package controlplane_test

import (
	"crypto/ed25519"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestRestartRestoresState(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	token := first.Token
	creds := first.register("dev-1", map[string]string{"site": "berlin"})
	first.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	first.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=berlin"})
	first.Stop()

	calls := 0
	second := newTestServer(t, func(o *controlplane.Options) {
		o.DataDir = dir
		o.OnInitialToken = func(string) { calls++ }
	})
	assert.Zero(t, calls, "the admin token is generated once, at the first start")
	second.Token = token
	code, body := second.do("GET", "/api/v1/devices/dev-1", nil)
	require.Equal(t, http.StatusOK, code, "the first token still works: %s", body)

	// The embedded broker starts empty: trust, manifest and desired state
	// must have been published again, retained. The device's credentials
	// (and the broker URL, which changed with the port) still work.
	creds.BrokerURL = second.BrokerURL()
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	v := agentVerifier(t, creds, receive(t, subscribe(t, c, sc.Trust()), "trust bundle"))
	mmsg := receive(t, subscribe(t, c, sc.Manifest("fraud", "v1")), "manifest")
	assert.True(t, mmsg.retained)
	_, err := v.VerifyManifest(mustEnvelope(t, mmsg.payload), time.Now())
	require.NoError(t, err)
	dmsg := receive(t, subscribe(t, c, sc.Desired("dev-1")), "desired state")
	assert.True(t, dmsg.retained)
	d, err := v.VerifyDesired(mustEnvelope(t, dmsg.payload), time.Now())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), d.Generation)

	dev, ok := second.internals().Registry.Get("dev-1")
	require.True(t, ok)
	assert.Equal(t, map[string]string{"site": "berlin"}, dev.Labels)
	require.NotNil(t, dev.Desired)
	assert.Equal(t, uint64(1), dev.Desired.Generation)

	// Generations continue where they were: never reused.
	res := second.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	assert.Equal(t, uint64(2), res.Devices[0].Generation)

	// Versions stay immutable across restarts.
	code, _ = second.upload("fraud", "v1", fleettest.TrainedModel(t, 1).ONNX, fleettest.TrainedModel(t, 1).Metadata(), false)
	assert.Equal(t, http.StatusConflict, code)
}

func TestServeWithoutRootPrivateKey(t *testing.T) {
	dir := t.TempDir()
	keyDir := filepath.Join(dir, "keys")
	rootPub, err := keys.Init(keyDir, time.Now(), 0)
	require.NoError(t, err)
	_, err = keys.Init(keyDir, time.Now(), 0)
	require.ErrorContains(t, err, "refusing to replace keys")
	// Production layout: root.key never reaches the control plane.
	require.NoError(t, os.Rename(filepath.Join(keyDir, keys.RootKeyFile), filepath.Join(t.TempDir(), keys.RootKeyFile)))

	ts := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	creds := ts.register("dev-1", nil)
	got, err := signing.ParsePublicKeyPEM([]byte(creds.RootPublicKey))
	require.NoError(t, err)
	assert.Equal(t, rootPub, got)
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
}

func TestKeysMismatchIsRefused(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, keyDir string)
		want   string
	}{
		{"control key not in bundle", func(t *testing.T, keyDir string) {
			k, err := signing.GenerateKey(nil)
			require.NoError(t, err)
			require.NoError(t, os.Remove(filepath.Join(keyDir, keys.ControlKeyFile)))
			require.NoError(t, signing.WritePrivateKeyFile(filepath.Join(keyDir, keys.ControlKeyFile), k))
		}, "control.key (key id"},
		{"bundle signed by another root", func(t *testing.T, keyDir string) {
			other, err := signing.GenerateKey(nil)
			require.NoError(t, err)
			require.NoError(t, os.Remove(filepath.Join(keyDir, keys.RootKeyFile)))
			require.NoError(t, signing.WritePublicKeyFile(filepath.Join(keyDir, keys.RootPubFile), other.Public))
		}, "root.pub (key id"},
		{"missing release key", func(t *testing.T, keyDir string) {
			require.NoError(t, os.Remove(filepath.Join(keyDir, keys.ReleaseKeyFile)))
		}, "missing release.key"},
		{"corrupt bundle", func(t *testing.T, keyDir string) {
			require.NoError(t, os.WriteFile(filepath.Join(keyDir, keys.TrustBundleFile), []byte("garbage"), 0o644))
		}, "trust.bundle is not a trust bundle envelope"},
		{"expired bundle", func(t *testing.T, keyDir string) {
			root, err := signing.ReadPrivateKeyFile(filepath.Join(keyDir, keys.RootKeyFile))
			require.NoError(t, err)
			rel, err := signing.ReadPrivateKeyFile(filepath.Join(keyDir, keys.ReleaseKeyFile))
			require.NoError(t, err)
			ctl, err := signing.ReadPrivateKeyFile(filepath.Join(keyDir, keys.ControlKeyFile))
			require.NoError(t, err)
			b := signing.NewTrustBundle(1, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour),
				[]ed25519.PublicKey{root.Public}, []ed25519.PublicKey{rel.Public}, []ed25519.PublicKey{ctl.Public})
			env, err := signing.SignTrustBundle(b, root)
			require.NoError(t, err)
			raw, err := proto.Marshal(env)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(keyDir, keys.TrustBundleFile), raw, 0o644))
		}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			keyDir := filepath.Join(dir, "keys")
			_, err := keys.Init(keyDir, time.Now(), 0)
			require.NoError(t, err)
			tt.mutate(t, keyDir)
			_, err = controlplane.New(controlplane.Options{DataDir: dir})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestInitKeysBundle(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	rootPub, err := keys.Init(dir, now, 24*time.Hour)
	require.NoError(t, err)
	for _, f := range []string{keys.RootKeyFile, keys.ReleaseKeyFile, keys.ControlKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	raw, err := os.ReadFile(filepath.Join(dir, keys.TrustBundleFile))
	require.NoError(t, err)
	env := &efpb.Envelope{}
	require.NoError(t, proto.Unmarshal(raw, env))
	b, err := signing.NewVerifier(rootPub).UpdateTrustBundle(env, now)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), b.Version)
	assert.Equal(t, now.Add(24*time.Hour).Unix(), b.ExpiresUnix)
}
