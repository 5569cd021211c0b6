package httpapi

import (
	"bytes"
	"context"
	"net/http"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// The API's surface for the web console (controlplane/console), which
// authenticates people with the API's own tokens and acts through the
// API's own routes: the same role checks, handlers and audit entries as a
// REST call, in process.

type viaKey struct{}

// Authenticate checks the secret of an API token as a bearer token is
// checked: a failure counts against r's remote address like a bad bearer
// token, and an address that failed too often is refused before the
// secret is looked at. Errors wrap api.ErrUnauthorized, or
// api.ErrRateLimited with the wait.
func (a *API) Authenticate(r *http.Request, secret string) (api.APIToken, time.Duration, error) {
	tok, wait, ok := a.checkToken(remoteHost(r), secret)
	switch {
	case wait > 0:
		return api.APIToken{}, wait, api.Errorf(api.ErrRateLimited, "too many failed authentication attempts from this address")
	case !ok:
		return api.APIToken{}, 0, api.Errorf(api.ErrUnauthorized, "invalid API token")
	}
	return tok, 0, nil
}

// Token returns the API token with id as it is now, or false once it was
// revoked: a console session keeps a token's id, never its secret, and
// looks the token up on every request.
func (a *API) Token(id string) (api.APIToken, bool) { return a.tokens.get(id) }

// Do serves one route of api.Routes in process for p, who authenticated
// elsewhere (a console session): the route's role check, its handler and
// its audit entry are the REST API's, and the entry's details carry via.
// r is the request that caused the call: its context and remote address
// are used. Do returns the status and body the REST API would answer.
func (a *API) Do(r *http.Request, p api.APIToken, via, method, path string, body []byte) (int, []byte) {
	ctx := context.WithValue(context.WithValue(r.Context(), principalKey{}, p), viaKey{}, via)
	req, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if err != nil {
		return http.StatusBadRequest, []byte(`{"error":"invalid in-process request"}`)
	}
	req.RemoteAddr = r.RemoteAddr
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{header: http.Header{}}
	a.inproc.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return rec.code, rec.body.Bytes()
}

// recorder is the http.ResponseWriter of an in-process call.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(b)
}
