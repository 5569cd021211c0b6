package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of the ServiceOptions.
const (
	DefaultInterval = time.Minute
	// DefaultSiteLabel is the device label that names a device's site.
	DefaultSiteLabel = "site"
	sweepEvery       = time.Hour
)

// Config is what an operator sets about monitoring; the zero value
// monitors with the documented defaults, raises no alerts and calls no
// webhook.
type Config struct {
	// Interval between alert evaluations (and gauge refreshes); default
	// DefaultInterval.
	Interval time.Duration
	// Rules are the alert rules (zero thresholds disable a rule).
	Rules Rules
	// WebhookURL, if set, receives every alert as a signed JSON POST (the
	// retrain hook); WebhookSecret keys its HMAC-SHA256 signature.
	WebhookURL    string
	WebhookSecret []byte
	// RawRetention and RollupRetention: see Options.
	RawRetention    time.Duration
	RollupRetention time.Duration
	// SiteLabel is the device label grouping devices by site; default
	// DefaultSiteLabel.
	SiteLabel string
}

// Models gives a model version's reference feature statistics.
type Models interface {
	Reference(model, version string) ([]*efpb.FeatureStats, bool)
}

// Devices gives what monitoring groups devices by.
type Devices interface {
	Exists(id string) bool
	Labels(id string) map[string]string
}

// ServiceOptions configure a Service. Fields without a documented default
// are required.
type ServiceOptions struct {
	Config
	// KV is the monitoring store namespace.
	KV      *store.KV
	Models  Models
	Devices Devices
	// Audit receives the alerts.
	Audit Auditor
	// Ingest counts the monitoring reports dropped as invalid.
	Ingest *ingest.Checker
	// Retrainer, if set, is offered every raised alert (retrain triggers).
	Retrainer Retrainer
	// Acker, if set, is told each telemetry message's (device, seq) once it
	// is persisted or refused for good (Options.Acker).
	Acker      Acker
	Registerer prometheus.Registerer
	// Clock is the time source; default time.Now.
	Clock  func() time.Time
	Logger *slog.Logger
}

// Service is the control plane's monitoring: the aggregator fed by device
// telemetry, the alert rules evaluated on it, the retrain webhook and the
// per-version Prometheus gauges.
type Service struct {
	opts    ServiceOptions
	log     *slog.Logger
	agg     *Aggregator
	alerter *Alerter
	webhook *Webhook // nil without Config.WebhookURL
	metrics *serviceMetrics
}

// NewService opens the aggregator, the alerter and the webhook.
func NewService(o ServiceOptions) (*Service, error) {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.SiteLabel == "" {
		o.SiteLabel = DefaultSiteLabel
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	agg, err := Open(Options{
		KV:              o.KV,
		Clock:           o.Clock,
		Logger:          o.Logger,
		RawRetention:    o.RawRetention,
		RollupRetention: o.RollupRetention,
		Reference:       o.Models.Reference,
		Site:            func(dev string) string { return o.Devices.Labels(dev)[o.SiteLabel] },
		Labels:          o.Devices.Labels,
		Acker:           o.Acker,
	})
	if err != nil {
		return nil, err
	}
	s := &Service{opts: o, log: o.Logger.With("component", "monitoring"), agg: agg, metrics: newServiceMetrics(o.Registerer)}
	if o.WebhookURL != "" {
		if s.webhook, err = NewWebhook(WebhookOptions{URL: o.WebhookURL, Secret: o.WebhookSecret, Logger: o.Logger}); err != nil {
			return nil, err
		}
	}
	s.alerter = NewAlerter(agg, o.Rules, o.Audit, s.webhook, o.Retrainer)
	return s, nil
}

// Aggregator is the monitoring store (the rollout gates read it).
func (s *Service) Aggregator() *Aggregator { return s.agg }

// Ingest passes a device's telemetry to the aggregator, which records its
// seq (even without monitoring reports: that is what the device's
// acknowledgement waits for) and drops resent reports by (device, seq).
// cohort names the rollout stage the device is in for a model version. A
// malformed report is refused for good: counted, and acknowledged so that
// the device stops resending it.
func (s *Service) Ingest(topic, dev string, t *efpb.Telemetry, cohort func(model, version string) string) {
	if !s.opts.Devices.Exists(dev) {
		return
	}
	dup, err := s.agg.Ingest(dev, t.Seq, t, cohort)
	switch {
	case errors.Is(err, ErrInvalidReport):
		s.opts.Ingest.Drop(topics.KindTelemetry, ingest.Invalid, topic, err)
		if s.opts.Acker != nil {
			s.opts.Acker.Ack(dev, t.Seq)
		}
	case err != nil:
		s.opts.Ingest.Drop(topics.KindTelemetry, ingest.Store, topic, err)
		s.log.Error("store monitoring report failed", "device", dev, "err", err)
	case dup:
		s.metrics.duplicates.Inc()
	default:
		s.metrics.ingested.Inc()
	}
}

// Evaluate runs the alert rules now.
func (s *Service) Evaluate() ([]Alert, error) { return s.alerter.Evaluate() }

// Run sends webhooks and, every Interval, writes pending reports, rolls
// history up, evaluates the alert rules and refreshes the gauges, until
// ctx ends; then it writes what is still pending. It returns when every
// goroutine it started has stopped.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if s.webhook != nil {
		wg.Go(func() { s.webhook.Run(ctx) })
	}
	defer wg.Wait()
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	// Pending reports are written at least every FlushInterval, so a
	// device hears its acknowledgement even when no more reports come.
	ft := time.NewTicker(s.agg.opts.FlushInterval)
	defer ft.Stop()
	var lastSweep time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-ft.C:
			if err := s.agg.Flush(); err != nil {
				s.log.Error("monitoring flush failed", "err", err)
			}
			continue
		case <-t.C:
		}
		if err := s.agg.Flush(); err != nil {
			s.log.Error("monitoring flush failed", "err", err)
		}
		if now := s.opts.Clock(); now.Sub(lastSweep) >= sweepEvery {
			lastSweep = now
			if err := s.agg.Sweep(); err != nil {
				s.log.Error("monitoring sweep failed", "err", err)
			}
		}
		if _, err := s.alerter.Evaluate(); err != nil {
			s.log.Error("monitoring alerts failed", "err", err)
		}
		s.refreshGauges()
	}
}

// Flush writes the reports still held in memory (the owner calls it once
// the bus stopped delivering, before the store closes).
func (s *Service) Flush() error {
	if err := s.agg.Flush(); err != nil {
		return fmt.Errorf("monitoring flush: %w", err)
	}
	return nil
}
