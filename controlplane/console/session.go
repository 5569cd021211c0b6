package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
)

// Cookies and form fields of the console.
const (
	// sessionCookie holds the session id (only its sha256 is kept).
	sessionCookie = "ef_session"
	// loginCookie holds the login form's CSRF token (double submit: no
	// session exists yet when the form is posted).
	loginCookie = "ef_login"
	csrfField   = "csrf"
	tokenField  = "token"
	maxFormBody = 64 << 10
	// via marks the console's calls in the API's audit entries.
	via = "console"
)

// session is one login. Its id is a bearer secret kept by the browser in
// an HttpOnly cookie; the server keeps only its hash. It holds the API
// token's id, not its secret: the token is looked up on every request, so
// a revoked token or a changed role takes effect at once.
type session struct {
	tokenID  string
	csrf     string
	created  time.Time
	lastUsed time.Time
}

// sessions are the live sessions, bounded in number, each ending after
// idle time without use or lifetime after its login.
type sessions struct {
	clock    func() time.Time
	idle     time.Duration
	lifetime time.Duration
	max      int

	mu     sync.Mutex // guards byHash and every session in it
	byHash map[[sha256.Size]byte]*session
}

func newSessions(clock func() time.Time, idle, lifetime time.Duration, max int) *sessions {
	return &sessions{clock: clock, idle: idle, lifetime: lifetime, max: max, byHash: map[[sha256.Size]byte]*session{}}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) expired(sess *session, now time.Time) bool {
	return now.Sub(sess.lastUsed) >= s.idle || now.Sub(sess.created) >= s.lifetime
}

// create starts a session for token id and returns its id and CSRF token.
// At the bound, expired sessions go first, then the least recently used.
func (s *sessions) create(tokenID string) (id string, sess session) {
	id = randomToken()
	now := s.clock()
	sess = session{tokenID: tokenID, csrf: randomToken(), created: now, lastUsed: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byHash) >= s.max {
		for h, old := range s.byHash {
			if s.expired(old, now) {
				delete(s.byHash, h)
			}
		}
	}
	for len(s.byHash) >= s.max {
		var lru [sha256.Size]byte
		var at time.Time
		first := true
		for h, old := range s.byHash {
			if first || old.lastUsed.Before(at) {
				lru, at, first = h, old.lastUsed, false
			}
		}
		delete(s.byHash, lru)
	}
	stored := sess
	s.byHash[sha256.Sum256([]byte(id))] = &stored
	return id, sess
}

// get returns the live session with id and marks it used; an expired one
// is removed.
func (s *sessions) get(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	h := sha256.Sum256([]byte(id))
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byHash[h]
	if sess == nil {
		return session{}, false
	}
	if s.expired(sess, now) {
		delete(s.byHash, h)
		return session{}, false
	}
	sess.lastUsed = now
	return *sess, true
}

func (s *sessions) delete(id string) {
	h := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byHash, h)
}

// count is the number of sessions kept (expired ones included until they
// are found).
func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byHash)
}

// secure reports whether the browser reached us over TLS, directly or
// through a proxy that says so: the cookies are then Secure. (Trusting
// the proxy's header can only make a cookie stricter.)
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// request is what an authenticated console request knows: its session and
// the session's token as it is now.
type request struct {
	id    string // session id
	sess  session
	token api.APIToken
}

type requestKey struct{}

// authed wraps a route that needs a session: without a live session (or
// with a revoked token) a page redirects to the login and anything else
// answers 401; a page whose data apiRoute serves needs that route's role
// (403 with the API's wording); a state change needs the session's CSRF
// token, and its handler calls apiRoute through the API, which checks the
// role and audits the call, refused or not.
func (c *Console) authed(apiRoute string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := strings.Replace(apiRoute, "{action}", r.PathValue("action"), 1)
		need, known := c.roles[route]
		if route != "" && !known {
			c.renderError(w, r, nil, http.StatusNotFound, "There is no console page at "+r.URL.Path+".")
			return
		}
		ck, err := r.Cookie(sessionCookie)
		var id string
		if err == nil {
			id = ck.Value
		}
		sess, ok := c.sessions.get(id)
		var tok api.APIToken
		if ok {
			if tok, ok = c.opts.API.Token(sess.tokenID); !ok {
				c.sessions.delete(id) // the token was revoked: so are its sessions
			}
		}
		if !ok {
			if id != "" {
				setCookie(w, r, sessionCookie, "", "/ui/", -1)
			}
			if r.Method == http.MethodGet && r.URL.Query().Get("live") == "" {
				http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.renderError(w, r, nil, http.StatusUnauthorized, "Your session has ended: log in again.")
			return
		}
		req := &request{id: id, sess: sess, token: tok}
		mutating := r.Method != http.MethodGet && r.Method != http.MethodHead
		// A change is refused (and audited) by the API's own route, which
		// the handler calls; a page is refused here.
		if route != "" && !mutating && !tok.Role.Allows(need) {
			method, pattern, _ := strings.Cut(route, " ")
			c.renderError(w, r, req, http.StatusForbidden, fmt.Sprintf("token %q has role %s; %s %s needs %s", tok.Name, tok.Role, method, pattern, need))
			return
		}
		if mutating {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
			if err := r.ParseForm(); err != nil {
				c.renderError(w, r, req, http.StatusBadRequest, "The form could not be read.")
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get(csrfField)), []byte(sess.csrf)) != 1 {
				c.renderError(w, r, req, http.StatusForbidden, "The form's CSRF token is missing or wrong: reload the page and try again.")
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, req)))
	})
}

