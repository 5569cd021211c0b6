package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

type served struct {
	api, tokenFile, token, dir string
	stdout                     *testkit.Buffer
}

// startServe runs `edgefleet serve` through Main on kernel-chosen ports,
// with extra flags, and stops it at cleanup, checking it exits 0.
func startServe(t *testing.T, extra ...string) *served {
	t.Helper()
	dir := t.TempDir()
	sv := &served{dir: dir, tokenFile: filepath.Join(dir, "token"), stdout: &testkit.Buffer{}}
	stderr := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args := append([]string{"--token-file", sv.tokenFile, "serve",
		"--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0",
		"--log-level", "warn"}, extra...)
	go func() { done <- run(ctx, args, noEnv, sv.stdout, stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			assert.Equal(t, 0, code, "serve exit status; stderr:\n%s", stderr.String())
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop 30s after cancel")
		}
	})
	ready := regexp.MustCompile(`ready: API (http://\S+),`)
	require.Eventually(t, func() bool {
		select {
		case code := <-done:
			require.FailNow(t, "serve exited", "status %d; stderr:\n%s", code, stderr.String())
		default:
		}
		return ready.MatchString(sv.stdout.String())
	}, 30*time.Second, 10*time.Millisecond)
	sv.api = ready.FindStringSubmatch(sv.stdout.String())[1]
	b, err := os.ReadFile(sv.tokenFile)
	require.NoError(t, err)
	sv.token = strings.TrimSpace(string(b))
	return sv
}

func noEnv(string) string { return "" }

// cli runs one command with an empty environment.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return cliEnv(t, noEnv, args...)
}

