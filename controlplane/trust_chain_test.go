package controlplane_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The operator's path of key rotation, with real parts: keys live in an
// offline directory (root.key never leaves it), `edgefleet keys rotate`
// runs there, everything but root.key is copied to the control plane's
// <data-dir>/keys, and the control plane restarts, while real agents run
// (or are offline) against it.

// chainTimeout bounds each wait for the fleet to move; it moves in a
// second or two when the machine is idle.
const chainTimeout = 60 * time.Second

type trustFleet struct {
	t       *testing.T
	dir     string
	offline string // where root.key is kept and keys rotate runs
	cp      *fleettest.ControlPlane
	token   string // admin token of the first start
	mqtt    string // the embedded broker's address, kept across restarts
	mqttURL string // an external broker instead, if set
	agents  map[string]*trustAgent
}

type trustAgent struct {
	a      *agent.Agent
	opts   agent.Options
	stop   func()
	online bool
}

func newTrustFleet(t *testing.T, mqttURL string) *trustFleet {
	t.Helper()
	f := &trustFleet{t: t, dir: t.TempDir(), mqtt: "127.0.0.1:0", mqttURL: mqttURL, agents: map[string]*trustAgent{}}
	f.offline = filepath.Join(f.dir, "offline")
	_, err := keys.Init(f.offline, time.Now(), 0)
	require.NoError(t, err)
	f.copyKeys()
	f.startCP()
	return f
}

func (f *trustFleet) cpKeys() string { return filepath.Join(f.dir, "cp", "keys") }

// copyKeys copies every file of the offline keys directory but root.key
// to the control plane, as docs/security.md says.
func (f *trustFleet) copyKeys() {
	f.t.Helper()
	require.NoError(f.t, os.MkdirAll(f.cpKeys(), 0o700))
	entries, err := os.ReadDir(f.offline)
	require.NoError(f.t, err)
	for _, e := range entries {
		if e.Name() == keys.RootKeyFile || strings.HasPrefix(e.Name(), keys.RootKeyFile+".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(f.offline, e.Name()))
		require.NoError(f.t, err)
		require.NoError(f.t, os.WriteFile(filepath.Join(f.cpKeys(), e.Name()), b, 0o600))
	}
}

// rotate runs `edgefleet keys rotate --role role` offline, for each role.
func (f *trustFleet) rotate(roles ...string) {
	f.t.Helper()
	for _, role := range roles {
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), []string{"keys", "rotate", "--role", role, "--dir", f.offline}, &out, &errOut)
		require.Equal(f.t, 0, code, "keys rotate --role %s: %s%s", role, out.String(), errOut.String())
	}
}

// startCP (re)starts the control plane on the fleet's data, broker address
// and keys.
func (f *trustFleet) startCP() {
	f.t.Helper()
	f.cp = fleettest.StartControlPlane(f.t, testRuntime, func(o *controlplane.Options) {
		o.DataDir, o.MQTTListen, o.MQTTURL = filepath.Join(f.dir, "cp"), f.mqtt, f.mqttURL
	})
	if f.token == "" {
		f.token = f.cp.Token
		f.mqtt = strings.TrimPrefix(f.cp.BrokerURL(), "tcp://")
	}
}

func (f *trustFleet) restartCP() {
	f.t.Helper()
	f.cp.Stop()
	f.startCP()
}

// addAgent registers a device and runs its agent.
func (f *trustFleet) addAgent(id string) {
	f.t.Helper()
	creds, err := f.cp.RegisterDevice(id, nil)
	require.NoError(f.t, err)
	ta := &trustAgent{opts: fleettest.AgentOptions(f.t, creds, testRuntime)}
	f.agents[id] = ta
	f.startAgent(id)
}

func (f *trustFleet) startAgent(id string) {
	f.t.Helper()
	ta := f.agents[id]
	var err error
	ta.a, err = agent.New(ta.opts)
	require.NoError(f.t, err)
	ta.stop = testkit.Start(f.t, "agent "+id, ta.a.Run, ta.a.Ready())
	ta.online = true
}

func (f *trustFleet) stopAgent(id string) {
	f.agents[id].stop()
	f.agents[id].online = false
}

