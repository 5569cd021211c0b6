package controlplane

import (
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
)

// rolloutFleet is the rollout engine's view of the device registry.
type rolloutFleet struct {
	reg *fleet.Registry
	// started is when this control plane started: an offline device not
	// heard from since has an unknown presence.
	started time.Time
}

func (f rolloutFleet) Devices(model string) []rollout.Device {
	// Visit, not List: the engine needs a few fields of every device on
	// every tick and status, not a copy of each whole device. Labels are
	// shared, not copied: the registry never changes a device's labels
	// map (see Registry.Visit), and the engine only reads it.
	var out []rollout.Device
	f.reg.Visit(func(d *api.Device) bool {
		rd := rollout.Device{ID: d.ID, Labels: d.Labels, Online: d.Online, Unknown: !d.Online && d.LastSeen.Before(f.started),
			Desired: d.Desired.Version(model)}
		if rep := d.Reported[model]; rep != nil {
			rd.Report = rollout.Report{
				State:         rep.State,
				ActiveVersion: rep.ActiveVersion,
				TargetVersion: rep.TargetVersion,
				Reason:        rep.Reason,
				Generation:    rep.Generation,
			}
		}
		out = append(out, rd)
		return true
	})
	return out
}