func cliEnv(t *testing.T, getenv env, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, getenv, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLIEndToEnd(t *testing.T) {
	sv := startServe(t)
	out := sv.stdout.String()
	assert.Equal(t, 1, strings.Count(out, sv.token), "serve prints the token once:\n%s", out)
	assert.Regexp(t, `^ef_[0-9a-f]{64}$`, sv.token)
	st, err := os.Stat(sv.tokenFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	api := []string{"--api", sv.api, "--token-file", sv.tokenFile}
	c := func(args ...string) (int, string, string) {
		t.Helper()
		return cli(t, append(args, api...)...)
	}

	model := filepath.Join(sv.dir, "fraud.onnx")
	code, stdout, stderr := cli(t, "model", "train", "--out", model, "--seed", "1", "--rows", "2000")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "accuracy")
	assert.Contains(t, stdout, "AUC")
	assert.FileExists(t, model+".meta.json")

	code, stdout, stderr = c("model", "push", "--name", "fraud", "--version", "v1", "--file", model)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "pushed fraud@v1")
	assert.Contains(t, stdout, "metadata from "+model+".meta.json")
	assert.Contains(t, stdout, "checks passed")

	code, _, stderr = c("model", "push", "--name", "fraud", "--version", "v1", "--file", model)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "already exists")
	assert.Equal(t, 1, strings.Count(stderr, "\n"), "one readable line: %q", stderr)

	cfgPath := filepath.Join(sv.dir, "agent.yaml")
	code, stdout, stderr = c("device", "add", "dev-1", "--label", "site=berlin", "--label", "hw=arm64",
		"--config-out", cfgPath, "--data-dir", "/data/agent", "--inference-listen", "127.0.0.1:9001")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "password:")
	// The config is exactly what the agent reads.
	st, err = os.Stat(cfgPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	cfg, err := agent.LoadConfig(cfgPath)
	require.NoError(t, err)
	opts, err := cfg.Options()
	require.NoError(t, err)
	assert.Equal(t, "dev-1", opts.DeviceID)
	assert.Equal(t, "dev-1", cfg.Username)
	assert.Contains(t, stdout, cfg.Password)
	assert.Equal(t, "/data/agent", opts.DataDir)
	assert.Equal(t, "127.0.0.1:9001", opts.InferenceListen)
	assert.Equal(t, "ef/v1", opts.TopicPrefix)
	assert.True(t, strings.HasPrefix(opts.BrokerURL, "tcp://127.0.0.1:"), opts.BrokerURL)

	// An existing config file is never overwritten, and nothing is registered.
	code, _, stderr = c("device", "add", "dev-3", "--config-out", cfgPath)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "nothing was registered")

	code, stdout, stderr = c("device", "add", "dev-2", "--label", "site=paris")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "BEGIN PUBLIC KEY", "without --config-out the root key is printed")

	code, stdout, stderr = c("deploy", "fraud@v1", "--selector", "site=berlin")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "deployed fraud@v1 to 1 device(s)")
	assert.Regexp(t, `dev-1\s+generation 1`, stdout)
	code, stdout, stderr = c("deploy", "fraud@v1", "--device", "dev-1", "--device", "dev-2")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `dev-1\s+generation 2`, stdout)
	assert.Regexp(t, `dev-2\s+generation 1`, stdout)

	code, stdout, stderr = c("devices")
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 3, stdout)
	assert.Regexp(t, `^ID\s+LABELS\s+ONLINE\s+DESIRED\s+ACTIVE\s+STATE\s+TRUST\s+PEERS\s+LAST SEEN\s+LAST REFUSAL$`, lines[0])
	assert.Regexp(t, `^dev-1\s+hw=arm64,site=berlin\s+no\s+fraud@v1 \(2\)\s+-\s+-\s+-\s+-\s+never\s+-$`, lines[1])
	assert.Regexp(t, `^dev-2\s+site=paris\s+no\s+fraud@v1 \(1\)`, lines[2])

	code, stdout, stderr = c("devices", "--selector", "site!=berlin")
	require.Equal(t, 0, code, stderr)
	assert.NotContains(t, stdout, "dev-1")
	assert.Contains(t, stdout, "dev-2")

	code, stdout, stderr = c("models")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `fraud\s+v1\s+\d+\s+1\s+[0-9a-f]{12}\s+passed`, stdout)

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"selector matches nothing", []string{"deploy", "fraud@v1", "--selector", "site=nowhere"}, 1, "matches no registered device"},
		{"unknown version", []string{"deploy", "fraud@v9", "--device", "dev-1"}, 1, "does not exist"},
		{"bad selector", []string{"deploy", "fraud@v1", "--selector", "site"}, 2, "want key=value"},
		{"no version", []string{"deploy", "fraud", "--device", "dev-1"}, 2, "want NAME@VERSION"},
		{"no targets", []string{"deploy", "fraud@v1"}, 2, "--device ID"},
		{"duplicate device", []string{"device", "add", "dev-1"}, 1, "already registered"},
		{"bad label", []string{"device", "add", "dev-9", "--label", "site"}, 2, "want key=value"},
		{"no device id", []string{"device", "add"}, 2, "one device id"},
		{"push without file", []string{"model", "push", "--name", "fraud", "--version", "v2"}, 2, "needs --name, --version and --file"},
		{"push a missing file", []string{"model", "push", "--name", "fraud", "--version", "v2", "--file", "/nonexistent.onnx"}, 1, "no such file"},
		{"push not onnx", []string{"model", "push", "--name", "fraud", "--version", "v2", "--file", cfgPath, "--meta", model + ".meta.json"}, 1, "not a loadable ONNX model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := c(tt.args...)
			assert.Equal(t, tt.wantCode, code, stderr)
			assert.Contains(t, stderr, tt.wantErr)
			assert.True(t, strings.HasPrefix(stderr, "edgefleet: "), stderr)
		})
	}

	code, _, stderr = cli(t, "devices", "--api", sv.api, "--token", "ef_wrong")
	assert.Equal(t, 1, code)
	assert.Equal(t, "edgefleet: invalid API token (HTTP 401)\n", stderr)

	code, _, stderr = cli(t, "devices", "--api", sv.api)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no API token")

	// health needs no token.
	code, stdout, stderr = cli(t, "health", "--api", sv.api)
	assert.Equal(t, 0, code, stderr)
	assert.Equal(t, "ok\n", stdout)

	// Global flags before the command and the environment work too.
	code, stdout, stderr = cli(t, "--api", sv.api, "--token", sv.token, "devices")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "dev-2")
	envs := map[string]string{EnvAPI: sv.api, EnvToken: sv.token}
	code, stdout, stderr = cliEnv(t, func(k string) string { return envs[k] }, "models")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "fraud")
}

func TestCLIUsageAndOfflineCommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // in stdout for 0, stderr otherwise
	}{
		{"no command", nil, 2, "Usage: edgefleet"},
		{"unknown command", []string{"bogus"}, 2, `unknown command "bogus"`},
		{"unknown flag", []string{"devices", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"help", []string{"-h"}, 0, ""},
		{"keys without init", []string{"keys"}, 2, "keys needs a subcommand"},
		{"model unknown", []string{"model", "fly"}, 2, `unknown command "model fly"`},
		{"version", []string{"version"}, 0, "protocol 2"},
		{"train without out", []string{"model", "train"}, 2, "needs --out"},
		{"bad drift", []string{"model", "train", "--out", "x.onnx", "--drift", "pattern=weird"}, 2, "want classic or card-testing"},
		{"bad api", []string{"devices", "--api", "ftp://x", "--token", "t"}, 2, "want an http:// or https:// URL"},
		{"unreachable", []string{"devices", "--api", "http://127.0.0.1:1", "--token", "t"}, 1, "cannot reach the control plane"},
		{"health of nothing", []string{"health", "--api", "http://127.0.0.1:1"}, 1, "cannot reach the control plane"},
		{"both token flags", []string{"devices", "--token", "a", "--token-file", "b"}, 2, "not both"},
		{"bad log level", []string{"serve", "--log-level", "loud"}, 2, "--log-level"},
		{"negative alert threshold", []string{"serve", "--alert-max-psi", "-1"}, 2, "must not be negative"},
		{"webhook secret without url", []string{"serve", "--webhook-secret-file", "/nonexistent"}, 2, "needs --webhook-url"},
		{"missing webhook secret", []string{"serve", "--webhook-url", "http://127.0.0.1:1/hook", "--webhook-secret-file", "/nonexistent"}, 1, "webhook secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(t, tt.args...)
			assert.Equal(t, tt.wantCode, code, "stdout %q stderr %q", stdout, stderr)
			if tt.wantCode == 0 {
				assert.Contains(t, stdout, tt.wantOut)
			} else {
				assert.Contains(t, stderr, tt.wantOut)
			}
		})
	}
}

func TestKeysInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	code, stdout, stderr := cli(t, "keys", "init", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "BEGIN PUBLIC KEY")
	assert.Contains(t, stdout, "Keep root.key offline")
	for _, f := range []string{"root.key", "root.pub", "release.key", "control.key", "trust.bundle"} {
		assert.FileExists(t, filepath.Join(dir, f))
	}
	code, _, stderr = cli(t, "keys", "init", "--dir", dir)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "refusing to replace keys")
}

func TestParseInterleaved(t *testing.T) {
	a := &app{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, getenv: noEnv}
	var l stringList
	var x bool
	var pos []string
	c := &cobra.Command{Use: "t", RunE: func(_ *cobra.Command, args []string) error { pos = args; return nil }}
	c.Flags().Var(&l, "label", "")
	c.Flags().BoolVar(&x, "x", false, "")
	_, err := a.execute(context.Background(), c, []string{"dev-1", "--label", "a=b", "-x", "more", "--label=c=d", "--", "--label"})
	require.NoError(t, err)
	assert.Equal(t, []string{"dev-1", "more", "--label"}, pos)
	assert.Equal(t, stringList{"a=b", "c=d"}, l)
	assert.True(t, x)
}

func TestParseDrift(t *testing.T) {
	p, err := parseDrift(" pattern=card-testing, amount_scale=2.5,hour_shift=-3 ")
	require.NoError(t, err)
	assert.Equal(t, fraud.Params{Pattern: fraud.PatternCardTesting, AmountScale: 2.5, HourShift: -3}, p)
	for _, bad := range []string{"pattern", "amount_scale=big", "hour_shift=1.5", "colour=red"} {
		_, err := parseDrift(bad)
		assert.Error(t, err, "parseDrift(%q)", bad)
	}
}