// newest is the newest trust bundle version in the offline directory.
func (f *trustFleet) newest() uint64 {
	f.t.Helper()
	env := &efpb.Envelope{}
	raw, err := os.ReadFile(filepath.Join(f.offline, keys.TrustBundleFile))
	require.NoError(f.t, err)
	b := &efpb.TrustBundle{}
	require.NoError(f.t, proto.Unmarshal(raw, env))
	require.NoError(f.t, proto.Unmarshal(env.Payload, b))
	return b.Version
}

// waitTrust waits until the running agents trust bundle version v and
// the control plane shows it for them.
func (f *trustFleet) waitTrust(v uint64, ids ...string) {
	f.t.Helper()
	require.EventuallyWithT(f.t, func(c *assert.CollectT) {
		for _, id := range ids {
			d, err := f.cp.Device(id)
			if !assert.NoError(c, err) {
				return
			}
			var refusal string
			if d.LastRefusal != nil {
				refusal = d.LastRefusal.Reason
			}
			assert.Equal(c, v, f.agents[id].a.TrustVersion(), "agent %s trusts bundle version; its last refusal: %q", id, refusal)
			assert.Equal(c, v, d.TrustVersion, "the control plane shows %s trusting bundle version", id)
		}
	}, chainTimeout, 20*time.Millisecond, "devices %v never trusted bundle version %d", ids, v)
}

// deploy uploads model version (trained with seed) and deploys it to ids,
// then waits until every one of them serves it.
func (f *trustFleet) deploy(version string, seed uint64, ids ...string) {
	f.t.Helper()
	a := fleettest.TrainedModel(f.t, seed)
	_, err := f.cp.AddModelVersion(context.Background(), "fraud", version, a.ONNX, a.Metadata(), false)
	require.NoError(f.t, err)
	_, err = f.cp.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: version, Devices: ids})
	require.NoError(f.t, err)
	f.waitServing(version, ids...)
}

func (f *trustFleet) waitServing(version string, ids ...string) {
	f.t.Helper()
	waitReportedActive(f.t, f.cp.Server, version, chainTimeout, ids...)
}

// assertNothingRefused: no agent refused anything, and the control plane
// recorded no refusal.
func (f *trustFleet) assertNothingRefused() {
	f.t.Helper()
	for id, ta := range f.agents {
		assert.Zero(f.t, ta.a.Refused(), "agent %s refused nothing", id)
		d, err := f.cp.Device(id)
		require.NoError(f.t, err)
		assert.Nil(f.t, d.LastRefusal, "device %s reported no refusal", id)
	}
	refusals := metricLines(f.metrics(), "edgefleet_device_refusals_total{")
	assert.Equal(f.t, []string{
		`edgefleet_device_refusals_total{kind="desired-state"} 0`,
		`edgefleet_device_refusals_total{kind="manifest"} 0`,
		`edgefleet_device_refusals_total{kind="site-document"} 0`,
		`edgefleet_device_refusals_total{kind="trust-bundle"} 0`,
		`edgefleet_device_refusals_total{kind="unknown"} 0`,
	}, refusals, "no refusal counted")
}

