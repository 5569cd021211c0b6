package monitor

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/store"
)

// Rules say when monitoring raises an alert. A zero threshold disables its
// rule. Every rule needs its minimum sample size in the window.
type Rules struct {
	// Window is the time range evaluated (and the "previous window" of the
	// accuracy-drop rule is the one before it). Default 15 minutes.
	Window time.Duration
	// MaxPSI raises feature_drift when a feature's PSI exceeds it.
	MaxPSI float64
	// MinRows is the input rows a group needs for drift rules. Default 200.
	MinRows uint64
	// MinAccuracy raises low_accuracy when accuracy falls below it.
	MinAccuracy float64
	// MaxAccuracyDrop raises accuracy_drop when accuracy fell by more than
	// this vs the previous window.
	MaxAccuracyDrop float64
	// MinLabels is the labelled rows a group needs (in each window) for
	// accuracy rules. Default 50.
	MinLabels uint64
}

// Alert is one raised alert; it is the webhook's JSON body.
type Alert struct {
	// Rule is feature_drift, low_accuracy or accuracy_drop.
	Rule    string  `json:"rule"`
	Model   string  `json:"model"`
	Version string  `json:"version"`
	Site    string  `json:"site"`
	Feature string  `json:"feature,omitempty"`
	Value   float64 `json:"value"`
	// Threshold is what Value crossed.
	Threshold float64   `json:"threshold"`
	Rows      uint64    `json:"rows"`
	Labelled  uint64    `json:"labelled"`
	From      time.Time `json:"window_from"`
	To        time.Time `json:"window_to"`
	Time      time.Time `json:"time"`
}

func (al Alert) key() string {
	return al.Rule + "|" + al.Model + "|" + al.Version + "|" + al.Site + "|" + al.Feature
}

// Auditor records audit events; *audit.Log implements it.
type Auditor interface {
	Record(audit.Entry) (audit.Entry, error)
}

// Retrainer is offered every raised alert, next to the webhook: the
// control plane's retrain jobs start from the alerts their policies name.
// OfferAlert must not block (the alerter runs on the monitoring loop).
type Retrainer interface {
	OfferAlert(Alert)
}

// Alerter evaluates Rules over an Aggregator. An alert is raised once when
// its condition starts to hold (per rule, model version, site and
// feature) and again only after it cleared.
type Alerter struct {
	agg   *Aggregator
	rules Rules
	audit Auditor
	hook  *Webhook
	retr  Retrainer
	log   *slog.Logger

	mu     sync.Mutex // guards active
	active map[string]bool
}

// NewAlerter returns an alerter; auditor, hook and retrainer may be nil.
func NewAlerter(agg *Aggregator, rules Rules, auditor Auditor, hook *Webhook, retrainer Retrainer) *Alerter {
	if rules.Window <= 0 {
		rules.Window = 15 * time.Minute
	}
	if rules.MinRows == 0 {
		rules.MinRows = 200
	}
	if rules.MinLabels == 0 {
		rules.MinLabels = 50
	}
	al := &Alerter{agg: agg, rules: rules, audit: auditor, hook: hook, retr: retrainer, log: agg.log, active: map[string]bool{}}
	// Alerts still holding when the control plane stopped are not raised
	// (nor sent to the webhook) again after it restarts.
	var keys []string
	switch err := agg.opts.KV.GetJSON(keyActiveAlerts, &keys); {
	case err == nil:
		for _, k := range keys {
			al.active[k] = true
		}
	case !errors.Is(err, store.ErrNotFound):
		al.log.Warn("active alerts not restored; they may be raised again", "err", err)
	}
	return al
}

