package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/internal/topics"
)

func (a *app) brokerCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "broker <command>",
		Short: "configure an external MQTT broker",
	}, a.brokerACLCmd(), a.brokerNATSConfigCmd(), a.brokerSyncCmd())
}

// brokerACLCmd writes the mosquitto ACL for the topic scheme: the same
// deny-by-default rules the embedded broker enforces.
func (a *app) brokerACLCmd() *cobra.Command {
	var prefix, controlUser, out string
	var ingest int
	c := &cobra.Command{
		Use:   "acl",
		Short: "print the deny-by-default mosquitto ACL for an external broker",
		Long: `Prints the mosquitto ACL that enforces what the embedded broker does: each device may use
only its own topics, and only the control plane's user may publish desired states. The file
shipped as deploy/mosquitto/acl.conf is its output for --control-user edgefleet-cp.`,
		Example: `  edgefleet broker acl --control-user edgefleet-cp --out /etc/mosquitto/edgefleet.acl
  edgefleet broker acl --control-user edgefleet-cp --topic-prefix acme/ef`,
		Args: noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			acl, err := topics.MosquittoACL(topics.Scheme{Prefix: prefix}, controlUser, ingest)
			if err != nil {
				return usagef("%v", err)
			}
			if out == "" {
				fmt.Fprint(a.stdout, acl)
				return nil
			}
			if err := os.WriteFile(out, []byte(acl), 0o644); err != nil {
				return fmt.Errorf("write ACL: %w", err)
			}
			fmt.Fprintf(a.stdout, "wrote %s; point mosquitto's acl_file at it and set use_username_as_clientid true\n", out)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&prefix, "topic-prefix", "", "MQTT topic `PREFIX` (default ef/v1)")
	f.StringVar(&controlUser, "control-user", controlplane.DefaultMQTTClientID, "the control plane's `USER` on the broker (serve --mqtt-username)")
	f.StringVar(&out, "out", "", "write the ACL to this `FILE` (default: standard output)")
	f.IntVar(&ingest, "ingest-connections", 0, "serve's --ingest-connections `N`: one read-only telemetry login each (USER-ingest-0 …)")
	return c
}