// metricLines are the lines of a scrape that start with prefix.
func metricLines(scrape, prefix string) []string {
	var out []string
	for l := range strings.SplitSeq(scrape, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func (f *trustFleet) metrics() string {
	f.t.Helper()
	m, err := f.cp.WithToken(f.token).Metrics(context.Background())
	require.NoError(f.t, err)
	return m
}

// devicesTable runs `edgefleet devices` against the control plane.
func (f *trustFleet) devicesTable() string {
	f.t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Main(context.Background(), []string{"--api", f.cp.APIURL(), "--token", f.token, "devices"}, &out, &errOut)
	require.Equal(f.t, 0, code, errOut.String())
	return out.String()
}

// TestRootRotationsBeforeRestart: several root rotations (among release
// and control ones) between two starts of the control plane. The live
// agents walk the published chain to the newest bundle, refuse nothing,
// and install a model signed and assigned with the newest keys.
func TestRootRotationsBeforeRestart(t *testing.T) {
	tests := []struct {
		name      string
		rotations []string
	}{
		{"two root rotations", []string{"root", "root"}},
		{"three root rotations among release and control ones", []string{"root", "release", "root", "control", "root"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTrustFleet(t, "")
			f.addAgent("dev-1")
			f.addAgent("dev-2")
			f.deploy("v1", 1, "dev-1", "dev-2")
			f.waitTrust(1, "dev-1", "dev-2")

			f.rotate(tt.rotations...)
			f.copyKeys()
			f.restartCP()
			newest := f.newest()
			require.EqualValues(t, len(tt.rotations)+1, newest)
			f.waitTrust(newest, "dev-1", "dev-2")
			f.deploy("v2", 2, "dev-1", "dev-2")
			f.assertNothingRefused()
			assert.Equal(t, []string{"edgefleet_devices_trust_behind 0"}, metricLines(f.metrics(), "edgefleet_devices_trust_behind"))
			table := f.devicesTable()
			assert.Regexp(t, `(?m)^dev-1\s.*\sv`+strconv.FormatUint(newest, 10)+`\s`, table, "edgefleet devices shows the trust version:\n%s", table)
		})
	}
}

// TestDeviceOfflineAcrossThreeRootRotations: a device is off while the
// root rotates three times, each rotation published by a restarted control
// plane and followed by the devices online. Back on, the device walks the
// chain from the bundle it trusts and installs what it missed.
func TestDeviceOfflineAcrossThreeRootRotations(t *testing.T) {
	f := newTrustFleet(t, "")
	f.addAgent("dev-1")
	f.addAgent("dev-2")
	f.deploy("v1", 1, "dev-1", "dev-2")
	f.waitTrust(1, "dev-1", "dev-2")

	f.stopAgent("dev-2")
	for i := range 3 {
		f.rotate("root")
		f.copyKeys()
		f.restartCP()
		f.waitTrust(uint64(i+2), "dev-1")
	}
	f.deploy("v2", 2, "dev-1")
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"edgefleet_devices_trust_behind 1"}, metricLines(f.metrics(), "edgefleet_devices_trust_behind"))
	}, chainTimeout, 20*time.Millisecond, "the device left behind is counted")
	assert.Regexp(t, `(?m)^dev-2\s.*\sv1\s`, f.devicesTable(), "the offline device still trusts version 1")

	_, err := f.cp.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "v2", Devices: []string{"dev-2"}})
	require.NoError(t, err)
	f.startAgent("dev-2")
	f.waitTrust(4, "dev-1", "dev-2")
	f.waitServing("v2", "dev-1", "dev-2")
	f.assertNothingRefused()
	assert.Equal(t, []string{"edgefleet_devices_trust_behind 0"}, metricLines(f.metrics(), "edgefleet_devices_trust_behind"))
}

// TestControlKeyRotationRefusesNothing: the control and release keys
// rotate and the control plane restarts while agents stay connected to an
// external broker and see every publish in order. The control plane
// publishes the new chain, then desired states and manifests re-signed
// with the new keys: no agent is ever handed one signed by a rotated-out
// key.
func TestControlKeyRotationRefusesNothing(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	f := newTrustFleet(t, mq.URL())
	f.addAgent("dev-1")
	f.addAgent("dev-2")
	f.deploy("v1", 1, "dev-1", "dev-2")
	f.waitTrust(1, "dev-1", "dev-2")
	gen := func(id string) uint64 {
		d, err := f.cp.Device(id)
		require.NoError(t, err)
		return d.Desired.Generation
	}
	before := gen("dev-1")

	f.rotate("control", "release")
	f.copyKeys()
	f.restartCP()
	f.waitTrust(3, "dev-1", "dev-2")
	assert.Greater(t, gen("dev-1"), before, "the desired state was re-issued under the new control key")
	require.Eventually(t, func() bool {
		return f.agents["dev-1"].a.Generation() == gen("dev-1") && f.agents["dev-2"].a.Generation() == gen("dev-2")
	}, chainTimeout, 20*time.Millisecond, "the agents accept the re-issued desired states")
	f.deploy("v2", 2, "dev-1", "dev-2")
	f.assertNothingRefused()
}

