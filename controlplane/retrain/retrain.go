// Package retrain runs retrain jobs: per model a policy (triggers,
// schedule, data window, trainer, held-out fraction, margin, time limit,
// rollout template), and jobs persisted as state machines that build and
// validate a field dataset, train (the builtin fraud trainer or an external
// command), evaluate the candidate against the current version on held-out
// rows, publish it with its lineage and hand it to a rollout. Imported by
// controlplane.
package retrain

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/cron"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of Options.
const (
	DefaultTickInterval = time.Minute
	// DefaultAlertQueue bounds the alerts waiting for the worker.
	DefaultAlertQueue = 64
	// JobsKept is how many ended jobs are kept per model (the newest).
	JobsKept = 50
)

// Datasets builds and reads the field datasets (controlplane/data).
type Datasets interface {
	// Build stops with ctx's error when ctx ends.
	Build(ctx context.Context, model string, req api.DatasetRequest) (api.Dataset, error)
	Get(model, ref string) (api.Dataset, error)
	// Export writes a dataset's rows; the job reads format jsonl.
	Export(model, ref, format string, w io.Writer) error
	// Base is an uploaded base dataset (ref: its id or 8+ hex digits).
	Base(model, ref string) (api.BaseDataset, error)
	// ExportBase writes a base dataset's rows as JSON lines.
	ExportBase(model, ref string, w io.Writer) error
}

// Models reads model versions and publishes new ones (controlplane/models
// through the control plane's wiring).
type Models interface {
	Has(name, version string) bool
	Manifest(name, version string) (*efpb.Manifest, error)
	File(name, version string) ([]byte, error)
	// Publish checks, signs, stores and publishes a version; reference
	// is an optional CSV of training rows for the drift reference.
	Publish(ctx context.Context, name, version string, onnx []byte, meta *efpb.Manifest, reference []byte) (api.ModelVersion, error)
}

// Fleet names the version of a model the fleet runs now.
type Fleet interface {
	// Current is the version most devices are assigned, else the newest
	// uploaded; false when the model has no version.
	Current(model string) (string, bool)
}

// Rollouts starts the candidate's rollout.
type Rollouts interface {
	Create(ctx context.Context, spec api.RolloutSpec, actor string) (*api.Rollout, error)
	List() []*api.Rollout
}

// Auditor records audit events; *audit.Log implements it.
type Auditor interface {
	Record(audit.Entry) (audit.Entry, error)
}

// Alert is a monitoring alert offered as a trigger.
type Alert struct {
	Rule, Model, Version, Site, Feature string
	Value, Threshold                    float64
}

