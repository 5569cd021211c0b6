package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func (a *app) keysCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "keys <command>",
		Short: "create and rotate the fleet's signing keys",
		Long: `Creates and rotates the fleet's keys: an offline root key that signs trust bundles, a
release key that signs model manifests and a control key that signs desired states.`,
	}, a.keysInitCmd(), a.keysRotateCmd())
}

func (a *app) keysInitCmd() *cobra.Command {
	var (
		dir string
		ttl time.Duration
	)
	c := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "create root, release and control keys and a trust bundle",
		Long: `Creates the fleet's root, release and control keys and the first root-signed trust bundle
in DIR (which must not hold keys yet), and prints the root public key that devices are
provisioned with.

Run it where the root key is to be kept (offline), and copy everything but root.key to the
control plane's <data-dir>/keys/. "edgefleet serve" creates keys itself at its first start
when it finds none; use this to keep the root key off the server.`,
		Example: `  edgefleet keys init --dir ./keys
  edgefleet keys init --dir ./keys --ttl 8760h`,
		Args: noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			if dir == "" {
				return usagef("keys init needs --dir")
			}
			if ttl <= 0 {
				return usagef("--ttl must be positive")
			}
			root, err := keys.Init(dir, time.Now(), ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Created the fleet keys in %s.\n\n", dir)
			fmt.Fprintf(a.stdout, "Keep %s offline: it signs trust bundles and is needed only to change keys.\n", keys.RootKeyFile)
			fmt.Fprintf(a.stdout, "Copy %s, %s, %s and %s to the control plane's <data-dir>/keys/.\n\n",
				keys.ReleaseKeyFile, keys.ControlKeyFile, keys.RootPubFile, keys.TrustBundleFile)
			fmt.Fprintf(a.stdout, "Root public key (devices are provisioned with it):\n%s", signing.EncodePublicKeyPEM(root))
			return nil
		}),
	}
	c.Flags().StringVar(&dir, "dir", "", "`DIR` to create the keys in (required)")
	c.Flags().DurationVar(&ttl, "ttl", keys.DefaultTrustBundleTTL, "validity of the trust bundle (`DURATION`)")
	return c
}

func (a *app) modelCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "model <command>",
		Short: "train, inspect and upload model versions",
	}, a.modelTrainCmd(), a.modelInspectCmd(), a.modelPushCmd(), a.modelLineageCmd())
}

func (a *app) modelTrainCmd() *cobra.Command {
	var (
		out, drift string
		seed       uint64
		rows       int
	)
	c := &cobra.Command{
		Use:   "train --out FILE",
		Short: "train the fraud example model (writes FILE and FILE.meta.json)",
		Long: `Trains the fraud example model on generated card transactions and writes the ONNX model to
FILE and its metadata to FILE.meta.json: input schema, reference statistics for drift
monitoring, test vectors and training metadata. Prints the test set's accuracy, precision,
recall and AUC.

--drift shifts the generated data, for a model (or a comparison) trained on a changed world.`,
		Example: `  edgefleet model train --out fraud.onnx
  edgefleet model train --out fraud-v2.onnx --seed 2 --rows 40000
  edgefleet model train --out shifted.onnx --drift pattern=card-testing,amount_scale=2`,
		Args: noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			if out == "" {
				return usagef("model train needs --out FILE")
			}
			params, err := parseDrift(drift)
			if err != nil {
				return err
			}
			art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: rows, Params: params})
			if err != nil {
				return err
			}
			meta, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(art.Metadata())
			if err != nil {
				return fmt.Errorf("encode metadata: %w", err)
			}
			metaPath := out + ".meta.json"
			if err := os.WriteFile(out, art.ONNX, 0o644); err != nil {
				return err
			}
			if err := os.WriteFile(metaPath, append(meta, '\n'), 0o644); err != nil {
				return err
			}
			sum := sha256.Sum256(art.ONNX)
			fmt.Fprintf(a.stdout, "wrote %s (%d bytes, sha256 %s) and %s\n", out, len(art.ONNX), hex.EncodeToString(sum[:6]), metaPath)
			t := art.Test
			fmt.Fprintf(a.stdout, "test set (%d rows): accuracy %.4f  precision %.4f  recall %.4f  AUC %.4f  (majority baseline %.4f)\n",
				t.Rows, t.Accuracy, t.Precision, t.Recall, t.AUC, t.BaselineAccuracy)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&out, "out", "", "output ONNX `FILE` (required); metadata goes to <out>.meta.json")
	f.Uint64Var(&seed, "seed", 1, "data generator `SEED`")
	f.IntVar(&rows, "rows", 0, "`N` generated rows, train and test (default 20000)")
	f.StringVar(&drift, "drift", "", "data shift, comma-separated `TERMS`: pattern=classic|card-testing, amount_scale=F,\nhour_shift=N, distance_scale=F, foreign_rate=F, fraud_rate=F, label_noise=F")
	return c
}

