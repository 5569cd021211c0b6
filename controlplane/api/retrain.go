package api

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/internal/cron"
)

// Retraining and lineage (issue 13). Kept in this file, with its routes,
// so other API work merges cleanly.

// Path patterns of the retrain and lineage routes.
const (
	PathModelRetrain  = "/api/v1/models/{name}/retrain"
	PathModelRetrainJ = "/api/v1/models/{name}/retrain/jobs"
	PathRetrainJobs   = "/api/v1/retrain/jobs"
	PathRetrainJob    = "/api/v1/retrain/jobs/{id}"
	PathRetrainCancel = "/api/v1/retrain/jobs/{id}/cancel"
	PathModelLineage  = "/api/v1/models/{name}/lineage"
)

// retrainRoutes are the retrain and lineage routes: reading needs viewer,
// setting a policy, starting or cancelling a job operator.
func retrainRoutes() []Route {
	return []Route{
		{Method: "GET", Pattern: PathModelRetrain, Role: RoleViewer, Summary: "a model's retrain policy"},
		{Method: "PUT", Pattern: PathModelRetrain, Role: RoleOperator, Summary: "set a model's retrain policy"},
		{Method: "POST", Pattern: PathModelRetrainJ, Role: RoleOperator, Summary: "start a retrain job of a model now"},
		{Method: "GET", Pattern: PathRetrainJobs, Role: RoleViewer, Summary: "list retrain jobs"},
		{Method: "GET", Pattern: PathRetrainJob, Role: RoleViewer, Summary: "a retrain job with its log"},
		{Method: "POST", Pattern: PathRetrainCancel, Role: RoleOperator, Summary: "stop a retrain job"},
		{Method: "GET", Pattern: PathModelLineage, Role: RoleViewer, Summary: "a model version's lineage (its chain of parents)"},
	}
}

// Trainers a retrain policy can name.
const (
	// TrainerBuiltinFraud is internal/fraud's logistic regression on the
	// dataset's feature columns.
	TrainerBuiltinFraud = "builtin:fraud"
	// TrainerCommandPrefix names an external trainer the control plane
	// was started with (serve --trainer NAME=PROGRAM): "command:NAME".
	TrainerCommandPrefix = "command:"
)

// Site scopes of a retrain policy.
const (
	SiteScopeAll   = "all"
	SiteScopeAlert = "alert"
)

// Evaluation metrics a policy can compare on.
const (
	MetricAccuracy = "accuracy"
	MetricF1       = "f1"
)

// Defaults of a RetrainPolicy's zero fields.
const (
	DefaultRetrainWindow    = 7 * 24 * time.Hour
	DefaultHoldoutFraction  = 0.25
	DefaultRetrainMargin    = 0.01
	DefaultRetrainTimeLimit = 10 * time.Minute
	DefaultRetrainCooldown  = time.Hour
	DefaultMinLabelled      = 100
)

// Alert rule names a policy's triggers may list (controlplane/monitor).
var AlertRules = []string{"feature_drift", "low_accuracy", "accuracy_drop"}

// RetrainPolicy says when and how a model is retrained: the body of
// PUT /api/v1/models/{name}/retrain. Zero fields take the defaults above.
type RetrainPolicy struct {
	// Triggers are alert rule names (feature_drift, low_accuracy,
	// accuracy_drop): an alert of one of them on the model starts a job.
	// Empty: alerts start nothing.
	Triggers []string `json:"triggers,omitempty"`
	// Schedule, if set, starts a job every Schedule (at least an hour).
	Schedule Duration `json:"schedule,omitempty"`
	// Cron, if set (instead of Schedule), starts a job at the times of a
	// standard five-field cron expression (minute hour day-of-month month
	// day-of-week, or @hourly, @daily, @weekly, @monthly, @yearly) in
	// UTC, by the control plane's clock. It may name one minute of the
	// hour only: at most one job an hour, as Schedule's minimum.
	Cron string `json:"cron,omitempty"`
	// Window is the captured data a job trains on: rows of the last
	// Window (default 7 days).
	Window Duration `json:"window,omitempty"`
	// BaseDataset, if set, is the id (sha256, or 8+ hex digits of it) of
	// an uploaded base dataset of the model joined to the training rows:
	// training data = base ∪ the captured window's training part; the
	// held-out rows still come from the captured (field) rows only.
	BaseDataset string `json:"base_dataset,omitempty"`
	// SiteScope is SiteScopeAll (default: every site's rows) or
	// SiteScopeAlert: a job an alert of one site starts trains and
	// evaluates on that site's rows only, and its rollout is narrowed to
	// that site's devices (a model fitted to one site's change goes there).
	SiteScope string `json:"site_scope,omitempty"`
	// Trainer is TrainerBuiltinFraud or "command:NAME".
	Trainer string `json:"trainer"`
	// Params are passed to the trainer: the builtin takes l2; an external
	// command gets them in params.json.
	Params map[string]string `json:"params,omitempty"`
	// HoldoutFraction of the labelled rows (chosen by a hash of the
	// inference id, so the same rows every time) is kept out of training
	// and used to compare the candidate with the current version; in
	// (0, 0.9], default 0.25.
	HoldoutFraction float64 `json:"holdout_fraction,omitempty"`
	// Metric is accuracy (default) or f1 (for an imbalanced binary model).
	Metric string `json:"metric,omitempty"`
	// Margin is how much better than the current version's the
	// candidate's Metric must be on the held-out rows (default 0.01; a
	// negative value accepts a candidate that much worse).
	Margin *float64 `json:"margin,omitempty"`
	// MinLabelled is the labelled rows a job needs (default 100).
	MinLabelled int `json:"min_labelled,omitempty"`
	// TimeLimit bounds a job's work before publishing — building the
	// dataset, training and evaluation — (default 10 minutes); an
	// external command's process group is killed when it passes.
	TimeLimit Duration `json:"time_limit,omitempty"`
	// Cooldown is the least time between two jobs an alert or the
	// schedule starts (default 1 hour); `edgefleet retrain` ignores it.
	Cooldown Duration `json:"cooldown,omitempty"`
	// Rollout is the template of the rollout a published candidate gets:
	// a RolloutSpec without model and version (filled in by the job).
	// Nil publishes the version without rolling it out.
	Rollout *RolloutSpec `json:"rollout,omitempty"`
}