// TestServeRefusesBrokenChain: serve refuses to start with keys whose
// bundle chain an agent could not walk, and says which version and which
// link.
func TestServeRefusesBrokenChain(t *testing.T) {
	tests := []struct {
		name string
		// published: rotations published (control plane started) before
		// the rotations in rotated, which are copied after mutate.
		published, rotated []string
		mutate             func(t *testing.T, f *trustFleet)
		want               []string
	}{
		{
			name: "a link missing since the last published bundle", rotated: []string{"root", "root"},
			mutate: func(t *testing.T, f *trustFleet) {
				remove(t, f.cpKeys(), keys.ArchivedBundleFile(1), keys.ArchivedBundleFile(2))
			},
			want: []string{"does not continue from version 1, the last one this control plane published",
				"version 3 does not link to trusted version 1: trust chain link missing: version 2"},
		},
		{
			name: "a gap in the chain on disk", rotated: []string{"root", "release"},
			mutate: func(t *testing.T, f *trustFleet) { remove(t, f.cpKeys(), keys.ArchivedBundleFile(2)) },
			want:   []string{"trust.bundle.v2 is missing from", "devices that trust version 1 or older could not follow it"},
		},
		{
			name: "a forged link", rotated: []string{"root", "root"},
			mutate: func(t *testing.T, f *trustFleet) {
				other, err := signing.GenerateKey(nil)
				require.NoError(t, err)
				path := filepath.Join(f.cpKeys(), keys.ArchivedBundleFile(2))
				env := &efpb.Envelope{}
				raw, err := os.ReadFile(path)
				require.NoError(t, err)
				require.NoError(t, proto.Unmarshal(raw, env))
				forged, err := signing.Sign(env.PayloadType, env.Payload, other)
				require.NoError(t, err)
				writeEnvelope(t, path, forged)
			},
			want: []string{"does not link", "version 2: not signed by the root of version 1: root role needs 1 valid signature(s), got 0"},
		},
		{
			name: "older than the last published bundle", published: []string{"release", "control"},
			mutate: func(t *testing.T, f *trustFleet) {
				// The keys directory as it was at version 2.
				b, err := os.ReadFile(filepath.Join(f.cpKeys(), keys.ArchivedBundleFile(2)))
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(f.cpKeys(), keys.TrustBundleFile), b, 0o600))
				remove(t, f.cpKeys(), keys.ArchivedBundleFile(2))
				b, err = os.ReadFile(filepath.Join(f.offline, keys.ControlKeyFile+".v2"))
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(f.cpKeys(), keys.ControlKeyFile), b, 0o600))
			},
			want: []string{"trust.bundle in", "is version 2, older than version 3, which this control plane already published"},
		},
		{
			name: "a stale root.pub", rotated: []string{"root"},
			mutate: func(t *testing.T, f *trustFleet) {
				old, err := signing.ReadPrivateKeyFile(filepath.Join(f.offline, keys.RootKeyFile+".v1"))
				require.NoError(t, err)
				require.NoError(t, signing.WritePublicKeyFile(filepath.Join(f.cpKeys(), keys.RootPubFile), old.Public))
			},
			want: []string{"root.pub (key id", "is not a root key of trust.bundle version 2", "it is a retired root"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTrustFleet(t, "")
			if len(tt.published) > 0 {
				f.rotate(tt.published...)
				f.copyKeys()
				f.restartCP()
			}
			f.cp.Stop()
			f.rotate(tt.rotated...)
			f.copyKeys()
			tt.mutate(t, f)

			s, err := controlplane.New(controlplane.Options{DataDir: filepath.Join(f.dir, "cp"), APIListen: "127.0.0.1:0",
				MQTTListen: "127.0.0.1:0", Runtime: testRuntime, Logger: fleettest.Logger()})
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), chainTimeout)
				defer cancel()
				err = s.Run(ctx)
			}
			require.Error(t, err, "serve starts")
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// TestStaleRootPubNeverReachesDevices: with root.pub fixed, devices added
// after root rotations are provisioned with the newest root and follow.
func TestStaleRootPubNeverReachesDevices(t *testing.T) {
	f := newTrustFleet(t, "")
	f.cp.Stop()
	f.rotate("root", "root")
	f.copyKeys()
	f.startCP()
	creds, err := f.cp.RegisterDevice("dev-new", nil)
	require.NoError(t, err)
	want, err := signing.ReadPublicKeyFile(filepath.Join(f.offline, keys.RootPubFile))
	require.NoError(t, err)
	got, err := signing.ParsePublicKeyPEM([]byte(creds.RootPublicKey))
	require.NoError(t, err)
	assert.Equal(t, want, got, "a new device gets the newest root")
	f.agents["dev-new"] = &trustAgent{opts: fleettest.AgentOptions(t, creds, testRuntime)}
	f.startAgent("dev-new")
	f.waitTrust(3, "dev-new")
	f.assertNothingRefused()
}