// Options configure a Service. Fields without a documented default are
// required.
type Options struct {
	// KV is the retrain store namespace (policies, jobs).
	KV       *store.KV
	Datasets Datasets
	Models   Models
	Fleet    Fleet
	Rollouts Rollouts
	Audit    Auditor
	// Runtime evaluates candidates; nil fails jobs at evaluation.
	Runtime *infer.Runtime
	// WorkDir holds each running job's files (the external trainer's
	// --data and --out directories); removed when the job ends.
	WorkDir string
	// Trainers are the external trainers a policy may name as
	// "command:NAME": NAME → program and leading arguments. Only these
	// run: an API caller cannot make the control plane run a program.
	Trainers map[string][]string
	// Alerts are monitoring alerts; nil: none.
	Alerts <-chan Alert
	// SiteLabel is the device label naming a device's site (a rollout
	// of a site-scoped job is narrowed with it); default "site".
	SiteLabel string
	// TickInterval is how often schedules are checked; default
	// DefaultTickInterval.
	TickInterval time.Duration
	Clock        func() time.Time
	// Registerer takes the service's metrics; default a registry of its
	// own.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Service holds retrain policies and runs jobs, one at a time, on the
// goroutine of Run. Its methods are safe for concurrent use.
type Service struct {
	opts Options
	log  *slog.Logger
	wake chan struct{}

	// policyMu serialises the read-modify-write of policy records (an
	// operator's SetPolicy and the schedule's LastScheduled). Taken
	// before mu, never while holding it.
	policyMu sync.Mutex

	// mu guards jobs, running and cancel. A leaf lock: nothing is called
	// with it held but the store and cancel.
	mu      sync.Mutex
	jobs    map[string]*api.RetrainJob
	running string             // id of the job the worker runs ("" none)
	cancel  context.CancelFunc // cancels the running job

	// phases are the goroutines of job phases (phase): one the worker
	// stopped waiting for when its job's context ended is waited for
	// by Run before it returns.
	phases           sync.WaitGroup
	policyUnreadable prometheus.Counter
	// evaluator is s.evaluate; tests replace it with one that hangs.
	evaluator func(ctx context.Context, cand []byte, candMeta *efpb.Manifest, parent []byte, parentMan *efpb.Manifest, rows []labelledRow) (*api.Evaluation, error)
}

const (
	prefixPolicy = "p/"
	prefixJob    = "j/"
)

// policyRecord is a stored policy.
type policyRecord struct {
	Policy        api.RetrainPolicy `json:"policy"`
	UpdatedAt     time.Time         `json:"updated_at"`
	LastScheduled time.Time         `json:"last_scheduled,omitzero"`
}

// New loads the jobs in o.KV.
func New(o Options) (*Service, error) {
	if o.KV == nil || o.Datasets == nil || o.Models == nil || o.Fleet == nil || o.Rollouts == nil || o.WorkDir == "" {
		return nil, errors.New("retrain: KV, Datasets, Models, Fleet, Rollouts and WorkDir are required")
	}
	if o.SiteLabel == "" {
		o.SiteLabel = "site"
	}
	if o.TickInterval <= 0 {
		o.TickInterval = DefaultTickInterval
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	for name, argv := range o.Trainers {
		if name == "" || len(argv) == 0 || argv[0] == "" {
			return nil, fmt.Errorf("retrain: trainer %q: want NAME=PROGRAM", name)
		}
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("retrain: %w", err)
	}
	s := &Service{opts: o, log: o.Logger.With("component", "retrain"), wake: make(chan struct{}, 1),
		jobs: map[string]*api.RetrainJob{},
		policyUnreadable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_retrain_policy_unreadable_total",
			Help: "Stored retrain policies skipped by the schedule check because they cannot be read.",
		})}
	s.evaluator = s.evaluate
	if err := o.Registerer.Register(s.policyUnreadable); err != nil {
		return nil, fmt.Errorf("retrain: metrics: %w", err)
	}
	err := o.KV.Scan(prefixJob, func(key string, val []byte) error {
		j := &api.RetrainJob{}
		if err := json.Unmarshal(val, j); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		s.jobs[j.ID] = j
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("retrain: load jobs: %w", err)
	}
	return s, nil
}

// errUnreadable marks a stored policy that does not decode.
var errUnreadable = errors.New("stored retrain policy cannot be read")

func (s *Service) policy(model string) (policyRecord, bool, error) {
	var rec policyRecord
	b, err := s.opts.KV.Get(prefixPolicy + model)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return rec, false, nil
	case err != nil:
		return rec, false, fmt.Errorf("retrain: read policy of %s: %w", model, err)
	}
	if err := decodePolicy(b, &rec); err != nil {
		return rec, false, fmt.Errorf("retrain: policy of %s: %w", model, err)
	}
	return rec, true, nil
}

// decodePolicy decodes a stored policy record; an error wraps
// errUnreadable.
func decodePolicy(b []byte, rec *policyRecord) error {
	if err := json.Unmarshal(b, rec); err != nil {
		return fmt.Errorf("%w: %v", errUnreadable, err)
	}
	return nil
}

// nextScheduled is when rec's schedule or cron next starts a job, counted
// from the last time it did (else from when the policy was set); false
// when it has neither.
func nextScheduled(rec policyRecord) (time.Time, bool) {
	base := rec.LastScheduled
	if base.IsZero() {
		base = rec.UpdatedAt
	}
	if sch := time.Duration(rec.Policy.Schedule); sch > 0 {
		return base.Add(sch), true
	}
	if rec.Policy.Cron != "" {
		c, err := cron.Parse(rec.Policy.Cron)
		if err != nil { // checked when it was set
			return time.Time{}, false
		}
		if next := c.Next(base.UTC()); !next.IsZero() {
			return next, true
		}
	}
	return time.Time{}, false
}

