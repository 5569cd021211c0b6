package scenario

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// MonitorSpec sets the in-process control plane's alert rules (an external
// control plane's are its own configuration: Scenario.CheckTarget refuses
// the section with RunOptions.Remote).
type MonitorSpec struct {
	// Interval between alert evaluations, in real time (a ticker); default
	// 1s in a scenario.
	Interval time.Duration `yaml:"interval"`
	// Window the rules evaluate, on the control plane's clock (simulated
	// time); default 30s in a scenario.
	Window          time.Duration `yaml:"window"`
	MaxPSI          float64       `yaml:"max_psi"`
	MinAccuracy     float64       `yaml:"min_accuracy"`
	MaxAccuracyDrop float64       `yaml:"max_accuracy_drop"`
	MinRows         uint64        `yaml:"min_rows"`
	MinLabels       uint64        `yaml:"min_labels"`
}

func (m *MonitorSpec) options() monitor.Config {
	if m == nil {
		return monitor.Config{}
	}
	o := monitor.Config{Interval: m.Interval, Rules: monitor.Rules{
		Window: m.Window, MaxPSI: m.MaxPSI, MinAccuracy: m.MinAccuracy, MaxAccuracyDrop: m.MaxAccuracyDrop,
		MinRows: m.MinRows, MinLabels: m.MinLabels,
	}}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Rules.Window == 0 {
		o.Rules.Window = 30 * time.Second
	}
	return o
}

func (m *MonitorSpec) validate() error {
	if m == nil {
		return nil
	}
	if m.Interval < 0 || m.Window < 0 || m.MaxPSI < 0 || m.MinAccuracy < 0 || m.MaxAccuracyDrop < 0 {
		return errors.New("monitor: durations and thresholds must not be negative")
	}
	if m.Window > 0 && m.Window < monitor.DefaultRawBucket {
		return fmt.Errorf("monitor: window %v is shorter than the control plane's %v metric buckets; use at least %v",
			m.Window, monitor.DefaultRawBucket, monitor.DefaultRawBucket)
	}
	return nil
}

// Alerts checks the monitoring alerts the control plane raised (its audit
// log): every site in Sites has an alert of Rule for Model, no site in
// Quiet has one. In-process it needs the scenario's monitor section;
// against an external control plane the rules are the ones it runs with.
type Alerts struct {
	Rule   string        `yaml:"rule"` // feature_drift, low_accuracy or accuracy_drop; "" any
	Model  string        `yaml:"model"`
	Sites  []string      `yaml:"sites"`
	Quiet  []string      `yaml:"quiet"`
	Within time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (a *Alerts) Validate(*Scenario) error {
	if a.Model == "" || (len(a.Sites) == 0 && len(a.Quiet) == 0) {
		return errors.New("model and sites or quiet are required")
	}
	switch a.Rule {
	case "", "feature_drift", "low_accuracy", "accuracy_drop":
	default:
		return fmt.Errorf("rule %q: want feature_drift, low_accuracy or accuracy_drop", a.Rule)
	}
	return nil
}

// CheckTarget implements TargetChecker: the in-process control plane
// raises no alert without the scenario's rules.
func (a *Alerts) CheckTarget(sc *Scenario, remote bool) error {
	if !remote && sc.Monitor == nil {
		return errors.New("needs a monitor section (alert rules)")
	}
	return nil
}

// Deadline implements Assertion.
func (a *Alerts) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *Alerts) Check(env *Env) (bool, string) {
	action := "monitor.alert."
	if a.Rule != "" {
		action += a.Rule
	}
	entries, err := env.Fleet.ControlPlane().Audit(api.AuditQuery{Action: action})
	if err != nil {
		return false, err.Error()
	}
	alerted := map[string]int{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Target, a.Model+"@") {
			continue
		}
		if site, ok := e.Details["site"].(string); ok {
			alerted[site]++
		}
	}
	env.SetFigure("alerts_by_site", alerted)
	var missing, noisy []string
	for _, s := range a.Sites {
		if alerted[s] == 0 {
			missing = append(missing, s)
		}
	}
	for _, s := range a.Quiet {
		if alerted[s] > 0 {
			noisy = append(noisy, s)
		}
	}
	if len(missing) == 0 && len(noisy) == 0 {
		return true, ""
	}
	var why []string
	if len(missing) > 0 {
		why = append(why, fmt.Sprintf("no %s alert for %v", ruleName(a.Rule), missing))
	}
	if len(noisy) > 0 {
		slices.Sort(noisy)
		why = append(why, fmt.Sprintf("alerts for sites that should stay quiet: %v", noisy))
	}
	return false, strings.Join(why, "; ") + fmt.Sprintf(" (alerts by site: %v)", alerted)
}

func ruleName(r string) string {
	if r == "" {
		return "monitoring"
	}
	return r
}

// NoTelemetryLost: every report each selected agent made before the
// assertion was first checked has been delivered and acknowledged by the
// control plane, the agents dropped none, and the control plane aggregated
// reports. After an outage this says every report made meanwhile arrived.
// Reports made since the first check may still wait for their
// acknowledgement (traffic goes on; the control plane acknowledges in
// rounds), so they are not required to have drained.
type NoTelemetryLost struct {
	Selector string        `yaml:"selector"`
	Within   time.Duration `yaml:"within"`

	// made is, per device, the newest report sequence number at the first
	// check (the runner checks an assertion from one goroutine).
	made map[string]uint64
}