// MarginOrDefault is the policy's margin.
func (p RetrainPolicy) MarginOrDefault() float64 {
	if p.Margin == nil {
		return DefaultRetrainMargin
	}
	return *p.Margin
}

// WithDefaults returns p with its zero fields set to the defaults.
func (p RetrainPolicy) WithDefaults() RetrainPolicy {
	if p.Window == 0 {
		p.Window = Duration(DefaultRetrainWindow)
	}
	if p.HoldoutFraction == 0 {
		p.HoldoutFraction = DefaultHoldoutFraction
	}
	if p.Metric == "" {
		p.Metric = MetricAccuracy
	}
	if p.SiteScope == "" {
		p.SiteScope = SiteScopeAll
	}
	if p.MinLabelled == 0 {
		p.MinLabelled = DefaultMinLabelled
	}
	if p.TimeLimit == 0 {
		p.TimeLimit = Duration(DefaultRetrainTimeLimit)
	}
	if p.Cooldown == 0 {
		p.Cooldown = Duration(DefaultRetrainCooldown)
	}
	if p.Margin == nil {
		m := DefaultRetrainMargin
		p.Margin = &m
	}
	return p
}

// Check reports what is wrong with p, for the user. The rollout template
// is checked as a rollout of model (the version filled in).
func (p RetrainPolicy) Check(model string) error {
	for _, t := range p.Triggers {
		if !slices.Contains(AlertRules, t) {
			return Errorf(ErrInvalid, "retrain policy: trigger %q: want an alert rule name (%s)", t, strings.Join(AlertRules, ", "))
		}
	}
	switch {
	case p.Trainer == TrainerBuiltinFraud:
	case strings.HasPrefix(p.Trainer, TrainerCommandPrefix) && len(p.Trainer) > len(TrainerCommandPrefix):
	default:
		return Errorf(ErrInvalid, "retrain policy: trainer %q: want %s or %sNAME (a trainer the control plane was started with: serve --trainer NAME=PROGRAM)",
			p.Trainer, TrainerBuiltinFraud, TrainerCommandPrefix)
	}
	if b := p.BaseDataset; b != "" && (len(b) < 8 || len(b) > 64 || strings.Trim(strings.ToLower(b), "0123456789abcdef") != "") {
		return Errorf(ErrInvalid, "retrain policy: base_dataset %q: want the id of a base dataset (8 to 64 hex digits; edgefleet data bases NAME lists them)", b)
	}
	if len(p.Params) > 64 {
		return Errorf(ErrInvalid, "retrain policy: at most 64 params")
	}
	for k, v := range p.Params {
		if k == "" || len(k) > 128 || len(v) > 1024 {
			return Errorf(ErrInvalid, "retrain policy: param %q: names are 1..128 bytes, values at most 1024", k)
		}
	}
	if s := time.Duration(p.Schedule); s != 0 && s < time.Hour {
		return Errorf(ErrInvalid, "retrain policy: schedule %v: want at least 1h (or none)", s)
	}
	if p.Cron != "" {
		if p.Schedule != 0 {
			return Errorf(ErrInvalid, "retrain policy: schedule and cron both set; pick one")
		}
		if len(p.Cron) > 256 {
			return Errorf(ErrInvalid, "retrain policy: cron: at most 256 bytes")
		}
		c, err := cron.Parse(p.Cron)
		if err != nil {
			return Errorf(ErrInvalid, "retrain policy: %v", err)
		}
		if n := c.PerHour(); n > 1 {
			return Errorf(ErrInvalid, "retrain policy: cron %q fires %d times an hour; name one minute (at most one job an hour, like schedule's 1h minimum)", p.Cron, n)
		}
	}
	if p.Window < 0 || p.TimeLimit < 0 || p.Cooldown < 0 || p.MinLabelled < 0 {
		return Errorf(ErrInvalid, "retrain policy: window, time_limit, cooldown and min_labelled must not be negative")
	}
	if f := p.HoldoutFraction; math.IsNaN(f) || f < 0 || f > 0.9 {
		return Errorf(ErrInvalid, "retrain policy: holdout_fraction %v: want (0, 0.9]", f)
	}
	if p.SiteScope != "" && p.SiteScope != SiteScopeAll && p.SiteScope != SiteScopeAlert {
		return Errorf(ErrInvalid, "retrain policy: site_scope %q: want %s or %s", p.SiteScope, SiteScopeAll, SiteScopeAlert)
	}
	if p.Metric != "" && p.Metric != MetricAccuracy && p.Metric != MetricF1 {
		return Errorf(ErrInvalid, "retrain policy: metric %q: want %s or %s", p.Metric, MetricAccuracy, MetricF1)
	}
	if m := p.Margin; m != nil && (math.IsNaN(*m) || *m < -1 || *m > 1) {
		return Errorf(ErrInvalid, "retrain policy: margin %v: want -1..1", *m)
	}
	if p.Rollout != nil {
		if p.Rollout.Model != "" && p.Rollout.Model != model || p.Rollout.Version != "" {
			return Errorf(ErrInvalid, "retrain policy: the rollout template names no model or version: the job fills them in")
		}
		spec := *p.Rollout
		spec.Model, spec.Version = model, "template"
		if err := spec.Validate(); err != nil {
			return Errorf(ErrInvalid, "retrain policy: rollout template: %v", err)
		}
	}
	return nil
}

