package sim

import (
	"context"
	"errors"

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
