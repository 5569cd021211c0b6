package console

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// Fakes of the components, so that these tests can put any value where a
// real component would validate it: the console must be safe on its own.

type fakeAPI struct {
	mu     sync.Mutex
	tokens map[string]api.APIToken // secret → token
	calls  []string                // "METHOD path body" of Do
}

func (f *fakeAPI) Authenticate(_ *http.Request, secret string) (api.APIToken, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tok, ok := f.tokens[secret]; ok {
		return tok, 0, nil
	}
	return api.APIToken{}, 0, api.Errorf(api.ErrUnauthorized, "invalid API token")
}

func (f *fakeAPI) Token(id string) (api.APIToken, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, tok := range f.tokens {
		if tok.ID == id {
			return tok, true
		}
	}
	return api.APIToken{}, false
}

func (f *fakeAPI) revoke(secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.tokens, secret)
}

func (f *fakeAPI) Do(_ *http.Request, p api.APIToken, via, method, path string, body []byte) (int, []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s %s %s %s %s", p.Name, via, method, path, body))
	if !p.Role.Allows(api.RoleOperator) {
		return http.StatusForbidden, []byte(`{"error":"token has role viewer"}`)
	}
	return http.StatusOK, []byte(`{}`)
}

func (f *fakeAPI) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

type fakeFleet struct{ devs []api.Device }

func (f *fakeFleet) Get(id string) (api.Device, bool) {
	for _, d := range f.devs {
		if d.ID == id {
			return d, true
		}
	}
	return api.Device{}, false
}

func (f *fakeFleet) Visit(fn func(*api.Device) bool) {
	for i := range f.devs {
		if !fn(&f.devs[i]) {
			return
		}
	}
}

type fakeModels struct {
	list    []api.ModelVersion
	corrupt map[string]string // by name + "@" + version
}

func (f *fakeModels) List() []api.ModelVersion { return f.list }
func (f *fakeModels) Corrupt(name, version string) string {
	return f.corrupt[name+"@"+version]
}

type fakeRollouts struct{ list []*api.Rollout }

func (f *fakeRollouts) List() []*api.Rollout { return f.list }
func (f *fakeRollouts) Get(id string, _ bool) (*api.Rollout, error) {
	for _, r := range f.list {
		if r.ID == id {
			return r, nil
		}
	}
	return nil, api.Errorf(api.ErrNotFound, "no rollout %q", id)
}

type fakeMetrics struct{ series []monitor.Series }

func (f *fakeMetrics) Query(q monitor.Query) (*api.ModelMetrics, error) {
	res := &api.ModelMetrics{Model: q.Model, Version: q.Version}
	for _, s := range f.series {
		acc := 0.9
		res.Groups = append(res.Groups, api.MetricsGroup{Key: s.Key, MetricsFigures: api.MetricsFigures{Devices: 1, Rows: 10, Accuracy: &acc, MaxPSIFeature: s.Key}})
	}
	res.Total.Reports = 1
	return res, nil
}

func (f *fakeMetrics) SeriesBy(monitor.Query) ([]monitor.Series, error) {
	out := make([]monitor.Series, len(f.series))
	for i, s := range f.series {
		acc := 0.9
		s.Figures = api.MetricsFigures{Devices: 1, Rows: 10, Accuracy: &acc, MaxPSIFeature: s.Key}
		out[i] = s
	}
	return out, nil
}

type fakeAudit struct {
	mu      sync.Mutex
	entries []audit.Entry
}

func (f *fakeAudit) Record(e audit.Entry) (audit.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.Seq = uint64(len(f.entries) + 1)
	f.entries = append(f.entries, e)
	return e, nil
}

