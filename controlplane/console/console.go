// Package console is the control plane's web console under /ui/: pages
// rendered on the server (html/template, assets embedded) over the same
// components as the REST API. People log in with an API token; sessions are
// server-side, CSRF-checked, and carry the token's role, checked against the
// API's route table; every change goes through the API's own routes in
// process (httpapi), so it is authorised and audited exactly like a REST
// call. Live regions poll with ETags. Imported by controlplane.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// Prefix is where the console is served.
const Prefix = "/ui/"

// Defaults of zero Config fields.
const (
	DefaultSessionIdle     = time.Hour
	DefaultSessionLifetime = 12 * time.Hour
	DefaultMaxSessions     = 1000
	DefaultPollInterval    = 2 * time.Second
)

// Config is what an operator sets about the console; the zero value takes
// the defaults above.
type Config struct {
	// SessionIdle ends a session not used for this long; SessionLifetime
	// ends any session this long after its login.
	SessionIdle     time.Duration
	SessionLifetime time.Duration
	// MaxSessions bounds the sessions kept; at the bound a login ends the
	// least recently used one.
	MaxSessions int
	// PollInterval is how often an open page asks whether its live region
	// changed (a 304 answer when it did not).
	PollInterval time.Duration
}

// API is the REST API's surface the console uses (*httpapi.API): its
// tokens for logins, and its routes for every change.
type API interface {
	// Authenticate checks a token secret, rate limited per address like
	// bearer tokens; on api.ErrRateLimited wait says how long.
	Authenticate(r *http.Request, secret string) (tok api.APIToken, wait time.Duration, err error)
	// Token returns a token by id as it is now (false once revoked).
	Token(id string) (api.APIToken, bool)
	// Do serves an API route in process for p, with its role check,
	// handler and audit entry; it returns the status and JSON body.
	Do(r *http.Request, p api.APIToken, via, method, path string, body []byte) (int, []byte)
}

// Fleet is the device registry (*fleet.Registry).
type Fleet interface {
	// Get copies one device with its recent status events.
	Get(id string) (api.Device, bool)
	// Visit calls fn with every device in id order, until fn returns
	// false; fn must neither keep nor change d.
	Visit(fn func(d *api.Device) bool)
}

// Models is the model registry.
type Models interface {
	List() []api.ModelVersion
	// Corrupt is why a version's stored file cannot be served ("" when
	// it can).
	Corrupt(name, version string) string
}

// Rollouts is the rollout engine.
type Rollouts interface {
	List() []*api.Rollout
	Get(id string, withDevices bool) (*api.Rollout, error)
}

// Metrics is the monitoring store (*monitor.Aggregator).
type Metrics interface {
	Query(q monitor.Query) (*api.ModelMetrics, error)
	SeriesBy(q monitor.Query) ([]monitor.Series, error)
}

// Audit is the audit log (*audit.Log).
type Audit interface {
	Record(audit.Entry) (audit.Entry, error)
	List(audit.Query) ([]audit.Entry, error)
	// Seq is the newest entry's sequence number: a cached query is reused
	// until it moves.
	Seq() uint64
}

// Retrain is retraining (the API's view of *retrain.Service): policies,
// jobs and lineage. Starting and cancelling a job go through the API.
type Retrain interface {
	Policy(model string) (api.RetrainStatus, error)
	// Jobs lists the jobs of model ("" every model), newest first,
	// without their logs.
	Jobs(model string) []*api.RetrainJob
	// Job returns one job with its log.
	Job(id string) (*api.RetrainJob, error)
	// Lineage of version of model ("" the newest) as its chain of parents.
	Lineage(model, version string) (api.Lineage, error)
}

