package rollout

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"

	"github.com/edgefleet/edgefleet/internal/labels"
)

// Get returns one rollout's status. withDevices includes the per-device
// records.
func (e *Engine) Get(id string, withDevices bool) (*api.Rollout, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rollouts[id]
	if r == nil {
		return nil, api.Errorf(api.ErrNotFound, "no rollout %q", id)
	}
	return e.status(r, withDevices), nil
}

// List returns every rollout's status (without device records), oldest first.
func (e *Engine) List() []*api.Rollout {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*api.Rollout
	fleets := map[string]map[string]Device{} // one fleet view per model, not per rollout
	for _, r := range e.sorted() {
		devs, ok := fleets[r.Spec.Model]
		if !ok {
			devs = e.modelFleet(r.Spec.Model)
			fleets[r.Spec.Model] = devs
		}
		out = append(out, e.statusIn(r, false, devs))
	}
	return out
}

// status is the API's view of r; callers hold mu.
func (e *Engine) status(r *Rollout, withDevices bool) *api.Rollout {
	return e.statusIn(r, withDevices, e.modelFleet(r.Spec.Model))
}

// statusIn is status with the fleet view of r's model; callers hold mu.
func (e *Engine) statusIn(r *Rollout, withDevices bool, devs map[string]Device) *api.Rollout {
	c := r.clone()
	st := &api.Rollout{ID: c.ID, Spec: c.Spec, State: c.State, Reason: c.Reason, Stage: c.Stage,
		Created: c.Created, Updated: c.Updated, Stages: make([]api.StageStatus, len(r.Spec.Stages))}
	if withDevices && len(c.Devices) > 0 {
		st.Devices = make(map[string]api.RolloutDevice, len(c.Devices))
		for id, rec := range c.Devices {
			st.Devices[id] = api.RolloutDevice(*rec)
		}
	}
	for i, s := range r.Spec.Stages {
		st.Stages[i] = api.StageStatus{
			Index:         i + 1,
			Name:          s.Name,
			Kind:          s.KindShadow(),
			Current:       i == r.Stage && !r.State.Terminal(),
			StageProgress: r.Progress[i],
		}
	}
	for id, rec := range r.Devices {
		if rec.Stage < len(st.Stages) {
			d := devs[id]
			count(&st.Stages[rec.Stage].Devices, classify(rec, d), d.Online)
		}
	}
	for i, s := range r.Spec.Stages {
		if s.Shadow {
			shadowCounts(&st.Stages[i])
		}
	}
	return st
}

// op runs fn on rollout id under the lock, then advances and saves it.
func (e *Engine) op(ctx context.Context, id string, fn func(r *Rollout) error) (*api.Rollout, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rollouts[id]
	if r == nil {
		return nil, api.Errorf(api.ErrNotFound, "no rollout %q", id)
	}
	if err := fn(r); err != nil {
		return nil, err
	}
	e.advance(ctx, r)
	return e.status(r, false), nil
}

func stateErr(r *Rollout, op string) error {
	return fmt.Errorf("%w: cannot %s rollout %s: it is %s", ErrState, op, r.ID, r.State)
}

// Pause stops a rollout from assigning devices and advancing stages;
// devices keep what they were given.
func (e *Engine) Pause(ctx context.Context, id, actor string) (*api.Rollout, error) {
	return e.op(ctx, id, func(r *Rollout) error {
		if !r.State.Allows(api.ActionPause) {
			return stateErr(r, "pause")
		}
		r.State, r.Reason = api.RolloutPaused, "paused by "+actor
		e.record(actor, "rollout.pause", r, "ok", map[string]any{"stage": r.Stage + 1})
		return nil
	})
}

// Resume continues a paused rollout; the current stage's bake time starts
// again, so its gates are judged on fresh figures.
func (e *Engine) Resume(ctx context.Context, id, actor string) (*api.Rollout, error) {
	return e.op(ctx, id, func(r *Rollout) error {
		if !r.State.Allows(api.ActionResume) {
			return stateErr(r, "resume")
		}
		now := e.opts.Clock().UTC()
		r.State, r.Reason = api.RolloutRunning, ""
		p := &r.Progress[r.Stage]
		p.Started, p.Finished, p.Result, p.Waiting = now, time.Time{}, "", ""
		e.record(actor, "rollout.resume", r, "ok", map[string]any{"stage": r.Stage + 1})
		return nil
	})
}

// Promote moves to the next stage (or completes the rollout after the
// last), whether or not the current stage's gates passed; the audit entry
// records the gate figures at that moment.
func (e *Engine) Promote(ctx context.Context, id, actor string) (*api.Rollout, error) {
	return e.op(ctx, id, func(r *Rollout) error {
		if !r.State.Allows(api.ActionPromote) {
			return stateErr(r, "promote")
		}
		now := e.opts.Clock().UTC()
		p := &r.Progress[r.Stage]
		if p.Result == "" {
			p.Result = api.StagePromoted
		}
		p.Finished, p.Waiting = now, ""
		e.record(actor, "rollout.promote_requested", r, "ok", gateDetails(r.Stage, p.Gates))
		e.next(r, now, actor)
		return nil
	})
}