// RetrainStatus is a model's retrain policy (with its defaults) and its
// jobs' state.
type RetrainStatus struct {
	Model  string        `json:"model"`
	Policy RetrainPolicy `json:"policy"`
	// Set says a policy is stored (else Policy is empty and only
	// nothing triggers).
	Set       bool      `json:"set"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// LastJob is the newest job's id; Running the unfinished one's.
	LastJob string `json:"last_job,omitempty"`
	Running string `json:"running,omitempty"`
	// NextScheduled is when the schedule (or cron) starts the next job.
	NextScheduled time.Time `json:"next_scheduled,omitzero"`
	// ScheduleWaiting says why a job the schedule is due to start waits
	// (a job of the model is unfinished, or the cooldown): it starts once,
	// as soon as it may.
	ScheduleWaiting string `json:"schedule_waiting,omitempty"`
	// Error says why the stored policy cannot be used (it cannot be
	// read); nothing triggers until a policy is set again.
	Error string `json:"error,omitempty"`
}

// RetrainRequest is the optional body of POST .../retrain/jobs.
type RetrainRequest struct {
	// Reason is recorded with the job.
	Reason string `json:"reason,omitempty"`
}

// RetrainState is where a retrain job stands.
type RetrainState string

// The states of a retrain job, in the order a job passes them; Failed,
// Rejected, Published and RollingOut end a job.
const (
	RetrainQueued     RetrainState = "queued"
	RetrainBuilding   RetrainState = "building-dataset"
	RetrainValidating RetrainState = "validating"
	RetrainTraining   RetrainState = "training"
	RetrainEvaluating RetrainState = "evaluating"
	RetrainPublishing RetrainState = "publishing"
	// RetrainRollingOut: the candidate is published and its rollout was
	// created (the rollout's own state says how it goes).
	RetrainRollingOut RetrainState = "rolling-out"
	// RetrainPublished: the candidate is published; the policy has no
	// rollout template.
	RetrainPublished RetrainState = "published"
	// RetrainRejected: the candidate was not better by the margin.
	RetrainRejected RetrainState = "rejected"
	RetrainFailed   RetrainState = "failed"
)

// Terminal reports whether a job in state s is over.
func (s RetrainState) Terminal() bool {
	switch s {
	case RetrainRollingOut, RetrainPublished, RetrainRejected, RetrainFailed:
		return true
	}
	return false
}

// RetrainJob is one retrain run.
type RetrainJob struct {
	ID    string       `json:"id"`
	Model string       `json:"model"`
	State RetrainState `json:"state"`
	// Reason says why a job failed or was rejected, in words for the user.
	Reason string `json:"reason,omitempty"`
	// Trigger is "alert:RULE site=SITE", "manual:ACTOR" or "schedule".
	Trigger string    `json:"trigger"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Policy is the policy the job runs with (defaults filled in).
	Policy RetrainPolicy `json:"policy"`
	// Parent is the version the candidate is to replace.
	Parent string `json:"parent,omitempty"`
	// Site, when set, is the one site whose rows the job trains and
	// evaluates on (SiteScopeAlert), and where its rollout goes.
	Site string `json:"site,omitempty"`
	// Dataset is the field dataset built for the job, with its report.
	Dataset *Dataset `json:"dataset,omitempty"`
	// Base is the base dataset joined to the training rows (the
	// policy's base_dataset).
	Base *BaseDataset `json:"base_dataset,omitempty"`
	// TrainRows counts the rows trained on (a base dataset's too);
	// HoldoutRows the dataset's labelled field rows held out.
	TrainRows   int `json:"train_rows,omitempty"`
	HoldoutRows int `json:"holdout_rows,omitempty"`
	// Command is what an external trainer did.
	Command *TrainerRun `json:"command,omitempty"`
	// Evaluation compares the candidate with the parent.
	Evaluation *Evaluation `json:"evaluation,omitempty"`
	// Candidate is the version published (or that would have been).
	Candidate string `json:"candidate,omitempty"`
	// Rollout is the id of the candidate's rollout.
	Rollout string `json:"rollout,omitempty"`
	// CancelledBy names who cancelled the job (recorded before the job
	// stops, so a restart in between does not undo the cancel).
	CancelledBy string `json:"cancelled_by,omitempty"`
	// Log is the job's steps, oldest first.
	Log []RetrainLogEntry `json:"log"`
}