// saveActive persists the alerts holding now; al.mu must be held.
func (al *Alerter) saveActive() {
	keys := make([]string, 0, len(al.active))
	for k := range al.active {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if err := al.agg.opts.KV.SetJSON(keyActiveAlerts, keys, true); err != nil {
		al.log.Warn("persist active alerts", "err", err)
	}
}

// versions lists the model versions with raw data since from.
func (a *Aggregator) versions(from time.Time) ([][2]string, error) {
	if err := a.Flush(); err != nil {
		return nil, err
	}
	seen := map[[2]string]bool{}
	var out [][2]string
	err := a.opts.KV.Scan(rawPrefix, func(key string, _ []byte) error {
		model, version, at, _, ok := parseCellKey(key[len(rawPrefix):])
		if ok && !at.Before(from) && !seen[[2]string{model, version}] {
			seen[[2]string{model, version}] = true
			out = append(out, [2]string{model, version})
		}
		return nil
	})
	return out, err
}

// Evaluate checks the rules for every model version and site with data in
// the current window and returns the alerts newly raised (already audited
// and queued for the webhook).
func (al *Alerter) Evaluate() ([]Alert, error) {
	now := al.agg.opts.Clock()
	// From the start of the raw bucket the window starts in: a bucket is
	// stored under its start, and a window from its middle left it out —
	// with a one-minute window, labels that arrived a few seconds into the
	// next minute were never judged (the demo's alert, on a loaded machine).
	from := now.Add(-al.rules.Window).Truncate(al.agg.opts.RawBucket)
	vs, err := al.agg.versions(from.Add(-al.rules.Window))
	if err != nil {
		return nil, fmt.Errorf("monitor: evaluate: %w", err)
	}
	var raised []Alert
	holding := map[string]bool{}
	for _, mv := range vs {
		cur, err := al.agg.Query(Query{Model: mv[0], Version: mv[1], From: from, To: now.Add(time.Nanosecond), By: BySite, Points: 1})
		if err != nil {
			return nil, err
		}
		prev, err := al.agg.Query(Query{Model: mv[0], Version: mv[1], From: from.Add(-al.rules.Window), To: from, By: BySite, Points: 1})
		if err != nil {
			return nil, err
		}
		prevBySite := map[string]api.MetricsFigures{}
		for _, g := range prev.Groups {
			prevBySite[g.Key] = g.MetricsFigures
		}
		for _, g := range cur.Groups {
			base := Alert{Model: mv[0], Version: mv[1], Site: g.Key, Rows: g.Rows, Labelled: g.Labelled, From: from, To: now, Time: now}
			var cands []Alert
			if al.rules.MaxPSI > 0 && g.Rows >= al.rules.MinRows {
				for _, fd := range g.Features {
					if fd.PSI > al.rules.MaxPSI {
						c := base
						c.Rule, c.Feature, c.Value, c.Threshold = "feature_drift", fd.Name, fd.PSI, al.rules.MaxPSI
						cands = append(cands, c)
					}
				}
			}
			if g.Accuracy != nil && g.Labelled >= al.rules.MinLabels {
				if al.rules.MinAccuracy > 0 && *g.Accuracy < al.rules.MinAccuracy {
					c := base
					c.Rule, c.Value, c.Threshold = "low_accuracy", *g.Accuracy, al.rules.MinAccuracy
					cands = append(cands, c)
				}
				if p, ok := prevBySite[g.Key]; ok && al.rules.MaxAccuracyDrop > 0 && p.Accuracy != nil && p.Labelled >= al.rules.MinLabels {
					if drop := *p.Accuracy - *g.Accuracy; drop > al.rules.MaxAccuracyDrop {
						c := base
						c.Rule, c.Value, c.Threshold = "accuracy_drop", drop, al.rules.MaxAccuracyDrop
						cands = append(cands, c)
					}
				}
			}
			for _, c := range cands {
				holding[c.key()] = true
				al.mu.Lock()
				isNew := !al.active[c.key()]
				al.active[c.key()] = true
				al.mu.Unlock()
				if isNew {
					raised = append(raised, c)
				}
			}
		}
	}
	al.mu.Lock()
	changed := len(raised) > 0
	for k := range al.active {
		if !holding[k] {
			delete(al.active, k)
			changed = true
		}
	}
	if changed {
		al.saveActive()
	}
	al.mu.Unlock()
	for _, c := range raised {
		al.log.Warn("monitoring alert", "rule", c.Rule, "model", c.Model, "version", c.Version, "site", c.Site, "feature", c.Feature, "value", c.Value)
		if al.audit != nil {
			_, err := al.audit.Record(audit.Entry{
				Actor: "system", Action: "monitor.alert." + c.Rule, Target: c.Model + "@" + c.Version,
				Details: map[string]any{"site": c.Site, "feature": c.Feature, "value": c.Value, "threshold": c.Threshold, "rows": c.Rows, "labelled": c.Labelled},
			})
			if err != nil {
				al.log.Error("audit alert", "err", err)
			}
		}
		if al.hook != nil {
			al.hook.Send(c)
		}
		if al.retr != nil {
			al.retr.OfferAlert(c)
		}
	}
	return raised, nil
}

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" keyed by
// the webhook secret.
const SignatureHeader = "X-Edgefleet-Signature"

// WebhookOptions configure a Webhook.
type WebhookOptions struct {
	URL    string
	Secret []byte
	// Client defaults to one with a 10s timeout.
	Client *http.Client
	// Attempts per alert; default 5. Backoff starts at MinBackoff (default
	// 500ms) and doubles.
	Attempts   int
	MinBackoff time.Duration
	// QueueSize bounds alerts waiting to be delivered; default 100 (more
	// are dropped and counted).
	QueueSize int
	Logger    *slog.Logger
}

// Webhook delivers alerts as signed JSON POSTs, retrying with backoff, from
// one goroutine started by Run.
type Webhook struct {
	opts  WebhookOptions
	log   *slog.Logger
	queue chan Alert

	mu        sync.Mutex // guards the counters
	delivered uint64
	failed    uint64
	dropped   uint64
}

// NewWebhook checks opts.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	if opts.URL == "" {
		return nil, errors.New("monitor: webhook URL is required")
	}
	if len(opts.Secret) == 0 {
		return nil, errors.New("monitor: webhook secret is required: receivers check the signature")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 500 * time.Millisecond
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 100
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Webhook{opts: opts, log: log.With("component", "webhook"), queue: make(chan Alert, opts.QueueSize)}, nil
}

