package controlplane_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/mosquitto"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// passwdOf reads the served password file into user → hash.
func passwdOf(t *testing.T, a api.MosquittoAuth) map[string]string {
	t.Helper()
	entries, err := mosquitto.ParsePasswd([]byte(a.Passwd))
	require.NoError(t, err)
	m := map[string]string{}
	for _, e := range entries {
		m[e.User] = e.Hash
	}
	return m
}

func verifies(t *testing.T, hash, password string) bool {
	t.Helper()
	ok, err := mosquitto.Verify(hash, password)
	require.NoError(t, err)
	return ok
}

// TestBrokerMosquittoEndpoint: the password file served for an external
// mosquitto holds every device's password and the ingest logins in
// mosquitto's format, the ACL matches serve's flags, only broker (and
// admin) tokens read it, and a long poll answers as soon as a credential
// changes.
func TestBrokerMosquittoEndpoint(t *testing.T) {
	mq := testkit.StartMosquitto(t) // anonymous: any login is let in
	const cpPassword = "cp-password"
	ts := newTestServer(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password, o.IngestConnections = mq.URL(), "edgefleet-cp", cpPassword, 2
	})
	dev1 := ts.register("dev-1", nil)
	dev2 := ts.register("dev-2", nil)
	broker := ts.createToken("mosquitto", api.RoleBroker).Token
	viewer := ts.createToken("viewer", api.RoleViewer).Token
	bc, err := client.New(ts.APIURL(), client.Options{Token: broker})
	require.NoError(t, err)
	ctx := context.Background()

	auth, changed, err := bc.BrokerMosquitto(ctx, "", 0)
	require.NoError(t, err)
	require.True(t, changed)
	pw := passwdOf(t, auth)
	assert.Len(t, pw, 4, "two devices and two ingest logins: %v", pw)
	assert.NotContains(t, pw, "edgefleet-cp", "the main login stays in the broker's own file")
	assert.True(t, verifies(t, pw["dev-1"], dev1.Password))
	assert.False(t, verifies(t, pw["dev-1"], dev2.Password))
	assert.True(t, verifies(t, pw["dev-2"], dev2.Password))
	for _, u := range []string{"edgefleet-cp-ingest-0", "edgefleet-cp-ingest-1"} {
		assert.True(t, verifies(t, pw[u], cpPassword), u)
	}
	assert.Equal(t, 2, auth.Devices)
	assert.Zero(t, auth.LegacyDevices)
	wantACL, err := topics.MosquittoACL(topics.Scheme{}, "edgefleet-cp", 2)
	require.NoError(t, err)
	assert.Equal(t, wantACL, auth.ACL)
	assert.NotContains(t, auth.Passwd, dev1.Password, "no password in clear")

	// Roles: a viewer may not read it, a broker token may read nothing else.
	code, body := ts.doToken(viewer, "GET", api.PathBrokerMosq, nil)
	assert.Equal(t, http.StatusForbidden, code, "%s", body)
	code, body = ts.doToken(broker, "GET", api.PathDevices, nil)
	assert.Equal(t, http.StatusForbidden, code, "%s", body)
	code, body = ts.do("GET", api.PathBrokerMosq, nil)
	assert.Equal(t, http.StatusOK, code, "admin reads it too: %s", body)
	code, body = ts.doToken(broker, "GET", api.PathBrokerMosq+"?wait=2h", nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, string(body), "wait")

	// Nothing changes: a short poll answers 304.
	_, changed, err = bc.BrokerMosquitto(ctx, auth.Generation, 100*time.Millisecond)
	require.NoError(t, err)
	assert.False(t, changed)

	// A revocation ends a long poll at once.
	type answer struct {
		auth    api.MosquittoAuth
		changed bool
		err     error
	}
	polled := make(chan answer, 1)
	go func() {
		a, c, err := bc.BrokerMosquitto(ctx, auth.Generation, api.MaxBrokerWait)
		polled <- answer{a, c, err}
	}()
	time.Sleep(50 * time.Millisecond) // usually in the poll by now; either way the answer is the new file
	_, body = ts.doJSON("POST", api.Path(api.PathDeviceRevoke, "dev-1"), nil, nil)
	var got answer
	select {
	case got = <-polled:
	case <-time.After(20 * time.Second):
		t.Fatalf("the long poll did not answer the revocation (%s)", body)
	}
	require.NoError(t, got.err)
	require.True(t, got.changed)
	assert.NotEqual(t, auth.Generation, got.auth.Generation)
	pw = passwdOf(t, got.auth)
	assert.NotContains(t, pw, "dev-1", "a revoked device has no line")
	assert.Contains(t, pw, "dev-2")
	assert.Equal(t, 1, got.auth.Devices)

	// An ETag of another process's generation gets the content at once.
	a2, changed, err := bc.BrokerMosquitto(ctx, "deadbeef-7", api.MaxBrokerWait)
	require.NoError(t, err)
	assert.True(t, changed)
	assert.Equal(t, got.auth.Generation, a2.Generation)
}

