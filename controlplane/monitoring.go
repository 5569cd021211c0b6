package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Model monitoring on the control plane: the monitoring reports in device
// telemetry go to a monitor.Aggregator (badger namespace "monitor"); a
// goroutine rolls history up, evaluates the alert rules and refreshes the
// Prometheus gauges every MonitorInterval.

// Defaults of the monitoring Options.
const (
	DefaultMonitorInterval = time.Minute
	// DefaultSiteLabel is the device label that names a device's site.
	DefaultSiteLabel = "site"
	sweepEvery       = time.Hour
)

// MonitorOptions configure monitoring; the zero value monitors with the
// documented defaults, raises no alerts and calls no webhook.
type MonitorOptions struct {
	// Interval between alert evaluations (and gauge refreshes); default
	// DefaultMonitorInterval.
	Interval time.Duration
	// Rules are the alert rules (zero thresholds disable a rule).
	Rules monitor.Rules
	// WebhookURL, if set, receives every alert as a signed JSON POST (the
	// retrain hook); WebhookSecret keys its HMAC-SHA256 signature.
	WebhookURL    string
	WebhookSecret []byte
	// RawRetention and RollupRetention: see monitor.Options.
	RawRetention    time.Duration
	RollupRetention time.Duration
	// SiteLabel is the device label grouping devices by site; default
	// DefaultSiteLabel.
	SiteLabel string
}

// openMonitoring opens the aggregator, the alerter and the webhook. It runs
// before openRollouts (the aggregator feeds the rollout gates unless
// Options.RolloutMetrics was given) and before the bus delivers telemetry.
func (s *Server) openMonitoring() error {
	mo := s.opts.Monitor
	if mo.SiteLabel == "" {
		mo.SiteLabel = DefaultSiteLabel
	}
	agg, err := monitor.Open(monitor.Options{
		KV:              s.db.Namespace("monitor"),
		Clock:           s.clock,
		Logger:          s.opts.Logger,
		RawRetention:    mo.RawRetention,
		RollupRetention: mo.RollupRetention,
		Reference: func(model, version string) ([]*efpb.FeatureStats, bool) {
			rec := s.models.get(model, version)
			if rec == nil {
				return nil, false
			}
			m, err := decodeManifest(rec)
			if err != nil {
				return nil, false
			}
			return m.GetReference(), true
		},
		Site: func(dev string) string {
			d, _ := s.reg.get(dev)
			return d.Labels[mo.SiteLabel]
		},
		Labels: func(dev string) map[string]string {
			d, _ := s.reg.get(dev)
			return d.Labels
		},
		// s.rollouts is set by openRollouts before the bus delivers the
		// first report, and never changes after.
		Cohort: func(dev, model, version string) string {
			if s.rollouts == nil {
				return ""
			}
			return s.rollouts.Cohort(dev, model, version)
		},
	})
	if err != nil {
		return err
	}
	s.monitor = agg
	if s.opts.RolloutMetrics == nil {
		s.opts.RolloutMetrics = agg
	}
	if mo.WebhookURL != "" {
		s.webhook, err = monitor.NewWebhook(monitor.WebhookOptions{URL: mo.WebhookURL, Secret: mo.WebhookSecret, Logger: s.opts.Logger})
		if err != nil {
			return err
		}
	}
	s.alerter = monitor.NewAlerter(agg, mo.Rules, s.audit, s.webhook)
	return nil
}

// runMonitoring starts the webhook sender and the loop that rolls history
// up, evaluates the alert rules and refreshes the gauges; wg owns them and
// they end with ctx.
func (s *Server) runMonitoring(ctx context.Context, wg *sync.WaitGroup) {
	if s.webhook != nil {
		wg.Go(func() { s.webhook.Run(ctx) })
	}
	agg := s.monitor
	interval := s.opts.Monitor.Interval
	if interval <= 0 {
		interval = DefaultMonitorInterval
	}
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		var lastSweep time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := agg.Flush(); err != nil {
				s.log.Error("monitoring flush failed", "err", err)
			}
			if now := s.clock(); now.Sub(lastSweep) >= sweepEvery {
				lastSweep = now
				if err := agg.Sweep(); err != nil {
					s.log.Error("monitoring sweep failed", "err", err)
				}
			}
			if _, err := s.alerter.Evaluate(); err != nil {
				s.log.Error("monitoring alerts failed", "err", err)
			}
			s.refreshMonitorGauges()
		}
	})
}

// flushMonitoring writes the reports the aggregator still holds in memory;
// Run calls it at shutdown once the bus has stopped delivering.
func (s *Server) flushMonitoring() {
	if s.monitor == nil {
		return
	}
	if err := s.monitor.Flush(); err != nil {
		s.log.Error("monitoring flush at shutdown failed", "err", err)
	}
}

// ingestMonitoring passes the monitoring part of a device's telemetry to
// the aggregator, which drops resent reports by (device, seq).
func (s *Server) ingestMonitoring(dev string, t *efpb.Telemetry) {
	if s.monitor == nil || len(t.Monitoring) == 0 || !s.reg.exists(dev) {
		return
	}
	dup, err := s.monitor.Ingest(dev, t.Seq, t, func(model, version string) error {
		if err := topics.ValidModelName(model); err != nil {
			return err
		}
		return topics.ValidModelVersion(version)
	})
	switch {
	case errors.Is(err, monitor.ErrInvalidReport):
		s.drop(topics.KindTelemetry, dropInvalid, dev, err)
	case err != nil:
		s.drop(topics.KindTelemetry, dropStore, dev, err)
		s.log.Error("store monitoring report failed", "device", dev, "err", err)
	case dup:
		s.monMetrics.duplicates.Inc()
	default:
		s.monMetrics.ingested.Inc()
	}
}

// Monitor is the server's monitoring aggregator (nil before Ready).
func (s *Server) Monitor() *monitor.Aggregator { return s.monitor }

// EvaluateAlerts runs the alert rules now (tests, and `edgefleet` tools).
func (s *Server) EvaluateAlerts() ([]monitor.Alert, error) {
	if s.alerter == nil {
		return nil, errors.New("controlplane: monitoring is not running")
	}
	return s.alerter.Evaluate()
}

// handleModelMetrics serves GET /api/v1/models/{name}/versions/{version}/metrics
// ?from=&to= (RFC 3339; default the last 24h) &by=site|cohort|device
// &points=N (time-series points, default 24).
func (s *Server) handleModelMetrics(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	if s.models.get(name, version) == nil {
		writeError(w, fmt.Errorf("model %s version %s: %w", name, version, api.ErrNotFound))
		return
	}
	q := monitor.Query{Model: name, Version: version, By: r.URL.Query().Get("by")}
	for _, p := range []struct {
		key string
		dst *time.Time
	}{{"from", &q.From}, {"to", &q.To}} {
		if v := r.URL.Query().Get(p.key); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeError(w, fmt.Errorf("%w: %s %q is not an RFC 3339 time (e.g. 2026-11-25T12:00:00Z)", api.ErrInvalid, p.key, v))
				return
			}
			*p.dst = t
		}
	}
	if v := r.URL.Query().Get("points"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, fmt.Errorf("%w: points %q must be a number from 1 to 1000", api.ErrInvalid, v))
			return
		}
		q.Points = n
	}
	res, err := s.monitor.Query(q)
	if err != nil {
		writeError(w, fmt.Errorf("%w: %v", api.ErrInvalid, err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}