// Options configure a Console. Fields without a documented default are
// required.
type Options struct {
	Config
	API      API
	Fleet    Fleet
	Models   Models
	Rollouts Rollouts
	Metrics  Metrics
	Audit    Audit
	// Retrain serves the retraining pages; nil: they say retraining is
	// not configured (503), like the API's routes.
	Retrain Retrain
	// Rules are the monitoring alert rules: their thresholds are drawn on
	// the charts.
	Rules monitor.Rules
	// Clock is the time source (sessions, chart ranges); default time.Now.
	Clock  func() time.Time
	Logger *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves the web console.
type Console struct {
	opts     Options
	log      *slog.Logger
	sessions *sessions
	pages    map[string]*template.Template // by page file name
	roles    map[string]api.Role           // API route key → role
	static   map[string]staticFile         // by file name
	audits   *auditCache
	lineage  *lineageCache
}

type staticFile struct {
	body        []byte
	contentType string
	etag        string
}

// New checks o, applies defaults and parses the templates.
func New(o Options) (*Console, error) {
	if o.API == nil || o.Fleet == nil || o.Models == nil || o.Rollouts == nil || o.Metrics == nil || o.Audit == nil {
		return nil, errors.New("console: API, Fleet, Models, Rollouts, Metrics and Audit are required")
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = DefaultSessionIdle
	}
	if o.SessionLifetime <= 0 {
		o.SessionLifetime = DefaultSessionLifetime
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Console{
		opts:     o,
		log:      log.With("component", "console"),
		sessions: newSessions(o.Clock, o.SessionIdle, o.SessionLifetime, o.MaxSessions),
		roles:    map[string]api.Role{},
		static:   map[string]staticFile{},
		audits:   newAuditCache(o.Audit),
		lineage:  newLineageCache(),
	}
	for _, rt := range api.Routes() {
		c.roles[rt.Key()] = rt.Role
	}
	for _, rt := range Routes() {
		keys := []string{rt.API}
		if strings.Contains(rt.API, "{action}") {
			keys = nil
			for _, a := range api.RolloutActions() {
				keys = append(keys, strings.Replace(rt.API, "{action}", string(a), 1))
			}
		}
		for _, k := range keys {
			if _, ok := c.roles[k]; !ok && k != "" {
				return nil, fmt.Errorf("console: route %s takes its role from %s, which is not in api.Routes", rt.Key(), k)
			}
		}
	}
	if err := c.loadStatic(); err != nil {
		return nil, err
	}
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Console) loadStatic() error {
	return fs.WalkDir(staticFS, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(path)
		if err != nil {
			return err
		}
		ct := "application/octet-stream"
		switch {
		case hasSuffix(path, ".css"):
			ct = "text/css; charset=utf-8"
		case hasSuffix(path, ".js"):
			ct = "text/javascript; charset=utf-8"
		case hasSuffix(path, ".svg"):
			ct = "image/svg+xml"
		}
		sum := sha256.Sum256(b)
		c.static[path[len("static/"):]] = staticFile{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// staticURL names an embedded asset with its content hash, so a browser
// may cache it and still sees a new build's file.
func (c *Console) staticURL(name string) string {
	f, ok := c.static[name]
	if !ok {
		return Prefix + "static/" + name
	}
	return Prefix + "static/" + name + "?v=" + f.etag[1:len(f.etag)-1]
}

// Route is one route of the console. These are not REST API routes (not
// in api.Routes or docs/openapi.yaml); docs/console.md lists them.
type Route struct {
	Method  string
	Pattern string
	// API is the REST route whose role this route needs ("" for the
	// login, logout and static files): the console shows a page only to a
	// token that may read the same data through the API. "{action}" stands
	// for the rollout action the request names.
	API     string
	Summary string
}

// Key is the route's ServeMux pattern.
func (r Route) Key() string { return r.Method + " " + r.Pattern }

// Routes returns the console's route table.
func Routes() []Route {
	action := "POST " + api.PathRolloutAction("{action}")
	return []Route{
		{Method: "GET", Pattern: "/ui/{$}", Summary: "redirects to the fleet page"},
		{Method: "GET", Pattern: "/ui/login", Summary: "login form (an API token)"},
		{Method: "POST", Pattern: "/ui/login", Summary: "log in: starts a session"},
		{Method: "POST", Pattern: "/ui/logout", Summary: "log out: ends the session"},
		{Method: "GET", Pattern: "/ui/static/{name}", Summary: "embedded CSS and JavaScript"},
		{Method: "GET", Pattern: "/ui/fleet", API: "GET " + api.PathDevices, Summary: "devices: filters, search, pages; live"},
		{Method: "GET", Pattern: "/ui/devices/{id}", API: "GET " + api.PathDevice, Summary: "one device: versions, refusals, recent status, metrics; live"},
		{Method: "GET", Pattern: "/ui/models", API: "GET " + api.PathModels, Summary: "model versions, sizes and the devices running each"},
		{Method: "GET", Pattern: "/ui/rollouts", API: "GET " + api.PathRollouts, Summary: "rollouts; live"},
		{Method: "GET", Pattern: "/ui/rollouts/{id}", API: "GET " + api.PathRollout, Summary: "one rollout: stages, devices, gates, decisions; live"},
		{Method: "GET", Pattern: "/ui/rollouts/{id}/{action}", API: action, Summary: "confirm a rollout action"},
		{Method: "POST", Pattern: "/ui/rollouts/{id}/{action}", API: action, Summary: "pause, resume, promote, abort or roll back (through the API's route)"},
		{Method: "GET", Pattern: "/ui/monitoring", API: "GET " + api.PathModelMetrics, Summary: "accuracy and drift charts per site or label, alerts; live"},
		{Method: "GET", Pattern: "/ui/audit", API: "GET " + api.PathAudit, Summary: "the audit log, filtered"},
		{Method: "GET", Pattern: "/ui/retrain", API: "GET " + api.PathRetrainJobs, Summary: "retraining: each model's policy and newest jobs; live"},
		{Method: "GET", Pattern: "/ui/models/{name}/retrain", API: "GET " + api.PathModelRetrain, Summary: "a model's retrain policy, jobs and lineage; live"},
		{Method: "GET", Pattern: "/ui/models/{name}/retrain/start", API: "POST " + api.PathModelRetrainJ, Summary: "confirm a retrain"},
		{Method: "POST", Pattern: "/ui/models/{name}/retrain/start", API: "POST " + api.PathModelRetrainJ, Summary: "start a retrain job (through the API's route)"},
		{Method: "GET", Pattern: "/ui/retrain/jobs/{id}", API: "GET " + api.PathRetrainJob, Summary: "one retrain job: held-out figures, dataset, trainer output, log; live"},
		{Method: "GET", Pattern: "/ui/retrain/jobs/{id}/cancel", API: "POST " + api.PathRetrainCancel, Summary: "confirm cancelling a retrain job"},
		{Method: "POST", Pattern: "/ui/retrain/jobs/{id}/cancel", API: "POST " + api.PathRetrainCancel, Summary: "cancel a retrain job (through the API's route)"},
	}
}

// Handler returns the console's routes (under Prefix), each behind the
// cross-origin check, the security headers and, except the login and the
// static files, a session whose token's role the route allows.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	hs := map[string]http.Handler{
		"GET /ui/{$}":           http.RedirectHandler("/ui/fleet", http.StatusFound),
		"GET /ui/login":         http.HandlerFunc(c.handleLoginForm),
		"POST /ui/login":        http.HandlerFunc(c.handleLogin),
		"POST /ui/logout":       c.authed("", c.withRequest(c.handleLogout)),
		"GET /ui/static/{name}": http.HandlerFunc(c.handleStatic),
	}
	pages := map[string]func(w http.ResponseWriter, r *http.Request, s *request){
		"GET /ui/fleet":                        c.fleetPage,
		"GET /ui/devices/{id}":                 c.devicePage,
		"GET /ui/models":                       c.modelsPage,
		"GET /ui/rollouts":                     c.rolloutsPage,
		"GET /ui/rollouts/{id}":                c.rolloutPage,
		"GET /ui/monitoring":                   c.monitoringPage,
		"GET /ui/audit":                        c.auditPage,
		"GET /ui/rollouts/{id}/{action}":       c.confirmPage,
		"POST /ui/rollouts/{id}/{action}":      c.rolloutAction,
		"GET /ui/retrain":                      c.retrainPage,
		"GET /ui/models/{name}/retrain":        c.retrainModelPage,
		"GET /ui/models/{name}/retrain/start":  c.retrainStartConfirm,
		"POST /ui/models/{name}/retrain/start": c.retrainStart,
		"GET /ui/retrain/jobs/{id}":            c.retrainJobPage,
		"GET /ui/retrain/jobs/{id}/cancel":     c.retrainCancelConfirm,
		"POST /ui/retrain/jobs/{id}/cancel":    c.retrainCancel,
	}
	for _, rt := range Routes() {
		h, ok := hs[rt.Key()]
		if page := pages[rt.Key()]; page != nil {
			h, ok = c.authed(rt.API, c.withRequest(page)), true
		}
		if !ok {
			panic("console: route " + rt.Key() + " has no handler") // caught by TestHandlerServesEveryRoute
		}
		mux.Handle(rt.Key(), h)
	}
	mux.Handle(Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.renderError(w, r, nil, http.StatusNotFound, "There is no console page at "+r.URL.Path+".")
	}))
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.renderError(w, r, nil, http.StatusForbidden, "Cross-origin request refused: console forms work only from the console's own pages.")
	}))
	return securityHeaders(cop.Handler(mux))
}

