package console

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// view is what every page template gets.
type view struct {
	Title string
	Nav   string // the nav entry to mark current
	// User is the session's token (nil on the login page).
	User *api.APIToken
	CSRF string
	Can  perms
	// PollMS is the live regions' poll interval.
	PollMS int64
	CSS    string
	JS     string
	// Live is the rendered live region, LiveURL where it is polled and
	// LiveETag its current ETag.
	Live     template.HTML
	LiveURL  string
	LiveETag string
	Data     any
}

// perms say what the session's token may do, from the API's route table.
type perms struct {
	// Act: the rollout actions (pause, resume, promote, abort, roll back).
	Act bool
	// Audit: read the audit log (the rollout decisions, the alerts).
	Audit bool
	// Retrain: start a retrain job; CancelJob: cancel one.
	Retrain, CancelJob bool
}

func (c *Console) perms(tok api.APIToken) perms {
	return perms{
		Act:       tok.Role.Allows(c.roles["POST "+api.PathRolloutAction(api.ActionPause)]),
		Audit:     tok.Role.Allows(c.roles["GET "+api.PathAudit]),
		Retrain:   tok.Role.Allows(c.roles["POST "+api.PathModelRetrainJ]),
		CancelJob: tok.Role.Allows(c.roles["POST "+api.PathRetrainCancel]),
	}
}

func (c *Console) view(req *request, title, nav string, data any) *view {
	v := &view{Title: title, Nav: nav, PollMS: c.opts.PollInterval.Milliseconds(), CSS: c.staticURL("console.css"), JS: c.staticURL("console.js"), Data: data}
	if req != nil {
		tok := req.token
		v.User, v.CSRF, v.Can = &tok, req.sess.csrf, c.perms(tok)
	}
	return v
}

var pageFiles = []string{"login.html", "error.html", "fleet.html", "device.html", "models.html", "rollouts.html", "rollout.html", "confirm.html", "monitoring.html", "audit.html", "retrain.html", "retrain_model.html", "retrain_job.html", "retrain_confirm.html"}

// partFiles are parts of every page: the layout, the chart, the jobs table.
var partFiles = []string{"layout.html", "chart.html", "jobs.html"}

func (c *Console) parseTemplates() error {
	c.pages = map[string]*template.Template{}
	for _, p := range pageFiles {
		files := []string{"templates/" + p}
		for _, part := range partFiles {
			files = append(files, "templates/"+part)
		}
		t, err := template.New(p).Funcs(funcs).ParseFS(templateFS, files...)
		if err != nil {
			return fmt.Errorf("console: templates: %w", err)
		}
		c.pages[p] = t
	}
	// Every template file is a page or a part of one.
	files, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return fmt.Errorf("console: templates: %w", err)
	}
	for _, f := range files {
		name := strings.TrimPrefix(f, "templates/")
		if !slices.Contains(partFiles, name) && !slices.Contains(pageFiles, name) {
			return fmt.Errorf("console: template %s is not a page", name)
		}
	}
	return nil
}

// render writes a whole page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, page string, v *view) {
	var buf bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&buf, "layout", v); err != nil {
		c.log.Error("render page", "page", page, "path", r.URL.Path, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// renderLive writes a page with a live region, or (?live=1) only the
// region: 304 when it has the ETag the browser holds. The region's HTML is
// rendered once; its hash is the ETag, so an unchanged region costs the
// render and a hash, and the answer is empty.
func (c *Console) renderLive(w http.ResponseWriter, r *http.Request, page string, v *view) {
	var frag bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&frag, "live", v); err != nil {
		c.log.Error("render live region", "page", page, "path", r.URL.Path, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	sum := sha256.Sum256(frag.Bytes())
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	if r.URL.Query().Get("live") != "" {
		w.Header().Set("ETag", etag)
		w.Header().Set("Cache-Control", "no-store")
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(frag.Bytes())
		return
	}
	q := r.URL.Query()
	q.Del("done")
	q.Set("live", "1")
	v.Live, v.LiveURL, v.LiveETag = template.HTML(frag.String()), r.URL.Path+"?"+q.Encode(), etag // frag is the template's escaped output
	c.render(w, r, http.StatusOK, page, v)
}

type errorView struct {
	Code    int
	Status  string
	Message string
}

// renderError answers with an error page (a live region's poll gets the
// message as text).
func (c *Console) renderError(w http.ResponseWriter, r *http.Request, req *request, code int, msg string) {
	if r.URL.Query().Get("live") != "" {
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, msg, code)
		return
	}
	c.render(w, r, code, "error.html", c.view(req, http.StatusText(code), "", errorView{Code: code, Status: http.StatusText(code), Message: msg}))
}

// kv is one label.
type kv struct{ Key, Value string }

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
	},
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"pct": func(p *float64) string {
		if p == nil {
			return "—"
		}
		return fmt.Sprintf("%.1f %%", *p*100)
	},
	"frac": func(v float64) string { return fmt.Sprintf("%.1f %%", v*100) },
	"f3":   func(v float64) string { return fmt.Sprintf("%.3f", v) },
	"f1":   func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"size": func(n any) string {
		switch v := n.(type) {
		case uint64:
			return humanBytes(v)
		case uint32:
			return humanBytes(uint64(v))
		case int:
			return humanBytes(uint64(max(v, 0)))
		}
		return fmt.Sprint(n)
	},
	"sub":  func(a, b float64) float64 { return a - b },
	"plus": func(a, b float64) float64 { return a + b },
	"half": func(a, b float64) float64 { return (a + b) / 2 },
	"labels": func(m map[string]string) []kv {
		out := make([]kv, 0, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, kv{k, m[k]})
		}
		return out
	},
	"stateClass": stateClass,
	"dur":        func(d api.Duration) string { return time.Duration(d).String() },
	"add":        func(a, b int) int { return a + b },
	// short is the start of a digest.
	"short": func(s string) string { return s[:min(len(s), 12)] },
	// ms is a p50 and a p99 in milliseconds (two significant figures
	// below 10).
	"ms": func(p50, p99 float64) string { return msFigure(p50) + " / " + msFigure(p99) + " ms" },
	// signed is a difference of two figures with its sign.
	"signed": func(v float64) string { return fmt.Sprintf("%+.3f", v) },
}

func msFigure(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2g", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// stateClass is the CSS class of a state name (letters and '-' only).
func stateClass(s string) string {
	var b strings.Builder
	b.WriteString("state state-")
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r == '-' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