// parseDrift parses the --drift list into generator parameters.
func parseDrift(s string) (fraud.Params, error) {
	var p fraud.Params
	if strings.TrimSpace(s) == "" {
		return p, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return p, usagef("--drift %q: want key=value terms, got %q", s, kv)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		float := func(dst *float64) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return usagef("--drift %s=%q: not a number", k, v)
			}
			*dst = f
			return nil
		}
		var err error
		switch k {
		case "pattern":
			switch v {
			case fraud.PatternClassic.String():
				p.Pattern = fraud.PatternClassic
			case fraud.PatternCardTesting.String():
				p.Pattern = fraud.PatternCardTesting
			default:
				return p, usagef("--drift pattern=%q: want classic or card-testing", v)
			}
		case "hour_shift":
			n, perr := strconv.Atoi(v)
			if perr != nil {
				return p, usagef("--drift hour_shift=%q: not an integer", v)
			}
			p.HourShift = n
		case "amount_scale":
			err = float(&p.AmountScale)
		case "distance_scale":
			err = float(&p.DistanceScale)
		case "foreign_rate":
			err = float(&p.ForeignRate)
		case "fraud_rate":
			err = float(&p.FraudRate)
		case "label_noise":
			err = float(&p.LabelNoise)
		default:
			return p, usagef("--drift: unknown key %q (want pattern, amount_scale, hour_shift, distance_scale, foreign_rate, fraud_rate, label_noise)", k)
		}
		if err != nil {
			return p, err
		}
	}
	return p, nil
}

