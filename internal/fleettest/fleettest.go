// Package fleettest starts the real parts of a fleet for tests: a control
// plane on 127.0.0.1 port 0 with its admin token and typed client, and agents
// provisioned against it, each run until the test ends. It builds on
// internal/testkit; a package's own in-package tests cannot import it (a
// cycle) and use testkit. Imported by tests only.
package fleettest

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// ControlPlane is a real control plane (badger, embedded broker unless
// Options.MQTTURL says otherwise, onnxruntime) that runs until the test
// ends or Stop.
type ControlPlane struct {
	*controlplane.Server
	// Dir is its DataDir; Token the admin token of its first start ("" when
	// it started on a DataDir that had one); Client calls its API with
	// that token.
	Dir    string
	Token  string
	Client *client.Client

	t    testing.TB
	stop func()
}

// Logger is the log for tests: discarded unless EDGEFLEET_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("EDGEFLEET_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// StartControlPlane runs a control plane with test defaults (a temporary
// DataDir, API and broker on 127.0.0.1 port 0, the shared runtime rt)
// adjusted by mod, and waits until it is ready.
func StartControlPlane(t testing.TB, rt *infer.Runtime, mod func(*controlplane.Options)) *ControlPlane {
	t.Helper()
	opts := controlplane.Options{
		DataDir:    t.TempDir(),
		APIListen:  "127.0.0.1:0",
		MQTTListen: "127.0.0.1:0",
		Runtime:    rt,
		Logger:     Logger(),
	}
	if mod != nil {
		mod(&opts)
	}
	cp := &ControlPlane{Dir: opts.DataDir, t: t}
	prev := opts.OnInitialToken
	opts.OnInitialToken = func(tok string) {
		cp.Token = tok
		if prev != nil {
			prev(tok)
		}
	}
	s, err := controlplane.New(opts)
	require.NoError(t, err)
	cp.Server = s
	cp.stop = testkit.Start(t, "control plane", s.Run, s.Ready())
	cp.Client, err = client.New(s.APIURL(), client.Options{Token: cp.Token})
	require.NoError(t, err)
	return cp
}

// Stop shuts the control plane down now and checks Run returned nil (it
// is also stopped when the test ends). Idempotent.
func (cp *ControlPlane) Stop() { cp.stop() }

// WithToken returns a client of the control plane's API with token.
func (cp *ControlPlane) WithToken(token string) *client.Client {
	cp.t.Helper()
	c, err := client.New(cp.APIURL(), client.Options{Token: token})
	require.NoError(cp.t, err)
	return c
}

// AgentOptions are agent test defaults for a registered device: its
// credentials, a temporary DataDir, the local API on 127.0.0.1 port 0,
// short heartbeat and fetch-retry intervals, and the shared runtime rt.
func AgentOptions(t testing.TB, creds api.DeviceCredentials, rt *infer.Runtime) agent.Options {
	t.Helper()
	cfg := agent.ConfigFor(creds, t.TempDir(), "127.0.0.1:0")
	opts, err := cfg.Options()
	require.NoError(t, err)
	opts.Runtime = rt
	opts.HeartbeatInterval = 500 * time.Millisecond
	opts.FetchRetryInterval = 300 * time.Millisecond
	opts.Logger = Logger()
	return opts
}

// StartAgent registers device id with labels and runs its agent (options
// from AgentOptions, adjusted by mod) until the test ends.
func (cp *ControlPlane) StartAgent(t testing.TB, rt *infer.Runtime, id string, labels map[string]string, mod func(*agent.Options)) *agent.Agent {
	t.Helper()
	creds, err := cp.RegisterDevice(id, labels)
	require.NoError(t, err)
	opts := AgentOptions(t, creds, rt)
	if mod != nil {
		mod(&opts)
	}
	return RunAgent(t, opts)
}

// RunAgent runs an agent with opts until the test ends and waits until it
// is ready.
func RunAgent(t testing.TB, opts agent.Options) *agent.Agent {
	t.Helper()
	a, err := agent.New(opts)
	require.NoError(t, err)
	testkit.Run(t, "agent "+opts.DeviceID, a.Run, a.Ready())
	return a
}
