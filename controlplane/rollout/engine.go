package rollout

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"

	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/store"
)

// Issuer delivers desired states; the control plane's deploy path
// implements it. Assign makes version the desired version of model on each
// device (other models untouched) and returns the generation issued per
// device. It may be called with the engine's lock held, so it must not call
// back into the Engine.
type Issuer interface {
	Assign(ctx context.Context, model, version string, devices []string) (map[string]uint64, error)
}

// Fleet is the engine's view of the devices: every registered device with
// its labels, presence and the desired and reported state of model.
type Fleet interface {
	Devices(model string) []Device
}

// Device is one device as the Fleet reports it.
type Device struct {
	ID     string
	Labels map[string]string
	Online bool
	// Unknown marks an offline device the control plane has not heard
	// from since it started: its presence is not known yet. During
	// Options.PresenceGrace a stage waits for such devices.
	Unknown bool
	// Desired is the version of the model in the device's newest desired
	// state ("" none).
	Desired string
	Report  Report
}

// Report is a device's latest status for the model.
type Report struct {
	State         api.ModelState
	ActiveVersion string
	TargetVersion string
	Reason        string
	Generation    uint64
}

// Models tells whether a model version can be rolled out.
type Models interface {
	// Deployable is nil when the version exists and can be served; else
	// an api error (not found, or its stored file is corrupt).
	Deployable(name, version string) error
}

// Metrics gives field-quality figures of a model version over a set of
// devices; the monitoring work implements it. ok is false when there are
// no figures yet.
type Metrics interface {
	VersionMetrics(model, version string, devices []string) (f Figures, ok bool)
}

// Figures are a version's field quality over some devices.
type Figures struct {
	Accuracy   float64 `json:"accuracy"`
	Labelled   int     `json:"labelled"`
	DriftScore float64 `json:"drift_score"`
}

// Auditor records audited events; *audit.Log implements it.
type Auditor interface {
	Record(audit.Entry) (audit.Entry, error)
}

// Actor of automatic decisions in the audit log.
const ActorSystem = "system"

