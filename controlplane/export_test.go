package controlplane

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/bus"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Internals are a ready control plane's parts, for this package's
// external tests (which start control planes with internal/fleettest).
type Internals struct {
	Registry *fleet.Registry
	Fleet    *fleet.Fleet
	Models   *models.Registry
	Ingest   *ingest.Checker
	KV       *store.KV // the "cp" namespace
	Keys     *keys.Set
	Scheme   topics.Scheme
	Metrics  *prometheus.Registry
	Bus      bus.Bus
	// The device topics' handlers, callable without the broker's checks.
	OnStatus, OnFetch, OnPresence, OnTelemetry func(topic string, payload []byte)
	// Renew re-signs what is due, as the hourly renewal does.
	Renew func(ctx context.Context) error
	// EvaluateAlerts runs the alert rules now, as the monitoring loop
	// does every Monitor.Interval (raised alerts reach the webhook and
	// retraining).
	EvaluateAlerts func() ([]monitor.Alert, error)
}

// Internals returns the parts of a ready control plane.
func (s *Server) Internals() Internals {
	c := s.c
	h := c.handlers()
	return Internals{
		Registry: c.registry, Fleet: c.fleet, Models: c.models, Ingest: c.ingest,
		KV: c.db.Namespace("cp"), Keys: s.keys, Scheme: s.scheme, Metrics: s.metrics, Bus: c.bus,
		OnStatus: h.status, OnFetch: h.fetch, OnPresence: h.presence, OnTelemetry: h.telemetry,
		EvaluateAlerts: c.monitor.Evaluate,
		Renew: func(ctx context.Context) error {
			if err := c.models.Renew(ctx); err != nil {
				return err
			}
			return c.fleet.Renew(ctx)
		},
	}
}
