package sim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// What differs between the in-process control plane and an external one
// beyond the ControlPlane interface.

// Remote reports whether the fleet talks to an external control plane
// (Options.Remote) rather than one it runs in-process.
func (f *Fleet) Remote() bool { return f.opts.Remote != nil }

// MonitorStats returns the control plane's monitoring ingest counters since
// it started: the in-process aggregator's, or an external control plane's
// Prometheus counters. Valid after Start.
func (f *Fleet) MonitorStats(ctx context.Context) (monitor.Stats, error) {
	switch srv := f.Server(); {
	case srv != nil:
		m := srv.Monitor()
		if m == nil {
			return monitor.Stats{}, errors.New("sim: the control plane's monitoring is not running")
		}
		return m.Stats(), nil
	case f.opts.Remote != nil:
		return f.opts.Remote.MonitorStats(ctx)
	}
	return monitor.Stats{}, errors.New("sim: the fleet has not started")
}

// ModelMetrics returns what the control plane's monitoring has aggregated
// for model@version over the last day, in total and per device (labelled
// predictions, accuracy, drift): the in-process aggregator's answer, or an
// external control plane's GET /api/v1/models/{name}/versions/{version}/metrics.
// It fails while the in-process control plane is down (a restart).
func (f *Fleet) ModelMetrics(ctx context.Context, model, version string) (*api.ModelMetrics, error) {
	if f.opts.Remote != nil {
		return f.opts.Remote.ModelMetrics(ctx, model, version)
	}
	srv := f.Server()
	if srv == nil {
		return nil, errors.New("sim: the control plane is down")
	}
	m := srv.Monitor()
	if m == nil {
		return nil, errors.New("sim: the control plane's monitoring is not running")
	}
	return m.Query(monitor.Query{Model: model, Version: version, Points: 1})
}

// APIClient returns a client of the control plane's REST API: the
// in-process one's with its admin token, or the external one's. Call done
// when finished with it: it closes the idle connections of an in-process
// client (the leak check counts their goroutines). It fails while the
// in-process control plane is down (a restart).
func (f *Fleet) APIClient() (c *client.Client, done func(), err error) {
	if f.opts.Remote != nil {
		c, err := f.opts.Remote.client()
		return c, func() {}, err
	}
	srv := f.Server()
	if srv == nil {
		return nil, nil, errors.New("sim: the control plane is down")
	}
	hc := &http.Client{Timeout: time.Minute, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	c, err = client.New(srv.APIURL(), client.Options{Token: f.APIToken(), HTTP: hc})
	if err != nil {
		return nil, nil, fmt.Errorf("sim: %w", err)
	}
	return c, hc.CloseIdleConnections, nil
}