// securityHeaders sets the headers every console answer carries: no
// inline script or style, no framing, no sniffing, no caching of pages.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

func (c *Console) handleStatic(w http.ResponseWriter, r *http.Request) {
	f, ok := c.static[r.PathValue("name")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", f.contentType)
	w.Header().Set("ETag", f.etag)
	w.Header().Set("Cache-Control", "public, max-age=86400")
	if r.Header.Get("If-None-Match") == f.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(f.body)
}

// auditCache keeps the answers of recent audit queries until the log
// grows: a page polling for its live region costs a map lookup while
// nothing was audited.
type auditCache struct {
	log Audit

	mu      sync.Mutex // guards seq and answers
	seq     uint64
	answers map[audit.Query][]audit.Entry
}

const maxCachedAuditQueries = 64

func newAuditCache(log Audit) *auditCache {
	return &auditCache{log: log, answers: map[audit.Query][]audit.Entry{}}
}

// list answers q from the cache or the log; callers must not change the
// entries.
func (ac *auditCache) list(q audit.Query) ([]audit.Entry, error) {
	seq := ac.log.Seq()
	ac.mu.Lock()
	if ac.seq != seq {
		ac.seq, ac.answers = seq, map[audit.Query][]audit.Entry{}
	}
	if es, ok := ac.answers[q]; ok {
		ac.mu.Unlock()
		return es, nil
	}
	ac.mu.Unlock()
	es, err := ac.log.List(q)
	if err != nil {
		return nil, err
	}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.seq == seq {
		if len(ac.answers) >= maxCachedAuditQueries {
			clear(ac.answers)
		}
		ac.answers[q] = es
	}
	return es, nil
}