func (f *fakeAudit) List(q audit.Query) ([]audit.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []audit.Entry
	for _, e := range f.entries {
		if q.Target != "" && e.Target != q.Target || q.Action != "" && !strings.HasPrefix(e.Action, q.Action) {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

func (f *fakeAudit) Seq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return uint64(len(f.entries))
}

func (f *fakeAudit) actions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.entries {
		out = append(out, e.Actor+" "+e.Action)
	}
	return out
}

const (
	operatorSecret = "ef_operator"
	viewerSecret   = "ef_viewer"
)

type fixture struct {
	t     *testing.T
	c     *Console
	api   *fakeAPI
	audit *fakeAudit
	clock *testkit.Clock
	srv   *httptest.Server
}

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: testkit.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)), audit: &fakeAudit{},
		api: &fakeAPI{tokens: map[string]api.APIToken{
			operatorSecret: {ID: "tok_op", Name: "alice", Role: api.RoleOperator},
			viewerSecret:   {ID: "tok_vw", Name: "bob", Role: api.RoleViewer},
		}}}
	opts := Options{
		API: f.api, Fleet: &fakeFleet{}, Models: &fakeModels{}, Rollouts: &fakeRollouts{}, Metrics: &fakeMetrics{}, Audit: f.audit,
		Clock: f.clock.Now,
	}
	if mod != nil {
		mod(&opts)
	}
	c, err := New(opts)
	require.NoError(t, err)
	f.c = c
	f.srv = httptest.NewServer(c.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// client is a browser stand-in: cookies kept, redirects not followed.
type client struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

func (f *fixture) client() *client {
	jar, err := cookiejar.New(nil)
	require.NoError(f.t, err)
	hc := &http.Client{
		Transport:     f.srv.Client().Transport, // trusts the TLS server's certificate
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &client{t: f.t, base: f.srv.URL, hc: hc}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (cl *client) send(method, path string, form url.Values, header ...string) *http.Response {
	cl.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, cl.base+path, body)
	require.NoError(cl.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := cl.hc.Do(req)
	require.NoError(cl.t, err)
	return resp
}

func (cl *client) get(path string, header ...string) (int, string, *http.Response) {
	cl.t.Helper()
	resp := cl.send(http.MethodGet, path, nil, header...)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(cl.t, err)
	return resp.StatusCode, string(b), resp
}

func (cl *client) post(path string, form url.Values, header ...string) (int, string, *http.Response) {
	cl.t.Helper()
	resp := cl.send(http.MethodPost, path, form, header...)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(cl.t, err)
	return resp.StatusCode, string(b), resp
}

func (cl *client) login(secret string) {
	cl.t.Helper()
	code, body, _ := cl.get("/ui/login")
	require.Equal(cl.t, http.StatusOK, code)
	code, body, resp := cl.post("/ui/login", url.Values{"token": {secret}, "csrf": {csrfRE.FindStringSubmatch(body)[1]}})
	require.Equal(cl.t, http.StatusSeeOther, code, body)
	require.Equal(cl.t, "/ui/fleet", resp.Header.Get("Location"))
	code, body, _ = cl.get("/ui/fleet")
	require.Equal(cl.t, http.StatusOK, code, body)
	cl.csrf = csrfRE.FindStringSubmatch(body)[1]
}

func cookie(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// TestCookieFlags: both cookies are HttpOnly and SameSite=Strict, scoped
// to the console, and Secure when the browser came over TLS (directly or
// through a proxy that says so).
func TestCookieFlags(t *testing.T) {
	for _, tt := range []struct {
		name   string
		tls    bool
		header []string
		secure bool
	}{
		{"plain HTTP", false, nil, false},
		{"TLS", true, nil, true},
		{"TLS at a proxy", false, []string{"X-Forwarded-Proto", "https"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			if tt.tls {
				f.srv.Close()
				f.srv = httptest.NewUnstartedServer(f.c.Handler())
				f.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
				f.srv.StartTLS()
			}
			cl := f.client()
			code, body, resp := cl.get("/ui/login", tt.header...)
			require.Equal(t, http.StatusOK, code)
			lc := cookie(resp, loginCookie)
			require.NotNil(t, lc)
			assert.True(t, lc.HttpOnly)
			assert.Equal(t, http.SameSiteStrictMode, lc.SameSite)
			assert.Equal(t, "/ui/login", lc.Path)
			assert.Equal(t, tt.secure, lc.Secure)

			form := url.Values{"token": {operatorSecret}, "csrf": {csrfRE.FindStringSubmatch(body)[1]}}
			resp = cl.send(http.MethodPost, "/ui/login", form, append([]string{"Cookie", loginCookie + "=" + lc.Value}, tt.header...)...)
			resp.Body.Close()
			require.Equal(t, http.StatusSeeOther, resp.StatusCode)
			sc := cookie(resp, sessionCookie)
			require.NotNil(t, sc)
			assert.True(t, sc.HttpOnly)
			assert.Equal(t, http.SameSiteStrictMode, sc.SameSite)
			assert.Equal(t, "/ui/", sc.Path)
			assert.Equal(t, tt.secure, sc.Secure)
			assert.Len(t, sc.Value, 43, "32 random bytes")
		})
	}
}

// TestSecurityHeaders: no inline script or style, no framing, no caching
// of pages.
func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t, nil)
	cl := f.client()
	cl.login(operatorSecret)
	_, _, resp := cl.get("/ui/fleet")
	csp := resp.Header.Get("Content-Security-Policy")
	assert.Contains(t, csp, "script-src 'self'")
	assert.Contains(t, csp, "frame-ancestors 'none'")
	assert.NotContains(t, csp, "unsafe-inline")
	assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
}

// TestCSRF: every state change needs the session's CSRF token (and the
// login its own double-submitted one); a cross-origin form is refused
// even with the right token.
func TestCSRF(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Rollouts = &fakeRollouts{list: []*api.Rollout{{ID: "r-1", State: api.RolloutRunning, Spec: api.RolloutSpec{Model: "m", Version: "1"}}}}
	})
	cl := f.client()

	// Login without the login cookie, or with another value.
	code, _, _ := cl.post("/ui/login", url.Values{"token": {operatorSecret}, "csrf": {"guess"}})
	assert.Equal(t, http.StatusForbidden, code, "login without the form's cookie")
	_, _, _ = cl.get("/ui/login")
	code, _, _ = cl.post("/ui/login", url.Values{"token": {operatorSecret}, "csrf": {"guess"}})
	assert.Equal(t, http.StatusForbidden, code, "login with a wrong CSRF token")

	cl.login(operatorSecret)
	for _, tt := range []struct {
		name   string
		csrf   string
		header []string
		want   int
	}{
		{"no token", "", nil, http.StatusForbidden},
		{"wrong token", strings.Repeat("A", 43), nil, http.StatusForbidden},
		{"cross-site", cl.csrf, []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"other origin", cl.csrf, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"right token", cl.csrf, nil, http.StatusSeeOther},
	} {
		form := url.Values{}
		if tt.csrf != "" {
			form.Set("csrf", tt.csrf)
		}
		code, body, _ := cl.post("/ui/rollouts/r-1/pause", form, tt.header...)
		assert.Equal(t, tt.want, code, "%s: %s", tt.name, body)
	}
	assert.Equal(t, []string{"alice console POST /api/v1/rollouts/r-1/pause "}, f.api.called(), "only the right token reaches the API")

	// Logout is a state change too.
	code, _, _ = cl.post("/ui/logout", url.Values{})
	assert.Equal(t, http.StatusForbidden, code)
	code, _, resp := cl.post("/ui/logout", url.Values{"csrf": {cl.csrf}})
	assert.Equal(t, http.StatusSeeOther, code)
	assert.Equal(t, "/ui/login?bye=1", resp.Header.Get("Location"))
	assert.Equal(t, []string{"alice console.login", "alice console.logout"}, f.audit.actions())
	code, _, resp = cl.get("/ui/fleet")
	assert.Equal(t, http.StatusSeeOther, code, "the session ended")
	assert.Equal(t, "/ui/login?next=%2Fui%2Ffleet", resp.Header.Get("Location"))
}