func remove(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		err := os.Remove(filepath.Join(dir, n))
		if !errors.Is(err, fs.ErrNotExist) {
			require.NoError(t, err)
		}
	}
}

func writeEnvelope(t *testing.T, path string, env *efpb.Envelope) {
	t.Helper()
	b, err := proto.Marshal(env)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

// TestRefusalsAreShownAndCounted: a device's refusals, as its status events
// report them, become its last refusal (kind, model, reason), are counted
// by kind, and show in `edgefleet devices` with its trust version.
func TestRefusalsAreShownAndCounted(t *testing.T) {
	f := newTrustFleet(t, "")
	_, err := f.cp.RegisterDevice("dev-1", nil)
	require.NoError(t, err)
	in := f.cp.Internals()
	send := func(handler func(string, []byte), topic string, m proto.Message) {
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		handler(topic, b)
	}
	send(in.OnTelemetry, in.Scheme.Telemetry("dev-1"), &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-1", Seq: 1, TrustVersion: 1})
	send(in.OnStatus, in.Scheme.Status("dev-1"), &efpb.StatusEvent{ProtocolVersion: 1, DeviceId: "dev-1", Seq: 2,
		State: efpb.ModelState_MODEL_STATE_FAILED, Refused: efpb.Refusal_REFUSAL_TRUST_BUNDLE,
		Reason: "trust bundle refused: update trust chain: version 3 does not link to trusted version 1: trust chain link missing: version 2"})
	d, err := f.cp.Device("dev-1")
	require.NoError(t, err)
	require.NotNil(t, d.LastRefusal)
	assert.Equal(t, api.RefusedTrustBundle, d.LastRefusal.Kind)
	assert.EqualValues(t, 1, d.TrustVersion)

	send(in.OnStatus, in.Scheme.Status("dev-1"), &efpb.StatusEvent{ProtocolVersion: 1, DeviceId: "dev-1", Seq: 3,
		ModelName: "fraud", ModelVersion: "v9", State: efpb.ModelState_MODEL_STATE_FAILED, Refused: efpb.Refusal_REFUSAL_MANIFEST,
		Reason: "manifest refused: verify manifest: release role needs 1 valid signature(s), got 0"})
	// A status that repeats a failure (after a reconnect) is no new refusal.
	send(in.OnStatus, in.Scheme.Status("dev-1"), &efpb.StatusEvent{ProtocolVersion: 1, DeviceId: "dev-1", Seq: 4,
		ModelName: "fraud", ModelVersion: "v9", State: efpb.ModelState_MODEL_STATE_FAILED,
		Reason: "manifest refused: verify manifest: release role needs 1 valid signature(s), got 0"})
	d, err = f.cp.Device("dev-1")
	require.NoError(t, err)
	assert.Equal(t, &api.Refusal{Kind: api.RefusedManifest, Model: "fraud", Reason: "manifest refused: verify manifest: release role needs 1 valid signature(s), got 0",
		Seq: 3, Time: d.LastRefusal.Time}, d.LastRefusal)
	assert.Equal(t, []string{
		`edgefleet_device_refusals_total{kind="desired-state"} 0`,
		`edgefleet_device_refusals_total{kind="manifest"} 1`,
		`edgefleet_device_refusals_total{kind="site-document"} 0`,
		`edgefleet_device_refusals_total{kind="trust-bundle"} 1`,
		`edgefleet_device_refusals_total{kind="unknown"} 0`,
	}, metricLines(f.metrics(), "edgefleet_device_refusals_total{"))

	table := f.devicesTable()
	assert.Regexp(t, `(?m)^dev-1\s.*\sv1\s+-\s+(just now|\d+s ago)\s+manifest fraud \((just now|\d+s ago)\): manifest refused: verify manifest: release role needs 1 valid signature\(s\), got 0$`, table)
}
