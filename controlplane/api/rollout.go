package api

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/internal/labels"
)

// RolloutState is a rollout's lifecycle state.
type RolloutState string

// Rollout states. Completed, Aborted, RolledBack and Failed are terminal.
const (
	RolloutPending          RolloutState = "pending"
	RolloutRunning          RolloutState = "running"
	RolloutPaused           RolloutState = "paused"
	RolloutWaitingPromotion RolloutState = "waiting-promotion"
	RolloutCompleted        RolloutState = "completed"
	RolloutAborted          RolloutState = "aborted"
	RolloutRolledBack       RolloutState = "rolled-back"
	RolloutFailed           RolloutState = "failed"
)

// Terminal reports whether nothing more happens to a rollout in state s.
func (s RolloutState) Terminal() bool {
	switch s {
	case RolloutCompleted, RolloutAborted, RolloutRolledBack, RolloutFailed:
		return true
	}
	return false
}

// RolloutStates lists every rollout state, in lifecycle order.
func RolloutStates() []RolloutState {
	return []RolloutState{RolloutPending, RolloutRunning, RolloutPaused, RolloutWaitingPromotion,
		RolloutCompleted, RolloutAborted, RolloutRolledBack, RolloutFailed}
}

// RolloutAction is an operation on a running rollout: POST
// /api/v1/rollouts/{id}/{action}.
type RolloutAction string

// The rollout actions.
const (
	ActionPause    RolloutAction = "pause"
	ActionResume   RolloutAction = "resume"
	ActionPromote  RolloutAction = "promote"
	ActionAbort    RolloutAction = "abort"
	ActionRollback RolloutAction = "rollback"
)

// Allows reports whether action may be applied to a rollout in state s:
// pause before the rollout ends, resume when paused, promote while it
// runs or waits for promotion, abort before it ends, and roll back unless
// it was rolled back already (a rollback narrowed to a group or a device
// also needs devices still on the version). The engine enforces this; the
// console shows only the actions it allows.
func (s RolloutState) Allows(action RolloutAction) bool {
	switch action {
	case ActionPause:
		return s == RolloutPending || s == RolloutRunning || s == RolloutWaitingPromotion
	case ActionResume:
		return s == RolloutPaused
	case ActionPromote:
		return s == RolloutRunning || s == RolloutWaitingPromotion
	case ActionAbort:
		return !s.Terminal()
	case ActionRollback:
		return s != RolloutRolledBack
	}
	return false
}

// RolloutActions lists every action.
func RolloutActions() []RolloutAction {
	return []RolloutAction{ActionPause, ActionResume, ActionPromote, ActionAbort, ActionRollback}
}

// What a rollout does when a stage's gate is breached (RolloutSpec.OnBreach).
const (
	OnBreachPause    = "pause"
	OnBreachRollback = "rollback"
)

// Site-aware wave orders (RolloutSpec.Sites).
const (
	SitesSpread     = "spread"
	SitesOneAtATime = "one-at-a-time"
	// DefaultSiteLabel is the device label naming a device's site.
	DefaultSiteLabel = "site"
)

// Limits and defaults of a rollout spec.
const (
	MaxStages       = 32
	MaxStageDevices = 10_000
	MaxWindows      = 24
	maxNameLen      = 128
	DefaultBake     = 5 * time.Minute
)

// Duration is a time.Duration written as a Go duration string ("30s") in
// JSON and YAML; a JSON number is taken as nanoseconds.
type Duration time.Duration

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30s" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want e.g. \"30s\" or \"5m\"", s)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration %s: want a string such as \"30s\"", b)
	}
	*d = Duration(n)
	return nil
}