// withRequest adapts a page handler to the request authed put in the
// context.
func (c *Console) withRequest(page func(http.ResponseWriter, *http.Request, *request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := r.Context().Value(requestKey{}).(*request)
		page(w, r, req)
	})
}

// safeNext is where a login continues: a console path on this server, or
// the fleet page.
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || !strings.HasPrefix(u.Path, Prefix) ||
		strings.HasPrefix(next, "//") || strings.Contains(next, "\\") || strings.HasPrefix(u.Path, "/ui/login") {
		return "/ui/fleet"
	}
	return u.RequestURI()
}

type loginView struct {
	Next    string
	CSRF    string
	Error   string
	Message string
}

func (c *Console) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	csrf := randomToken()
	setCookie(w, r, loginCookie, csrf, "/ui/login", 3600)
	v := loginView{Next: safeNext(r.URL.Query().Get("next")), CSRF: csrf}
	if r.URL.Query().Get("bye") != "" {
		v.Message = "You are logged out."
	}
	c.render(w, r, http.StatusOK, "login.html", c.view(nil, "Log in", "", v))
}

func (c *Console) handleLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		c.renderError(w, r, nil, http.StatusBadRequest, "The form could not be read.")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	fail := func(code int, msg string) {
		csrf := randomToken()
		setCookie(w, r, loginCookie, csrf, "/ui/login", 3600)
		c.render(w, r, code, "login.html", c.view(nil, "Log in", "", loginView{Next: next, CSRF: csrf, Error: msg}))
	}
	ck, err := r.Cookie(loginCookie)
	if err != nil || ck.Value == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostForm.Get(csrfField))) != 1 {
		fail(http.StatusForbidden, "The login form expired or came from another site: try again.")
		return
	}
	secret := strings.TrimSpace(r.PostForm.Get(tokenField))
	if secret == "" {
		fail(http.StatusBadRequest, "Enter an API token.")
		return
	}
	tok, wait, err := c.opts.API.Authenticate(r, secret)
	switch {
	case errors.Is(err, api.ErrRateLimited):
		secs := int(math.Ceil(wait.Seconds()))
		w.Header().Set("Retry-After", fmt.Sprint(secs))
		fail(http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins from this address: try again in %d s.", secs))
		return
	case err != nil:
		fail(http.StatusUnauthorized, "That API token is not valid (it may have been revoked).")
		return
	}
	if old, err := r.Cookie(sessionCookie); err == nil {
		c.sessions.delete(old.Value) // never keep a session id across a login
	}
	id, _ := c.sessions.create(tok.ID)
	setCookie(w, r, sessionCookie, id, "/ui/", 0)
	setCookie(w, r, loginCookie, "", "/ui/login", -1)
	c.recordSession(r, tok, "console.login")
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) handleLogout(w http.ResponseWriter, r *http.Request, req *request) {
	c.sessions.delete(req.id)
	setCookie(w, r, sessionCookie, "", "/ui/", -1)
	c.recordSession(r, req.token, "console.logout")
	http.Redirect(w, r, "/ui/login?bye=1", http.StatusSeeOther)
}

// recordSession audits a login or logout like an API call: who, what,
// from where, with which token.
func (c *Console) recordSession(r *http.Request, tok api.APIToken, action string) {
	remote := r.RemoteAddr
	if host, _, err := net.SplitHostPort(remote); err == nil {
		remote = host
	}
	_, err := c.opts.Audit.Record(audit.Entry{
		Actor: tok.Name, Action: action, Target: r.URL.Path,
		Details: map[string]any{"token_id": tok.ID, "remote": remote, "via": via},
	})
	if err != nil {
		c.log.Error("audit record failed", "action", action, "err", err)
	}
}