// Abort stops a rollout for good; devices keep what they were given.
func (e *Engine) Abort(ctx context.Context, id, actor string) (*api.Rollout, error) {
	return e.op(ctx, id, func(r *Rollout) error {
		if !r.State.Allows(api.ActionAbort) {
			return stateErr(r, "abort")
		}
		r.State, r.Reason = api.RolloutAborted, "aborted by "+actor
		r.withdrawShadows() // a challenger is not left scoring
		e.record(actor, "rollout.abort", r, "ok", map[string]any{"stage": r.Stage + 1})
		return nil
	})
}

// Rollback sends devices that got the version back to the version they
// had before (a new desired-state generation naming it). A whole-rollout
// rollback ends the rollout (rolled-back); a partial one takes the devices
// out of it and leaves its state alone.
func (e *Engine) Rollback(ctx context.Context, id string, req api.RollbackRequest, actor string) (*api.Rollout, error) {
	var match func(id string, rec *DeviceRecord) bool
	bindFleet := func(map[string]Device) {}
	scope := "rollout"
	switch {
	case req.Selector != "" && req.Device != "":
		return nil, invalidf("give selector or device, not both")
	case req.Selector != "":
		sel, err := labels.Parse(req.Selector)
		if err != nil {
			return nil, invalidf("selector: %v", err)
		}
		scope = "group " + sel.String()
		var devs map[string]Device // fetched under the lock, in op
		match = func(id string, _ *DeviceRecord) bool { return sel.Match(devs[id].Labels) }
		bindFleet = func(m map[string]Device) { devs = m }
	case req.Device != "":
		scope = "device " + req.Device
		match = func(id string, _ *DeviceRecord) bool { return id == req.Device }
	default:
		match = func(string, *DeviceRecord) bool { return true }
	}
	return e.op(ctx, id, func(r *Rollout) error {
		if req.Device != "" {
			rec := r.Devices[req.Device]
			if rec == nil {
				return invalidf("device %q was not assigned by rollout %s", req.Device, r.ID)
			}
			if rec.RolledBack {
				return fmt.Errorf("%w: device %q is already rolled back", ErrState, req.Device)
			}
		}
		bindFleet(e.modelFleet(r.Spec.Model))
		n, skipped := e.rollBack(r, match)
		if n == 0 && (req.Selector != "" || req.Device != "") {
			return invalidf("no device of rollout %s matches %s (or all are rolled back already)", r.ID, scope)
		}
		if req.Selector == "" && req.Device == "" {
			if !r.State.Allows(api.ActionRollback) {
				return stateErr(r, "roll back")
			}
			r.State, r.Reason = api.RolloutRolledBack, "rolled back by "+actor
		}
		e.record(actor, "rollout.rollback", r, "ok", map[string]any{"scope": scope, "devices": n, "without_previous": skipped})
		return nil
	})
}

// Cohort names the rollout stage that put device on model@version, as
// "<rollout id>/<stage name>", or "" when no rollout did (or the device was
// rolled back). Monitoring groups figures by it, so the quality of a
// canary can be told apart from the rest of the fleet.
func (e *Engine) Cohort(device, model, version string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.rollouts {
		if r.Spec.Model != model || r.Spec.Version != version {
			continue
		}
		rec := r.Devices[device]
		if rec == nil || rec.RolledBack || rec.Stage < 0 || rec.Stage >= len(r.Spec.Stages) {
			continue
		}
		name := r.Spec.Stages[rec.Stage].Name
		if name == "" {
			name = fmt.Sprintf("stage %d", rec.Stage+1)
		}
		return r.ID + "/" + name
	}
	return ""
}

// Act runs one of the rollout actions: pause, resume, promote, abort, or
// rollback (narrowed by req, which other actions refuse).
func (e *Engine) Act(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest, actor string) (*api.Rollout, error) {
	if action != api.ActionRollback && (req.Selector != "" || req.Device != "") {
		return nil, invalidf("selector and device apply to rollback only")
	}
	var st *api.Rollout
	var err error
	switch action {
	case api.ActionPause:
		st, err = e.Pause(ctx, id, actor)
	case api.ActionResume:
		st, err = e.Resume(ctx, id, actor)
	case api.ActionPromote:
		st, err = e.Promote(ctx, id, actor)
	case api.ActionAbort:
		st, err = e.Abort(ctx, id, actor)
	case api.ActionRollback:
		st, err = e.Rollback(ctx, id, req, actor)
	default:
		return nil, invalidf("unknown rollout action %q (want pause, resume, promote, abort or rollback)", action)
	}
	if err != nil {
		return nil, err
	}
	e.log.Info("rollout "+string(action), "rollout", id, "actor", actor, "state", st.State)
	return st, nil
}
