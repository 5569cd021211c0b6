package controlplane

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// DefaultRolloutInterval is how often rollouts are evaluated when nothing
// else (a device status event) triggers it.
const DefaultRolloutInterval = time.Second

// maxRolloutBody bounds POST /api/v1/rollouts (explicit device lists).
const maxRolloutBody = 4 << 20

// rolloutFleet is the rollout engine's view of the registry.
type rolloutFleet struct{ s *Server }

func (f rolloutFleet) Devices(model string) []rollout.Device {
	list := f.s.reg.list(nil)
	out := make([]rollout.Device, len(list))
	for i, d := range list {
		rd := rollout.Device{ID: d.ID, Labels: d.Labels, Online: d.Online, Unknown: !d.Online && d.LastSeen.Before(f.s.runStart)}
		if d.Desired != nil {
			for _, a := range d.Desired.Models {
				if a.Name == model {
					rd.Desired = a.Version
				}
			}
		}
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

// rolloutIssuer is the engine's way to devices: the deploy path's signed,
// generation-numbered desired states.
type rolloutIssuer struct{ s *Server }

func (i rolloutIssuer) Assign(ctx context.Context, model, version string, ids []string) (map[string]uint64, error) {
	s := i.s
	rec := s.models.get(model, version)
	if rec == nil {
		return nil, fmt.Errorf("model %s version %s does not exist", model, version)
	}
	sum, err := hex.DecodeString(rec.SHA256)
	if err != nil {
		return nil, fmt.Errorf("stored sha256 of %s %s: %w", model, version, err)
	}
	want := &efpb.ModelAssignment{Name: model, Version: version, Sha256: sum}
	assign := func(cur []*efpb.ModelAssignment) []*efpb.ModelAssignment {
		out := slices.DeleteFunc(cur, func(a *efpb.ModelAssignment) bool { return a.Name == want.Name })
		out = append(out, proto.CloneOf(want))
		slices.SortFunc(out, func(a, b *efpb.ModelAssignment) int { return strings.Compare(a.Name, b.Name) })
		return out
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	issued, err := s.issueDesired(ids, assign)
	if err != nil {
		return nil, err
	}
	gens := make(map[string]uint64, len(issued))
	s.expectFetches(model, version, issuedIDs(issued))
	for _, d := range issued {
		gens[d.id] = d.gen
		// A failed publish is not fatal: the state is stored and published
		// again when the control plane (re)connects to the broker.
		if err := s.bus.Publish(ctx, s.scheme.Desired(d.id), d.env, true); err != nil {
			s.log.Error("publish desired state failed", "device", d.id, "generation", d.gen, "err", err)
		}
	}
	return gens, nil
}

// openRollouts creates the rollout engine (its state in the store's
// "rollouts" namespace). It runs before the bus starts, so status handlers
// only ever see the finished engine and kick channel.
func (s *Server) openRollouts() error {
	e, err := rollout.New(rollout.Options{
		KV:      s.db.Namespace("rollouts"),
		Issuer:  rolloutIssuer{s},
		Fleet:   rolloutFleet{s},
		Metrics: s.opts.RolloutMetrics,
		Audit:   s.audit,
		Clock:   s.clock,
		Logger:  s.opts.Logger,
	})
	if err != nil {
		return err
	}
	s.rollouts = e
	s.rolloutKick = make(chan struct{}, 1)
	return nil
}

// runRollouts starts the goroutine that drives the engine: every
// RolloutInterval and after each device status event. wg owns it; it ends
// with ctx.
func (s *Server) runRollouts(ctx context.Context, wg *sync.WaitGroup) {
	e := s.rollouts
	interval := s.opts.RolloutInterval
	if interval <= 0 {
		interval = DefaultRolloutInterval
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			e.Tick(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-s.rolloutKick:
			}
		}
	}()
}

// onStatusRollouts ingests a status event and wakes the rollout engine.
func (s *Server) onStatusRollouts(topic string, payload []byte) {
	s.onStatus(topic, payload)
	if s.rolloutKick != nil {
		select {
		case s.rolloutKick <- struct{}{}:
		default:
		}
	}
}

// CreateRollout checks and starts a rollout, as POST /api/v1/rollouts does.
// actor is who asked (for the audit log).
func (s *Server) CreateRollout(ctx context.Context, spec api.RolloutSpec, actor string) (*api.Rollout, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if s.models.get(spec.Model, spec.Version) == nil {
		return nil, newErr(api.ErrNotFound, "model %s version %s does not exist; upload it first", spec.Model, spec.Version)
	}
	sel, err := labels.Parse(spec.Selector)
	if err != nil {
		return nil, newErr(api.ErrInvalid, "selector: %v", err)
	}
	if len(s.reg.ids(sel)) == 0 {
		return nil, newErr(api.ErrInvalid, "selector %q matches no registered device", sel.String())
	}
	r, err := s.rollouts.Create(ctx, spec, actor)
	if err != nil {
		return nil, err
	}
	s.log.Info("rollout created", "rollout", r.ID, "model", spec.Model, "version", spec.Version, "actor", actor)
	st, err := s.rollouts.Get(r.ID, false)
	return st, err
}

// Rollout returns one rollout's status; withDevices adds per-device records.
func (s *Server) Rollout(id string, withDevices bool) (*api.Rollout, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	st, err := s.rollouts.Get(id, withDevices)
	return st, err
}

// Rollouts lists every rollout, oldest first.
func (s *Server) Rollouts() ([]*api.Rollout, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	return s.rollouts.List(), nil
}

// RolloutAction pauses, resumes, promotes, aborts or rolls back a rollout;
// req narrows a rollback to a label group or one device.
func (s *Server) RolloutAction(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest, actor string) (*api.Rollout, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	if action != api.ActionRollback && (req.Selector != "" || req.Device != "") {
		return nil, newErr(api.ErrInvalid, "selector and device apply to rollback only")
	}
	var st *api.Rollout
	var err error
	switch action {
	case api.ActionPause:
		st, err = s.rollouts.Pause(ctx, id, actor)
	case api.ActionResume:
		st, err = s.rollouts.Resume(ctx, id, actor)
	case api.ActionPromote:
		st, err = s.rollouts.Promote(ctx, id, actor)
	case api.ActionAbort:
		st, err = s.rollouts.Abort(ctx, id, actor)
	case api.ActionRollback:
		st, err = s.rollouts.Rollback(ctx, id, req, actor)
	default:
		return nil, newErr(api.ErrInvalid, "unknown rollout action %q (want pause, resume, promote, abort or rollback)", action)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("rollout "+string(action), "rollout", id, "actor", actor, "state", st.State)
	return st, nil
}

// Rollout endpoints.

func (s *Server) handleCreateRollout(w http.ResponseWriter, r *http.Request) {
	var spec api.RolloutSpec
	if err := decodeJSON(w, r, maxRolloutBody, &spec); err != nil {
		writeError(w, err)
		return
	}
	st, err := s.CreateRollout(r.Context(), spec, Actor(r.Context()))
	if err != nil {
		s.logIfInternal(err, "create rollout")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/rollouts/"+st.ID)
	writeJSON(w, http.StatusCreated, st)
}

func (s *Server) handleListRollouts(w http.ResponseWriter, _ *http.Request) {
	list, err := s.Rollouts()
	if err != nil {
		writeError(w, err)
		return
	}
	if list == nil {
		list = []*api.Rollout{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleGetRollout(w http.ResponseWriter, r *http.Request) {
	withDevices := false
	if v := r.URL.Query().Get("devices"); v != "" {
		switch v {
		case "true", "1":
			withDevices = true
		case "false", "0":
		default:
			writeError(w, newErr(api.ErrInvalid, "query parameter devices=%q: want true or false", v))
			return
		}
	}
	st, err := s.Rollout(r.PathValue("id"), withDevices)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) rolloutActionHandler(action api.RolloutAction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.RollbackRequest
		if r.ContentLength != 0 {
			if err := decodeJSON(w, r, maxRegisterBody, &req); err != nil {
				// An empty body (chunked, no bytes) is fine: nothing to narrow.
				if !strings.Contains(err.Error(), "request body is empty") {
					writeError(w, err)
					return
				}
			}
		}
		st, err := s.RolloutAction(r.Context(), r.PathValue("id"), action, req, Actor(r.Context()))
		if err != nil {
			s.logIfInternal(err, "rollout "+string(action))
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
}
