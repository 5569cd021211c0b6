package cli

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/atomicfile"
)

func (a *app) serveCmd() *cobra.Command {
	var (
		opts controlplane.Options
		sf   serveFlags
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "run the control plane (API, embedded MQTT broker)",
		Long: `Runs the control plane until interrupted: the REST API, the embedded MQTT broker (or a
connection to an external one, --mqtt-url), the state store in --data-dir, drift and
accuracy alerts and the retrain webhook.

At the first start it generates the fleet's keys and an admin API token, printed once (and
written to --token-file if given).`,
		Example: `  # First start: creates the keys and prints the admin token, also written to a file.
  edgefleet serve --data-dir /var/lib/edgefleet --token-file /var/lib/edgefleet/admin.token

  # With mosquitto (see edgefleet broker acl); devices are told the public TLS address.
  EDGEFLEET_MQTT_PASSWORD="$(cat /etc/edgefleet/mqtt.pass)" edgefleet serve \
      --mqtt-url tcp://127.0.0.1:1883 --mqtt-username edgefleet-cp --public-mqtt-url tls://mqtt.example.com:8883

  # Embedded broker over mutual TLS; alert on drift and call the retrain webhook.
  edgefleet serve --mqtt-tls-cert server.crt --mqtt-tls-key server.key --mqtt-client-ca devices-ca.pem \
      --alert-max-psi 0.25 --webhook-url https://ci.example.com/retrain --webhook-secret-file webhook.key`,
		Args: noArgs,
	}
	f := c.Flags()
	f.StringVar(&opts.DataDir, "data-dir", "./edgefleet-data", "`DIR` for keys, database and model files")
	f.StringVar(&opts.APIListen, "listen", controlplane.DefaultAPIListen, "REST API listen address (`HOST:PORT`)")
	f.StringVar(&opts.MQTTListen, "mqtt-listen", controlplane.DefaultMQTTListen, "embedded MQTT broker listen address (`HOST:PORT`)")
	f.StringVar(&opts.MQTTURL, "mqtt-url", "", "external MQTT broker (`URL`, e.g. tcp://host:1883; a comma-separated list: the nodes of a NATS cluster) instead of the embedded one")
	f.StringVar(&opts.Username, "mqtt-username", "", "the control plane's username (`USER`) on the external broker")
	f.StringVar(&opts.Password, "mqtt-password", "", "the `PASSWORD` of --mqtt-username (env "+EnvMQTTPassword+")")
	f.BoolVar(&opts.MQTTPersistentSession, "mqtt-persistent-session", false, "with --mqtt-url: keep the control plane's session on the broker while it is away (a NATS cluster delivers what devices sent during a failover)")
	f.IntVar(&opts.IngestConnections, "ingest-connections", 0, "with --mqtt-url: receive telemetry over `N` connections sharing one MQTT shared subscription (mosquitto 2, EMQX)")
	f.StringVar(&opts.PublicMQTTURL, "public-mqtt-url", "", "broker `URL` devices are told, or a comma-separated list of a cluster's nodes (default: the broker's own URL)")
	f.StringVar(&opts.TopicPrefix, "topic-prefix", "", "MQTT topic `PREFIX` (default ef/v1)")
	f.IntVar(&opts.InlineManifestMax, "inline-manifest-max", 0, "largest signed manifest (`BYTES`) a desired state carries to the device, sparing it a subscription; every device's retained desired state grows by it (default 8192; -1: never)")
	f.StringVar(&opts.ORTLibrary, "ort-lib", "", "`PATH` of libonnxruntime.so.1 (default: search; env EDGEFLEET_ORT_LIB)")
	f.StringVar(&sf.tlsCert, "mqtt-tls-cert", "", "PEM certificate (chain) `FILE` for the embedded broker: serve MQTT over TLS")
	f.StringVar(&sf.tlsKey, "mqtt-tls-key", "", "PEM private key `FILE` of --mqtt-tls-cert")
	f.StringVar(&sf.clientCA, "mqtt-client-ca", "", "PEM CA bundle `FILE`: require device client certificates whose common name is the device id (mutual TLS)")
	f.StringVar(&sf.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	f.StringVar(&sf.logFormat, "log-format", "text", "log `FORMAT`: text or json")
	rules := &opts.Monitor.Rules
	f.Float64Var(&rules.MaxPSI, "alert-max-psi", 0, "alert when a feature's `PSI` exceeds this (e.g. 0.25; 0: off)")
	f.Float64Var(&rules.MinAccuracy, "alert-min-accuracy", 0, "alert when accuracy falls below this `FRACTION` (0: off)")
	f.Float64Var(&rules.MaxAccuracyDrop, "alert-max-accuracy-drop", 0, "alert when accuracy drops by more than this `FRACTION` vs the previous window (0: off)")
	f.DurationVar(&rules.Window, "alert-window", 0, "time window the alert rules evaluate: the last `DURATION` from the start of the minute it begins in (at least 1m; default 15m)")
	f.DurationVar(&opts.Monitor.Interval, "alert-interval", 0, "evaluate the alert rules every `DURATION` (default 1m)")
	f.StringVar(&opts.Monitor.WebhookURL, "webhook-url", "", "POST every alert here (`URL`) as signed JSON (the retrain hook)")
	f.StringVar(&sf.webhookSecretFile, "webhook-secret-file", "", "`FILE` holding the webhook's HMAC-SHA256 key (env "+EnvWebhookSecretFile+")")
	f.StringVar(&sf.cpuProfile, "cpu-profile", "", "write a CPU profile of the whole run to `FILE` (diagnostics: fleet-sim bench cost uses it)")
	f.BoolVar(&sf.cpuProfileOnSignal, "cpu-profile-on-signal", false, "with --cpu-profile: profile from SIGUSR1 to SIGUSR2 only (each window overwrites the file)")
	f.Var(&sf.trainers, "trainer", "external retrain trainer `NAME=PROGRAM` a retrain policy may name as command:NAME; run as PROGRAM --data DIR --out DIR (repeatable)")
	enumFlag(c, "log-level", "debug", "info", "warn", "error")
	enumFlag(c, "log-format", "text", "json")
	c.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		// The environment fills what the command line left out.
		if !cmd.Flags().Changed("mqtt-password") {
			opts.Password = a.getenv(EnvMQTTPassword)
		}
		if !cmd.Flags().Changed("webhook-secret-file") {
			sf.webhookSecretFile = a.getenv(EnvWebhookSecretFile)
		}
		return a.serve(cmd.Context(), opts, sf)
	})
	return c
}