func (a *app) modelPushCmd() *cobra.Command {
	var (
		name, version, file, meta string
		samples, reference        string
		force                     bool
	)
	c := &cobra.Command{
		Use:   "push --name NAME --version VERSION --file FILE",
		Short: "upload a model version",
		Long: `Uploads an ONNX model. The control plane reads its inputs and outputs from the model, checks
that it loads and passes its test vectors, signs the manifest and stores the version;
versions are immutable.

Test vectors (inputs with the outputs every agent must reproduce before it serves the
version) come from --sample-inputs FILE: an OIP inference request JSON (one request or a
JSON array of them), or a CSV for a model with one tabular input. The control plane runs
the model on them and records the outputs, with a default tolerance for floats (1e-5 +
1e-4·|expected|; 1e-3 + 1e-2·|expected| with an FP16 or BF16 output; integers, BOOL and
strings exactly). Without samples, synthetic inputs made from the schema are tried.

--reference-data FILE (a CSV of training rows) gives the reference statistics that drift
monitoring compares live inputs with. Metadata written by hand (--meta, default
FILE.meta.json when it exists, as model train writes) is merged with what is derived.
"edgefleet model inspect FILE" shows what a model needs before you push it.

--force stores a version that fails its checks; agents refuse it, which is how to test that.`,
		Example: `  edgefleet model push --name churn --version 1 --file churn.onnx --sample-inputs requests.json
  edgefleet model push --name fraud --version 3 --file clf.onnx --sample-inputs rows.csv --reference-data train.csv
  edgefleet model push --name fraud --version 1.0.0 --file fraud.onnx     # with fraud.onnx.meta.json from model train`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			if name == "" || version == "" || file == "" {
				return usagef("model push needs --name, --version and --file")
			}
			metaPath := meta
			if metaPath == "" {
				if _, err := os.Stat(file + ".meta.json"); err == nil {
					metaPath = file + ".meta.json"
				}
			}
			read := func(flag, path string) ([]byte, error) {
				if path == "" {
					return nil, nil
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", flag, err)
				}
				return b, nil
			}
			metaData, err := read("--meta", metaPath)
			if err != nil {
				return err
			}
			sampleData, err := read("--sample-inputs", samples)
			if err != nil {
				return err
			}
			refData, err := read("--reference-data", reference)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			model, err := os.Open(file)
			if err != nil {
				return err
			}
			defer model.Close()

			// The client streams the model: it can be hundreds of MiB.
			mv, err := c.UploadModel(cmd.Context(), client.Upload{Name: name, Version: version, Model: model,
				Filename: filepath.Base(file), Metadata: metaData, Samples: sampleData, Reference: refData, Force: force})
			if err != nil {
				return fmt.Errorf("push %s@%s: %w", name, version, err)
			}
			fmt.Fprintf(a.stdout, "pushed %s@%s: %d bytes, %d chunks, sha256 %s\n", mv.Name, mv.Version, mv.Size, mv.ChunkCount, mv.SHA256)
			if metaPath != "" {
				fmt.Fprintf(a.stdout, "metadata from %s\n", metaPath)
			}
			for _, n := range mv.Checks.Notes {
				fmt.Fprintf(a.stdout, "%s\n", n)
			}
			if mv.Checks.Passed {
				fmt.Fprintf(a.stdout, "checks passed: %d test vectors\n", mv.Checks.TestVectors)
			} else {
				fmt.Fprintf(a.stdout, "checks FAILED (stored because of --force; agents will refuse it): %s\n", mv.Checks.Error)
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&name, "name", "", "model `NAME` (required)")
	f.StringVar(&version, "version", "", "model `VERSION` (required; versions are immutable)")
	f.StringVar(&file, "file", "", "ONNX `FILE` (required)")
	f.StringVar(&samples, "sample-inputs", "", "sample inputs `FILE` to record test vectors from: OIP request JSON (one or an array), or CSV")
	f.StringVar(&reference, "reference-data", "", "training data CSV `FILE` for drift reference statistics")
	f.StringVar(&meta, "meta", "", "metadata JSON `FILE` (default <file>.meta.json when it exists)")
	f.BoolVar(&force, "force", false, "store the version even if its test vectors fail (agents will refuse it)")
	return c
}

func (a *app) modelsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "models",
		Short: "list model versions",
		Long: `Lists the model versions the control plane stores, with their size, digest, check result
and how many devices refused each (the reasons follow the table).`,
		Example: "  edgefleet models",
		Args:    noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Models(cmd.Context())
			if err != nil {
				return err
			}
			devices, err := c.Devices(cmd.Context(), "")
			if err != nil {
				return err
			}
			refusals := refusalsByVersion(devices)
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tSIZE\tCHUNKS\tSHA256\tCHECKS\tREFUSED BY\tCREATED")
			for _, m := range list {
				checks := fmt.Sprintf("passed (%d vectors)", m.Checks.TestVectors)
				if !m.Checks.Passed {
					checks = "FAILED (forced)"
				}
				if m.Corrupt != "" {
					checks = "CORRUPT: " + m.Corrupt
				}
				refused := "-"
				if n := len(refusals[m.Name+"@"+m.Version]); n > 0 {
					refused = fmt.Sprintf("%d device(s)", n)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", m.Name, m.Version, m.Size, m.ChunkCount, short(m.SHA256), checks, refused, m.Created.Local().Format(time.DateTime))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, m := range list {
				key := m.Name + "@" + m.Version
				byReason := map[string][]string{}
				var reasons []string
				for _, r := range refusals[key] {
					if byReason[r.reason] == nil {
						reasons = append(reasons, r.reason)
					}
					byReason[r.reason] = append(byReason[r.reason], r.device)
				}
				for _, why := range reasons {
					fmt.Fprintf(a.stdout, "%s refused by %s: %s\n", key, strings.Join(byReason[why], ", "), why)
				}
			}
			return nil
		}),
	}
}

// refusal is one device's refusal of a model version.
type refusal struct{ device, reason string }

// refusalsByVersion collects, per name@version, the devices whose latest
// report refused it (failed or rolled back) and why.
func refusalsByVersion(devices []api.Device) map[string][]refusal {
	out := map[string][]refusal{}
	for _, d := range devices {
		for _, n := range reportedNames(d.Reported) {
			st := d.Reported[n]
			if st.State.Refused() && st.TargetVersion != "" {
				key := n + "@" + st.TargetVersion
				out[key] = append(out[key], refusal{device: d.ID, reason: st.Reason})
			}
		}
	}
	return out
}

func (a *app) deviceCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "device <command>",
		Short: "register, enroll and revoke devices",
		Long: `Admits devices to the fleet, either registered here with their credentials handed over by
you (device add) or enrolled by the device itself with a one-time token (device enroll),
and shuts them out again (device revoke).`,
	}, a.deviceAddCmd(), a.deviceEnrollCmd(), a.deviceRevokeCmd())
}