func TestBrokerACLMatchesTheShippedFile(t *testing.T) {
	code, stdout, stderr := cli(t, "broker", "acl", "--control-user", "edgefleet-cp")
	require.Equal(t, 0, code, stderr)
	shipped, err := os.ReadFile("../../deploy/mosquitto/acl.conf")
	require.NoError(t, err)
	assert.Equal(t, string(shipped), stdout, "deploy/mosquitto/acl.conf is what edgefleet broker acl prints")

	code, _, stderr = cli(t, "broker", "acl", "--control-user", "bad user")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "control")
	code, _, stderr = cli(t, "broker", "passwords")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "want broker acl")
}

// TestCLIDeviceTLSFlags: a private CA and a client certificate go into the
// written config, as paths on the device; half a certificate is refused
// before anything is registered.
func TestCLIDeviceTLSFlags(t *testing.T) {
	sv := startServe(t)
	c := func(args ...string) (int, string, string) {
		t.Helper()
		return cli(t, append(args, "--api", sv.api, "--token-file", sv.tokenFile)...)
	}
	tlsCfg := filepath.Join(t.TempDir(), "tls.yaml")
	code, _, stderr := c("device", "add", "dev-4", "--config-out", tlsCfg, "--tls-cert-file", "/etc/edgefleet/tls/dev-4.crt")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "--tls-cert-file and --tls-key-file go together")
	assert.NoFileExists(t, tlsCfg)
	code, _, stderr = c("device", "add", "dev-4", "--config-out", tlsCfg, "--tls-ca-file", "/etc/edgefleet/tls/ca.crt",
		"--tls-cert-file", "/etc/edgefleet/tls/dev-4.crt", "--tls-key-file", "/etc/edgefleet/tls/dev-4.key")
	require.Equal(t, 0, code, stderr)
	written, err := agent.LoadConfig(tlsCfg)
	require.NoError(t, err)
	assert.Equal(t, "/etc/edgefleet/tls/ca.crt", written.TLSCAFile)
	assert.Equal(t, "/etc/edgefleet/tls/dev-4.crt", written.TLSCertFile)
	assert.Equal(t, "/etc/edgefleet/tls/dev-4.key", written.TLSKeyFile)
	code, _, _ = c("device", "add", "dev-4")
	assert.Equal(t, 1, code, "the refused call registered nothing; the second one did")
}

func TestModelInspect(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	tests := []struct {
		name  string
		model []byte
		want  []string
	}{
		{"classifier", modelzoo.Classifier(true), []string{
			"producer skl2onnx 1.17.0, IR version 8, opsets ai.onnx 15, ai.onnx.ml 1",
			"output_probability  seq(map(string,tensor(float)))  -      FP32 [-1,2], class map of classes \"legit\", \"fraud\"",
			`monitoring: a classifier; accuracy compares ground truth with "output_label", scores from "output_probability"`,
			"push needs: nothing more: it runs on synthetic inputs",
			"may be CSV files (one row per sample, 2 numeric columns)",
		}},
		{"needs samples", modelzoo.Lookup(), []string{"push needs: --sample-inputs FILE", "the model fails on synthetic inputs"}},
		{"not servable", modelzoo.SequenceOutput(), []string{
			"NOT SERVED: output \"parts\" is a seq(tensor(float))",
			"push would be refused: output \"parts\" is a seq(tensor(float))",
		}},
		{"fixed and unicode", modelzoo.Unicode(), []string{"entrée", "résultat_分数", "FP32 [-1,1]"}},
	}
	for _, tt := range tests {
		code, stdout, stderr := cli(t, "model", "inspect", write(tt.name+".onnx", tt.model))
		require.Equal(t, 0, code, "%s: %s", tt.name, stderr)
		for _, w := range tt.want {
			assert.Contains(t, stdout, w, "%s", tt.name)
		}
	}
	code, _, stderr := cli(t, "model", "inspect", write("junk.onnx", []byte("not a model")))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "not an ONNX model")
}
