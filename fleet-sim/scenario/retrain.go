package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// The MLOps loop (issue 13) in a scenario: a capture and retrain policy
// set over the REST API, a wait for the retrain job an alert starts, and
// assertions on the candidate's lineage and on the drifted devices'
// accuracy before and after. They work against the in-process control
// plane and an external one alike (both through the REST API). A
// scenario names a job (wait_retrain's name) as it names a rollout.

func registerRetrain(r *Registry) {
	r.RegisterAction("set_retrain_policy", func() Action { return &SetRetrainPolicy{} })
	r.RegisterAction("wait_retrain", func() Action { return &WaitRetrain{} })
	r.RegisterAssertion("retrain_lineage", func() Assertion { return &RetrainLineage{} })
	r.RegisterAssertion("accuracy_recovered", func() Assertion { return &AccuracyRecovered{} })
}

// apiValue is an API request body written in YAML: the same keys as the
// REST API's JSON, checked strictly (unknown keys are errors).
type apiValue[T any] struct {
	v T
}

// UnmarshalYAML decodes the mapping through JSON so the API's own field
// names and types apply.
func (a *apiValue[T]) UnmarshalYAML(n *yaml.Node) error {
	var generic any
	if err := n.Decode(&generic); err != nil {
		return err
	}
	b, err := json.Marshal(jsonable(generic))
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a.v); err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	return nil
}

// withAPI calls f with a client of the fleet's control plane.
func withAPI(env *Env, f func(*client.Client) error) error {
	c, done, err := env.Fleet.APIClient()
	if err != nil {
		return err
	}
	defer done()
	return f(c)
}

// SetRetrainPolicy stores a model's retrain policy (PUT
// /api/v1/models/{name}/retrain) and, with capture, first its capture
// policy: the agents then capture field rows the jobs train on.
type SetRetrainPolicy struct {
	Model   string                       `yaml:"model"`
	Capture *apiValue[api.CapturePolicy] `yaml:"capture"`
	Policy  apiValue[api.RetrainPolicy]  `yaml:"policy"`
}

// Validate implements the optional validation.
func (s *SetRetrainPolicy) Validate(*Scenario) error {
	if s.Model == "" {
		return errors.New("model is required")
	}
	if s.Capture != nil {
		if err := s.Capture.v.Check(); err != nil {
			return err
		}
	}
	return s.Policy.v.Check(s.Model)
}

// Run implements Action.
func (s *SetRetrainPolicy) Run(ctx context.Context, env *Env) (string, error) {
	var detail []string
	err := withAPI(env, func(c *client.Client) error {
		if s.Capture != nil {
			st, err := c.SetCapturePolicy(ctx, s.Model, s.Capture.v)
			if err != nil {
				return fmt.Errorf("capture policy: %w", err)
			}
			detail = append(detail, fmt.Sprintf("capture of %s at sample rate %v", s.Model, st.Policy.SampleRate))
		}
		st, err := c.SetRetrainPolicy(ctx, s.Model, s.Policy.v)
		if err != nil {
			return fmt.Errorf("retrain policy: %w", err)
		}
		p := st.Policy
		detail = append(detail, fmt.Sprintf("retrain of %s on %v with %s, site scope %s, margin %v", s.Model, p.Triggers, p.Trainer, p.SiteScope, p.MarginOrDefault()))
		return nil
	})
	return strings.Join(detail, "; "), err
}

// retrainPoll is how often wait_retrain asks the control plane.
const retrainPoll = 250 * time.Millisecond