// SetPolicy stores model's retrain policy.
func (s *Service) SetPolicy(model string, p api.RetrainPolicy) (api.RetrainStatus, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.RetrainStatus{}, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	if err := p.Check(model); err != nil {
		return api.RetrainStatus{}, err
	}
	if name, ok := strings.CutPrefix(p.Trainer, api.TrainerCommandPrefix); ok {
		if _, known := s.opts.Trainers[name]; !known {
			return api.RetrainStatus{}, api.Errorf(api.ErrInvalid, "retrain policy: trainer %q: this control plane has no trainer %q (start it with serve --trainer %s=PROGRAM); it has: %s",
				p.Trainer, name, name, strings.Join(s.trainerNames(), ", "))
		}
	}
	if p.Rollout != nil {
		p.Rollout.Model, p.Rollout.Version = "", ""
	}
	if p.BaseDataset != "" {
		b, err := s.opts.Datasets.Base(model, p.BaseDataset)
		if err != nil {
			return api.RetrainStatus{}, api.Errorf(api.ErrInvalid, "retrain policy: base_dataset: %v", err)
		}
		p.BaseDataset = b.ID
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	rec, _, err := s.policy(model)
	if errors.Is(err, errUnreadable) {
		// Setting a policy is how an operator repairs an unreadable one.
		s.log.Warn("replacing an unreadable retrain policy", "model", model, "err", err)
		rec, err = policyRecord{}, nil
	}
	if err != nil {
		return api.RetrainStatus{}, err
	}
	rec.Policy, rec.UpdatedAt = p, s.opts.Clock().UTC()
	if err := s.opts.KV.SetJSON(prefixPolicy+model, rec, true); err != nil {
		return api.RetrainStatus{}, fmt.Errorf("retrain: store policy: %w", err)
	}
	s.log.Info("retrain policy set", "model", model, "trainer", p.Trainer, "triggers", p.Triggers)
	return s.status(model, rec, true), nil
}

func (s *Service) trainerNames() []string {
	var out []string
	for n := range s.opts.Trainers {
		out = append(out, n)
	}
	slices.Sort(out)
	if len(out) == 0 {
		return []string{"none"}
	}
	return out
}

// Policy returns model's retrain policy (Set false when none is stored).
func (s *Service) Policy(model string) (api.RetrainStatus, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.RetrainStatus{}, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	rec, ok, err := s.policy(model)
	if errors.Is(err, errUnreadable) {
		st := s.status(model, policyRecord{}, false)
		st.Error = err.Error() + "; nothing triggers retraining of " + model + " until a policy is set again (edgefleet retrain policy " + model + " --trainer ...)"
		return st, nil
	}
	if err != nil {
		return api.RetrainStatus{}, err
	}
	return s.status(model, rec, ok), nil
}

func (s *Service) status(model string, rec policyRecord, set bool) api.RetrainStatus {
	st := api.RetrainStatus{Model: model, Set: set, UpdatedAt: rec.UpdatedAt}
	if set {
		st.Policy = rec.Policy.WithDefaults()
		if next, ok := nextScheduled(rec); ok {
			st.NextScheduled = next
			if !s.opts.Clock().Before(next) {
				st.ScheduleWaiting = s.blocked(model, st.Policy)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var newest *api.RetrainJob
	for _, j := range s.jobs {
		if j.Model != model {
			continue
		}
		if newest == nil || j.Created.After(newest.Created) {
			newest = j
		}
		if !j.State.Terminal() {
			st.Running = j.ID
		}
	}
	if newest != nil {
		st.LastJob = newest.ID
	}
	return st
}

// Start queues a job of model now for actor (`edgefleet retrain`).
func (s *Service) Start(model, actor string, req api.RetrainRequest) (*api.RetrainJob, error) {
	if err := topics.ValidModelName(model); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	if len(req.Reason) > 1024 {
		return nil, api.Errorf(api.ErrInvalid, "reason: at most 1024 bytes")
	}
	rec, ok, err := s.policy(model)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, api.Errorf(api.ErrNotFound, "model %s has no retrain policy; set one first (edgefleet retrain policy %s --trainer %s)", model, model, api.TrainerBuiltinFraud)
	}
	parent, _ := s.opts.Fleet.Current(model)
	details := map[string]any{}
	if req.Reason != "" {
		details["reason"] = req.Reason
	}
	return s.enqueue(model, parent, "", "manual:"+actor, actor, rec.Policy, details)
}

// enqueue records a new queued job, unless one of model is unfinished.
// site, if set, scopes the job to one site's rows.
func (s *Service) enqueue(model, parent, site, trigger, actor string, p api.RetrainPolicy, details map[string]any) (*api.RetrainJob, error) {
	now := s.opts.Clock().UTC()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	j := &api.RetrainJob{
		ID:    fmt.Sprintf("j-%x-%s", now.Unix(), hex.EncodeToString(b)),
		Model: model, State: api.RetrainQueued, Trigger: trigger, Created: now, Updated: now,
		Policy: p.WithDefaults(), Parent: parent, Site: site,
		Log: []api.RetrainLogEntry{{Time: now, State: api.RetrainQueued, Message: "queued by " + trigger}},
	}
	s.mu.Lock()
	for _, o := range s.jobs {
		if o.Model == model && !o.State.Terminal() {
			s.mu.Unlock()
			return nil, api.Errorf(api.ErrExists, "retrain job %s of %s is %s; one job per model at a time (cancel it: edgefleet retrain cancel %s)", o.ID, model, o.State, o.ID)
		}
	}
	if err := s.opts.KV.SetJSON(prefixJob+j.ID, j, true); err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("retrain: store job: %w", err)
	}
	s.jobs[j.ID] = j
	out := clone(j)
	s.pruneLocked(model)
	s.mu.Unlock()
	details["trigger"], details["parent"], details["trainer"] = trigger, parent, p.Trainer
	if site != "" {
		details["site"] = site
	}
	s.audit(actor, "retrain.start", j.ID, "ok", details)
	s.log.Info("retrain job queued", "job", j.ID, "model", model, "trigger", trigger, "parent", parent)
	s.poke()
	return out, nil
}

// pruneLocked deletes model's oldest ended jobs beyond JobsKept; s.mu is
// held.
func (s *Service) pruneLocked(model string) {
	var ended []*api.RetrainJob
	for _, j := range s.jobs {
		if j.Model == model && j.State.Terminal() {
			ended = append(ended, j)
		}
	}
	if len(ended) <= JobsKept {
		return
	}
	slices.SortFunc(ended, func(a, b *api.RetrainJob) int { return a.Created.Compare(b.Created) })
	for _, j := range ended[:len(ended)-JobsKept] {
		if err := s.opts.KV.Delete(prefixJob + j.ID); err != nil {
			s.log.Warn("retrain: delete an old job", "job", j.ID, "err", err)
			continue
		}
		delete(s.jobs, j.ID)
	}
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func clone(j *api.RetrainJob) *api.RetrainJob {
	c := *j
	c.Log = slices.Clone(j.Log)
	return &c
}

// Jobs lists the jobs (of model, or all for ""), newest first, without
// their logs.
func (s *Service) Jobs(model string) []*api.RetrainJob {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*api.RetrainJob
	for _, j := range s.jobs {
		if model == "" || j.Model == model {
			c := clone(j)
			c.Log = nil
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *api.RetrainJob) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out
}

// Job returns one job with its log.
func (s *Service) Job(id string) (*api.RetrainJob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return nil, api.Errorf(api.ErrNotFound, "retrain job %q does not exist (edgefleet retrain jobs lists them)", id)
	}
	return clone(j), nil
}

// Cancel stops an unfinished job: a queued one ends at once, a running
// one as soon as its phase notices its context (a trainer process is
// killed). The cancel is recorded (synced) before it answers: a job whose
// cancel a control-plane restart interrupts ends cancelled at the next
// start and never publishes.
func (s *Service) Cancel(id, actor string) (*api.RetrainJob, error) {
	s.mu.Lock()
	j, ok := s.jobs[id]
	if !ok {
		s.mu.Unlock()
		return nil, api.Errorf(api.ErrNotFound, "retrain job %q does not exist", id)
	}
	if j.State.Terminal() {
		s.mu.Unlock()
		return nil, api.Errorf(api.ErrExists, "retrain job %s is over (%s)", id, j.State)
	}
	if j.State != api.RetrainQueued || s.running == id {
		if j.CancelledBy != "" {
			out := clone(j)
			s.mu.Unlock()
			return out, nil
		}
		out, err := s.updateLocked(id, "", "cancel requested by "+actor, func(j *api.RetrainJob) { j.CancelledBy = actor })
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if s.running == id {
			s.cancel()
		}
		s.mu.Unlock()
		s.audit(actor, "retrain.cancel", id, "ok", map[string]any{"state": string(out.State)})
		return out, nil
	}
	// Queued: it ends here, under the lock, so the worker cannot start it
	// in between.
	reason := "cancelled by " + actor + " before it started"
	out, err := s.updateLocked(id, api.RetrainFailed, reason, func(j *api.RetrainJob) { j.Reason, j.CancelledBy = reason, actor })
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.audit(actor, "retrain.cancel", id, "ok", map[string]any{"state": string(api.RetrainQueued)})
	s.log.Info("retrain job ended", "job", id, "model", out.Model, "state", out.State, "reason", reason)
	return out, nil
}

func (s *Service) audit(actor, action, target, result string, details map[string]any) {
	if s.opts.Audit == nil {
		return
	}
	if _, err := s.opts.Audit.Record(audit.Entry{Actor: actor, Action: action, Target: target, Result: result, Details: details}); err != nil {
		s.log.Error("audit", "action", action, "err", err)
	}
}

// update changes job id under the lock, logs msg (if any) and stores it,
// synced: a step is persisted before the next one acts on it.
func (s *Service) update(id string, state api.RetrainState, msg string, fn func(j *api.RetrainJob)) (*api.RetrainJob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updateLocked(id, state, msg, fn)
}

// updateLocked is update with s.mu held.
func (s *Service) updateLocked(id string, state api.RetrainState, msg string, fn func(j *api.RetrainJob)) (*api.RetrainJob, error) {
	j, ok := s.jobs[id]
	if !ok {
		return nil, fmt.Errorf("retrain: job %s vanished", id)
	}
	next := clone(j)
	if fn != nil {
		fn(next)
	}
	now := s.opts.Clock().UTC()
	next.Updated = now
	if state != "" {
		next.State = state
	}
	if msg != "" {
		next.Log = append(next.Log, api.RetrainLogEntry{Time: now, State: next.State, Message: msg})
	}
	if err := s.opts.KV.SetJSON(prefixJob+id, next, true); err != nil {
		return nil, fmt.Errorf("retrain: store job %s: %w", id, err)
	}
	s.jobs[id] = next
	return clone(next), nil
}

// finish ends a job in a terminal state with its reason, audited.
func (s *Service) finish(id string, state api.RetrainState, reason string) (*api.RetrainJob, error) {
	j, err := s.update(id, state, reason, func(j *api.RetrainJob) {
		if state == api.RetrainFailed || state == api.RetrainRejected {
			j.Reason = reason
		}
	})
	if err != nil {
		return nil, err
	}
	if state == api.RetrainFailed || state == api.RetrainRejected {
		s.audit("system", "retrain."+string(state), id, "ok", map[string]any{"model": j.Model, "reason": reason})
	}
	s.log.Info("retrain job ended", "job", id, "model", j.Model, "state", state, "reason", reason)
	_ = os.RemoveAll(filepath.Join(s.opts.WorkDir, id))
	return j, nil
}

// Run works the queue until ctx ends: it first resumes the jobs a
// control-plane restart interrupted, then runs queued jobs one at a
// time, takes alerts, and checks schedules every TickInterval.
func (s *Service) Run(ctx context.Context) {
	defer s.phases.Wait()
	s.resume()
	// Alerts are taken while a job runs too: the alerter raises an alert
	// once until it clears, so one dropped from a full channel would start
	// no job. Queuing is safe beside the job runner.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-s.opts.Alerts:
				s.onAlert(a)
			}
		}
	})
	t := time.NewTicker(s.opts.TickInterval)
	defer t.Stop()
	for {
		s.runQueued(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
			s.Tick()
		}
	}
}