// TestViewerRefused: a viewer sees no action and cannot reach one; its
// attempt is refused by the API (which audits it).
func TestViewerRefused(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Rollouts = &fakeRollouts{list: []*api.Rollout{{ID: "r-1", State: api.RolloutRunning, Spec: api.RolloutSpec{Model: "m", Version: "1"}}}}
	})
	cl := f.client()
	cl.login(viewerSecret)
	code, body, _ := cl.get("/ui/rollouts/r-1")
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, body, "data-action=")
	assert.NotContains(t, body, `href="/ui/audit"`, "no audit link for a viewer")
	code, body, _ = cl.get("/ui/rollouts/r-1/pause")
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, "has role viewer; POST /api/v1/rollouts/{id}/pause needs operator")
	code, _, _ = cl.get("/ui/audit")
	assert.Equal(t, http.StatusForbidden, code)
	code, _, _ = cl.post("/ui/rollouts/r-1/pause", url.Values{"csrf": {cl.csrf}})
	assert.Equal(t, http.StatusForbidden, code)
	assert.Equal(t, []string{"bob console POST /api/v1/rollouts/r-1/pause "}, f.api.called(), "the API refused (and audited) it")

	code, body, _ = cl.get("/ui/rollouts/r-1/explode")
	assert.Equal(t, http.StatusNotFound, code, body)
}

