package scenario

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RestartControlPlane stops the in-process control plane, and with it its
// embedded broker, for Down (simulated time), then starts it again on the
// same data and addresses: every agent loses its connection at once and
// reconnects, rollouts resume from the store, queued telemetry is sent.
type RestartControlPlane struct {
	Down time.Duration `yaml:"down"`
}

// Validate implements the optional validation.
func (r *RestartControlPlane) Validate(*Scenario) error {
	if r.Down < 0 || r.Down > 10*time.Minute {
		return errors.New("down must be between 0 and 10m")
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
	if err := env.Fleet.RestartControlPlane(ctx, env.Real(r.Down), nil); err != nil {
		return "", err
	}
	return fmt.Sprintf("control plane and broker down for %v, serving again after %v", r.Down, time.Since(t0).Round(time.Millisecond)), nil
}