// runQueued runs queued jobs, oldest first, until none is left or ctx
// ends.
func (s *Service) runQueued(ctx context.Context) {
	for ctx.Err() == nil {
		s.mu.Lock()
		var next *api.RetrainJob
		for _, j := range s.jobs {
			if j.State == api.RetrainQueued && (next == nil || j.Created.Before(next.Created)) {
				next = j
			}
		}
		if next == nil {
			s.mu.Unlock()
			return
		}
		jctx, cancel := context.WithCancel(ctx)
		if next.CancelledBy != "" {
			cancel() // cancelled in the moment it was queued again
		}
		s.running, s.cancel = next.ID, cancel
		id := next.ID
		s.mu.Unlock()

		s.execute(jctx, id)

		s.mu.Lock()
		s.running, s.cancel = "", nil
		s.mu.Unlock()
		cancel()
	}
}

// resume makes the jobs a restart interrupted safe to continue: a job
// past publishing checks what it already did (runJob does); one before it
// runs again from its dataset (which is content-addressed, so the same).
func (s *Service) resume() {
	s.mu.Lock()
	interrupted := map[string]api.RetrainState{}
	cancelled := map[string]*api.RetrainJob{}
	for id, j := range s.jobs {
		switch {
		case j.State.Terminal():
		case j.CancelledBy != "":
			cancelled[id] = clone(j)
		case j.State != api.RetrainQueued:
			interrupted[id] = j.State
		}
	}
	s.mu.Unlock()
	// A cancel recorded before the restart stands: the job ends here and
	// does not go on (it never publishes, nor rolls out what it published).
	for id, j := range cancelled {
		reason := "cancelled by " + j.CancelledBy + " while " + string(j.State) + "; the control plane restarted before the job stopped"
		if j.Candidate != "" && s.publishedBy(j) {
			reason += fmt.Sprintf("; version %s was published before the cancel took effect and was not rolled out", j.Candidate)
		}
		if _, err := s.finish(id, api.RetrainFailed, reason); err != nil {
			s.log.Error("end retrain job", "job", id, "err", err)
		}
	}
	for id, state := range interrupted {
		if n := s.interruptions(id); n >= maxResumes {
			// A job that takes the control plane down (a candidate that
			// crashes onnxruntime, a dataset too large for its memory)
			// would otherwise do so at every start.
			reason := fmt.Sprintf("interrupted in %s by a control-plane restart for the %s time; not run again (a job that ends the control plane would end it at every start)", state, ordinal(n+1))
			if _, err := s.finish(id, api.RetrainFailed, reason); err != nil {
				s.log.Error("end retrain job", "job", id, "err", err)
			}
			continue
		}
		msg := fmt.Sprintf("interrupted in %s by a control-plane restart; runs again from its dataset", state)
		if state == api.RetrainPublishing {
			msg = "interrupted while publishing by a control-plane restart; resumes from what was published"
		}
		if _, err := s.update(id, api.RetrainQueued, msg, nil); err != nil {
			s.log.Error("resume retrain job", "job", id, "err", err)
		}
		s.log.Info("retrain job resumed after restart", "job", id)
	}
}

