package controlplane_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

func (ts *testServer) enrollment(req api.EnrollmentRequest) api.Enrollment {
	ts.t.Helper()
	var e api.Enrollment
	code, body := ts.doJSON("POST", "/api/v1/enrollments", req, &e)
	require.Equal(ts.t, http.StatusCreated, code, "enrollment: %s", body)
	return e
}

// exchange posts an enrollment token without any API token, as the agent does.
func (ts *testServer) exchange(token string) (int, api.DeviceCredentials, string) {
	ts.t.Helper()
	code, body := ts.doToken("", "POST", "/api/v1/enroll", strings.NewReader(`{"token":"`+token+`"}`), "Content-Type", "application/json")
	var creds api.DeviceCredentials
	if code == http.StatusOK {
		require.NoError(ts.t, json.Unmarshal(body, &creds))
		return code, creds, ""
	}
	return code, creds, errorMessage(ts.t.(*testing.T), body)
}

func TestEnrollmentIsOneTimeAndExpires(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	ts := newTestServer(t, func(o *controlplane.Options) { o.Clock = clock.Now })

	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "cam-1", Labels: map[string]string{"site": "berlin"}, TTL: "30m"})
	assert.True(t, strings.HasPrefix(e.Token, api.EnrollTokenPrefix))
	assert.False(t, e.Reenroll)

	code, creds, msg := ts.exchange(e.Token)
	require.Equal(t, http.StatusOK, code, msg)
	assert.Equal(t, "cam-1", creds.ID)
	assert.Equal(t, ts.BrokerURL(), creds.BrokerURL)
	assert.Equal(t, ts.RootPublicKeyPEM(), creds.RootPublicKey)
	dev, err := ts.Device("cam-1")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"site": "berlin"}, dev.Labels)
	deviceClient(t, creds) // the credentials work

	code, _, msg = ts.exchange(e.Token)
	assert.Equal(t, http.StatusGone, code)
	assert.Contains(t, msg, "already used")

	late := ts.enrollment(api.EnrollmentRequest{DeviceID: "cam-2"})
	clock.Add(api.DefaultEnrollmentTTL)
	code, _, msg = ts.exchange(late.Token)
	assert.Equal(t, http.StatusGone, code)
	assert.Contains(t, msg, "expired")
	assert.False(t, ts.internals().Registry.Exists("cam-2"))

	code, _, msg = ts.exchange(api.EnrollTokenPrefix + strings.Repeat("a", 64))
	assert.Equal(t, http.StatusUnauthorized, code)
	assert.Contains(t, msg, "unknown")
	code, _, _ = ts.exchange("ef_not-an-enrollment-token")
	assert.Equal(t, http.StatusUnauthorized, code)

	for _, tt := range []struct {
		name string
		req  api.EnrollmentRequest
	}{
		{"bad id", api.EnrollmentRequest{DeviceID: "a/b"}},
		{"ttl too long", api.EnrollmentRequest{DeviceID: "x", TTL: "720h"}},
		{"ttl garbage", api.EnrollmentRequest{DeviceID: "x", TTL: "soon"}},
		{"labels on existing device", api.EnrollmentRequest{DeviceID: "cam-1", Labels: map[string]string{"a": "b"}}},
	} {
		code, body := ts.doJSON("POST", "/api/v1/enrollments", tt.req, nil)
		assert.Equal(t, http.StatusBadRequest, code, "%s: %s", tt.name, body)
	}
}

