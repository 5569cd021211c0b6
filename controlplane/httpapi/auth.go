package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
)

// Auth-failure rate limit per remote address: a bucket of authBurst
// failures refilled at authRefill per second. Successful requests cost
// nothing, and a valid token passes even from an address over its limit
// (one misconfigured client behind a proxy must not lock out the admins
// behind the same proxy); a failure from an address over its limit gets
// 429 with Retry-After. Tokens are 256 random bits, so guessing is
// hopeless whatever the rate: the limit bounds what a failing client
// costs (log lines, audit entries) and tells it to back off.
const (
	authBurst       = 10
	authRefill      = 1.0 / 6 // one failure every 6 s in the long run
	maxLimitBuckets = 10000
	maxAuditErrBody = 1 << 10
)

type principalKey struct{}

// PrincipalFrom returns the API token a request authenticated with.
func PrincipalFrom(ctx context.Context) (api.APIToken, bool) {
	p, ok := ctx.Value(principalKey{}).(api.APIToken)
	return p, ok
}

// Actor names who made a request, for audit entries: the API token's name,
// or "anonymous" on the unauthenticated endpoints (health, enroll).
func Actor(ctx context.Context) string {
	if p, ok := PrincipalFrom(ctx); ok {
		return p.Name
	}
	return "anonymous"
}