// RolloutStage is one wave of a spec. Exactly one of Canary, Devices,
// Percent and Selector says which devices it adds; a stage's cohort is
// cumulative (it includes every earlier stage's devices).
type RolloutStage struct {
	// Name is shown in status; default "stage N".
	Name string `json:"name,omitempty"`
	// Canary is a number of devices, picked in the rollout's stable random
	// order.
	Canary int `json:"canary,omitempty"`
	// Devices are explicit device ids (only those matching the rollout's
	// selector are used).
	Devices []string `json:"devices,omitempty"`
	// Percent of the target devices, in the stable random order (0 < p <= 100).
	Percent float64 `json:"percent,omitempty"`
	// Selector is a label group within the target, e.g. "site=b".
	Selector string `json:"selector,omitempty"`
	// Bake is how long the stage runs before its gates are evaluated;
	// 0 means the rollout's Bake.
	Bake Duration `json:"bake,omitempty"`
	// MinDevices is how many devices must have reported on the version
	// (active or failed) before the gates are evaluated; 0 means every
	// online device of the cohort (and at least one).
	MinDevices int `json:"min_devices,omitempty"`
	// Gates override the rollout's gates for this stage.
	Gates *Gates `json:"gates,omitempty"`
	// Shadow runs the version in shadow on the stage's devices: they keep
	// serving their version (the champion) and score every request with
	// this one too (the challenger), reporting agreement and, from labels,
	// both versions' accuracy. The stage passes only on the shadow gate
	// (Gates.ShadowMargin over MinLabelled rows); the next stage serves
	// the version on them. Shadow stages come first, and the last stage is
	// not one.
	Shadow bool `json:"shadow,omitempty"`
}

// Kind describes what a stage adds, for display: "canary 1", "percent 50",
// "devices d1,d2", "group site=b".
func (s RolloutStage) Kind() string {
	switch {
	case s.Canary > 0:
		return fmt.Sprintf("canary %d", s.Canary)
	case len(s.Devices) > 0:
		return "devices " + strings.Join(s.Devices, ",")
	case s.Percent > 0:
		return fmt.Sprintf("percent %g", s.Percent)
	}
	return "group " + s.Selector
}

// KindShadow is Kind with " (shadow)" for a shadow stage.
func (s RolloutStage) KindShadow() string {
	if s.Shadow {
		return s.Kind() + " (shadow)"
	}
	return s.Kind()
}

// Gates are the checks a stage must pass. Nil limits are not checked.
type Gates struct {
	// MaxFailureRate is the highest allowed fraction of reporting devices
	// that failed to install or activate the version.
	MaxFailureRate *float64 `json:"max_failure_rate,omitempty"`
	// MaxOfflineFraction is the highest allowed fraction of the cohort offline.
	MaxOfflineFraction *float64 `json:"max_offline_fraction,omitempty"`
	// MaxAccuracyDrop is how much lower than the replaced version's the
	// new version's accuracy may be (0.02 = two points).
	MaxAccuracyDrop *float64 `json:"max_accuracy_drop,omitempty"`
	// MaxDriftScore is the highest allowed drift score of the new version.
	MaxDriftScore *float64 `json:"max_drift_score,omitempty"`
	// MinLabelled is how many labelled predictions the quality gates need
	// (for each of the two versions compared); 0 means 100. A shadow stage
	// needs as many labelled rows scored by both versions.
	MinLabelled int `json:"min_labelled,omitempty"`
	// ShadowMargin is how much higher than the champion's the challenger's
	// accuracy must be, on the same labelled rows, for a shadow stage to
	// pass (0.01 = one point; negative allows it to be that much lower);
	// nil means 0: at least as good.
	ShadowMargin *float64 `json:"shadow_margin,omitempty"`
}

// RolloutSpec is what an operator asks for: the body of POST
// /api/v1/rollouts.
type RolloutSpec struct {
	Model    string         `json:"model"`
	Version  string         `json:"version"`
	Selector string         `json:"selector"`
	Stages   []RolloutStage `json:"stages"`
	// Capture, if set, becomes the model's capture policy when the
	// rollout is created (field data capture; see CapturePolicy).
	Capture *CapturePolicy `json:"capture,omitempty"`
	// Bake is the default bake time of a stage; default DefaultBake.
	Bake  Duration `json:"bake,omitempty"`
	Gates Gates    `json:"gates"`
	// OnBreach is OnBreachPause (default) or OnBreachRollback.
	OnBreach string `json:"on_breach,omitempty"`
	// AutoPromote moves to the next stage when one passes; otherwise the
	// rollout waits for promote.
	AutoPromote bool `json:"auto_promote,omitempty"`
	// StartAt delays the first stage; zero starts at once.
	StartAt time.Time `json:"start_at,omitzero"`
	// Windows are daily maintenance windows in UTC, "HH:MM-HH:MM" (may
	// wrap midnight). When set, devices are only assigned and stages only
	// pass inside a window; breaches are acted on at any time.
	Windows []string `json:"windows,omitempty"`
	// MaxPerMinute limits how many devices are assigned per minute; 0
	// means no limit.
	MaxPerMinute int `json:"max_devices_per_minute,omitempty"`
	// Sites makes waves site-aware: SitesSpread spreads every wave across
	// the sites, SitesOneAtATime fills one site before the next. Empty
	// ignores sites.
	Sites string `json:"sites,omitempty"`
	// SiteLabel is the device label naming the site; default
	// DefaultSiteLabel.
	SiteLabel string `json:"site_label,omitempty"`
}

