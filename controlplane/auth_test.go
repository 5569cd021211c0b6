package controlplane_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

func (ts *testServer) createToken(name string, role api.Role) api.CreatedToken {
	ts.t.Helper()
	var tok api.CreatedToken
	code, body := ts.doJSON("POST", "/api/v1/tokens", api.CreateTokenRequest{Name: name, Role: string(role)}, &tok)
	require.Equal(ts.t, http.StatusCreated, code, "create token %s: %s", name, body)
	require.True(ts.t, strings.HasPrefix(tok.Token, api.TokenPrefix))
	return tok
}

func TestTokenRoles(t *testing.T) {
	ts := newTestServer(t, nil)
	viewer := ts.createToken("grafana", api.RoleViewer)
	operator := ts.createToken("ci-deployer", api.RoleOperator)
	admin2 := ts.createToken("second-admin", api.RoleAdmin)

	deploy := `{"model":"nope","version":"v1","devices":["x"]}`
	tests := []struct {
		name, token, method, path, body string
		want                            int
	}{
		{"viewer reads devices", viewer.Token, "GET", "/api/v1/devices", "", http.StatusOK},
		{"viewer reads metrics", viewer.Token, "GET", "/metrics", "", http.StatusOK},
		{"viewer cannot deploy", viewer.Token, "POST", "/api/v1/deployments", deploy, http.StatusForbidden},
		{"viewer cannot list tokens", viewer.Token, "GET", "/api/v1/tokens", "", http.StatusForbidden},
		{"viewer cannot read audit", viewer.Token, "GET", "/api/v1/audit", "", http.StatusForbidden},
		{"operator deploys (404: no such model)", operator.Token, "POST", "/api/v1/deployments", deploy, http.StatusNotFound},
		{"operator reads audit", operator.Token, "GET", "/api/v1/audit", "", http.StatusOK},
		{"operator cannot register devices", operator.Token, "POST", "/api/v1/devices", `{"id":"d1"}`, http.StatusForbidden},
		{"operator cannot create tokens", operator.Token, "POST", "/api/v1/tokens", `{"name":"x","role":"admin"}`, http.StatusForbidden},
		{"operator cannot enroll", operator.Token, "POST", "/api/v1/enrollments", `{"device_id":"d1"}`, http.StatusForbidden},
		{"operator cannot revoke devices", operator.Token, "POST", "/api/v1/devices/d1/revoke", "", http.StatusForbidden},
		{"admin registers devices", admin2.Token, "POST", "/api/v1/devices", `{"id":"d1"}`, http.StatusCreated},
		{"admin lists tokens", admin2.Token, "GET", "/api/v1/tokens", "", http.StatusOK},
		{"bad role", ts.Token, "POST", "/api/v1/tokens", `{"name":"x","role":"root"}`, http.StatusBadRequest},
		{"bad name", ts.Token, "POST", "/api/v1/tokens", `{"name":"a b","role":"viewer"}`, http.StatusBadRequest},
		{"duplicate name", ts.Token, "POST", "/api/v1/tokens", `{"name":"grafana","role":"viewer"}`, http.StatusConflict},
		{"unknown field", ts.Token, "POST", "/api/v1/tokens", `{"name":"y","role":"viewer","admin":true}`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.doToken(tt.token, tt.method, tt.path, strings.NewReader(tt.body), "Content-Type", "application/json")
			assert.Equal(t, tt.want, code, "%s %s: %s", tt.method, tt.path, body)
			if code == http.StatusForbidden {
				assert.Contains(t, errorMessage(t, body), "needs ")
			}
		})
	}

	// The list has no secrets; "initial" is the first-start token.
	code, body := ts.do("GET", "/api/v1/tokens", nil)
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, string(body), viewer.Token)
	assert.NotContains(t, string(body), "hash")
	var list []api.APIToken
	require.NoError(t, json.Unmarshal(body, &list))
	names := map[string]api.Role{}
	for _, tok := range list {
		names[tok.Name] = tok.Role
	}
	assert.Equal(t, map[string]api.Role{api.InitialTokenName: api.RoleAdmin, "grafana": api.RoleViewer, "ci-deployer": api.RoleOperator, "second-admin": api.RoleAdmin}, names)

	// Revoked tokens stop working at once; the last admin token stays.
	code, body = ts.do("DELETE", "/api/v1/tokens/"+viewer.ID, nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	code, _ = ts.doToken(viewer.Token, "GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = ts.do("DELETE", "/api/v1/tokens/"+viewer.ID, nil)
	assert.Equal(t, http.StatusNotFound, code)
	code, body = ts.doToken(admin2.Token, "DELETE", "/api/v1/tokens/initial", nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	code, body = ts.doToken(admin2.Token, "DELETE", "/api/v1/tokens/"+admin2.ID, nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, errorMessage(t, body), "last admin token")
	code, _ = ts.do("GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusUnauthorized, code, "the revoked initial token")

	// Every mutating call is audited with who, what and the result.
	entries, err := ts.Audit(api.AuditQuery{Action: "api."})
	require.NoError(t, err)
	type row struct{ actor, action, result string }
	var got []row
	for _, e := range entries {
		got = append(got, row{e.Actor, e.Action, e.Result})
	}
	assert.Contains(t, got, row{"initial", "api.POST /api/v1/tokens", "ok"})
	assert.Contains(t, got, row{"second-admin", "api.POST /api/v1/devices", "ok"})
	assert.Contains(t, got, row{"ci-deployer", "api.POST /api/v1/deployments", `HTTP 404: model nope version v1 does not exist; upload it first`})
	assert.Contains(t, got, row{"grafana", "api.POST /api/v1/deployments", `HTTP 403: token "grafana" has role viewer; POST /api/v1/deployments needs operator`})
	assert.Contains(t, got, row{"second-admin", "api.DELETE /api/v1/tokens/{id}", "ok"})

	// The audit log is readable over the API, filtered.
	var viaAPI []audit.Entry
	code, body = ts.doToken(operator.Token, "GET", "/api/v1/audit?action=api.POST+/api/v1/devices", nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.NoError(t, json.Unmarshal(body, &viaAPI))
	require.Len(t, viaAPI, 2, "the refused and the accepted registration")
	assert.Equal(t, "ci-deployer", viaAPI[0].Actor)
	assert.Equal(t, "second-admin", viaAPI[1].Actor)
	assert.Equal(t, "ok", viaAPI[1].Result)
	code, _ = ts.doToken(operator.Token, "GET", "/api/v1/audit?since=yesterday", nil)
	assert.Equal(t, http.StatusBadRequest, code)
}

func TestTokensSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	op := first.createToken("op", api.RoleOperator)
	first.Stop()

	second := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	code, _ := second.doToken(op.Token, "GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusOK, code)
	code, _ = second.doToken(op.Token, "POST", "/api/v1/devices", strings.NewReader(`{"id":"x"}`))
	assert.Equal(t, http.StatusForbidden, code, "the role is kept")
	tokens, err := second.WithToken(first.Token).Tokens(context.Background())
	require.NoError(t, err)
	assert.Len(t, tokens, 2)
}

func TestAuthFailuresAreRateLimited(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	ts := newTestServer(t, func(o *controlplane.Options) { o.Clock = clock.Now })
	bad := api.TokenPrefix + strings.Repeat("0", 64)
	const authBurst = 10 // failures an address may make before it waits
	for i := range authBurst {
		code, _ := ts.doToken(bad, "GET", "/api/v1/devices", nil)
		require.Equal(t, http.StatusUnauthorized, code, "attempt %d", i+1)
	}
	req, err := http.NewRequest("GET", ts.APIURL()+"/api/v1/devices", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+bad)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "a failure over the limit waits")
	assert.Equal(t, "6", resp.Header.Get("Retry-After"))
	// A valid token from the same address (an admin behind the proxy the
	// failing client shares) is not locked out; nor is a lower-case scheme.
	code, _ := ts.do("GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusOK, code, "a valid token passes while its address is over the failure limit")
	code, _ = ts.doToken("", "GET", "/api/v1/devices", nil, "Authorization", "bearer "+ts.Token)
	assert.Equal(t, http.StatusOK, code, "the scheme name is case-insensitive")
	code, _ = ts.doToken("", "GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusTooManyRequests, code, "no token is a failure too")
	// api.Enrollment exchanges share the limit; a valid enrollment token
	// from the same address passes.
	code, _ = ts.doToken("", "POST", "/api/v1/enroll", strings.NewReader(`{"token":"x"}`))
	assert.Equal(t, http.StatusTooManyRequests, code)
	e := ts.enrollment(api.EnrollmentRequest{DeviceID: "behind-the-proxy"})
	code, _, msg := ts.exchange(e.Token)
	assert.Equal(t, http.StatusOK, code, "a valid enrollment token passes: %s", msg)

	clock.Add(6 * time.Second) // one failure refilled
	code, _ = ts.doToken(bad, "GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = ts.doToken(bad, "GET", "/api/v1/devices", nil)
	assert.Equal(t, http.StatusTooManyRequests, code)
	// The health check is never limited.
	code, _ = ts.doToken("", "GET", "/healthz", nil)
	assert.Equal(t, http.StatusOK, code)
}

// TestEveryRouteEnforcesItsRole calls every route the server serves with
// no token and with a token of each role: a role below the route's gets
// 403, one at or above it gets past the check, and only the public routes
// answer without a token.
func TestEveryRouteEnforcesItsRole(t *testing.T) {
	clock := testkit.NewClock(time.Now()) // moved on after each refused call: the failure limit refills
	ts := newTestServer(t, func(o *controlplane.Options) { o.Clock = clock.Now })
	tokens := map[api.Role]string{api.RoleAdmin: ts.Token}
	for _, r := range []api.Role{api.RoleViewer, api.RoleOperator, api.RoleBroker} {
		tokens[r] = ts.createToken("role-"+string(r), r).Token
	}
	fill := strings.NewReplacer("{id}", "nope", "{name}", "nope", "{version}", "v0")
	for _, rt := range api.Routes() {
		path := fill.Replace(rt.Pattern)
		t.Run(rt.Key(), func(t *testing.T) {
			call := func(token string) (int, string) {
				var body io.Reader
				if rt.Method == http.MethodPost {
					body = strings.NewReader("{}")
				}
				code, b := ts.doToken(token, rt.Method, path, body, "Content-Type", "application/json")
				clock.Add(time.Minute)
				return code, string(b)
			}
			if rt.Public {
				_, body := call("")
				assert.NotContains(t, body, "API token", "a public route needs no API token")
				return
			}
			require.True(t, rt.Role.Valid(), "route has no role")
			code, body := call("")
			assert.Equal(t, http.StatusUnauthorized, code, "no token")
			assert.Contains(t, body, "missing API token")
			for _, role := range api.Roles() {
				code, _ := call(tokens[role])
				if role.Allows(rt.Role) {
					assert.NotContains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, code, "role %s", role)
				} else {
					assert.Equal(t, http.StatusForbidden, code, "role %s", role)
				}
			}
		})
	}
}