// maxResumes is how often a job interrupted by a restart runs again.
const maxResumes = 2

// interruptions counts the restarts that interrupted job id so far (the
// resumes its log records).
func (s *Service) interruptions(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.jobs[id].Log {
		if e.State == api.RetrainQueued && strings.HasPrefix(e.Message, "interrupted ") {
			n++
		}
	}
	return n
}

func ordinal(n int) string {
	switch n {
	case 1:
		return "1st"
	case 2:
		return "2nd"
	case 3:
		return "3rd"
	}
	return fmt.Sprintf("%dth", n)
}

// onAlert starts a job when a, an alert of a model with a policy naming
// its rule, comes while no job of the model runs and the cooldown since
// the last automatic job passed.
func (s *Service) onAlert(a Alert) {
	rec, ok, err := s.policy(a.Model)
	if err != nil {
		s.log.Error("retrain on alert", "err", err)
		return
	}
	if !ok || !slices.Contains(rec.Policy.Triggers, a.Rule) {
		return
	}
	trigger := "alert:" + a.Rule
	if a.Site != "" {
		trigger += " site=" + a.Site
	}
	if why := s.blocked(a.Model, rec.Policy.WithDefaults()); why != "" {
		s.log.Info("alert did not start a retrain job", "model", a.Model, "rule", a.Rule, "site", a.Site, "why", why)
		return
	}
	details := map[string]any{"alert": map[string]any{"rule": a.Rule, "version": a.Version, "site": a.Site, "feature": a.Feature,
		"value": a.Value, "threshold": a.Threshold}}
	site := ""
	if rec.Policy.SiteScope == api.SiteScopeAlert {
		site = a.Site
	}
	if _, err := s.enqueue(a.Model, a.Version, site, trigger, "system", rec.Policy, details); err != nil {
		s.log.Info("alert did not start a retrain job", "model", a.Model, "rule", a.Rule, "err", err)
	}
}