func (a *app) deviceAddCmd() *cobra.Command {
	var (
		lbls                          stringList
		configOut, dataDir, inference string
		tlsFiles                      deviceTLS
	)
	c := &cobra.Command{
		Use:   "add ID",
		Short: "register a device and print its credentials once",
		Long: `Registers device ID with its labels and prints its MQTT credentials; the password is shown
only this once. With --config-out it also writes a ready agent config (YAML, mode 0600) for
"edgefleet-agent --config"; the file must not exist yet, and nothing is registered when it
cannot be created.`,
		Example: `  edgefleet device add dev-1 --label site=berlin --label hw=arm64
  edgefleet device add dev-17 --label site=plant-1 --config-out dev-17.yaml
  edgefleet device add dev-18 --config-out dev-18.yaml --tls-ca-file /etc/edgefleet/tls/ca.crt`,
		Args: oneArg("device id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			id := pos[0]
			m, err := parseLabels(lbls)
			if err != nil {
				return err
			}
			if err := tlsFiles.check(); err != nil {
				return err
			}
			// Check the config can be written before registering: the password is
			// shown once and must not be lost to a typo in a path.
			var cfgFile *os.File
			if configOut != "" {
				if cfgFile, err = os.OpenFile(configOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return fmt.Errorf("--config-out: %w (nothing was registered)", err)
				}
				defer cfgFile.Close()
			}
			c, err := a.client()
			if err != nil {
				removeEmpty(cfgFile)
				return err
			}
			creds, err := c.RegisterDevice(cmd.Context(), id, m)
			if err != nil {
				removeEmpty(cfgFile)
				return fmt.Errorf("add device %s: %w", id, err)
			}
			fmt.Fprintf(a.stdout, "device %s registered. Credentials (the password is shown only this once):\n", creds.ID)
			fmt.Fprintf(a.stdout, "  username:     %s\n  password:     %s\n  broker_url:   %s\n  topic_prefix: %s\n", creds.Username, creds.Password, creds.BrokerURL, creds.TopicPrefix)
			if cfgFile == nil {
				fmt.Fprintf(a.stdout, "  root_public_key:\n%s", indent(creds.RootPublicKey, "    "))
				return nil
			}
			ac := agent.ConfigFor(creds, dataDir, inference)
			ac.TLSCAFile, ac.TLSCertFile, ac.TLSKeyFile = tlsFiles.ca, tlsFiles.cert, tlsFiles.key
			cfg, err := yaml.Marshal(ac)
			if err == nil {
				_, err = cfgFile.Write(cfg)
			}
			if err == nil {
				err = cfgFile.Sync()
			}
			if err != nil {
				return fmt.Errorf("device %s is registered, but writing %s failed: %w; use the credentials above", id, configOut, err)
			}
			fmt.Fprintf(a.stdout, "agent config written to %s (it holds the password: keep it private)\n", configOut)
			return nil
		}),
	}
	f := c.Flags()
	f.Var(&lbls, "label", "label `key=value` (repeatable)")
	f.StringVar(&configOut, "config-out", "", "write a ready agent config (YAML, mode 0600) to this `FILE`")
	f.StringVar(&dataDir, "data-dir", "/var/lib/edgefleet-agent", "the agent's data_dir in the config (`DIR`)")
	f.StringVar(&inference, "inference-listen", "127.0.0.1:8081", "the agent's inference_listen in the config (`ADDR`; empty disables the local API)")
	tlsFiles.flags(c)
	return c
}

// deviceTLS are the paths, as on the device, of a TLS broker's CA and the
// device's client certificate and key: they go into the agent config.
type deviceTLS struct{ ca, cert, key string }

func (d *deviceTLS) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&d.ca, "tls-ca-file", "", "the broker's CA bundle, as a `PATH` on the device (the config's tls_ca_file)")
	f.StringVar(&d.cert, "tls-cert-file", "", "the device's client certificate for mutual TLS, as a `PATH` on the device (tls_cert_file)")
	f.StringVar(&d.key, "tls-key-file", "", "its private key, as a `PATH` on the device (tls_key_file)")
}

// check refuses half a client certificate, before anything is registered.
func (d deviceTLS) check() error {
	if (d.cert == "") != (d.key == "") {
		return usagef("--tls-cert-file and --tls-key-file go together")
	}
	return nil
}

// args are the flags that pass the same paths to edgefleet-agent enroll.
func (d deviceTLS) args() string {
	var out string
	for _, f := range []struct{ flag, v string }{{"--tls-ca-file", d.ca}, {"--tls-cert-file", d.cert}, {"--tls-key-file", d.key}} {
		if f.v != "" {
			out += " " + f.flag + " " + f.v
		}
	}
	return out
}

