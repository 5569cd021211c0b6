package cli

import (
	"context"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/labels"
)

// deviceEnroll runs `device enroll ID [--label k=v] [--ttl 1h]`.
func (a *app) deviceEnroll(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet device enroll")
	a.globalFlags(fs)
	var lbls stringList
	fs.Var(&lbls, "label", "label key=value (repeatable; new devices only)")
	ttl := fs.String("ttl", "1h", "how long the enrollment token may be used (1m..168h)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("device enroll takes one device id, got %d arguments", len(pos))
	}
	m := map[string]string{}
	for _, l := range lbls {
		k, v, err := labels.ParseLabel(l)
		if err != nil {
			return usagef("--label: %v", err)
		}
		if _, dup := m[k]; dup {
			return usagef("--label %s given twice", k)
		}
		m[k] = v
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	e, err := c.CreateEnrollment(ctx, api.EnrollmentRequest{DeviceID: pos[0], Labels: m, TTL: *ttl})
	if err != nil {
		return fmt.Errorf("enroll device %s: %w", pos[0], err)
	}
	what := "new device"
	if e.Reenroll {
		what = "existing device: the exchange replaces its credentials"
	}
	fmt.Fprintf(a.stdout, "enrollment token for %s (%s), valid once until %s:\n\n    %s\n\n", e.DeviceID, what, e.Expires.Format("2006-01-02 15:04:05 MST"), e.Token)
	fmt.Fprintf(a.stdout, "On the device:\n    edgefleet-agent enroll --token %s --control-plane %s --config-out /etc/edgefleet/agent.yaml\n", e.Token, a.api)
	return nil
}

// deviceRevoke runs `device revoke ID`.
func (a *app) deviceRevoke(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet device revoke")
	a.globalFlags(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("device revoke takes one device id, got %d arguments", len(pos))
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	res, err := c.RevokeDevice(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("revoke device %s: %w", pos[0], err)
	}
	state := "it was not connected"
	if res.Disconnected {
		state = "its session was disconnected"
	}
	fmt.Fprintf(a.stdout, "device %s: credentials revoked, %s; `edgefleet device enroll %s` re-admits it\n", res.ID, state, res.ID)
	return nil
}