// Options configure an Engine.
type Options struct {
	// KV is the engine's own store namespace. Required.
	KV     *store.KV
	Issuer Issuer // required
	Fleet  Fleet  // required
	// Models, if set, refuses a rollout of a version that does not exist.
	Models Models
	// Metrics feeds the quality gates; nil leaves them waiting.
	Metrics Metrics
	// Audit receives every operator action and decision; nil drops them.
	Audit Auditor
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// PresenceGrace is how long after New a stage with Unknown devices
	// waits instead of passing without them: a control plane that just
	// (re)started knows no device as online until it hears from it, and
	// would otherwise pass a stage on the few that reported first.
	// Default DefaultPresenceGrace; negative disables.
	PresenceGrace time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// DefaultPresenceGrace: see Options.PresenceGrace. Agents announce
// themselves on connect and send a heartbeat every few seconds.
const DefaultPresenceGrace = 30 * time.Second

// Engine runs rollouts. The server calls Tick periodically (and after
// device status changes); operations may be called concurrently.
type Engine struct {
	opts Options
	log  *slog.Logger

	started time.Time // New, on opts.Clock

	// mu guards rollouts and saved, and serialises ticks and operations.
	// Lock order: Engine.mu before anything the Issuer and Fleet take.
	mu       sync.Mutex
	rollouts map[string]*Rollout
	saved    map[string][]byte // last stored JSON per rollout
}

const keyPrefix = "r/"

// New loads the rollouts stored in opts.KV.
func New(opts Options) (*Engine, error) {
	if opts.KV == nil || opts.Issuer == nil || opts.Fleet == nil {
		return nil, fmt.Errorf("rollout: KV, Issuer and Fleet are required")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	switch {
	case opts.PresenceGrace == 0:
		opts.PresenceGrace = DefaultPresenceGrace
	case opts.PresenceGrace < 0:
		opts.PresenceGrace = 0
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{
		opts:     opts,
		started:  opts.Clock(),
		log:      log.With("component", "rollout"),
		rollouts: map[string]*Rollout{},
		saved:    map[string][]byte{},
	}
	err := opts.KV.Scan(keyPrefix, func(key string, val []byte) error {
		r := &Rollout{}
		if err := json.Unmarshal(val, r); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		if r.Devices == nil {
			r.Devices = map[string]*DeviceRecord{}
		}
		e.rollouts[r.ID] = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rollout: load: %w", err)
	}
	return e, nil
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "r-" + hex.EncodeToString(b)
}

// Create validates spec, stores a new rollout and starts it. The version
// must exist and the selector match a device; a model may have one
// unfinished rollout at a time. actor is who asked (for the audit log).
func (e *Engine) Create(ctx context.Context, spec api.RolloutSpec, actor string) (*api.Rollout, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := e.checkShadow(spec); err != nil {
		return nil, err
	}
	if e.opts.Models != nil {
		if err := e.opts.Models.Deployable(spec.Model, spec.Version); err != nil {
			return nil, err
		}
	}
	sel, err := labels.Parse(spec.Selector) // validated above
	if err != nil {
		return nil, invalidf("selector: %v", err)
	}
	if !slices.ContainsFunc(e.opts.Fleet.Devices(spec.Model), func(d Device) bool { return sel.Match(d.Labels) }) {
		return nil, invalidf("selector %q matches no registered device", sel.String())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, o := range e.rollouts {
		if o.Spec.Model == spec.Model && !o.State.Terminal() {
			return nil, fmt.Errorf("%w: rollout %s of %s is %s; finish, abort or roll it back first", ErrState, o.ID, o.Spec.Model, o.State)
		}
	}
	now := e.opts.Clock().UTC()
	r := &Rollout{
		ID:       newID(),
		Spec:     spec,
		State:    api.RolloutPending,
		Created:  now,
		Updated:  now,
		Progress: make([]api.StageProgress, len(spec.Stages)),
		Devices:  map[string]*DeviceRecord{},
	}
	if err := e.save(r); err != nil {
		return nil, err
	}
	e.rollouts[r.ID] = r
	e.record(actor, "rollout.create", r, "ok", map[string]any{"spec": spec})
	e.advance(ctx, r)
	e.log.Info("rollout created", "rollout", r.ID, "model", spec.Model, "version", spec.Version, "actor", actor)
	return e.status(r, false), nil
}

// Tick advances every rollout: assigns devices of the current stage
// (including devices that joined the selector), evaluates gates, acts on
// the result and (re)issues what is not yet delivered.
func (e *Engine) Tick(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.sorted() {
		if r.State.Terminal() && !r.undelivered() {
			continue
		}
		e.advance(ctx, r)
	}
}

func (e *Engine) sorted() []*Rollout {
	out := make([]*Rollout, 0, len(e.rollouts))
	for _, r := range e.rollouts {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *Rollout) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func (r *Rollout) undelivered() bool {
	for _, d := range r.Devices {
		if d.Issued != d.Want {
			return true
		}
	}
	return false
}

// modelFleet returns the fleet's view of model, by device id.
func (e *Engine) modelFleet(model string) map[string]Device {
	list := e.opts.Fleet.Devices(model)
	out := make(map[string]Device, len(list))
	for _, d := range list {
		out[d.ID] = d
	}
	return out
}

// advance runs one step of r, issues what is undelivered and saves.
// Callers hold mu.
func (e *Engine) advance(ctx context.Context, r *Rollout) {
	devs := e.modelFleet(r.Spec.Model)
	now := e.opts.Clock().UTC()
	if r.State == api.RolloutPending && now.Before(r.Spec.StartAt) {
		r.Progress[0].Waiting = "start at " + r.Spec.StartAt.UTC().Format(time.RFC3339)
	}
	if r.State == api.RolloutPending && !now.Before(r.Spec.StartAt) {
		r.Progress[0].Waiting = ""
		r.State = api.RolloutRunning
		r.Stage = 0
		r.Progress[0].Started = now
		e.record(ActorSystem, "rollout.start", r, "ok", nil)
	}
	complete := false
	if r.State == api.RolloutRunning || r.State == api.RolloutWaitingPromotion {
		complete = e.assign(r, devs, now)
	}
	e.deliver(ctx, r, devs)
	if r.State == api.RolloutRunning {
		stage := r.Stage
		e.evaluateStage(ctx, r, devs, now, complete)
		if r.State == api.RolloutRunning && r.Stage != stage {
			// Promoted: the next stage's devices go out now, not a tick later.
			e.assign(r, devs, now)
			e.deliver(ctx, r, devs)
		}
	}
	if err := e.save(r); err != nil {
		e.log.Error("save rollout failed", "rollout", r.ID, "err", err)
	}
}

// order returns ids in the rollout's stable random order.
func order(rolloutID string, ids []string) []string {
	type kv struct {
		id string
		h  [32]byte
	}
	hs := make([]kv, len(ids))
	for i, id := range ids {
		hs[i] = kv{id, sha256.Sum256([]byte(rolloutID + "\x00" + id))}
	}
	sort.Slice(hs, func(i, j int) bool {
		if c := strings.Compare(string(hs[i].h[:]), string(hs[j].h[:])); c != 0 {
			return c < 0
		}
		return hs[i].id < hs[j].id
	})
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.id
	}
	return out
}

// siteOrder rearranges a stable order so that every prefix of it (a wave)
// is site-aware: "spread" takes devices from each site in turn, "one-at-a-
// time" takes whole sites in turn. Sites themselves are in a stable random
// order, and within a site the device order is kept.
func siteOrder(rolloutID string, ordered []string, devs map[string]Device, mode, label string) []string {
	if mode == "" {
		return ordered
	}
	bySite := map[string][]string{}
	var sites []string
	for _, id := range ordered {
		site := devs[id].Labels[label]
		if _, ok := bySite[site]; !ok {
			sites = append(sites, site)
		}
		bySite[site] = append(bySite[site], id)
	}
	sites = order(rolloutID+"\x00sites", sites)
	out := make([]string, 0, len(ordered))
	if mode == api.SitesOneAtATime {
		for _, site := range sites {
			out = append(out, bySite[site]...)
		}
		return out
	}
	for i := 0; len(out) < len(ordered); i++ {
		for _, site := range sites {
			if ids := bySite[site]; i < len(ids) {
				out = append(out, ids[i])
			}
		}
	}
	return out
}

// targets returns the ids matching the rollout's selector, sorted.
func (r *Rollout) targets(devs map[string]Device) []string {
	sel, err := labels.Parse(r.Spec.Selector)
	if err != nil {
		return nil
	}
	var ids []string
	for id, d := range devs {
		if sel.Match(d.Labels) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// assign adds the devices the current stage (and every earlier one) wants
// to r.Devices; the cohorts are recomputed from the current targets, so
// devices that joined the selector follow the current stage.
// It reports false when it could not assign everything the stages want
// (outside a maintenance window, or over MaxPerMinute).
func (e *Engine) assign(r *Rollout, devs map[string]Device, now time.Time) (complete bool) {
	if !r.Spec.InWindow(now) {
		return false
	}
	budget := math.MaxInt
	if r.Spec.MaxPerMinute > 0 {
		minute := now.Truncate(time.Minute)
		if !r.RateMinute.Equal(minute) {
			r.RateMinute, r.RateCount = minute, 0
		}
		budget = r.Spec.MaxPerMinute - r.RateCount
	}
	targets := r.targets(devs)
	ordered := siteOrder(r.ID, order(r.ID, targets), devs, r.Spec.Sites, r.Spec.SiteLabel)
	inTarget := make(map[string]bool, len(targets))
	for _, id := range targets {
		inTarget[id] = true
	}
	add := func(id string, stage int) bool {
		if budget <= 0 {
			return false
		}
		budget--
		if r.Spec.MaxPerMinute > 0 {
			r.RateCount++
		}
		d := devs[id]
		prev := d.Desired
		if prev == "" {
			prev = d.Report.ActiveVersion
		}
		r.Devices[id] = &DeviceRecord{Stage: stage, Previous: prev, Want: r.Spec.Version, Shadow: r.Spec.Stages[stage].Shadow}
		return true
	}
	for i := 0; i <= r.Stage && i < len(r.Spec.Stages); i++ {
		st := r.Spec.Stages[i]
		switch {
		case st.Canary > 0:
			n := 0
			for _, rec := range r.Devices {
				if rec.Stage == i {
					n++
				}
			}
			for _, id := range ordered {
				if n >= st.Canary {
					break
				}
				if r.Devices[id] == nil {
					if !add(id, i) {
						return false
					}
					n++
				}
			}
		case st.Percent > 0:
			want := int(math.Ceil(st.Percent*float64(len(targets))/100 - 1e-9))
			n := 0
			for _, id := range targets {
				if r.Devices[id] != nil {
					n++
				}
			}
			for _, id := range ordered {
				if n >= want {
					break
				}
				if r.Devices[id] == nil {
					if !add(id, i) {
						return false
					}
					n++
				}
			}
		case len(st.Devices) > 0:
			for _, id := range st.Devices {
				if inTarget[id] && r.Devices[id] == nil && !add(id, i) {
					return false
				}
			}
		case st.Selector != "":
			sel, err := labels.Parse(st.Selector)
			if err != nil {
				continue
			}
			for _, id := range ordered {
				if sel.Match(devs[id].Labels) && r.Devices[id] == nil && !add(id, i) {
					return false
				}
			}
		}
	}
	return true
}

// deliver issues the desired states r still owes, one Issuer call per
// version. A device whose desired state already names the wanted version
// (an issue that happened before a crash) is not sent a second one.
func (e *Engine) deliver(ctx context.Context, r *Rollout, devs map[string]Device) {
	byVersion := map[string][]string{}
	shadows := map[string][]string{} // shadow.go
	for id, rec := range r.Devices {
		if rec.Issued == rec.Want {
			continue
		}
		if rec.Shadow {
			shadows[rec.Want] = append(shadows[rec.Want], id)
			continue
		}
		if d, ok := devs[id]; ok && d.Desired == rec.Want && rec.Want != "" {
			rec.Issued = rec.Want
			continue
		}
		byVersion[rec.Want] = append(byVersion[rec.Want], id)
	}
	if len(byVersion) == 0 && len(shadows) == 0 {
		return
	}
	// The intent is durable before anything is issued.
	if err := e.save(r); err != nil {
		e.log.Error("save rollout failed", "rollout", r.ID, "err", err)
		return
	}
	e.deliverShadows(ctx, r, shadows)
	versions := make([]string, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	for _, v := range versions {
		ids := byVersion[v]
		sort.Strings(ids)
		gens, err := e.opts.Issuer.Assign(ctx, r.Spec.Model, v, ids)
		if err != nil {
			e.log.Error("issue desired states failed; retrying next tick", "rollout", r.ID, "version", v, "devices", len(ids), "err", err)
			continue
		}
		for _, id := range ids {
			rec := r.Devices[id]
			rec.Issued, rec.Generation = v, gens[id]
		}
		e.log.Info("desired states issued", "rollout", r.ID, "model", r.Spec.Model, "version", v, "devices", len(ids))
	}
}

// class is where an assigned device stands with the rollout's version, as
// counted in a stage's api.DeviceCounts.
type class int

const (
	classPending class = iota
	classDownloading
	classActive
	classFailed
	classRolledBack
)

func classify(rec *DeviceRecord, d Device) class {
	if rec.RolledBack {
		return classRolledBack
	}
	rep := d.Report
	switch {
	case rep.State == api.ModelActive && rep.ActiveVersion == rec.Want:
		return classActive
	case rep.TargetVersion != rec.Want || (rep.Generation != 0 && rep.Generation < rec.Generation):
		return classPending
	case rep.State.Refused():
		return classFailed
	case rep.State.InProgress():
		return classDownloading
	}
	return classPending
}

// count adds one device of class c to counts.
func count(counts *api.DeviceCounts, c class, online bool) {
	counts.Assigned++
	switch c {
	case classPending:
		counts.Pending++
	case classDownloading:
		counts.Downloading++
	case classActive:
		counts.Active++
	case classFailed:
		counts.Failed++
	case classRolledBack:
		counts.RolledBack++
	}
	if !online && c != classRolledBack {
		counts.Offline++
	}
}

// evaluateStage checks the current stage's gates and acts. Callers hold mu.
func (e *Engine) evaluateStage(ctx context.Context, r *Rollout, devs map[string]Device, now time.Time, assigned bool) {
	p := &r.Progress[r.Stage]
	results, waiting, breach := e.evaluate(r, devs, now)
	p.Gates, p.Waiting = results, waiting
	if breach != nil {
		e.onBreach(ctx, r, devs, breach, now)
		return
	}
	if waiting != "" {
		return
	}
	if !r.Spec.InWindow(now) {
		p.Waiting = "outside the maintenance windows " + strings.Join(r.Spec.Windows, ", ") + " (UTC)"
		return
	}
	if !assigned {
		p.Waiting = fmt.Sprintf("assigning the stage's devices (at most %d per minute)", r.Spec.MaxPerMinute)
		return
	}
	p.Result, p.Finished = api.StagePassed, now
	e.record(ActorSystem, "rollout.stage_passed", r, "ok", gateDetails(r.Stage, results))
	e.next(r, now, ActorSystem)
}

// next moves past the current stage: completes the rollout after the last
// one, promotes when AutoPromote (or when an operator promotes), else waits.
func (e *Engine) next(r *Rollout, now time.Time, actor string) {
	if r.Stage == len(r.Spec.Stages)-1 {
		r.State, r.Reason = api.RolloutCompleted, ""
		e.record(actor, "rollout.completed", r, "ok", nil)
		return
	}
	if actor == ActorSystem && !r.Spec.AutoPromote {
		r.State = api.RolloutWaitingPromotion
		r.Progress[r.Stage].Waiting = "promote"
		return
	}
	if r.Spec.Stages[r.Stage].Shadow && !r.Spec.Stages[r.Stage+1].Shadow {
		n := r.serveShadowed()
		e.record(actor, "rollout.shadow_promoted", r, "ok", map[string]any{"stage": r.Stage + 1, "devices": n})
	}
	r.Stage++
	r.State, r.Reason = api.RolloutRunning, ""
	r.Progress[r.Stage].Started = now
	e.record(actor, "rollout.promote", r, "ok", map[string]any{"stage": r.Stage + 1, "name": r.Spec.Stages[r.Stage].Name})
}

func (e *Engine) onBreach(ctx context.Context, r *Rollout, devs map[string]Device, g *api.GateResult, now time.Time) {
	p := &r.Progress[r.Stage]
	p.Result, p.Finished = api.StageBreached, now
	reason := fmt.Sprintf("%s: gate %s breached: %s", r.Spec.Stages[r.Stage].Name, g.Gate, g.Detail)
	details := gateDetails(r.Stage, p.Gates)
	details["on_breach"] = r.Spec.OnBreach
	e.record(ActorSystem, "rollout.gate_breached", r, reason, details)
	if r.Spec.OnBreach == api.OnBreachRollback {
		n, skipped := e.rollBack(r, func(string, *DeviceRecord) bool { return true })
		r.State, r.Reason = api.RolloutFailed, reason+"; rolled back"
		e.record(ActorSystem, "rollout.rollback", r, "ok", map[string]any{"devices": n, "without_previous": skipped, "reason": reason})
		e.deliver(ctx, r, devs)
		return
	}
	r.State, r.Reason = api.RolloutPaused, reason
	e.record(ActorSystem, "rollout.pause", r, "ok", map[string]any{"reason": reason})
}

func gateDetails(stage int, results []api.GateResult) map[string]any {
	return map[string]any{"stage": stage + 1, "gates": results}
}

// rollBack sends every matching assigned device back to its previous
// version and takes it out of the rollout. Devices without a previous
// version keep what they have (there is nothing to return to).
func (e *Engine) rollBack(r *Rollout, match func(id string, rec *DeviceRecord) bool) (n int, withoutPrevious []string) {
	for id, rec := range r.Devices {
		if rec.RolledBack || !match(id, rec) {
			continue
		}
		rec.RolledBack = true
		n++
		if rec.Shadow {
			rec.Want = "" // withdraw the shadow: the device serves Previous already
			continue
		}
		if rec.Previous == "" || rec.Previous == rec.Want {
			withoutPrevious = append(withoutPrevious, id)
			continue
		}
		rec.Want = rec.Previous
	}
	sort.Strings(withoutPrevious)
	return n, withoutPrevious
}

// evaluate returns the current stage's gate results, what it still waits
// for ("" nothing) and the first breached gate.
func (e *Engine) evaluate(r *Rollout, devs map[string]Device, now time.Time) ([]api.GateResult, string, *api.GateResult) {
	if r.Spec.Stages[r.Stage].Shadow {
		return e.evaluateShadow(r, devs, now)
	}
	var c api.DeviceCounts
	var cohort, active []string
	prevCount := map[string]int{}
	unknown := 0
	for id, rec := range r.Devices {
		if rec.RolledBack {
			continue
		}
		d := devs[id]
		cl := classify(rec, d)
		count(&c, cl, d.Online)
		if !d.Online && d.Unknown && cl != classRolledBack {
			unknown++
		}
		cohort = append(cohort, id)
		if cl == classActive {
			active = append(active, id)
		}
		if rec.Previous != "" && rec.Previous != rec.Want {
			prevCount[rec.Previous]++
		}
	}
	sort.Strings(cohort)
	sort.Strings(active)
	p := r.Progress[r.Stage]
	bake := r.bake(r.Stage)
	if left := p.Started.Add(bake).Sub(now); left > 0 {
		return nil, fmt.Sprintf("bake time (%s left)", left.Round(time.Millisecond)), nil
	}
	if len(cohort) == 0 {
		return nil, "no devices in the cohort yet", nil
	}
	if left := e.started.Add(e.opts.PresenceGrace).Sub(now); left > 0 && unknown > 0 {
		return nil, fmt.Sprintf("%d devices not heard from since the control plane started (%s left to reconnect)",
			unknown, left.Round(time.Millisecond)), nil
	}
	need := r.Spec.Stages[r.Stage].MinDevices
	if need == 0 {
		need = max(1, c.Assigned-c.Offline)
	}
	reported := c.Active + c.Failed
	if reported < need {
		return nil, fmt.Sprintf("%d of %d devices reported", reported, need), nil
	}

	g := r.gates(r.Stage)
	var results []api.GateResult
	var breach *api.GateResult
	waiting := ""
	check := func(res api.GateResult) {
		results = append(results, res)
		switch res.Status {
		case api.GateBreach:
			if breach == nil {
				b := res
				breach = &b
			}
		case api.GateWaiting:
			if waiting == "" {
				waiting = res.Gate + ": " + res.Detail
			}
		}
	}
	if g.MaxFailureRate != nil {
		v := float64(c.Failed) / float64(reported)
		check(limitGate("failure_rate", v, *g.MaxFailureRate, fmt.Sprintf("%d of %d reporting devices failed", c.Failed, reported)))
	}
	if g.MaxOfflineFraction != nil {
		v := float64(c.Offline) / float64(c.Assigned)
		check(limitGate("offline_fraction", v, *g.MaxOfflineFraction, fmt.Sprintf("%d of %d devices offline", c.Offline, c.Assigned)))
	}
	if g.MaxAccuracyDrop != nil || g.MaxDriftScore != nil {
		minL := g.MinLabelled
		if minL == 0 {
			minL = defaultMinLabels
		}
		var cur Figures
		ok := false
		if e.opts.Metrics != nil && len(active) > 0 {
			cur, ok = e.opts.Metrics.VersionMetrics(r.Spec.Model, r.Spec.Version, active)
		}
		if g.MaxAccuracyDrop != nil {
			base := mostCommon(prevCount)
			var bf Figures
			bok := false
			if ok && base != "" {
				bf, bok = e.opts.Metrics.VersionMetrics(r.Spec.Model, base, cohort)
			}
			switch {
			case base == "":
				check(api.GateResult{Gate: "accuracy_drop", Limit: *g.MaxAccuracyDrop, Status: api.GatePass, Detail: "no replaced version to compare with"})
			case !ok || !bok || cur.Labelled < minL || bf.Labelled < minL:
				check(api.GateResult{Gate: "accuracy_drop", Limit: *g.MaxAccuracyDrop, Status: api.GateWaiting,
					Detail: fmt.Sprintf("labelled predictions: %s %d, %s %d, need %d each", r.Spec.Version, cur.Labelled, base, bf.Labelled, minL)})
			default:
				drop := bf.Accuracy - cur.Accuracy
				check(limitGate("accuracy_drop", drop, *g.MaxAccuracyDrop,
					fmt.Sprintf("accuracy %s %.4f (%d labelled) vs %s %.4f (%d labelled)", r.Spec.Version, cur.Accuracy, cur.Labelled, base, bf.Accuracy, bf.Labelled)))
			}
		}
		if g.MaxDriftScore != nil {
			if !ok {
				check(api.GateResult{Gate: "drift_score", Limit: *g.MaxDriftScore, Status: api.GateWaiting, Detail: "no drift figures yet"})
			} else {
				check(limitGate("drift_score", cur.DriftScore, *g.MaxDriftScore, fmt.Sprintf("drift score %.4f", cur.DriftScore)))
			}
		}
	}
	return results, waiting, breach
}

func limitGate(name string, v, limit float64, detail string) api.GateResult {
	st := api.GatePass
	if v > limit {
		st = api.GateBreach
		detail = fmt.Sprintf("%s: %.4g > %.4g", detail, v, limit)
	}
	return api.GateResult{Gate: name, Limit: limit, Value: v, Status: st, Detail: detail}
}

func mostCommon(m map[string]int) string {
	best, n := "", 0
	for k, c := range m {
		if c > n || (c == n && k < best) {
			best, n = k, c
		}
	}
	return best
}

// save stores r if it changed since the last save (synced: every change
// is a decision or an intent that must survive a crash). Callers hold mu.
func (e *Engine) save(r *Rollout) error {
	updated := r.Updated
	r.Updated = time.Time{}
	cmp, err := json.Marshal(r)
	r.Updated = updated
	if err != nil {
		return fmt.Errorf("rollout: encode %s: %w", r.ID, err)
	}
	if prev, ok := e.saved[r.ID]; ok && string(prev) == string(cmp) {
		return nil
	}
	r.Updated = e.opts.Clock().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("rollout: encode %s: %w", r.ID, err)
	}
	if err := e.opts.KV.SetSync(keyPrefix+r.ID, b); err != nil {
		r.Updated = updated
		return fmt.Errorf("rollout: save %s: %w", r.ID, err)
	}
	e.saved[r.ID] = cmp
	return nil
}

func (e *Engine) record(actor, action string, r *Rollout, result string, details map[string]any) {
	if e.opts.Audit == nil {
		return
	}
	if details == nil {
		details = map[string]any{}
	}
	details["model"] = r.Spec.Model
	details["version"] = r.Spec.Version
	details["state"] = string(r.State)
	if _, err := e.opts.Audit.Record(audit.Entry{Actor: actor, Action: action, Target: r.ID, Result: result, Details: details}); err != nil {
		e.log.Error("audit record failed", "action", action, "rollout", r.ID, "err", err)
	}
}