// blocked says why an automatic job of model may not start now ("" it
// may): one is unfinished, or the cooldown since the last automatic one.
func (s *Service) blocked(model string, p api.RetrainPolicy) string {
	now := s.opts.Clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.jobs {
		if j.Model != model {
			continue
		}
		if !j.State.Terminal() {
			return "job " + j.ID + " is " + string(j.State)
		}
		if !strings.HasPrefix(j.Trigger, "manual:") && now.Sub(j.Created) < time.Duration(p.Cooldown) {
			return fmt.Sprintf("job %s started %v ago, within the cooldown of %v", j.ID, now.Sub(j.Created).Round(time.Second), time.Duration(p.Cooldown))
		}
	}
	return ""
}

// Tick starts the jobs whose schedule (or cron) is due. A due job that
// may not start yet (a job of the model is unfinished, or the cooldown)
// stays due and starts once, at the first Tick it may: the trigger is
// not lost, and the missed times do not start a burst. A policy that
// cannot be read is skipped (logged and counted); the others run.
func (s *Service) Tick() {
	now := s.opts.Clock().UTC()
	var due []string
	err := s.opts.KV.Scan(prefixPolicy, func(key string, val []byte) error {
		model := strings.TrimPrefix(key, prefixPolicy)
		var rec policyRecord
		if err := decodePolicy(val, &rec); err != nil {
			s.policyUnreadable.Inc()
			s.log.Error("retrain policy unreadable; its schedule and triggers are skipped until it is set again", "model", model, "err", err)
			return nil
		}
		if next, ok := nextScheduled(rec); ok && !now.Before(next) {
			due = append(due, model)
		}
		return nil
	})
	if err != nil {
		s.log.Error("retrain schedule", "err", err)
	}
	for _, model := range due {
		s.startScheduled(model, now)
	}
}