// TestBrokerMosquittoNeedsAnExternalBroker: with the embedded broker there
// is nothing for broker sync to fetch, and the answer says why.
func TestBrokerMosquittoNeedsAnExternalBroker(t *testing.T) {
	ts := newTestServer(t, nil)
	code, body := ts.do("GET", api.PathBrokerMosq, nil)
	assert.Equal(t, http.StatusConflict, code)
	var e api.ErrorResponse
	require.NoError(t, json.Unmarshal(body, &e))
	assert.True(t, strings.Contains(e.Error, "embedded broker"), e.Error)
}

// TestBrokerMosquittoLongPollEndsAtShutdown: a waiting broker sync does not
// hold the control plane's shutdown for the rest of its poll.
func TestBrokerMosquittoLongPollEndsAtShutdown(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	ts := newTestServer(t, func(o *controlplane.Options) { o.MQTTURL, o.Username = mq.URL(), "edgefleet-cp" })
	bc, err := client.New(ts.APIURL(), client.Options{Token: ts.createToken("mosquitto", api.RoleBroker).Token})
	require.NoError(t, err)
	auth, _, err := bc.BrokerMosquitto(context.Background(), "", 0)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, _, err := bc.BrokerMosquitto(context.Background(), auth.Generation, api.MaxBrokerWait)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	ts.Stop()
	select {
	case <-done:
	case <-time.After(api.MaxBrokerWait / 2):
		t.Fatal("the long poll outlived the control plane's shutdown")
	}
	// Without StopWaiting the shutdown waits its whole grace period (5 s)
	// for the poll, then cuts the connection.
	assert.Less(t, time.Since(start), 4*time.Second, "the poll was ended, not cut off at the shutdown deadline")
}

