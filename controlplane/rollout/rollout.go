// Package rollout is the control plane's staged-rollout engine: it moves a
// model version through ordered stages of a label-selected fleet, gates each
// stage on install results and field quality, and pauses or rolls back on a
// breach; state is persisted and every decision audited. It reaches devices
// through the Issuer and Fleet interfaces it declares. Imported by
// controlplane and controlplane/monitor (the gate figures' type).
package rollout

import (
	"encoding/json"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Errors wrap the api kinds: api.ErrInvalid for a malformed spec or
// request, api.ErrNotFound for an unknown rollout, and ErrState (an
// api.ErrExists, answered 409) for an operation its state does not allow.
var ErrState = &api.Error{Kind: api.ErrExists, Msg: "not possible in this rollout state"}

func invalidf(format string, args ...any) error { return api.Errorf(api.ErrInvalid, format, args...) }

// defaultMinLabels is how many labelled predictions a quality gate needs
// when the spec does not say (api.Gates.MinLabelled).
const defaultMinLabels = 100

// DeviceRecord is what a rollout remembers about one device it assigned.
type DeviceRecord struct {
	// Stage is the index of the stage that assigned the device.
	Stage int `json:"stage"`
	// Previous is the version the device was meant to run before (its
	// desired version, else its reported active one); "" if none.
	Previous string `json:"previous,omitempty"`
	// Want is the version this rollout wants on the device; Issued is the
	// version whose desired state was last issued for it. They differ only
	// until the issue succeeded.
	Want   string `json:"want"`
	Issued string `json:"issued,omitempty"`
	// Generation of the desired state that carried Issued.
	Generation uint64 `json:"generation,omitempty"`
	// RolledBack: the device was sent back to Previous and is out of the
	// rollout.
	RolledBack bool `json:"rolled_back,omitempty"`
	// Shadow: the device scores Want in shadow and serves Previous (a
	// shadow stage); Want "" withdraws the shadow (see shadow.go).
	Shadow bool `json:"shadow,omitempty"`
}

// Rollout is a rollout's persisted state.
type Rollout struct {
	ID      string           `json:"id"`
	Spec    api.RolloutSpec  `json:"spec"`
	State   api.RolloutState `json:"state"`
	Reason  string           `json:"reason,omitempty"`
	Stage   int              `json:"stage"` // index of the current stage
	Created time.Time        `json:"created"`
	Updated time.Time        `json:"updated"`
	// Progress has one entry per stage.
	Progress []api.StageProgress `json:"progress"`
	// RateMinute and RateCount count assignments in the current minute
	// (for MaxPerMinute).
	RateMinute time.Time `json:"rate_minute,omitzero"`
	RateCount  int       `json:"rate_count,omitempty"`
	// Devices are the devices the rollout assigned, by id.
	Devices map[string]*DeviceRecord `json:"devices,omitempty"`
}

func (r *Rollout) clone() *Rollout {
	b, _ := json.Marshal(r)
	c := &Rollout{}
	_ = json.Unmarshal(b, c)
	return c
}

func (r *Rollout) gates(stage int) api.Gates {
	if g := r.Spec.Stages[stage].Gates; g != nil {
		return *g
	}
	return r.Spec.Gates
}

func (r *Rollout) bake(stage int) time.Duration {
	if b := r.Spec.Stages[stage].Bake; b > 0 {
		return time.Duration(b)
	}
	return time.Duration(r.Spec.Bake)
}