// TestSessionsExpireAndAreBounded: idle and absolute expiry, a revoked
// token ends its sessions, the count stays at MaxSessions.
func TestSessionsExpireAndAreBounded(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.SessionIdle, o.SessionLifetime, o.MaxSessions = 10*time.Minute, time.Hour, 3
	})
	alive := func(cl *client) bool {
		code, _, _ := cl.get("/ui/fleet")
		return code == http.StatusOK
	}
	cl := f.client()
	cl.login(operatorSecret)
	f.clock.Add(9 * time.Minute)
	assert.True(t, alive(cl), "used within the idle time")
	f.clock.Add(9 * time.Minute)
	assert.True(t, alive(cl), "each use restarts the idle time")
	f.clock.Add(10 * time.Minute)
	assert.False(t, alive(cl), "idle for 10 minutes")

	cl.login(operatorSecret)
	for range 6 {
		f.clock.Add(9 * time.Minute)
		require.True(t, alive(cl))
	}
	f.clock.Add(9 * time.Minute)
	assert.False(t, alive(cl), "an hour after the login, however busy")

	var clients []*client
	for range 5 {
		c := f.client()
		c.login(viewerSecret)
		clients = append(clients, c)
		f.clock.Add(time.Second)
	}
	assert.Equal(t, 3, f.c.sessions.count())
	assert.False(t, alive(clients[0]), "the least recently used session went first")
	assert.True(t, alive(clients[4]))

	f.api.revoke(viewerSecret)
	assert.False(t, alive(clients[4]), "a revoked token ends its sessions")
	code, body, _ := clients[3].get("/ui/fleet?live=1")
	assert.Equal(t, http.StatusUnauthorized, code, "a live poll of an ended session: %s", body)
}