// WaitRetrain waits for a retrain job of Model to end: the oldest job no
// earlier wait_retrain claimed (an alert, a schedule or a manual call may
// have started it). It fails as soon as the job ends in a state outside
// States (default rolling-out), with the job's reason. Its timeout and
// max_timeout work as every wait's (see WaitLimits); a step of the job is
// progress. The report's figures get retrain_<name>: the job's trigger,
// parent, candidate, dataset and split, evaluation and duration on the
// control plane's clock. Rollout, if set, names the job's rollout for
// wait_rollout, rollout_state and the like.
type WaitRetrain struct {
	Name       string   `yaml:"name"`
	Model      string   `yaml:"model"`
	States     []string `yaml:"states"`
	Rollout    string   `yaml:"rollout"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitRetrain) Validate(*Scenario) error {
	if w.Name == "" || w.Model == "" {
		return errors.New("name and model are required")
	}
	if len(w.States) == 0 {
		w.States = []string{string(api.RetrainRollingOut)}
	}
	for _, s := range w.States {
		if !api.RetrainState(s).Terminal() {
			return fmt.Errorf("state %q: want states a job ends in (rolling-out, published, rejected, failed)", s)
		}
	}
	if w.Rollout != "" && !slices.Equal(w.States, []string{string(api.RetrainRollingOut)}) {
		return errors.New("rollout names the job's rollout: only a job in state rolling-out has one")
	}
	return w.WaitLimits.validate()
}

// Run implements Action.
func (w *WaitRetrain) Run(ctx context.Context, env *Env) (string, error) {
	claimed := map[string]bool{}
	for _, id := range env.retrains {
		claimed[id] = true
	}
	start := env.Since()
	var (
		job     *api.RetrainJob
		why     string
		ended   error
		changes uint64
		lastFP  string
	)
	check := func() bool {
		err := withAPI(env, func(c *client.Client) error {
			jobs, err := c.RetrainJobs(ctx, w.Model)
			if err != nil {
				return err
			}
			job = nil
			for i := len(jobs) - 1; i >= 0; i-- { // newest first: the oldest unclaimed
				if !claimed[jobs[i].ID] {
					job = jobs[i]
					break
				}
			}
			return nil
		})
		if err != nil {
			why = fmt.Sprintf("retrain jobs: %v", err)
			return false
		}
		if job == nil {
			why = fmt.Sprintf("no retrain job of %s has started", w.Model)
			return false
		}
		if fp := fmt.Sprintf("%s %d", job.State, len(job.Log)); fp != lastFP {
			lastFP = fp
			changes++
		}
		if !job.State.Terminal() {
			why = fmt.Sprintf("retrain job %s (%s) is %s", job.ID, job.Trigger, job.State)
			return false
		}
		if !slices.Contains(w.States, string(job.State)) {
			ended = fmt.Errorf("retrain job %s (%s) ended %s, want one of %v: %s", job.ID, job.Trigger, job.State, w.States, job.Reason)
		}
		return true
	}
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits, every: retrainPoll, progress: func() uint64 { return changes }}, check)
	if err != nil {
		return "", fmt.Errorf("%s; %w", why, err)
	}
	env.SetFigure("retrain_"+w.Name, retrainFigures(job))
	if ended != nil {
		return "", ended
	}
	env.retrains[w.Name] = job.ID
	if w.Rollout != "" {
		if job.Rollout == "" {
			return "", fmt.Errorf("retrain job %s is %s but names no rollout", job.ID, job.State)
		}
		env.rollouts[w.Rollout] = job.Rollout
	}
	detail := fmt.Sprintf("retrain job %s (%s) of %s ended %s after %.2fs", job.ID, job.Trigger, w.Model, job.State, (env.Since() - start).Seconds())
	if job.Reason != "" {
		detail += ": " + job.Reason
	}
	if ev := job.Evaluation; ev != nil {
		detail += fmt.Sprintf("; on %d held-out rows candidate %s scored %.3f, %s %.3f", ev.Rows, job.Candidate, ev.Candidate.Accuracy, job.Parent, ev.Parent.Accuracy)
	}
	if job.Rollout != "" {
		detail += "; rollout " + job.Rollout
	}
	return detail + res.note(), nil
}

// retrainFigures are a job's figures for the report.
func retrainFigures(j *api.RetrainJob) map[string]any {
	f := map[string]any{
		"id": j.ID, "state": j.State, "trigger": j.Trigger, "parent": j.Parent, "candidate": j.Candidate,
		"site": j.Site, "rollout": j.Rollout, "train_rows": j.TrainRows, "holdout_rows": j.HoldoutRows,
		"seconds": j.Updated.Sub(j.Created).Seconds(),
	}
	if d := j.Dataset; d != nil {
		f["dataset_rows"], f["dataset_labelled"], f["dataset_sha256"] = d.Rows, d.Labelled, d.SHA256
	}
	if ev := j.Evaluation; ev != nil {
		f["candidate_accuracy"], f["parent_accuracy"] = ev.Candidate.Accuracy, ev.Parent.Accuracy
	}
	return f
}

// retrainJob is the named job as the control plane has it now.
func retrainJob(env *Env, c *client.Client, name string) (*api.RetrainJob, error) {
	id, ok := env.retrains[name]
	if !ok {
		return nil, fmt.Errorf("no retrain job named %q was waited for (wait_retrain) before", name)
	}
	return c.RetrainJob(context.Background(), id)
}

// RetrainLineage: the named job's candidate says why it exists. Its
// lineage (GET /api/v1/models/{name}/lineage) names Parent as its parent,
// the job, a trigger containing Trigger (e.g. "alert:low_accuracy
// site=site-2"), the job's dataset and evaluation figures, and goes on to
// the parent; and the audit log links the alert (of the job's site, before
// the job) → retrain job → version → rollout.
type RetrainLineage struct {
	Job     string        `yaml:"job"`
	Parent  string        `yaml:"parent"`
	Trigger string        `yaml:"trigger"`
	Within  time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (r *RetrainLineage) Validate(*Scenario) error {
	if r.Job == "" || r.Parent == "" {
		return errors.New("job (a wait_retrain name) and parent are required")
	}
	return nil
}

// Deadline implements Assertion.
func (r *RetrainLineage) Deadline() time.Duration { return r.Within }

// Check implements Assertion.
func (r *RetrainLineage) Check(env *Env) (bool, string) {
	var why []string
	err := withAPI(env, func(c *client.Client) error {
		j, err := retrainJob(env, c, r.Job)
		if err != nil {
			return err
		}
		if j.Candidate == "" {
			return fmt.Errorf("retrain job %s published no candidate (%s: %s)", j.ID, j.State, j.Reason)
		}
		lin, err := c.Lineage(context.Background(), j.Model, j.Candidate)
		if err != nil {
			return fmt.Errorf("lineage of %s@%s: %w", j.Model, j.Candidate, err)
		}
		if len(lin.Chain) == 0 || lin.Chain[0].Version != j.Candidate {
			return fmt.Errorf("lineage of %s@%s does not start at it: %+v", j.Model, j.Candidate, lin.Chain)
		}
		e := lin.Chain[0]
		env.SetFigure("lineage_"+j.Candidate, e)
		if e.Parent != r.Parent {
			why = append(why, fmt.Sprintf("parent %q, want %q", e.Parent, r.Parent))
		}
		if len(lin.Chain) < 2 || lin.Chain[1].Version != r.Parent {
			why = append(why, fmt.Sprintf("the chain does not go on to %s: %d entries", r.Parent, len(lin.Chain)))
		}
		if !strings.Contains(e.Trigger, r.Trigger) {
			why = append(why, fmt.Sprintf("trigger %q does not contain %q", e.Trigger, r.Trigger))
		}
		if e.Job != j.ID {
			why = append(why, fmt.Sprintf("job %q, want %q", e.Job, j.ID))
		}
		if j.Dataset == nil || !slices.ContainsFunc(e.Datasets, func(d api.LineageDataset) bool { return d.SHA256 == j.Dataset.SHA256 }) {
			why = append(why, fmt.Sprintf("datasets %+v do not name the job's dataset", e.Datasets))
		}
		if len(e.Eval) == 0 {
			why = append(why, "no evaluation figures")
		}
		why = append(why, auditChain(env, j)...)
		return nil
	})
	if err != nil {
		return false, err.Error()
	}
	if len(why) > 0 {
		return false, fmt.Sprintf("lineage of the candidate of retrain job %s: %s", r.Job, strings.Join(why, "; "))
	}
	return true, ""
}

// auditChain checks the audit log links an alert of the job's site (the
// one that started it, stamped before it) to the job, its version and its
// rollout; it returns what is missing.
func auditChain(env *Env, j *api.RetrainJob) []string {
	cp := env.Fleet.ControlPlane()
	var why []string
	first, _, _ := strings.Cut(j.Trigger, " ")
	if rule, ok := strings.CutPrefix(first, "alert:"); ok {
		alerts, err := cp.Audit(api.AuditQuery{Action: "monitor.alert." + rule})
		if err != nil {
			return []string{err.Error()}
		}
		if !slices.ContainsFunc(alerts, func(e api.AuditEntry) bool {
			site, _ := e.Details["site"].(string)
			return strings.HasPrefix(e.Target, j.Model+"@") && site == j.Site && !e.Time.After(j.Created)
		}) {
			why = append(why, fmt.Sprintf("no audited %s alert of %s at site %q before job %s", rule, j.Model, j.Site, j.ID))
		}
	}
	for _, link := range []struct{ action, key, want string }{
		{"retrain.start", "trigger", j.Trigger},
		{"retrain.version", "version", j.Candidate},
		{"retrain.rollout", "rollout", j.Rollout},
	} {
		if link.want == "" {
			continue
		}
		es, err := cp.Audit(api.AuditQuery{Action: link.action, Target: j.ID})
		if err != nil {
			return append(why, err.Error())
		}
		if !slices.ContainsFunc(es, func(e api.AuditEntry) bool { return e.Details[link.key] == link.want }) {
			why = append(why, fmt.Sprintf("no %s audit entry of job %s with %s %q", link.action, j.ID, link.key, link.want))
		}
	}
	return why
}

// AccuracyRecovered: on the devices of Selector, whose traffic
// shift_traffic shifted (with the same selector), the version that served
// after the shift (Before) was less accurate on the labelled rows since the
// shift than the named retrain job's candidate has been since, by at least
// MinGain; each counted over at least MinLabelled labelled predictions
// (the control plane's monitoring). The monitoring buckets (a minute) are
// counted from the one holding the shift: a few rows from just before it,
// when Before was still right, may count, which can only make Before look
// better. The candidate's figures count only what it served, not its
// shadow scores. The report's figures get accuracy_before and
// accuracy_after.
type AccuracyRecovered struct {
	Model       string        `yaml:"model"`
	Selector    string        `yaml:"selector"`
	Before      string        `yaml:"before"`
	Job         string        `yaml:"job"`
	MinGain     float64       `yaml:"min_gain"`
	MinLabelled uint64        `yaml:"min_labelled"`
	Within      time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (a *AccuracyRecovered) Validate(sc *Scenario) error {
	if a.Model == "" || a.Selector == "" || a.Before == "" || a.Job == "" {
		return errors.New("model, selector, before and job are required")
	}
	if a.MinGain < 0 || a.MinGain > 1 || a.MinLabelled == 0 {
		return errors.New("min_gain must be in [0, 1] and min_labelled positive")
	}
	if sc.Traffic == nil || sc.Traffic.LabelFraction <= 0 {
		return errors.New("needs traffic with a label_fraction: without labels there is no accuracy")
	}
	return nil
}

// Deadline implements Assertion.
func (a *AccuracyRecovered) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *AccuracyRecovered) Check(env *Env) (bool, string) {
	shifted, ok := env.Shifted(a.Selector)
	if !ok {
		return false, fmt.Sprintf("shift_traffic never shifted selector %q", a.Selector)
	}
	since := shifted.Truncate(monitor.DefaultRawBucket)
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	ids := map[string]bool{}
	for _, m := range ms {
		ids[m.Device.ID] = true
	}
	var before, after api.MetricsFigures
	var candidate string
	err = withAPI(env, func(c *client.Client) error {
		j, err := retrainJob(env, c, a.Job)
		if err != nil {
			return err
		}
		if candidate = j.Candidate; candidate == "" {
			return fmt.Errorf("retrain job %s published no candidate (%s: %s)", j.ID, j.State, j.Reason)
		}
		if before, err = devicesFigures(c, a.Model, a.Before, since, ids); err != nil {
			return err
		}
		after, err = devicesFigures(c, a.Model, candidate, since, ids)
		return err
	})
	if err != nil {
		return false, err.Error()
	}
	accB, accA := accuracy(before), accuracy(after)
	env.SetFigure("accuracy_before", map[string]any{"version": a.Before, "accuracy": accB, "labelled": before.Labelled, "devices": before.Devices})
	env.SetFigure("accuracy_after", map[string]any{"version": candidate, "accuracy": accA, "labelled": after.Labelled, "devices": after.Devices})
	switch {
	case before.Labelled < a.MinLabelled || after.Labelled < a.MinLabelled:
		return false, fmt.Sprintf("on %s since the shift %s@%s has %d labelled predictions and %s %d, want at least %d each",
			a.Selector, a.Model, a.Before, before.Labelled, candidate, after.Labelled, a.MinLabelled)
	case accA < accB+a.MinGain:
		return false, fmt.Sprintf("on %s since the shift %s@%s scored %.3f (%d labelled) and %s %.3f (%d labelled): not %v better",
			a.Selector, a.Model, a.Before, accB, before.Labelled, candidate, accA, after.Labelled, a.MinGain)
	}
	return true, ""
}

func accuracy(f api.MetricsFigures) float64 {
	if f.Labelled == 0 {
		return 0
	}
	return float64(f.Correct) / float64(f.Labelled)
}

// devicesFigures sums model@version's monitoring figures of the devices in
// ids since from.
func devicesFigures(c *client.Client, model, version string, from time.Time, ids map[string]bool) (api.MetricsFigures, error) {
	res, err := c.ModelMetrics(context.Background(), model, version, api.MetricsQuery{From: from, Points: 1})
	if err != nil {
		return api.MetricsFigures{}, fmt.Errorf("monitoring figures of %s@%s: %w", model, version, err)
	}
	var sum api.MetricsFigures
	for _, d := range res.Devices {
		if !ids[d.Key] {
			continue
		}
		sum.Devices++
		sum.Rows += d.Rows
		sum.Labelled += d.Labelled
		sum.Correct += d.Correct
	}
	return sum, nil
}
