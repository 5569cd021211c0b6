package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/internal/natsconf"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// NATSAuthFile is the name of the authorization file every node's config
// includes (next to it), and broker sync --nats-auth-file keeps.
const NATSAuthFile = "edgefleet-auth.conf"

// brokerNATSConfigCmd writes a NATS cluster's configuration: one file per
// node and the first authorization file.
func (a *app) brokerNATSConfigCmd() *cobra.Command {
	var (
		nodes                          []string
		prefix, controlUser, pwFile    string
		routePwFile                    string
		outDir, storeDir, pidFile      string
		tlsCert, tlsKey, host          string
		mqttPort, clusterPort, monPort int
		replicas                       int
		ackWait                        time.Duration
	)
	c := &cobra.Command{
		Use:   "nats-config --node NAME=HOST ... --control-password-file FILE --route-password-file FILE --out-dir DIR",
		Short: "write the configuration of a NATS cluster (MQTT + JetStream) for the fleet",
		Long: `Writes one nats-server configuration per --node (NAME.conf: JetStream, the MQTT listener with
streams replicated on --replicas nodes, routes to the other nodes) and the authorization file
every node includes (` + NATSAuthFile + `): the control plane's login with a bcrypt hash of its
password and access to the whole topic prefix, and deny by default for everyone else. Devices
are added and removed by broker sync --nats-auth-file, running next to each node, which
rewrites that file from the control plane and reloads the node; NATS then closes the
connections of revoked devices. Each device may only publish its own status, telemetry, fetch
and presence and read its own desired state, the trust bundle and models (the same rules as
broker acl), with MQTT topics mapped to NATS subjects ('/' to '.', '.' to '//'). The nodes
log in to each other's cluster port with the secret in --route-password-file, which each node's
file holds in plain text (NATS dials its routes with it): keep the files 0600.`,
		Example: `  edgefleet broker nats-config --node nats-0=nats-0.nats --node nats-1=nats-1.nats --node nats-2=nats-2.nats \
      --control-user edgefleet-cp --control-password-file mqtt-password --out-dir deploy/nats`,
		Args: noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			if len(nodes) == 0 {
				return usagef("give every node of the cluster with --node NAME=HOST")
			}
			if pwFile == "" || routePwFile == "" || outDir == "" {
				return usagef("nats-config needs --control-password-file, --route-password-file and --out-dir")
			}
			password, err := readSecret(pwFile, "--control-password-file")
			if err != nil {
				return err
			}
			routePassword, err := readSecret(routePwFile, "--route-password-file")
			if err != nil {
				return err
			}
			scheme := topics.Scheme{Prefix: prefix}
			if err := scheme.Validate(); err != nil {
				return usagef("%v", err)
			}
			type node struct{ name, host string }
			var ns []node
			seen := map[string]bool{}
			for _, n := range nodes {
				name, h, ok := strings.Cut(n, "=")
				if !ok || name == "" || h == "" || strings.ContainsAny(n, " /\\\"") || seen[name] {
					return usagef("--node %q: want NAME=HOST, each name once", n)
				}
				seen[name] = true
				ns = append(ns, node{name, h})
			}
			if replicas == 0 {
				replicas = min(len(ns), natsconf.DefaultReplicas)
			}
			if replicas > len(ns) {
				return usagef("--replicas %d: the cluster has %d nodes", replicas, len(ns))
			}
			hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
			if err != nil {
				return fmt.Errorf("hash the control password: %w", err)
			}
			cp, err := natsconf.ControlUser(scheme, controlUser, string(hash))
			if err != nil {
				return usagef("%v", err)
			}
			auth, err := natsconf.Authorization([]natsconf.User{cp})
			if err != nil {
				return err
			}
			if err := os.MkdirAll(outDir, 0o755); err != nil {
				return fmt.Errorf("out dir: %w", err)
			}
			files := map[string]string{NATSAuthFile: auth}
			for _, n := range ns {
				var routes []string
				for _, o := range ns {
					if o.name != n.name {
						routes = append(routes, fmt.Sprintf("%s:%d", o.host, clusterPort))
					}
				}
				conf, err := natsconf.NodeConfig(natsconf.Node{
					Name: n.name, Host: host, MQTTPort: mqttPort, ClusterPort: clusterPort, MonitorPort: monPort,
					Routes: routes, StoreDir: storeDir, AuthFile: NATSAuthFile, Replicas: replicas,
					MQTTTLSCert: tlsCert, MQTTTLSKey: tlsKey, PidFile: pidFile, RoutePassword: routePassword,
					MQTTAckWait: ackWait,
				})
				if err != nil {
					return usagef("%v", err)
				}
				files[n.name+".conf"] = conf
			}
			for name, text := range files {
				// The node files hold the route password, the
				// authorization file the bcrypt hashes.
				if err := os.WriteFile(filepath.Join(outDir, name), []byte(text), 0o600); err != nil {
					return fmt.Errorf("write %s: %w", name, err)
				}
			}
			fmt.Fprintf(a.stdout, "wrote %d node configs and %s to %s; keep %s next to each node's config and run broker sync --nats-auth-file beside each node\n",
				len(ns), NATSAuthFile, outDir, NATSAuthFile)
			return nil
		}),
	}
	f := c.Flags()
	f.StringArrayVar(&nodes, "node", nil, "a node of the cluster as `NAME=HOST` (HOST: where the other nodes reach its cluster port); repeat for each")
	f.StringVar(&prefix, "topic-prefix", "", "MQTT topic `PREFIX` (default ef/v1)")
	f.StringVar(&controlUser, "control-user", controlplane.DefaultMQTTClientID, "the control plane's `USER` on the broker (serve --mqtt-username)")
	f.StringVar(&pwFile, "control-password-file", "", "`FILE` holding the control plane's broker password (serve's "+EnvMQTTPassword+")")
	f.StringVar(&routePwFile, "route-password-file", "", "`FILE` holding the secret the nodes log in to each other's cluster port with (letters, digits, -._~)")
	f.StringVar(&outDir, "out-dir", "", "write the files into this `DIR`")
	f.StringVar(&storeDir, "store-dir", "/data/jetstream", "JetStream's `DIR` on each node")
	f.StringVar(&pidFile, "pid-file", "/var/run/nats/nats.pid", "where each node writes its pid (`FILE`; broker sync --pid-file)")
	f.StringVar(&host, "listen-host", natsconf.DefaultHost, "the `ADDRESS` the nodes listen on")
	f.IntVar(&mqttPort, "mqtt-port", 1883, "MQTT `PORT` (devices and the control plane)")
	f.IntVar(&clusterPort, "cluster-port", 6222, "cluster route `PORT`")
	f.IntVar(&monPort, "monitor-port", 8222, "HTTP monitoring `PORT` (/healthz); 0: none")
	f.IntVar(&replicas, "replicas", 0, "nodes holding each MQTT stream (`N`; default min(nodes, 3))")
	f.StringVar(&tlsCert, "mqtt-tls-cert", "", "MQTT TLS certificate `FILE` on the nodes (default: plain MQTT)")
	f.StringVar(&tlsKey, "mqtt-tls-key", "", "MQTT TLS key `FILE` on the nodes")
	f.DurationVar(&ackWait, "mqtt-ack-wait", 0, "how long a QoS 1 delivery waits for its PUBACK before NATS delivers it again (`DURATION`, whole seconds; default NATS's 30s): bounds how long a delivery lost with a dead node takes to come again, and redelivers to links slower than it")
	return c
}

// readSecret reads a one-line secret file.
func readSecret(path, flag string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", usagef("%s %s is empty", flag, path)
	}
	return s, nil
}