// TestLiveRegionETag: a poll of an unchanged region is a 304 without a
// body; a change gives the new region and ETag.
func TestLiveRegionETag(t *testing.T) {
	fl := &fakeFleet{devs: []api.Device{{ID: "d-1", Labels: map[string]string{"site": "a"}}}}
	f := newFixture(t, func(o *Options) { o.Fleet = fl })
	cl := f.client()
	cl.login(operatorSecret)
	code, body, resp := cl.get("/ui/fleet?live=1")
	require.Equal(t, http.StatusOK, code)
	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)
	assert.Contains(t, body, `data-device="d-1"`)
	assert.NotContains(t, body, "<html", "only the region")
	code, body, _ = cl.get("/ui/fleet?live=1", "If-None-Match", etag)
	assert.Equal(t, http.StatusNotModified, code)
	assert.Empty(t, body)
	fl.devs[0].Online = true
	code, _, resp = cl.get("/ui/fleet?live=1", "If-None-Match", etag)
	assert.Equal(t, http.StatusOK, code)
	assert.NotEqual(t, etag, resp.Header.Get("ETag"))

	_, page, _ := cl.get("/ui/fleet")
	assert.Contains(t, page, `data-live="/ui/fleet?live=1"`)
}

// TestFleetFiltersAndPages: label selector, site, state, version and
// search narrow the fleet; pages hold pageSize devices.
func TestFleetFiltersAndPages(t *testing.T) {
	fl := &fakeFleet{}
	for i := range 120 {
		site := []string{"north", "south", "east"}[i%3]
		d := api.Device{ID: fmt.Sprintf("dev-%03d", i), Labels: map[string]string{"site": site}, Online: i%2 == 0}
		if i%10 == 0 {
			d.Labels["role"] = "gateway"
			d.Reported = map[string]*api.ModelStatus{"fraud": {State: api.ModelActive, ActiveVersion: "2.0.0"}}
		}
		fl.devs = append(fl.devs, d)
	}
	c, err := New(Options{API: &fakeAPI{}, Fleet: fl, Models: &fakeModels{}, Rollouts: &fakeRollouts{}, Metrics: &fakeMetrics{}, Audit: &fakeAudit{}})
	require.NoError(t, err)
	for _, tt := range []struct {
		query   string
		matched int
		first   string
	}{
		{"", 120, "dev-000"},
		{"page=3", 120, "dev-100"},
		{"selector=role%3Dgateway", 12, "dev-000"},
		{"selector=role%3Dgateway,site%3Dsouth", 4, "dev-010"},
		{"site=east", 40, "dev-002"},
		{"state=online&site=north", 20, "dev-000"},
		{"version=fraud%402.0.0", 12, "dev-000"},
		{"q=DEV-11", 10, "dev-110"},
		{"q=role%3Dgateway", 12, "dev-000"},
		{"selector=site%3D%3D", 0, ""},
	} {
		q, err := url.ParseQuery(tt.query)
		require.NoError(t, err)
		d := c.fleet(parseFleetFilter(q))
		assert.Equal(t, tt.matched, d.Matched, "fleet(%s).Matched", tt.query)
		assert.Equal(t, 120, d.Total)
		if tt.first != "" && assert.NotEmpty(t, d.Devices, tt.query) {
			assert.Equal(t, tt.first, d.Devices[0].ID, "fleet(%s) first row", tt.query)
		}
		assert.LessOrEqual(t, len(d.Devices), pageSize)
	}
	d := c.fleet(parseFleetFilter(url.Values{"page": {"2"}, "state": {"online"}}))
	assert.Equal(t, "/ui/fleet?state=online", d.PrevURL)
	assert.Empty(t, d.NextURL, "60 online devices fill two pages")
	assert.Equal(t, 51, d.First)
	assert.Equal(t, 60, d.Last)
	assert.Equal(t, []string{"east", "north", "south"}, d.Sites)
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "/ui/fleet",
		"/ui/rollouts/r-1?x=1":    "/ui/rollouts/r-1?x=1",
		"https://evil.example/ui": "/ui/fleet",
		"//evil.example/ui/":      "/ui/fleet",
		"/\\evil.example":         "/ui/fleet",
		"/api/v1/devices":         "/ui/fleet",
		"/ui/login":               "/ui/fleet",
		"javascript:alert(1)":     "/ui/fleet",
	} {
		assert.Equal(t, want, safeNext(in), "safeNext(%q)", in)
	}
}