func TestRevokeDisconnectsAndReenrollRestores(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	c := deviceClient(t, creds)
	require.True(t, c.IsConnected())

	var res api.RevokeResult
	code, body := ts.doJSON("POST", "/api/v1/devices/dev-1/revoke", nil, &res)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.True(t, res.Disconnected)
	require.Eventually(t, func() bool { return !c.IsConnected() }, 10*time.Second, 10*time.Millisecond)
	_, err := dialDevice(creds.BrokerURL, creds.Username, creds.Password)
	require.Error(t, err, "a revoked device cannot reconnect")

	code, _ = ts.doJSON("POST", "/api/v1/devices/nope/revoke", nil, nil)
	assert.Equal(t, http.StatusNotFound, code)

	var dev api.Device
	code, body = ts.doJSON("GET", "/api/v1/devices/dev-1", nil, &dev)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.True(t, dev.Revoked, "the API shows the revocation")
	assert.False(t, dev.Online)

	// Revocation survives a restart of the registry.
	reg, err := fleet.OpenRegistry(ts.internals().KV, nil)
	require.NoError(t, err)
	assert.False(t, reg.AuthenticateDevice("dev-1", []byte(creds.Password)))
	reloaded, ok := reg.Get("dev-1")
	require.True(t, ok)
	assert.True(t, reloaded.Revoked)

	// Enrolling the device again issues new credentials; the old ones stay dead.
	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "dev-1"})
	assert.True(t, e.Reenroll)
	code, fresh, msg := ts.exchange(e.Token)
	require.Equal(t, http.StatusOK, code, msg)
	assert.NotEqual(t, creds.Password, fresh.Password)
	deviceClient(t, fresh)
	_, err = dialDevice(creds.BrokerURL, creds.Username, creds.Password)
	assert.Error(t, err)
	var again api.Device
	code, body = ts.doJSON("GET", "/api/v1/devices/dev-1", nil, &again)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.False(t, again.Revoked, "enrolled again")
}

// TestAgentEnrollWritesWorkingConfig runs the agent's side of enrollment
// (agent.Enroll + WriteConfig, what `edgefleet-agent enroll` does) against
// a real control plane and connects with the written config.
func TestAgentEnrollWritesWorkingConfig(t *testing.T) {
	ts := newTestServer(t, nil)
	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "edge-7", Labels: map[string]string{"site": "lyon"}})
	out := filepath.Join(t.TempDir(), "agent.yaml")
	ctx := context.Background()

	cfg, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e.Token, DataDir: "/var/lib/x"})
	require.NoError(t, err)
	require.NoError(t, agent.WriteConfig(out, cfg, false))
	fi, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	loaded, err := agent.LoadConfig(out)
	require.NoError(t, err)
	opts, err := loaded.Options()
	require.NoError(t, err)
	assert.Equal(t, "edge-7", opts.DeviceID)
	assert.Equal(t, ts.BrokerURL(), opts.BrokerURL)
	c, err := dialDevice(opts.BrokerURL, loaded.Username, loaded.Password)
	require.NoError(t, err, "the enrolled credentials connect")
	c.Disconnect(50)

	assert.ErrorContains(t, agent.WriteConfig(out, cfg, false), "exists")

	_, err = agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e.Token, DataDir: "/var/lib/x"})
	require.ErrorIs(t, err, agent.ErrEnrollRefused)
	assert.ErrorContains(t, err, "already used")
	_, err = agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: "ftp://x", Token: e.Token, DataDir: "/x"})
	assert.ErrorContains(t, err, "want an http")
}

// TestEnrollChecksLocalInputsFirst: a certificate path that does not
// exist or does not parse is refused before the token is exchanged, so
// the same token works once the typo is fixed.
func TestEnrollChecksLocalInputsFirst(t *testing.T) {
	ts := newTestServer(t, nil)
	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "edge-8"})
	ctx := context.Background()
	notPEM := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o600))
	for _, o := range []agent.EnrollOptions{
		{TLSCAFile: "/nonexistent/ca.crt"},
		{TLSCAFile: notPEM},
		{TLSCertFile: "/nonexistent/edge-8.crt"},
	} {
		o.ControlPlane, o.Token, o.DataDir = ts.APIURL(), e.Token, "/var/lib/x"
		_, err := agent.Enroll(ctx, o)
		require.Error(t, err)
		assert.ErrorContains(t, err, "the enrollment token was not used")
		assert.NotErrorIs(t, err, agent.ErrEnrollRefused)
	}
	cfg, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: ts.APIURL(), Token: e.Token, DataDir: "/var/lib/x"})
	require.NoError(t, err, "the token is still good")
	assert.Equal(t, "edge-8", cfg.DeviceID)
}