// Send queues an alert for delivery without blocking.
func (w *Webhook) Send(al Alert) {
	select {
	case w.queue <- al:
	default:
		w.mu.Lock()
		w.dropped++
		w.mu.Unlock()
		w.log.Warn("webhook queue full; alert dropped", "rule", al.Rule, "model", al.Model)
	}
}

// Counts returns delivered, failed (after every attempt) and dropped alerts.
func (w *Webhook) Counts() (delivered, failed, dropped uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.delivered, w.failed, w.dropped
}

// Sign returns the signature header value of body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Run delivers queued alerts until ctx ends.
func (w *Webhook) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case al := <-w.queue:
			ok := w.deliver(ctx, al)
			w.mu.Lock()
			if ok {
				w.delivered++
			} else {
				w.failed++
			}
			w.mu.Unlock()
		}
	}
}

func (w *Webhook) deliver(ctx context.Context, al Alert) bool {
	body, err := json.Marshal(al)
	if err != nil {
		w.log.Error("encode alert", "err", err)
		return false
	}
	backoff := w.opts.MinBackoff
	for attempt := 1; ; attempt++ {
		err := w.post(ctx, body)
		if err == nil {
			return true
		}
		if attempt >= w.opts.Attempts || ctx.Err() != nil {
			w.log.Warn("webhook delivery failed", "attempts", attempt, "err", err)
			return false
		}
		w.log.Debug("webhook attempt failed", "attempt", attempt, "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff *= 2
	}
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.opts.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(w.opts.Secret, body))
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// Versions lists the model versions (name, version) with raw data since
// from.
func (a *Aggregator) Versions(from time.Time) ([][2]string, error) { return a.versions(from) }