// startScheduled starts model's scheduled job if it still is due and may
// start, and records when it did. No lock is held while the job is
// queued (which audits) or the fleet is asked for the parent: the
// service's locks stay leaves.
func (s *Service) startScheduled(model string, now time.Time) {
	rec, ok, err := s.policy(model)
	if err != nil || !ok {
		if err != nil {
			s.log.Error("retrain schedule", "model", model, "err", err)
		}
		return
	}
	if next, ok := nextScheduled(rec); !ok || now.Before(next) {
		return
	}
	if why := s.blocked(model, rec.Policy.WithDefaults()); why != "" {
		s.log.Debug("scheduled retrain job waits", "model", model, "why", why)
		return
	}
	parent, _ := s.opts.Fleet.Current(model)
	if _, err := s.enqueue(model, parent, "", "schedule", "system", rec.Policy, map[string]any{}); err != nil {
		s.log.Info("schedule did not start a retrain job; it stays due", "model", model, "err", err)
		return
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	rec, ok, err = s.policy(model)
	if err == nil && ok {
		rec.LastScheduled = now
		err = s.opts.KV.SetJSON(prefixPolicy+model, rec, true)
	}
	if err != nil {
		// The job is queued; without the record the schedule stays due
		// and waits behind the job (and the cooldown after it).
		s.log.Error("retrain schedule: record the start", "model", model, "err", err)
	}
}
