package cli

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/atomicfile"
)

func (a *app) serve(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet serve")
	var (
		opts      controlplane.Options
		logLevel  string
		logFormat string
	)
	a.globalFlags(fs)
	fs.StringVar(&opts.DataDir, "data-dir", "./edgefleet-data", "directory for keys, database and model files")
	fs.StringVar(&opts.APIListen, "listen", controlplane.DefaultAPIListen, "REST API listen address")
	fs.StringVar(&opts.MQTTListen, "mqtt-listen", controlplane.DefaultMQTTListen, "embedded MQTT broker listen address")
	fs.StringVar(&opts.MQTTURL, "mqtt-url", "", "external MQTT broker (tcp://host:1883) instead of the embedded one")
	fs.StringVar(&opts.Username, "mqtt-username", "", "the control plane's username on the external broker")
	fs.StringVar(&opts.Password, "mqtt-password", a.getenv(EnvMQTTPassword), "its password (env "+EnvMQTTPassword+")")
	fs.IntVar(&opts.IngestConnections, "ingest-connections", 0, "with --mqtt-url: receive telemetry over N connections sharing one MQTT shared subscription (mosquitto 2, EMQX)")
	fs.StringVar(&opts.PublicMQTTURL, "public-mqtt-url", "", "broker URL devices are told (default: the broker's own URL)")
	fs.StringVar(&opts.TopicPrefix, "topic-prefix", "", "MQTT topic prefix (default ef/v1)")
	fs.StringVar(&opts.ORTLibrary, "ort-lib", "", "path of libonnxruntime.so.1 (default: search; env EDGEFLEET_ORT_LIB)")
	var tlsCert, tlsKey, clientCA string
	fs.StringVar(&tlsCert, "mqtt-tls-cert", "", "PEM certificate (chain) for the embedded broker: serve MQTT over TLS")
	fs.StringVar(&tlsKey, "mqtt-tls-key", "", "PEM private key of --mqtt-tls-cert")
	fs.StringVar(&clientCA, "mqtt-client-ca", "", "PEM CA bundle: require device client certificates whose common name is the device id (mutual TLS)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	rules := &opts.Monitor.Rules
	fs.Float64Var(&rules.MaxPSI, "alert-max-psi", 0, "alert when a feature's PSI exceeds this (e.g. 0.25; 0: off)")
	fs.Float64Var(&rules.MinAccuracy, "alert-min-accuracy", 0, "alert when accuracy falls below this (0: off)")
	fs.Float64Var(&rules.MaxAccuracyDrop, "alert-max-accuracy-drop", 0, "alert when accuracy drops by more than this vs the previous window (0: off)")
	fs.DurationVar(&rules.Window, "alert-window", 0, "time window the alert rules evaluate, at least 1m (default 15m)")
	fs.StringVar(&opts.Monitor.WebhookURL, "webhook-url", "", "POST every alert here as signed JSON (the retrain hook)")
	var webhookSecretFile string
	fs.StringVar(&webhookSecretFile, "webhook-secret-file", a.getenv(EnvWebhookSecretFile),
		"file holding the webhook's HMAC-SHA256 key (env "+EnvWebhookSecretFile+")")
	fs.Usage = func() {
		fmt.Fprintln(a.stderr, "Usage: edgefleet serve [flags]\n\nRuns the control plane until interrupted. At the first start it generates the fleet's keys\nand an admin API token, printed once (and written to --token-file if given).\n\nFlags:")
		fs.PrintDefaults()
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("serve takes no arguments, got %q", pos)
	}
	if tlsCert != "" || tlsKey != "" || clientCA != "" {
		if opts.MQTTURL != "" {
			return usagef("--mqtt-tls-* configure the embedded broker; with --mqtt-url configure TLS on that broker")
		}
		if opts.MQTTTLS, err = broker.TLSConfig(tlsCert, tlsKey, clientCA); err != nil {
			return usagef("%v", err)
		}
	}
	for _, v := range []float64{rules.MaxPSI, rules.MinAccuracy, rules.MaxAccuracyDrop} {
		if v < 0 {
			return usagef("--alert-* thresholds must not be negative, got %v", v)
		}
	}
	if webhookSecretFile != "" {
		if opts.Monitor.WebhookURL == "" {
			return usagef("--webhook-secret-file needs --webhook-url")
		}
		secret, err := os.ReadFile(webhookSecretFile)
		if err != nil {
			return fmt.Errorf("webhook secret: %w", err)
		}
		if opts.Monitor.WebhookSecret = bytes.TrimSpace(secret); len(opts.Monitor.WebhookSecret) == 0 {
			return fmt.Errorf("webhook secret file %s is empty", webhookSecretFile)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch logFormat {
	case "text":
		opts.Logger = slog.New(slog.NewTextHandler(a.stderr, hopts))
	case "json":
		opts.Logger = slog.New(slog.NewJSONHandler(a.stderr, hopts))
	default:
		return usagef("--log-format %q: want text or json", logFormat)
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
