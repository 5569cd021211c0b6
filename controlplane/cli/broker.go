package cli

import (
	"fmt"
	"os"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// brokerACL writes the mosquitto ACL for the topic scheme: the same
// deny-by-default rules the embedded broker enforces.
func (a *app) brokerACL(args []string) error {
	fs := a.flagSet("edgefleet broker acl")
	prefix := fs.String("topic-prefix", "", "MQTT topic prefix (default ef/v1)")
	controlUser := fs.String("control-user", controlplane.DefaultMQTTClientID, "the control plane's username on the broker (serve --mqtt-username)")
	out := fs.String("out", "", "write the ACL to this file (default: standard output)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("broker acl takes no arguments, got %q", pos)
	}
	acl, err := topics.MosquittoACL(topics.Scheme{Prefix: *prefix}, *controlUser)
	if err != nil {
		return usagef("%v", err)
	}
	if *out == "" {
		fmt.Fprint(a.stdout, acl)
		return nil
	}
	if err := os.WriteFile(*out, []byte(acl), 0o644); err != nil {
		return fmt.Errorf("write ACL: %w", err)
	}
	fmt.Fprintf(a.stdout, "wrote %s; point mosquitto's acl_file at it and set use_username_as_clientid true\n", *out)
	return nil
}