// RetrainLogEntry is one line of a job's log.
type RetrainLogEntry struct {
	Time    time.Time    `json:"time"`
	State   RetrainState `json:"state"`
	Message string       `json:"message"`
}

// MaxTrainerOutput bounds the stdout and stderr of an external trainer
// kept in a job (each; the end is kept).
const MaxTrainerOutput = 16 << 10

// TrainerRun is what an external trainer command did.
type TrainerRun struct {
	Program  string   `json:"program"`
	Args     []string `json:"args"`
	ExitCode int      `json:"exit_code"`
	TimedOut bool     `json:"timed_out,omitempty"`
	Duration Duration `json:"duration"`
	// Stdout and Stderr are the last MaxTrainerOutput bytes of each.
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// Evaluation compares a candidate with the current version on the same
// held-out rows.
type Evaluation struct {
	Metric    string          `json:"metric"`
	Rows      int             `json:"rows"`
	Margin    float64         `json:"margin"`
	Candidate EvaluationScore `json:"candidate"`
	Parent    EvaluationScore `json:"parent"`
	// Better says the candidate's Metric beat the parent's by Margin.
	Better bool `json:"better"`
}

// EvaluationScore is one version's figures on the held-out rows.
type EvaluationScore struct {
	Version   string  `json:"version"`
	Accuracy  float64 `json:"accuracy"`
	Precision float64 `json:"precision"`
	Recall    float64 `json:"recall"`
	F1        float64 `json:"f1"`
}

// Value is s's figure for metric.
func (s EvaluationScore) Value(metric string) float64 {
	if metric == MetricF1 {
		return s.F1
	}
	return s.Accuracy
}

// Lineage is a model version's chain of parents, newest first: the
// answer of GET /api/v1/models/{name}/lineage?version=V (default the
// newest version).
type Lineage struct {
	Model string         `json:"model"`
	Chain []LineageEntry `json:"chain"`
}

// LineageEntry is what one version's manifest says about where it came
// from (TrainingInfo).
type LineageEntry struct {
	Version   string    `json:"version"`
	Created   time.Time `json:"created"`
	Algorithm string    `json:"algorithm,omitempty"`
	// Parent is "" for a version uploaded without lineage.
	Parent   string             `json:"parent,omitempty"`
	Datasets []LineageDataset   `json:"datasets,omitempty"`
	Trainer  string             `json:"trainer,omitempty"`
	Params   map[string]string  `json:"params,omitempty"`
	Eval     map[string]float64 `json:"evaluation,omitempty"`
	Trigger  string             `json:"trigger,omitempty"`
	Job      string             `json:"job,omitempty"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
}

// LineageDataset is one dataset a version was trained on.
type LineageDataset struct {
	Model string `json:"model"`
	// Version is the captured dataset's version; 0 for an uploaded base
	// dataset (Base), named by its sha256 (its id).
	Version int    `json:"version"`
	SHA256  string `json:"sha256"`
	Rows    uint64 `json:"rows"`
	Base    bool   `json:"base,omitempty"`
}
