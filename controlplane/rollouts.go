package controlplane

import (
	"time"

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
	list := f.reg.List(nil)
	out := make([]rollout.Device, len(list))
	for i, d := range list {
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
		out[i] = rd
	}
	return out
}
