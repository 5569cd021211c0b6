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
)

// Staged rollouts (controlplane/rollout), through the fleet's control
// plane: the in-process one, or an external one's REST API. A rollout is
// named in the scenario; the name maps to the id the control plane gave
// it.

func registerRollouts(r *Registry) {
	r.RegisterAction("create_rollout", func() Action { return &CreateRollout{} })
	r.RegisterAction("rollout_action", func() Action { return &RolloutAction{} })
	r.RegisterAction("wait_rollout", func() Action { return &WaitRollout{} })
	r.RegisterAssertion("rollout_state", func() Assertion { return &RolloutState{} })
	r.RegisterAssertion("max_attempted", func() Assertion { return &MaxAttempted{} })
	r.RegisterAssertion("rollout_stage_times", func() Assertion { return &RolloutStageTimes{} })
	r.RegisterAssertion("alerts", func() Assertion { return &Alerts{} })
	r.RegisterAssertion("no_telemetry_lost", func() Assertion { return &NoTelemetryLost{} })
	r.RegisterAssertion("refused_desired", func() Assertion { return &RefusedDesired{} })
}

// RolloutSpec is a api.RolloutSpec written in YAML: the same keys as the
// REST API's JSON (model, version, selector, stages, bake, gates,
// on_breach, auto_promote, ...), checked strictly.
type RolloutSpec struct {
	spec api.RolloutSpec
}

// UnmarshalYAML decodes the mapping through JSON so the API's own field
// names and types apply; unknown keys are errors.
func (s *RolloutSpec) UnmarshalYAML(n *yaml.Node) error {
	var generic any
	if err := n.Decode(&generic); err != nil {
		return err
	}
	b, err := json.Marshal(jsonable(generic))
	if err != nil {
		return fmt.Errorf("line %d: rollout spec: %v", n.Line, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s.spec); err != nil {
		return fmt.Errorf("line %d: rollout spec: %v", n.Line, err)
	}
	return nil
}

// jsonable turns yaml's map[string]any trees into JSON-encodable values.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	default:
		return v
	}
}

// CreateRollout starts a staged rollout.
type CreateRollout struct {
	// Name is how later steps refer to the rollout.
	Name string      `yaml:"name"`
	Spec RolloutSpec `yaml:"spec"`
}

// Validate implements the optional validation.
func (c *CreateRollout) Validate(*Scenario) error {
	if c.Name == "" {
		return errors.New("name is required")
	}
	return c.Spec.spec.Validate()
}

// Run implements Action.
func (c *CreateRollout) Run(ctx context.Context, env *Env) (string, error) {
	st, err := env.Fleet.ControlPlane().CreateRollout(ctx, c.Spec.spec, "fleet-sim")
	if err != nil {
		return "", err
	}
	env.rollouts[c.Name] = st.ID
	return fmt.Sprintf("rollout %s (%s) of %s@%s: %d stages, %s", c.Name, st.ID, c.Spec.spec.Model, c.Spec.spec.Version, len(st.Stages), st.State), nil
}

func rolloutID(env *Env, name string) (string, error) {
	id, ok := env.rollouts[name]
	if !ok {
		return "", fmt.Errorf("no rollout named %q was created before this step", name)
	}
	return id, nil
}

// rolloutStatus is the named rollout's status (without its devices).
func rolloutStatus(env *Env, name string) (*api.Rollout, error) {
	id, err := rolloutID(env, name)
	if err != nil {
		return nil, err
	}
	return env.Fleet.ControlPlane().Rollout(id, false)
}

// RolloutAction pauses, resumes, promotes, aborts or rolls back a rollout.
type RolloutAction struct {
	Rollout string            `yaml:"rollout"`
	Action  api.RolloutAction `yaml:"action"`
	// Selector or Device narrow a rollback.
	Selector string `yaml:"selector"`
	Device   string `yaml:"device"`
}

// Validate implements the optional validation.
func (r *RolloutAction) Validate(*Scenario) error {
	if r.Rollout == "" || r.Action == "" {
		return errors.New("rollout and action are required")
	}
	switch r.Action {
	case api.ActionPause, api.ActionResume, api.ActionPromote, api.ActionAbort:
		if r.Selector != "" || r.Device != "" {
			return fmt.Errorf("selector and device narrow a rollback only, not %s", r.Action)
		}
	case api.ActionRollback:
	default:
		return fmt.Errorf("action %q: want pause, resume, promote, abort or rollback", r.Action)
	}
	return nil
}