// TestRoutesDocumented: docs/console.md lists exactly the console's routes,
// and every route has a handler.
func TestRoutesDocumented(t *testing.T) {
	raw, err := os.ReadFile("../../docs/console.md")
	require.NoError(t, err)
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(GET|POST) ([^`]+)` \\|").FindAllStringSubmatch(string(raw), -1) {
		documented[m[1]+" "+m[2]] = true
	}
	served := map[string]bool{}
	for _, r := range Routes() {
		served[r.Key()] = true
	}
	assert.Equal(t, served, documented, "docs/console.md and console.Routes differ")
	f := newFixture(t, nil)
	assert.NotNil(t, f.c.Handler(), "Handler panics on a route without a handler")
}

// hostile is put wherever a device, an operator or a model's producer
// chooses a string.
const hostile = `<script>alert("pwn")</script><img src=x onerror=alert(1)>"'&`

// TestPagesEscapeHostileValues renders every page with hostile ids,
// labels, names, versions, reasons, audit details and group keys: none
// reaches the page unescaped.
func TestPagesEscapeHostileValues(t *testing.T) {
	at := time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)
	acc := 0.5
	psi := 0.4
	st := &api.ModelStatus{State: api.ModelFailed, ActiveVersion: hostile, TargetVersion: hostile, PreviousVersion: hostile, Reason: hostile, Updated: at}
	dev := api.Device{
		ID: "dev-1", Labels: map[string]string{hostile: hostile, "site": hostile}, Online: true, LastSeen: at,
		AgentVersion: hostile, Reported: map[string]*api.ModelStatus{hostile: st},
		Desired:     &api.DesiredSummary{Generation: 3, Models: []api.Assignment{{Name: hostile, Version: hostile}}},
		LastRefusal: &api.Refusal{Reason: hostile, Generation: 2, Time: at},
		Recent:      []api.StatusRecord{{Model: hostile, ModelStatus: *st}},
	}
	ro := &api.Rollout{ID: "r-1", State: api.RolloutRunning, Reason: hostile,
		Spec: api.RolloutSpec{Model: hostile, Version: hostile, Selector: hostile, Stages: []api.RolloutStage{{Name: hostile, Canary: 1}}},
		Stages: []api.StageStatus{{Index: 1, Name: hostile, Kind: hostile, Current: true,
			StageProgress: api.StageProgress{Waiting: hostile, Gates: []api.GateResult{{Gate: hostile, Status: api.GateStatus(hostile), Detail: hostile}}}}}}
	series := []monitor.Series{{Key: hostile, Points: []api.MetricsPoint{{Time: at, Accuracy: &acc, MaxPSI: &psi}}}}
	f := newFixture(t, func(o *Options) {
		o.Fleet = &fakeFleet{devs: []api.Device{dev}}
		o.Models = &fakeModels{list: []api.ModelVersion{{Name: hostile, Version: hostile, Checks: api.UploadChecks{Error: hostile}}, {Name: hostile, Version: "v2", Corrupt: hostile}}}
		o.Rollouts = &fakeRollouts{list: []*api.Rollout{ro}}
		o.Metrics = &fakeMetrics{series: series}
		o.Rules = monitor.Rules{MaxPSI: 0.25, MinAccuracy: 0.8}
	})
	for _, e := range []audit.Entry{
		{Time: at, Actor: hostile, Action: "rollout." + hostile, Target: "r-1", Result: hostile, Details: map[string]any{hostile: hostile}},
		{Time: at, Actor: "system", Action: "monitor.alert.feature_drift", Target: hostile, Details: map[string]any{"site": hostile, "feature": hostile, "value": 0.4}},
	} {
		_, err := f.audit.Record(e)
		require.NoError(t, err)
	}
	cl := f.client()
	cl.login(operatorSecret)
	// Unescaped, the payload would open a script or an element, or end
	// an attribute ("'&).
	raw := []string{"<script>alert", "<img src=x", `"pwn"`, `"'&`}
	for _, p := range []string{
		"/ui/fleet", "/ui/fleet?q=" + url.QueryEscape(hostile), "/ui/fleet?selector=" + url.QueryEscape(hostile), "/ui/fleet?live=1",
		"/ui/devices/dev-1", "/ui/devices/dev-1?live=1", "/ui/models", "/ui/rollouts", "/ui/rollouts/r-1", "/ui/rollouts/r-1/rollback",
		"/ui/monitoring", "/ui/audit", "/ui/audit?actor=" + url.QueryEscape(hostile) + "&action=" + url.QueryEscape(hostile),
		"/ui/login?next=" + url.QueryEscape(hostile), "/ui/devices/" + url.PathEscape(hostile),
	} {
		code, body, _ := cl.get(p)
		require.Contains(t, []int{http.StatusOK, http.StatusNotFound}, code, "%s: %s", p, body)
		for _, r := range raw {
			assert.NotContains(t, body, r, "%s shows a hostile value unescaped", p)
		}
		if !strings.Contains(p, "login") && !strings.HasPrefix(p, "/ui/devices/%") {
			assert.Contains(t, body, "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;", "%s shows the hostile value, escaped", p)
		}
	}
	code, body, _ := cl.post("/ui/rollouts/r-1/rollback", url.Values{"csrf": {cl.csrf}, "selector": {hostile}, "device": {hostile}})
	assert.Equal(t, http.StatusSeeOther, code, body)
	calls := f.api.called()
	require.NotEmpty(t, calls)
	assert.Contains(t, calls[len(calls)-1], `\u003cscript\u003e`, "the rollback body is JSON-encoded")
}