// authenticated resolves the bearer token to an API token and puts it in
// the request's context before calling next; failures are rate limited
// per remote address.
func (a *API) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		secret, ok := bearer(auth)
		var tok api.APIToken
		var wait time.Duration
		if ok {
			tok, wait, ok = a.checkToken(remoteHost(r), secret)
		} else {
			wait = a.failed(remoteHost(r))
		}
		if wait > 0 {
			tooManyFailures(w, wait)
			return
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="edgefleet"`)
			msg := "invalid API token"
			if auth == "" {
				msg = "missing API token: send Authorization: Bearer <token> (the token serve printed at first start, or one from edgefleet token create)"
			}
			writeJSON(w, http.StatusUnauthorized, api.ErrorResponse{Error: msg})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, tok)))
	})
}

// bearer takes the credentials of an Authorization header with the Bearer
// scheme, whose name is case-insensitive (RFC 9110, 11.1).
func bearer(auth string) (string, bool) {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(auth), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	cred = strings.TrimSpace(cred)
	return cred, cred != ""
}

// checkToken looks secret up. A valid token passes whatever remote's
// failure count; a failure spends one of remote's allowed failures, or,
// over the limit, returns how long remote must wait.
func (a *API) checkToken(remote, secret string) (api.APIToken, time.Duration, bool) {
	if tok, ok := a.tokens.lookup(secret); ok {
		return tok, 0, true
	}
	return api.APIToken{}, a.failed(remote), false
}

// failed records a failed authentication from remote: it returns how long
// remote must wait when it is over its limit (the failure is then not
// counted again), or 0 after spending one allowed failure.
func (a *API) failed(remote string) time.Duration {
	if wait := a.limiter.blocked(remote); wait > 0 {
		return wait
	}
	a.limiter.fail(remote)
	return 0
}

func tooManyFailures(w http.ResponseWriter, wait time.Duration) {
	secs := int(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeJSON(w, http.StatusTooManyRequests, api.ErrorResponse{Error: fmt.Sprintf("too many failed authentication attempts from this address; retry in %d s", secs)})
}

// permit wraps one authenticated route: it checks the principal's role
// against the route's and writes an audit entry for every call that may
// change state (who, what, when, result).
func (a *API) permit(rt api.Route, h http.Handler) http.Handler {
	method, pattern, need := rt.Method, rt.Pattern, rt.Role
	mutating := method != http.MethodGet && method != http.MethodHead && !rt.Query
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := PrincipalFrom(r.Context())
		if !ok || !p.Role.Allows(need) {
			msg := fmt.Sprintf("token %q has role %s; %s %s needs %s", p.Name, p.Role, method, pattern, need)
			if mutating {
				a.record(r, method, pattern, http.StatusForbidden, msg)
			}
			writeJSON(w, http.StatusForbidden, api.ErrorResponse{Error: msg})
			return
		}
		if !mutating {
			h.ServeHTTP(w, r)
			return
		}
		aw := &auditWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(aw, r)
		msg := ""
		if aw.code >= 400 {
			var e api.ErrorResponse
			if json.Unmarshal(aw.errBody, &e) == nil {
				msg = e.Error
			}
		}
		a.record(r, method, pattern, aw.code, msg)
	})
}

// record writes one API call to the audit log. A failure to audit is
// logged: the call already happened.
func (a *API) record(r *http.Request, method, pattern string, code int, errMsg string) {
	result := "ok"
	if code >= 400 {
		result = fmt.Sprintf("HTTP %d: %s", code, errMsg)
	}
	e := audit.Entry{
		Actor:   Actor(r.Context()),
		Action:  "api." + method + " " + pattern,
		Target:  r.URL.Path,
		Result:  result,
		Details: map[string]any{"status": code, "remote": remoteHost(r)},
	}
	if p, ok := PrincipalFrom(r.Context()); ok {
		e.Details["token_id"] = p.ID
	}
	if via, ok := r.Context().Value(viaKey{}).(string); ok && via != "" {
		e.Details["via"] = via
	}
	if _, err := a.opts.Audit.Record(e); err != nil {
		a.log.Error("audit record failed", "action", e.Action, "err", err)
	}
}

// auditWriter captures the status and the start of an error body.
type auditWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
	errBody     []byte
}

func (w *auditWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.code >= 400 && len(w.errBody) < maxAuditErrBody {
		n := min(len(b), maxAuditErrBody-len(w.errBody))
		w.errBody = append(w.errBody, b[:n]...)
	}
	return w.ResponseWriter.Write(b)
}

func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// failLimiter is a token bucket of allowed failures per key.
type failLimiter struct {
	clock func() time.Time
	burst float64
	rate  float64 // failures per second refilled

	mu      sync.Mutex // guards buckets
	buckets map[string]*bucket
}

type bucket struct {
	level float64 // failures still allowed
	last  time.Time
}

func newFailLimiter(clock func() time.Time, burst int, rate float64) *failLimiter {
	return &failLimiter{clock: clock, burst: float64(burst), rate: rate, buckets: map[string]*bucket{}}
}

// refill brings b up to now; callers hold mu.
func (l *failLimiter) refill(b *bucket, now time.Time) {
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.level = math.Min(l.burst, b.level+dt*l.rate)
	}
	b.last = now
}

// blocked returns how long key must wait before its next attempt (0: it may try).
func (l *failLimiter) blocked(key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		return 0
	}
	l.refill(b, l.clock())
	if b.level >= 1 {
		return 0
	}
	return time.Duration((1 - b.level) / l.rate * float64(time.Second))
}

// fail spends one allowed failure of key.
func (l *failLimiter) fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxLimitBuckets {
			l.evict(now)
		}
		b = &bucket{level: l.burst, last: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	b.level = math.Max(0, b.level-1)
}

// evict drops buckets that have refilled (they hold no information), and
// if that is not enough, arbitrary ones; callers hold mu.
func (l *failLimiter) evict(now time.Time) {
	for k, b := range l.buckets {
		l.refill(b, now)
		if b.level >= l.burst {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < maxLimitBuckets/2 {
			break
		}
		delete(l.buckets, k)
	}
}

// Token and audit endpoints.

func (a *API) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateTokenRequest
	if err := decodeJSON(w, r, maxRegisterBody, &req); err != nil {
		writeError(w, err)
		return
	}
	role, err := api.ParseRole(req.Role)
	if err != nil {
		writeError(w, err)
		return
	}
	tok, err := a.tokens.create(req.Name, role, Actor(r.Context()))
	if err != nil {
		a.logIfInternal(err, "create token")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/tokens/"+tok.ID)
	writeJSON(w, http.StatusCreated, tok)
}

func (a *API) handleListTokens(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.tokens.list())
}

func (a *API) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	tok, err := a.tokens.revoke(r.PathValue("id"))
	if err != nil {
		a.logIfInternal(err, "revoke token")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, tok)
}

func (a *API) handleAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	aq := audit.Query{Action: q.Get("action"), Target: q.Get("target")}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeError(w, api.Errorf(api.ErrInvalid, "query parameter since=%q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", v))
			return
		}
		aq.Since = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, api.Errorf(api.ErrInvalid, "query parameter limit=%q: want 1..10000", v))
			return
		}
		aq.Limit = n
	}
	list, err := a.opts.Audit.List(aq)
	if err != nil {
		a.logIfInternal(err, "list audit")
		writeError(w, err)
		return
	}
	views := make([]api.AuditEntry, len(list))
	for i, e := range list {
		views[i] = api.AuditEntry(e)
	}
	writeJSON(w, http.StatusOK, views)
}