// TestBrokerHTTPChecks: the login and ACL checks EMQX makes over HTTP get
// the embedded broker's answers, and none is written to the audit log.
func TestBrokerHTTPChecks(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	const cpPassword = "cp-password"
	ts := newTestServer(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password, o.IngestConnections = mq.URL(), "edgefleet-cp", cpPassword, 2
	})
	dev1 := ts.register("dev-1", nil)
	dev2 := ts.register("dev-2", nil)
	_, body := ts.doJSON("POST", api.Path(api.PathDeviceRevoke, "dev-2"), nil, nil)
	broker := ts.createToken("emqx", api.RoleBroker).Token
	check := func(path string, req any) string {
		t.Helper()
		b, err := json.Marshal(req)
		require.NoError(t, err)
		code, out := ts.doToken(broker, "POST", path, strings.NewReader(string(b)), "Content-Type", "application/json")
		require.Equal(t, http.StatusOK, code, "%s", out)
		var d api.BrokerDecision
		require.NoError(t, json.Unmarshal(out, &d))
		assert.False(t, d.IsSuperuser, "no login bypasses the ACL")
		return d.Result
	}
	auditBefore, err := ts.Client.Audit(context.Background(), api.AuditQuery{Action: "api.POST " + api.PathBrokerAuthn})
	require.NoError(t, err)

	for _, tt := range []struct {
		name string
		req  api.BrokerAuthnRequest
		want string
	}{
		{"device", api.BrokerAuthnRequest{Username: "dev-1", Password: dev1.Password, ClientID: "dev-1"}, "allow"},
		{"wrong password", api.BrokerAuthnRequest{Username: "dev-1", Password: dev2.Password, ClientID: "dev-1"}, "deny"},
		{"another client id", api.BrokerAuthnRequest{Username: "dev-1", Password: dev1.Password, ClientID: "dev-9"}, "deny"},
		{"revoked", api.BrokerAuthnRequest{Username: "dev-2", Password: dev2.Password, ClientID: "dev-2"}, "deny"},
		{"unknown", api.BrokerAuthnRequest{Username: "dev-7", Password: "x", ClientID: "dev-7"}, "deny"},
		{"control plane", api.BrokerAuthnRequest{Username: "edgefleet-cp", Password: cpPassword, ClientID: "edgefleet-cp"}, "allow"},
		{"control plane, wrong password", api.BrokerAuthnRequest{Username: "edgefleet-cp", Password: dev1.Password, ClientID: "edgefleet-cp"}, "deny"},
		{"ingest login", api.BrokerAuthnRequest{Username: "edgefleet-cp-ingest-1", Password: cpPassword, ClientID: "edgefleet-cp-ingest-1"}, "allow"},
		{"no such ingest login", api.BrokerAuthnRequest{Username: "edgefleet-cp-ingest-2", Password: cpPassword, ClientID: "edgefleet-cp-ingest-2"}, "deny"},
	} {
		assert.Equal(t, tt.want, check(api.PathBrokerAuthn, tt.req), tt.name)
	}

	sc := topics.Scheme{}
	for _, tt := range []struct {
		name string
		req  api.BrokerAuthzRequest
		want string
	}{
		{"own status", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Status("dev-1"), Action: "publish", Retain: "false"}, "allow"},
		{"own status retained", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Status("dev-1"), Action: "publish", Retain: "true"}, "deny"},
		{"another's status", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Status("dev-2"), Action: "publish"}, "deny"},
		{"own desired", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Desired("dev-1"), Action: "subscribe"}, "allow"},
		{"another's desired", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Desired("dev-2"), Action: "subscribe"}, "deny"},
		{"publish desired", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Desired("dev-1"), Action: "publish"}, "deny"},
		{"trust", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: sc.Trust(), Action: "subscribe"}, "allow"},
		{"everything", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-1", Topic: "#", Action: "subscribe"}, "deny"},
		{"client id differs", api.BrokerAuthzRequest{Username: "dev-1", ClientID: "dev-2", Topic: sc.Trust(), Action: "subscribe"}, "deny"},
		{"control plane", api.BrokerAuthzRequest{Username: "edgefleet-cp", ClientID: "edgefleet-cp", Topic: sc.Desired("dev-1"), Action: "publish", Retain: "true"}, "allow"},
		{"control plane, outside its prefix", api.BrokerAuthzRequest{Username: "edgefleet-cp", ClientID: "edgefleet-cp", Topic: "other/x", Action: "publish"}, "deny"},
		{"ingest, shared telemetry", api.BrokerAuthzRequest{Username: "edgefleet-cp-ingest-0", ClientID: "edgefleet-cp-ingest-0", Topic: "$share/edgefleet-ingest/" + sc.AllTelemetry(), Action: "subscribe"}, "allow"},
		{"ingest, status", api.BrokerAuthzRequest{Username: "edgefleet-cp-ingest-0", ClientID: "edgefleet-cp-ingest-0", Topic: sc.AllStatus(), Action: "subscribe"}, "deny"},
		{"ingest, publish", api.BrokerAuthzRequest{Username: "edgefleet-cp-ingest-0", ClientID: "edgefleet-cp-ingest-0", Topic: sc.Desired("dev-1"), Action: "publish"}, "deny"},
	} {
		assert.Equal(t, tt.want, check(api.PathBrokerAuthz, tt.req), tt.name)
	}

	code, out := ts.doToken(broker, "POST", api.PathBrokerAuthz, strings.NewReader(`{"username":"dev-1","topic":"x","action":"delete"}`), "Content-Type", "application/json")
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, string(out), "want publish or subscribe")
	code, _ = ts.doToken(ts.createToken("viewer", api.RoleViewer).Token, "POST", api.PathBrokerAuthn, strings.NewReader(`{}`), "Content-Type", "application/json")
	assert.Equal(t, http.StatusForbidden, code)

	auditAfter, err := ts.Client.Audit(context.Background(), api.AuditQuery{Action: "api.POST " + api.PathBrokerAuthn})
	require.NoError(t, err)
	assert.Len(t, auditAfter, len(auditBefore), "login checks are not audited (%s)", body)
}
