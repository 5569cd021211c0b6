package scenario

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// RestartControlPlane stops the in-process control plane, and with it its
// embedded broker, for Down (simulated time), then starts it again on the
// same data and addresses: every agent loses its connection at once and
// reconnects, rollouts resume from the store, queued telemetry is sent.
//
// The moment the control plane has stopped, it counts the devices in each
// update phase (per device and model: manifest, downloading, verifying,
// staging, or none) into the report's figure
// phases_at_control_plane_stop (_2, _3 ... for later restarts). With
// Phase set, the step fails unless at least Min (default 1) devices were
// in that phase of Model ("" any) then: "the restart hit mid-download"
// is checked, not hoped for.
type RestartControlPlane struct {
	Down  time.Duration `yaml:"down"`
	Model string        `yaml:"model"`
	Phase agent.Phase   `yaml:"phase"`
	Min   int           `yaml:"min"`
}

// Validate implements the optional validation.
func (r *RestartControlPlane) Validate(*Scenario) error {
	if r.Down < 0 || r.Down > 10*time.Minute {
		return errors.New("down must be between 0 and 10m")
	}
	if r.Phase != "" && !slices.Contains(agent.Phases(), r.Phase) {
		return fmt.Errorf("phase %q: want one of %s", r.Phase, phaseList(agent.Phases()))
	}
	if r.Min < 0 || (r.Min > 0 && r.Phase == "") {
		return errors.New("min needs a phase and must be positive")
	}
	return nil
}

// CheckTarget implements TargetChecker: an external control plane is
// restarted by whoever runs it.
func (r *RestartControlPlane) CheckTarget(_ *Scenario, remote bool) error {
	if remote {
		return errors.New("it restarts the in-process control plane and its embedded broker")
	}
	return nil
}

// Run implements Action.
func (r *RestartControlPlane) Run(ctx context.Context, env *Env) (string, error) {
	t0 := time.Now()
	var at map[string]int
	if err := env.Fleet.RestartControlPlane(ctx, env.Real(r.Down), func() { at = phasesNow(env, r.Model) }); err != nil {
		return "", err
	}
	env.SetFigure(env.freeFigure("phases_at_control_plane_stop"), at)
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(at)) {
		parts = append(parts, fmt.Sprintf("%d %s", at[p], p))
	}
	seen := strings.Join(parts, ", ")
	if want := max(r.Min, 1); r.Phase != "" && at[string(r.Phase)] < want {
		return "", fmt.Errorf("%d devices were in %s when the control plane stopped (%s), want at least %d: the restart missed the phase; keep devices there longer (throttle a download, or restart earlier)",
			at[string(r.Phase)], r.Phase, seen, want)
	}
	return fmt.Sprintf("control plane and broker down for %v, serving again after %v; when it stopped: %s", r.Down, time.Since(t0).Round(time.Millisecond), seen), nil
}

// phasesNow counts, per device and model (model "" any), the update phase
// each is in; "none" is no update in progress.
func phasesNow(env *Env, model string) map[string]int {
	out := map[string]int{}
	for _, m := range env.Fleet.Members() {
		a := m.Agent()
		if a == nil {
			continue
		}
		for _, s := range a.Status() {
			if model != "" && s.Name != model {
				continue
			}
			p := string(s.Phase)
			if p == "" {
				p = "none"
			}
			out[p]++
		}
	}
	return out
}