// Run implements Action.
func (r *RolloutAction) Run(ctx context.Context, env *Env) (string, error) {
	id, err := rolloutID(env, r.Rollout)
	if err != nil {
		return "", err
	}
	st, err := env.Fleet.ControlPlane().RolloutAction(ctx, id, r.Action, api.RollbackRequest{Selector: r.Selector, Device: r.Device}, "fleet-sim")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("rollout %s: %s → %s", r.Rollout, r.Action, st.State), nil
}

// WaitRollout waits until a rollout is in one of States. Its timeout and
// max_timeout work as every wait's (see WaitLimits); besides the fleet's
// progress, a change of the rollout's state, stage or stage device counts
// is progress.
type WaitRollout struct {
	Rollout    string   `yaml:"rollout"`
	States     []string `yaml:"states"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitRollout) Validate(*Scenario) error {
	if w.Rollout == "" || len(w.States) == 0 {
		return errors.New("rollout and states are required")
	}
	return w.WaitLimits.validate()
}

// Run implements Action.
func (w *WaitRollout) Run(ctx context.Context, env *Env) (string, error) {
	check := &RolloutState{Rollout: w.Rollout, States: w.States}
	var why string
	start := env.Since()
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits, progress: rolloutProgress(env, w.Rollout)}, func() bool {
		var ok bool
		ok, why = check.Check(env)
		return ok
	})
	if err != nil {
		return "", fmt.Errorf("%s; %w", why, err)
	}
	return fmt.Sprintf("rollout %s reached %v after %.2fs%s", w.Rollout, w.States, (env.Since() - start).Seconds(), res.note()), nil
}

// rolloutProgress counts changes of the named rollout's state, current
// stage, and each stage's result and device counts (except offline: a
// device dropping out is not progress).
func rolloutProgress(env *Env, name string) func() uint64 {
	var last string
	var changes uint64
	return func() uint64 {
		st, err := rolloutStatus(env, name)
		if err != nil {
			return changes
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %d", st.State, st.Stage)
		for _, s := range st.Stages {
			d := s.Devices
			fmt.Fprintf(&b, "|%s %d %d %d %d %d %d", s.Result, d.Assigned, d.Pending, d.Downloading, d.Active, d.Failed, d.RolledBack)
		}
		if fp := b.String(); fp != last {
			last = fp
			changes++
		}
		return changes
	}
}

// RolloutState: the rollout is (eventually, with Within) in one of States.
type RolloutState struct {
	Rollout string        `yaml:"rollout"`
	States  []string      `yaml:"states"`
	Within  time.Duration `yaml:"within"`
	// Reason, if set, must appear in the rollout's reason (e.g. the gate
	// that stopped it).
	Reason string `yaml:"reason"`
}

// Validate implements the optional validation.
func (r *RolloutState) Validate(*Scenario) error {
	if r.Rollout == "" || len(r.States) == 0 {
		return errors.New("rollout and states are required")
	}
	return nil
}

// Deadline implements Assertion.
func (r *RolloutState) Deadline() time.Duration { return r.Within }

// Check implements Assertion.
func (r *RolloutState) Check(env *Env) (bool, string) {
	st, err := rolloutStatus(env, r.Rollout)
	if err != nil {
		return false, err.Error()
	}
	if slices.Contains(r.States, string(st.State)) {
		if r.Reason == "" || strings.Contains(st.Reason, r.Reason) {
			return true, ""
		}
		return false, fmt.Sprintf("rollout %s is %s as wanted, but its reason %q does not mention %q", r.Rollout, st.State, st.Reason, r.Reason)
	}
	var stages []string
	for _, s := range st.Stages {
		stage := fmt.Sprintf("%s %+v", s.Name, s.Devices)
		if s.Waiting != "" {
			stage += " waiting for " + s.Waiting
		}
		stages = append(stages, stage)
	}
	why := fmt.Sprintf("rollout %s is %s, want one of %v", r.Rollout, st.State, r.States)
	if st.Reason != "" {
		why += " (" + st.Reason + ")"
	}
	return false, why + "; stages: " + strings.Join(stages, "; ")
}

// MaxAttempted: at most Max (and at least Min) devices ever targeted,
// served or refused model@version (as sampled): "no device outside the
// canary got v2, and the canary did".
type MaxAttempted struct {
	Model   string `yaml:"model"`
	Version string `yaml:"version"`
	Max     int    `yaml:"max"`
	Min     int    `yaml:"min"`
}

// Validate implements the optional validation.
func (m *MaxAttempted) Validate(*Scenario) error {
	if m.Model == "" || m.Version == "" || m.Max < 0 || m.Min < 0 || m.Min > m.Max {
		return errors.New("model and version are required, 0 ≤ min ≤ max")
	}
	return nil
}

// Deadline implements Assertion.
func (m *MaxAttempted) Deadline() time.Duration { return 0 }

// Check implements Assertion.
func (m *MaxAttempted) Check(env *Env) (bool, string) {
	got := env.rec.attemptedBy(m.Model + "@" + m.Version)
	if len(got) > m.Max {
		shown := got[:min(len(got), 10)]
		return false, fmt.Sprintf("%d devices got %s@%s, want at most %d: %v", len(got), m.Model, m.Version, m.Max, shown)
	}
	if len(got) < m.Min {
		return false, fmt.Sprintf("only %d devices got %s@%s, want at least %d: %v", len(got), m.Model, m.Version, m.Min, got)
	}
	return true, ""
}

// RolloutStageTimes: every stage of the rollout passed and took between
// Min and Max (0: no bound) on the control plane's clock, from its start
// to the decision that it passed (its rollout state), and the audit log
// agrees: each stage's rollout.stage_passed entry is stamped at least Min
// after that stage started. With a simulated clock it shows that bake
// times were honoured in simulated time. The report's figures get
// rollout_<name>_stage_seconds.
type RolloutStageTimes struct {
	Rollout string        `yaml:"rollout"`
	Min     time.Duration `yaml:"min"`
	Max     time.Duration `yaml:"max"`
	Within  time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (r *RolloutStageTimes) Validate(*Scenario) error {
	if r.Rollout == "" || r.Min < 0 || r.Max < 0 || (r.Max > 0 && r.Max < r.Min) {
		return errors.New("rollout is required, 0 ≤ min ≤ max (max 0: no bound)")
	}
	return nil
}

// Deadline implements Assertion.
func (r *RolloutStageTimes) Deadline() time.Duration { return r.Within }

// Check implements Assertion.
func (r *RolloutStageTimes) Check(env *Env) (bool, string) {
	st, err := rolloutStatus(env, r.Rollout)
	if err != nil {
		return false, err.Error()
	}
	var bad offenders
	secs := map[string]float64{}
	for _, s := range st.Stages {
		if s.Result != "passed" || s.Started.IsZero() || s.Finished.IsZero() {
			bad.add("stage %s has not passed (result %q, waiting %q)", s.Name, s.Result, s.Waiting)
			continue
		}
		d := s.Finished.Sub(s.Started)
		secs[s.Name] = d.Seconds()
		switch {
		case d < r.Min:
			bad.add("stage %s passed %v after it started, before %v", s.Name, d, r.Min)
		case r.Max > 0 && d > r.Max:
			bad.add("stage %s passed %v after it started, later than %v", s.Name, d, r.Max)
		}
	}
	env.SetFigure("rollout_"+r.Rollout+"_stage_seconds", secs)
	if bad.n > 0 {
		return false, fmt.Sprintf("rollout %s (%s): %s", r.Rollout, st.State, &bad)
	}
	// The audit log stamps an entry when it is written, just after the
	// decision it records.
	entries, err := env.Fleet.ControlPlane().Audit(api.AuditQuery{Action: "rollout.stage_passed", Target: st.ID})
	if err != nil {
		return false, err.Error()
	}
	if len(entries) != len(st.Stages) {
		return false, fmt.Sprintf("rollout %s: the audit log has %d rollout.stage_passed entries for %d stages", r.Rollout, len(entries), len(st.Stages))
	}
	for i, e := range entries {
		s := st.Stages[i]
		if d := e.Time.Sub(s.Started); d < r.Min {
			bad.add("stage %s: audited as passed %v after it started, before %v", s.Name, d, r.Min)
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("rollout %s (%s): %s", r.Rollout, st.State, &bad)
	}
	return true, ""
}