func TestStateClassIsSafe(t *testing.T) {
	assert.Equal(t, "state state-rolled-back", stateClass("rolled-back"))
	assert.Equal(t, "state state-scriptalertscriptx", stateClass(`"><script>alert(1)</script>x`))
}

// TestCorruptVersionsAndBlockedDevicesShown: a version whose stored file
// is corrupt says so on the models page, and a device assigned to it shows
// why it is blocked on the fleet and device pages; a device that already
// runs the version it was assigned is not blocked.
func TestCorruptVersionsAndBlockedDevicesShown(t *testing.T) {
	const reason = "model file blobs/ab12 does not match its sha256"
	waiting := api.Device{ID: "dev-1", Desired: &api.DesiredSummary{Generation: 2, Models: []api.Assignment{{Name: "fraud", Version: "v9"}}}}
	running := api.Device{ID: "dev-2", Desired: &api.DesiredSummary{Generation: 2, Models: []api.Assignment{{Name: "fraud", Version: "v9"}}},
		Reported: map[string]*api.ModelStatus{"fraud": {State: api.ModelActive, ActiveVersion: "v9"}}}
	f := newFixture(t, func(o *Options) {
		o.Fleet = &fakeFleet{devs: []api.Device{waiting, running}}
		o.Models = &fakeModels{list: []api.ModelVersion{{Name: "fraud", Version: "v9", Corrupt: reason}},
			corrupt: map[string]string{"fraud@v9": reason}}
	})
	cl := f.client()
	cl.login(operatorSecret)
	_, body, _ := cl.get("/ui/models")
	assert.Contains(t, body, "corrupt</span> <span class=\"reason\">"+reason)
	_, body, _ = cl.get("/ui/devices/dev-1")
	assert.Contains(t, body, "Blocked: <span class=\"reason\">waits for fraud@v9, whose stored file is corrupt: "+reason)
	_, body, _ = cl.get("/ui/devices/dev-2")
	assert.NotContains(t, body, "Blocked:")
	_, body, _ = cl.get("/ui/fleet")
	assert.Equal(t, 1, strings.Count(body, "blocked: waits for fraud@v9"), "only dev-1 is blocked")
}