// serveFlags are serve's flags that are not Options fields.
type serveFlags struct {
	logLevel, logFormat       string
	tlsCert, tlsKey, clientCA string
	webhookSecretFile         string
	trainers                  stringList
	cpuProfile                string
	cpuProfileOnSignal        bool
}

// serve runs the control plane until ctx ends.
func (a *app) serve(ctx context.Context, opts controlplane.Options, sf serveFlags) error {
	var err error
	rules := &opts.Monitor.Rules
	if sf.tlsCert != "" || sf.tlsKey != "" || sf.clientCA != "" {
		if opts.MQTTURL != "" {
			return usagef("--mqtt-tls-* configure the embedded broker; with --mqtt-url configure TLS on that broker")
		}
		if opts.MQTTTLS, err = broker.TLSConfig(sf.tlsCert, sf.tlsKey, sf.clientCA); err != nil {
			return usagef("%v", err)
		}
	}
	for _, v := range []float64{rules.MaxPSI, rules.MinAccuracy, rules.MaxAccuracyDrop} {
		if v < 0 {
			return usagef("--alert-* thresholds must not be negative, got %v", v)
		}
	}
	if sf.webhookSecretFile != "" {
		if opts.Monitor.WebhookURL == "" {
			return usagef("--webhook-secret-file needs --webhook-url")
		}
		secret, err := os.ReadFile(sf.webhookSecretFile)
		if err != nil {
			return fmt.Errorf("webhook secret: %w", err)
		}
		if opts.Monitor.WebhookSecret = bytes.TrimSpace(secret); len(opts.Monitor.WebhookSecret) == 0 {
			return fmt.Errorf("webhook secret file %s is empty", sf.webhookSecretFile)
		}
	}
	for _, t := range sf.trainers {
		name, prog, ok := strings.Cut(t, "=")
		if !ok || name == "" || prog == "" {
			return usagef("--trainer %q: want NAME=PROGRAM", t)
		}
		if opts.Retrain.Trainers == nil {
			opts.Retrain.Trainers = map[string][]string{}
		}
		opts.Retrain.Trainers[name] = []string{prog}
	}
	if opts.Logger, err = a.logger(sf.logLevel, sf.logFormat); err != nil {
		return err
	}
	tokenFile := a.tokenFile
	if tokenFile == "" {
		tokenFile = a.getenv(EnvTokenFile)
	}

	// stdout is written from Run's goroutine (the token) and this one.
	var outMu sync.Mutex
	var tokenErr error
	opts.OnInitialToken = func(token string) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(a.stdout, "Admin API token (shown only this once; store it safely):\n\n    %s\n\n", token)
		fmt.Fprintf(a.stdout, "Give it to edgefleet commands with --token or %s.\n", EnvToken)
		if tokenFile != "" {
			if err := writeSecret(tokenFile, token+"\n"); err != nil {
				tokenErr = err
				fmt.Fprintf(a.stdout, "Could not write it to %s: %v\n", tokenFile, err)
			} else {
				fmt.Fprintf(a.stdout, "Also written to %s (mode 0600): use --token-file %s or %s.\n", tokenFile, tokenFile, EnvTokenFile)
			}
		}
	}
	s, err := controlplane.New(opts)
	if err != nil {
		return err
	}
	switch {
	case sf.cpuProfile != "" && sf.cpuProfileOnSignal:
		stop := profileOnSignal(ctx, sf.cpuProfile, opts.Logger)
		defer stop()
	case sf.cpuProfile != "":
		stop, err := startCPUProfile(sf.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-s.Ready():
	}
	outMu.Lock()
	fmt.Fprintf(a.stdout, "edgefleet control plane ready: API %s, MQTT %s\n", s.APIURL(), s.BrokerURL())
	if tokenErr != nil {
		fmt.Fprintln(a.stdout, "Warning: the token file was not written; copy the token above now.")
	}
	outMu.Unlock()
	return <-done
}

// startCPUProfile profiles the process into path until the returned stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// writeSecret writes a file readable only by its owner, replacing any
// previous content atomically.
func writeSecret(path, content string) error {
	return atomicfile.Write(path, []byte(content), 0o600)
}

// indent indents s's lines by prefix.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}

// logger logs to stderr at level ("debug", "info", "warn", "error") in
// format ("text" or "json").
func (a *app) logger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	hopts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(a.stderr, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(a.stderr, hopts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}
