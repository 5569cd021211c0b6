package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

func (a *app) deviceEnrollCmd() *cobra.Command {
	var (
		lbls     stringList
		ttl      string
		tlsFiles deviceTLS
	)
	c := &cobra.Command{
		Use:   "enroll ID",
		Short: "issue a one-time enrollment token for edgefleet-agent enroll",
		Long: `Issues a one-time enrollment token for device ID and prints the command that exchanges it on
the device: "edgefleet-agent enroll" fetches the device's credentials and writes its config
there, so no password is copied by hand. The token is valid once, until --ttl passes. For a
device that exists already, the exchange replaces its credentials (re-admits a revoked one).`,
		Example: `  edgefleet device enroll dev-17 --label site=plant-1
  edgefleet device enroll cam-1 --label site=oslo --ttl 24h
  edgefleet device enroll cam-2 --tls-ca-file /etc/edgefleet/tls/ca.crt`,
		Args: oneArg("device id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			m, err := parseLabels(lbls)
			if err != nil {
				return err
			}
			if err := tlsFiles.check(); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			e, err := c.CreateEnrollment(cmd.Context(), api.EnrollmentRequest{DeviceID: pos[0], Labels: m, TTL: ttl})
			if err != nil {
				return fmt.Errorf("enroll device %s: %w", pos[0], err)
			}
			what := "new device"
			if e.Reenroll {
				what = "existing device: the exchange replaces its credentials"
			}
			fmt.Fprintf(a.stdout, "enrollment token for %s (%s), valid once until %s:\n\n    %s\n\n", e.DeviceID, what, e.Expires.Format("2006-01-02 15:04:05 MST"), e.Token)
			fmt.Fprintf(a.stdout, "On the device:\n    edgefleet-agent enroll --token %s --control-plane %s --config-out /etc/edgefleet/agent.yaml%s\n", e.Token, a.api, tlsFiles.args())
			return nil
		}),
	}
	c.Flags().Var(&lbls, "label", "label `key=value` (repeatable; new devices only)")
	c.Flags().StringVar(&ttl, "ttl", "1h", "how long the enrollment token may be used (`DURATION`, 1m..168h)")
	tlsFiles.flags(c)
	return c
}

func (a *app) deviceRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "revoke a device's credentials and disconnect it",
		Long: `Revokes device ID's credentials and ends its MQTT session if it is connected. The device
stays registered; "edgefleet device enroll ID" re-admits it.`,
		Example: "  edgefleet device revoke cam-2",
		Args:    oneArg("device id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.RevokeDevice(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("revoke device %s: %w", pos[0], err)
			}
			state := "it was not connected"
			if res.Disconnected {
				state = "its session was disconnected"
			}
			fmt.Fprintf(a.stdout, "device %s: credentials revoked, %s; `edgefleet device enroll %s` re-admits it\n", res.ID, state, res.ID)
			return nil
		}),
	}
}
