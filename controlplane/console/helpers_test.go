package console_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// testRuntime is one onnxruntime handle shared by the package's tests.
var testRuntime *infer.Runtime

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m, &testRuntime)) }

// env is a real control plane with an operator and a viewer token.
type env struct {
	t        testing.TB
	cp       *fleettest.ControlPlane
	operator string
	viewer   string
}

func startEnv(t testing.TB, mod func(*controlplane.Options)) *env {
	t.Helper()
	cp := fleettest.StartControlPlane(t, testRuntime, mod)
	e := &env{t: t, cp: cp}
	op, err := cp.Client.CreateToken(context.Background(), "ops-alice", api.RoleOperator)
	require.NoError(t, err)
	vw, err := cp.Client.CreateToken(context.Background(), "viewer-bob", api.RoleViewer)
	require.NoError(t, err)
	e.operator, e.viewer = op.Token, vw.Token
	return e
}

func (e *env) upload(version string, seed uint64) {
	e.t.Helper()
	a := fleettest.TrainedModel(e.t, seed)
	_, err := e.cp.AddModelVersion(context.Background(), "fraud", version, a.ONNX, a.Metadata(), false)
	require.NoError(e.t, err)
}

// session is an HTTP client logged in to the console (cookies kept,
// redirects not followed).
type session struct {
	t    testing.TB
	base string
	hc   *http.Client
	csrf string
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// newSession returns a client with an empty cookie jar.
func (e *env) newSession() *session {
	e.t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(e.t, err)
	return &session{t: e.t, base: e.cp.APIURL(), hc: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}}
}

// login logs a new session in with token and checks it landed on the fleet.
func (e *env) login(token string) *session {
	e.t.Helper()
	s := e.newSession()
	code, body, _ := s.get("/ui/login")
	require.Equal(e.t, http.StatusOK, code, body)
	code, body, h := s.post("/ui/login", url.Values{"token": {token}, "csrf": {s.formCSRF(body)}})
	require.Equal(e.t, http.StatusSeeOther, code, body)
	require.Equal(e.t, "/ui/fleet", h.Get("Location"))
	code, body, _ = s.get("/ui/fleet")
	require.Equal(e.t, http.StatusOK, code, body)
	s.csrf = s.formCSRF(body)
	return s
}

func (s *session) formCSRF(body string) string {
	s.t.Helper()
	m := csrfInput.FindStringSubmatch(body)
	require.NotNil(s.t, m, "no CSRF field in %s", body)
	return m[1]
}

func (s *session) do(req *http.Request) (int, string, http.Header) {
	s.t.Helper()
	resp, err := s.hc.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return resp.StatusCode, string(b), resp.Header
}

func (s *session) get(path string, header ...string) (int, string, http.Header) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	require.NoError(s.t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return s.do(req)
}

func (s *session) post(path string, form url.Values, header ...string) (int, string, http.Header) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.base+path, strings.NewReader(form.Encode()))
	require.NoError(s.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return s.do(req)
}