// parseLabels reads repeated --label key=value flags.
func parseLabels(lbls []string) (map[string]string, error) {
	m := map[string]string{}
	for _, l := range lbls {
		k, v, err := labels.ParseLabel(l)
		if err != nil {
			return nil, usagef("--label: %v", err)
		}
		if _, dup := m[k]; dup {
			return nil, usagef("--label %s given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// removeEmpty removes a config file created for a registration that failed.
func removeEmpty(f *os.File) {
	if f != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}
}

func (a *app) devicesCmd() *cobra.Command {
	var selector string
	c := &cobra.Command{
		Use:   "devices",
		Short: "list devices and their state",
		Long: `Lists the registered devices: labels, whether they are online, the desired model versions
and generation, what each device runs (ACTIVE) and what it is doing (STATE; "revoked" for a
device whose credentials were revoked until it is enrolled again, "blocked: ..." for one
assigned a version whose stored file is corrupt), the version of the trust bundle it trusts
(TRUST), last seen, and the last signed document it refused and why (LAST REFUSAL: a trust
bundle, a manifest or a desired state). Below the table, why a device refused (failed or
rolled back) a version or a desired state.`,
		Example: `  edgefleet devices
  edgefleet devices --selector site=berlin,hw!=x86`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			if selector != "" {
				if _, err := labels.Parse(selector); err != nil {
					return usagef("--selector: %v", err)
				}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Devices(cmd.Context(), selector)
			if err != nil {
				return err
			}
			now := time.Now()
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tLABELS\tONLINE\tDESIRED\tACTIVE\tSTATE\tTRUST\tPEERS\tLAST SEEN\tLAST REFUSAL")
			for _, d := range list {
				state := formatState(d.Reported)
				switch {
				case d.Revoked:
					state = "revoked"
				case d.Blocked != "":
					state = "blocked: " + d.Blocked
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, formatLabels(d.Labels), yesNo(d.Online),
					formatDesired(d.Desired), formatActive(d.Reported), state, formatTrust(d.TrustVersion), formatPeers(d.Telemetry),
					formatAgo(now, d.LastSeen), formatRefusal(now, d.LastRefusal))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			// Why a device refused what it was sent, below the table: a
			// reason is too long for a column.
			for _, d := range list {
				for _, n := range reportedNames(d.Reported) {
					if st := d.Reported[n]; st.State.Refused() && st.Reason != "" {
						fmt.Fprintf(a.stdout, "%s %s %s@%s: %s\n", d.ID, st.State, n, st.TargetVersion, st.Reason)
					}
				}
				if r := d.LastRefusal; r != nil {
					fmt.Fprintf(a.stdout, "%s refused desired state generation %d: %s\n", d.ID, r.Generation, r.Reason)
				}
			}
			return nil
		}),
	}
	c.Flags().StringVar(&selector, "selector", "", "only devices matching this label `SELECTOR` (k=v,k!=v)")
	return c
}

func formatLabels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func formatDesired(d *api.DesiredSummary) string {
	if d == nil || len(d.Models) == 0 {
		return "-"
	}
	parts := make([]string, len(d.Models))
	for i, m := range d.Models {
		parts[i] = m.Name + "@" + m.Version
	}
	return fmt.Sprintf("%s (%d)", strings.Join(parts, ","), d.Generation)
}

func reportedNames(r map[string]*api.ModelStatus) []string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func formatActive(r map[string]*api.ModelStatus) string {
	var parts []string
	for _, n := range reportedNames(r) {
		if v := r[n].ActiveVersion; v != "" {
			parts = append(parts, n+"@"+v)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func formatState(r map[string]*api.ModelStatus) string {
	var parts []string
	for _, n := range reportedNames(r) {
		st := r[n]
		s := string(st.State)
		if st.State == api.ModelDownloading && st.ChunksTotal > 0 {
			s += fmt.Sprintf(" %d/%d", st.ChunksHave, st.ChunksTotal)
		}
		if len(r) > 1 {
			s = n + ":" + s
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

// formatPeers is the number of live peers a sharing device sees, with the
// peers it blocked; "-" when it does not share.
func formatPeers(t *api.TelemetrySummary) string {
	if t == nil || t.Peers == nil {
		return "-"
	}
	if n := len(t.Peers.Blocked); n > 0 {
		return fmt.Sprintf("%d (%d blocked)", t.Peers.Members, n)
	}
	return fmt.Sprint(t.Peers.Members)
}

func formatTrust(v uint64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("v%d", v)
}

// maxRefusalReason bounds the reason shown in the devices table; the API
// (GET /api/v1/devices/{id}) has all of it.
const maxRefusalReason = 200

// formatRefusal is "kind[ model] (when): reason", the reason shortened.
func formatRefusal(now time.Time, r *api.Refusal) string {
	if r == nil {
		return "-"
	}
	kind := string(r.Kind)
	if kind == "" {
		kind = string(api.RefusedUnknown)
	}
	if r.Model != "" {
		kind += " " + r.Model
	}
	reason := strings.Join(strings.Fields(r.Reason), " ")
	if len(reason) > maxRefusalReason {
		reason = strings.ToValidUTF8(reason[:maxRefusalReason], "") + "…"
	}
	return fmt.Sprintf("%s (%s): %s", kind, formatAgo(now, r.Time), reason)
}

func formatAgo(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Local().Format(time.DateTime)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (a *app) deployCmd() *cobra.Command {
	var (
		devices  stringList
		selector string
	)
	c := &cobra.Command{
		Use:   "deploy NAME@VERSION (--device ID ... | --selector SELECTOR)",
		Short: "give devices a signed desired state naming a model version",
		Long: `Gives each target device a signed desired state naming NAME@VERSION, with the device's next
generation; the agent downloads, checks and activates the version. Target devices by id
(--device, repeatable) or by label selector. For staged delivery with health gates use
"edgefleet rollout create".`,
		Example: `  edgefleet deploy fraud@1.0.0 --selector site=berlin
  edgefleet deploy fraud@1.0.0 --device dev-1 --device dev-2`,
		Args: oneArg("NAME@VERSION"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			name, version, ok := strings.Cut(pos[0], "@")
			if !ok || name == "" || version == "" {
				return usagef("deploy %q: want NAME@VERSION, e.g. fraud@v2", pos[0])
			}
			switch {
			case len(devices) == 0 && selector == "":
				return usagef("deploy needs --device ID (repeatable) or --selector k=v")
			case len(devices) > 0 && selector != "":
				return usagef("give --device or --selector, not both")
			}
			if selector != "" {
				if _, err := labels.Parse(selector); err != nil {
					return usagef("--selector: %v", err)
				}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			req := api.DeployRequest{Model: name, Version: version, Devices: devices, Selector: selector}
			res, err := c.Deploy(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("deploy %s@%s: %w", name, version, err)
			}
			fmt.Fprintf(a.stdout, "deployed %s@%s to %d device(s):\n", res.Model, res.Version, len(res.Devices))
			failed := 0
			for _, d := range res.Devices {
				if d.PublishError != "" {
					failed++
					fmt.Fprintf(a.stdout, "  %s  generation %d  (stored; publish failed: %s)\n", d.ID, d.Generation, d.PublishError)
					continue
				}
				fmt.Fprintf(a.stdout, "  %s  generation %d\n", d.ID, d.Generation)
			}
			if failed > 0 {
				return fmt.Errorf("%d desired state(s) stored but not yet published; they are sent again when the broker connection is back", failed)
			}
			return nil
		}),
	}
	c.Flags().Var(&devices, "device", "target device `ID` (repeatable)")
	c.Flags().StringVar(&selector, "selector", "", "target devices by label `SELECTOR` (k=v,k!=v)")
	return c
}

func (a *app) healthCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "health",
		Short: "check that a control plane answers (for container health checks)",
		Long: `Asks the control plane's GET /healthz, which needs no token, and exits 0 when it answers,
1 otherwise: the container image's HEALTHCHECK runs it.`,
		Example: "  edgefleet health --api http://127.0.0.1:8080",
		Args:    noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := client.New(a.api, client.Options{})
			if err != nil {
				return usagef("--api %q: want an http:// or https:// URL", a.api)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			if err := c.Health(ctx); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "ok")
			return nil
		}),
	}
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "print the version",
		Long:    "Prints edgefleet's version and commit, the device protocol version it speaks and the Go runtime.",
		Example: "  edgefleet version",
		Args:    noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			fmt.Fprintf(a.stdout, "edgefleet %s (protocol %d, %s %s/%s)\n", buildinfo.String(), efpb.ProtocolVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		}),
	}
}

func short(hexSum string) string {
	if len(hexSum) > 12 {
		return hexSum[:12]
	}
	return hexSum
}