func invalidf(format string, args ...any) error { return Errorf(ErrInvalid, format, args...) }

// ParseWindow reads "HH:MM-HH:MM" as minutes after midnight.
func ParseWindow(w string) (from, to int, err error) {
	a, b, ok := strings.Cut(w, "-")
	if !ok {
		return 0, 0, fmt.Errorf("window %q: want HH:MM-HH:MM (UTC)", w)
	}
	parse := func(s string) (int, error) {
		t, err := time.Parse("15:04", strings.TrimSpace(s))
		if err != nil {
			return 0, fmt.Errorf("window %q: %q is not HH:MM", w, s)
		}
		return t.Hour()*60 + t.Minute(), nil
	}
	if from, err = parse(a); err != nil {
		return 0, 0, err
	}
	if to, err = parse(b); err != nil {
		return 0, 0, err
	}
	if from == to {
		return 0, 0, fmt.Errorf("window %q is empty", w)
	}
	return from, to, nil
}

// InWindow reports whether t falls in one of s's windows (true without any).
func (s *RolloutSpec) InWindow(t time.Time) bool {
	if len(s.Windows) == 0 {
		return true
	}
	t = t.UTC()
	m := t.Hour()*60 + t.Minute()
	for _, w := range s.Windows {
		from, to, err := ParseWindow(w)
		if err != nil {
			continue
		}
		if from < to && m >= from && m < to || from > to && (m >= from || m < to) {
			return true
		}
	}
	return false
}

// Validate checks s and fills defaults; errors are ErrInvalid and name the
// field.
func (s *RolloutSpec) Validate() error {
	if s.Model == "" || s.Version == "" {
		return invalidf("model and version are required")
	}
	if len(s.Model) > maxNameLen || len(s.Version) > maxNameLen {
		return invalidf("model or version longer than %d characters", maxNameLen)
	}
	if s.Selector == "" {
		return invalidf("selector is required (e.g. \"fleet=demo\"); it picks the target devices")
	}
	if _, err := labels.Parse(s.Selector); err != nil {
		return invalidf("selector: %v", err)
	}
	if len(s.Stages) == 0 {
		return invalidf("at least one stage is required (e.g. canary 1, then percent 100)")
	}
	if len(s.Stages) > MaxStages {
		return invalidf("%d stages, max %d", len(s.Stages), MaxStages)
	}
	switch s.OnBreach {
	case "":
		s.OnBreach = OnBreachPause
	case OnBreachPause, OnBreachRollback:
	default:
		return invalidf("on_breach %q: want \"pause\" or \"rollback\"", s.OnBreach)
	}
	if s.Bake < 0 {
		return invalidf("bake %v is negative", time.Duration(s.Bake))
	}
	if s.Bake == 0 {
		s.Bake = Duration(DefaultBake)
	}
	if len(s.Windows) > MaxWindows {
		return invalidf("%d windows, max %d", len(s.Windows), MaxWindows)
	}
	for _, w := range s.Windows {
		if _, _, err := ParseWindow(w); err != nil {
			return invalidf("%v", err)
		}
	}
	if s.MaxPerMinute < 0 {
		return invalidf("max_devices_per_minute %d is negative", s.MaxPerMinute)
	}
	switch s.Sites {
	case "", SitesSpread, SitesOneAtATime:
	default:
		return invalidf("sites %q: want %q or %q", s.Sites, SitesSpread, SitesOneAtATime)
	}
	if s.Sites != "" && s.SiteLabel == "" {
		s.SiteLabel = DefaultSiteLabel
	}
	if err := s.Gates.validate("gates"); err != nil {
		return err
	}
	for i, st := range s.Stages {
		switch {
		case st.Shadow && i == len(s.Stages)-1:
			return invalidf("stage %d: the last stage cannot be a shadow stage: a later stage must serve the version", i+1)
		case st.Shadow && i > 0 && !s.Stages[i-1].Shadow:
			return invalidf("stage %d: a shadow stage cannot follow a stage that serves the version", i+1)
		}
	}
	for i := range s.Stages {
		st := &s.Stages[i]
		where := fmt.Sprintf("stage %d", i+1)
		kinds := 0
		if st.Canary != 0 {
			kinds++
			if st.Canary < 0 {
				return invalidf("%s: canary %d is negative", where, st.Canary)
			}
		}
		if len(st.Devices) > 0 {
			kinds++
			if len(st.Devices) > MaxStageDevices {
				return invalidf("%s: %d devices, max %d", where, len(st.Devices), MaxStageDevices)
			}
		}
		if st.Percent != 0 {
			kinds++
			if math.IsNaN(st.Percent) || st.Percent <= 0 || st.Percent > 100 {
				return invalidf("%s: percent %v must be in (0, 100]", where, st.Percent)
			}
		}
		if st.Selector != "" {
			kinds++
			if _, err := labels.Parse(st.Selector); err != nil {
				return invalidf("%s: selector: %v", where, err)
			}
		}
		if kinds != 1 {
			return invalidf("%s: give exactly one of canary, devices, percent or selector", where)
		}
		if st.Bake < 0 || st.MinDevices < 0 {
			return invalidf("%s: bake and min_devices must not be negative", where)
		}
		if st.Gates != nil {
			if err := st.Gates.validate(where + " gates"); err != nil {
				return err
			}
		}
		if st.Name == "" {
			st.Name = fmt.Sprintf("stage %d", i+1)
		}
	}
	return nil
}