// Deadline implements Assertion.
func (a *NoTelemetryLost) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *NoTelemetryLost) Check(env *Env) (bool, string) {
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	if a.made == nil {
		a.made = map[string]uint64{}
		for _, m := range ms {
			if ag := m.Agent(); ag != nil {
				a.made[m.Device.ID] = ag.ReportSeq()
			}
		}
	}
	var bad offenders
	var queued, dropped uint64
	for _, m := range ms {
		ag := m.Agent()
		if ag == nil {
			bad.add("%s has no running agent", m.Device.ID)
			continue
		}
		upTo, ok := a.made[m.Device.ID]
		if !ok { // no agent at the first check: everything it made since counts
			upTo = ag.ReportSeq()
			a.made[m.Device.ID] = upTo
		}
		q, d := ag.QueuedReportsUpTo(upTo), ag.ReportsDropped()
		queued += uint64(q)
		dropped += d
		if q > 0 || d > 0 {
			bad.add("%s: %d reports (up to #%d) still unacknowledged, %d dropped", m.Device.ID, q, upTo, d)
		}
	}
	env.SetFigure("telemetry_queued", queued)
	env.SetFigure("telemetry_dropped", dropped)
	if bad.n > 0 {
		return false, fmt.Sprintf("%d of %d devices have undelivered or lost telemetry: %s", bad.n, len(ms), &bad)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := env.Fleet.MonitorStats(ctx)
	if err != nil {
		return false, fmt.Sprintf("monitoring counters: %v", err)
	}
	env.SetFigure("telemetry_ingested", st.Ingested)
	if st.Ingested == 0 {
		return false, "the control plane aggregated no monitoring reports"
	}
	return true, ""
}

// RefusedDesired: the control plane recorded, for every selected device, a
// device-level refusal (a desired state refused) whose reason contains
// Reason — e.g. "expired" for a clock far ahead.
type RefusedDesired struct {
	Selector string        `yaml:"selector"`
	Reason   string        `yaml:"reason"`
	Within   time.Duration `yaml:"within"`
}

// Validate implements the optional validation.
func (a *RefusedDesired) Validate(*Scenario) error {
	if a.Reason == "" {
		return errors.New("reason is required")
	}
	return nil
}

// Deadline implements Assertion.
func (a *RefusedDesired) Deadline() time.Duration { return a.Within }

// Check implements Assertion.
func (a *RefusedDesired) Check(env *Env) (bool, string) {
	ms, err := env.Select(a.Selector)
	if err != nil {
		return false, err.Error()
	}
	var bad offenders
	for _, m := range ms {
		d, err := env.Fleet.ControlPlane().Device(m.Device.ID)
		switch {
		case err != nil:
			bad.add("%s: %v", m.Device.ID, err)
		case d.LastRefusal == nil:
			bad.add("%s reported no refusal", m.Device.ID)
		case !strings.Contains(d.LastRefusal.Reason, a.Reason):
			bad.add("%s refused with %q", m.Device.ID, d.LastRefusal.Reason)
		}
	}
	if bad.n > 0 {
		return false, fmt.Sprintf("%d of %d devices did not refuse a desired state for %q: %s", bad.n, len(ms), a.Reason, &bad)
	}
	return true, ""
}

// WaitLabelled waits until every selected device has at least Min
// labelled predictions of model@version in the control plane's monitoring,
// as a rollout's quality gates count them. A gate comparing the canary's
// accuracy with the version it replaces needs the replaced version's labels
// from the canary devices, gathered before they switch: waiting for them,
// rather than sleeping, holds however slowly a busy machine sends traffic.
// Its timeout and max_timeout work as every wait's (see WaitLimits); new
// labels are progress.
type WaitLabelled struct {
	Model      string `yaml:"model"`
	Version    string `yaml:"version"`
	Selector   string `yaml:"selector"`
	Min        uint64 `yaml:"min"`
	WaitLimits `yaml:",inline"`
}

// Validate implements the optional validation.
func (w *WaitLabelled) Validate(sc *Scenario) error {
	if w.Model == "" || w.Version == "" || w.Min == 0 {
		return errors.New("model, version and min (labelled predictions per device) are required")
	}
	if sc.Traffic == nil || sc.Traffic.LabelFraction <= 0 {
		return errors.New("needs traffic with a label_fraction: without labels it cannot end")
	}
	return w.WaitLimits.validate()
}

// labelledPoll is how often wait_labelled asks the control plane.
const labelledPoll = 250 * time.Millisecond

// Run implements Action.
func (w *WaitLabelled) Run(ctx context.Context, env *Env) (string, error) {
	ms, err := env.Select(w.Selector)
	if err != nil {
		return "", err
	}
	start := env.Since()
	var why string
	var total uint64
	check := func() bool {
		res, err := env.Fleet.ModelMetrics(ctx, w.Model, w.Version)
		if err != nil {
			why = fmt.Sprintf("monitoring figures: %v", err)
			return false
		}
		have := map[string]uint64{}
		for _, d := range res.Devices {
			have[d.Key] = d.Labelled
		}
		var short offenders
		total = 0
		for _, m := range ms {
			n := have[m.Device.ID]
			total += n
			if n < w.Min {
				short.add("%s has %d", m.Device.ID, n)
			}
		}
		if short.n > 0 {
			why = fmt.Sprintf("%d of %d devices have fewer than %d labelled predictions of %s@%s at the control plane: %s",
				short.n, len(ms), w.Min, w.Model, w.Version, &short)
			return false
		}
		return true
	}
	res, err := env.wait(ctx, waitSpec{limits: w.WaitLimits, every: labelledPoll, progress: func() uint64 { return total }}, check)
	if err != nil {
		return "", fmt.Errorf("%s; %w", why, err)
	}
	return fmt.Sprintf("%d devices have at least %d labelled predictions of %s@%s (%d in all) after %.2fs%s",
		len(ms), w.Min, w.Model, w.Version, total, (env.Since() - start).Seconds(), res.note()), nil
}