func (g *Gates) validate(where string) error {
	for _, f := range []struct {
		name string
		v    *float64
	}{
		{"max_failure_rate", g.MaxFailureRate},
		{"max_offline_fraction", g.MaxOfflineFraction},
	} {
		if f.v != nil && (math.IsNaN(*f.v) || *f.v < 0 || *f.v > 1) {
			return invalidf("%s: %s %v must be a fraction in [0, 1]", where, f.name, *f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{
		{"max_accuracy_drop", g.MaxAccuracyDrop},
		{"max_drift_score", g.MaxDriftScore},
	} {
		if f.v != nil && (math.IsNaN(*f.v) || math.IsInf(*f.v, 0) || *f.v < 0) {
			return invalidf("%s: %s %v must be a non-negative number", where, f.name, *f.v)
		}
	}
	if g.MinLabelled < 0 {
		return invalidf("%s: min_labelled %d is negative", where, g.MinLabelled)
	}
	if v := g.ShadowMargin; v != nil && (math.IsNaN(*v) || *v < -1 || *v > 1) {
		return invalidf("%s: shadow_margin %v must be in [-1, 1]", where, *v)
	}
	return nil
}

// GateStatus is a gate's verdict.
type GateStatus string

// Gate verdicts.
const (
	GatePass    GateStatus = "pass"
	GateBreach  GateStatus = "breach"
	GateWaiting GateStatus = "waiting"
)

// GateResult is one gate's last evaluation.
type GateResult struct {
	Gate   string     `json:"gate"`
	Limit  float64    `json:"limit"`
	Value  float64    `json:"value"`
	Status GateStatus `json:"status"`
	Detail string     `json:"detail,omitempty"`
}

// Stage results (StageProgress.Result).
const (
	StagePassed   = "passed"
	StagePromoted = "promoted" // by an operator
	StageBreached = "breached"
)

// StageProgress is what happened in one stage.
type StageProgress struct {
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Result is "", StagePassed, StagePromoted or StageBreached.
	Result string `json:"result,omitempty"`
	// Gates is the last evaluation (kept when the stage finished).
	Gates []GateResult `json:"gates,omitempty"`
	// Waiting says what the stage waits for, if anything.
	Waiting string `json:"waiting,omitempty"`
	// Shadow are a shadow stage's comparison figures (last evaluation).
	Shadow *ShadowFigures `json:"shadow,omitempty"`
}

// ShadowFigures compare a challenger scored in shadow with the champions
// serving on a stage's devices, since the stage started.
type ShadowFigures struct {
	// DevicesReady have the challenger loaded and scoring; DevicesFailed
	// refused it (Failures holds a few of their reasons).
	DevicesReady  int      `json:"devices_ready"`
	DevicesFailed int      `json:"devices_failed"`
	Failures      []string `json:"failures,omitempty"`
	// Rows scored by both versions, and the fraction whose predicted
	// class agrees; MeanScoreDiff is the mean |champion - challenger|
	// score per row.
	Rows          uint64  `json:"rows"`
	Agreement     float64 `json:"agreement"`
	MeanScoreDiff float64 `json:"mean_score_diff"`
	// Skipped requests were not scored in shadow (the device's shadow
	// queue was full); Errors are failed challenger inferences.
	Skipped uint64 `json:"skipped"`
	Errors  uint64 `json:"errors"`
	// Labelled rows scored by both, and each version's accuracy on them.
	Labelled           uint64  `json:"labelled"`
	ChampionAccuracy   float64 `json:"champion_accuracy"`
	ChallengerAccuracy float64 `json:"challenger_accuracy"`
	// ChallengerLatencyP50Ms and P99Ms estimate the challenger's inference
	// time per request from the agents' histograms: in a version's
	// metrics only (the gate does not judge latency), and absent when the
	// agents are older than the histogram.
	ChallengerLatencyP50Ms float64 `json:"challenger_latency_p50_ms,omitempty"`
	ChallengerLatencyP99Ms float64 `json:"challenger_latency_p99_ms,omitempty"`
}

// DeviceCounts are a stage's devices by where they stand with the version.
type DeviceCounts struct {
	Assigned    int `json:"assigned"`
	Pending     int `json:"pending"`
	Downloading int `json:"downloading"`
	Active      int `json:"active"`
	Failed      int `json:"failed"`
	RolledBack  int `json:"rolled_back"`
	Offline     int `json:"offline"`
}

// StageStatus is one stage's spec, progress, devices and gate results.
type StageStatus struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	// Current marks the stage the rollout is in.
	Current bool `json:"current,omitempty"`
	StageProgress
	// Devices counts the devices this stage assigned.
	Devices DeviceCounts `json:"devices"`
}

// RolloutDevice is what a rollout remembers about one device it assigned.
type RolloutDevice struct {
	// Stage is the index of the stage that assigned the device.
	Stage int `json:"stage"`
	// Previous is the version the device was meant to run before; "" if none.
	Previous string `json:"previous,omitempty"`
	// Want is the version the rollout wants on the device; Issued is the
	// version whose desired state was last issued for it.
	Want   string `json:"want"`
	Issued string `json:"issued,omitempty"`
	// Generation of the desired state that carried Issued.
	Generation uint64 `json:"generation,omitempty"`
	// RolledBack: the device was sent back to Previous and is out of the
	// rollout.
	RolledBack bool `json:"rolled_back,omitempty"`
	// Shadow: the device scores Want in shadow and serves Previous (a
	// shadow stage); Want "" withdraws the shadow.
	Shadow bool `json:"shadow,omitempty"`
}

// Rollout is a rollout as the API shows it: its spec, state and per-stage
// status; Devices only when asked for (?devices=true).
type Rollout struct {
	ID      string        `json:"id"`
	Spec    RolloutSpec   `json:"spec"`
	State   RolloutState  `json:"state"`
	Reason  string        `json:"reason,omitempty"`
	Stage   int           `json:"stage"` // index of the current stage
	Created time.Time     `json:"created"`
	Updated time.Time     `json:"updated"`
	Stages  []StageStatus `json:"stages"`
	// Devices are the devices the rollout assigned, by id.
	Devices map[string]RolloutDevice `json:"devices,omitempty"`
}

// DeviceIDs returns the ids of Devices, sorted.
func (r *Rollout) DeviceIDs() []string {
	ids := make([]string, 0, len(r.Devices))
	for id := range r.Devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// RollbackRequest narrows a rollback (the optional body of POST
// /api/v1/rollouts/{id}/rollback): Selector picks a label group of the
// rollout's devices, Device one device; both empty roll back everything.
type RollbackRequest struct {
	Selector string `json:"selector,omitempty"`
	Device   string `json:"device,omitempty"`
}
