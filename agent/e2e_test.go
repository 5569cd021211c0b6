package agent_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// These tests run the real control plane (REST API, embedded broker,
// badger, onnxruntime) with real agents in one process, driven through the
// same CLI a user types.

type fleet struct {
	t     *testing.T
	cp    *fleettest.ControlPlane
	token string
	rt    *infer.Runtime
	dir   string
}

func startFleet(t *testing.T, mods ...func(*controlplane.Options)) *fleet {
	t.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })

	f := &fleet{t: t, rt: rt, dir: t.TempDir()}
	f.cp = fleettest.StartControlPlane(t, rt, func(o *controlplane.Options) {
		o.DataDir = filepath.Join(f.dir, "cp")
		for _, m := range mods {
			m(o)
		}
	})
	f.token = f.cp.Token
	return f
}

// cli runs an edgefleet CLI command against the fleet's API.
func (f *fleet) cli(args ...string) string {
	f.t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"--api", f.cp.APIURL(), "--token", f.token}, args...)
	code := cli.Main(context.Background(), all, &out, &errOut)
	require.Equal(f.t, 0, code, "edgefleet %s: %s%s", strings.Join(args, " "), out.String(), errOut.String())
	return out.String()
}

// addAgent registers a device through the CLI and runs an agent from the
// config file the CLI wrote.
func (f *fleet) addAgent(id string, labels ...string) *agent.Agent {
	t := f.t
	t.Helper()
	dir := filepath.Join(f.dir, id)
	cfgPath := filepath.Join(f.dir, id+".yaml")
	args := []string{"device", "add", id, "--config-out", cfgPath, "--data-dir", dir, "--inference-listen", "127.0.0.1:0"}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	f.cli(args...)
	cfg, err := agent.LoadConfig(cfgPath)
	require.NoError(t, err)
	opts, err := cfg.Options()
	require.NoError(t, err)
	opts.Runtime = f.rt
	opts.HeartbeatInterval = 500 * time.Millisecond
	opts.FetchRetryInterval = 300 * time.Millisecond
	a, err := agent.New(opts)
	require.NoError(t, err)
	testkit.Run(t, "agent "+id, a.Run, a.Ready())
	return a
}

// waitReported waits until the control plane sees every device active on version.
func (f *fleet) waitReported(model, version string, ids ...string) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		for _, id := range ids {
			d, err := f.cp.Device(id)
			if err != nil {
				return false
			}
			rep := d.Reported[model]
			if rep == nil || rep.State != "active" || rep.ActiveVersion != version {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "devices %v never reported %s@%s active", ids, model, version)
}

func (f *fleet) train(name string, seed string) string {
	f.t.Helper()
	out := filepath.Join(f.dir, name)
	f.cli("model", "train", "--out", out, "--seed", seed, "--rows", "4000")
	return out
}

func infer1(t *testing.T, a *agent.Agent) *oip.InferResponse {
	t.Helper()
	in, err := oip.NewFP32Input("features", []int64{2, 7}, []float32{4.5, 8, 0.05, 1.2, 1, 0, 1400, 1450, 3, 0.9, 2400, 6, 1, 12})
	require.NoError(t, err)
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
	require.NoError(t, err)
	return resp
}

func TestEndToEndUploadDeployInfer(t *testing.T) {
	f := startFleet(t)
	a1 := f.addAgent("dev-1", "site=a")
	a2 := f.addAgent("dev-2", "site=b")

	v1 := f.train("fraud-v1.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", v1)
	out := f.cli("deploy", "fraud@1.0.0", "--selector", "site=a")
	assert.Contains(t, out, "dev-1")
	assert.NotContains(t, out, "dev-2", "the selector picks site=a only")
	f.waitReported("fraud", "1.0.0", "dev-1")
	resp := infer1(t, a1)
	assert.Equal(t, "1.0.0", resp.ModelVersion)
	probs, err := resp.Outputs[0].FP32()
	require.NoError(t, err)
	require.Len(t, probs, 2)
	assert.Less(t, probs[0], float32(0.5), "a coffee is not fraud")
	assert.Greater(t, probs[1], float32(0.5), "3am electronics abroad is")
	assert.Empty(t, a2.Status(), "dev-2 got nothing")
	assert.Positive(t, a1.ChunksReceived(), "dev-1 counted the chunks it accepted")
	assert.Zero(t, a2.ChunksReceived(), "dev-2 accepted none")

	f.cli("deploy", "fraud@1.0.0", "--device", "dev-2")
	f.waitReported("fraud", "1.0.0", "dev-1", "dev-2")

	v2 := f.train("fraud-v2.onnx", "2")
	f.cli("model", "push", "--name", "fraud", "--version", "2.0.0", "--file", v2)
	f.cli("deploy", "fraud@2.0.0", "--selector", "site!=none")
	f.waitReported("fraud", "2.0.0", "dev-1", "dev-2")
	assert.Equal(t, "2.0.0", infer1(t, a2).ModelVersion)
	assert.Equal(t, "1.0.0", a1.Status()[0].Previous)

	table := f.cli("devices")
	assert.Regexp(t, `dev-1\s+site=a\s+yes\s+fraud@2\.0\.0 \(2\)\s+fraud@2\.0\.0\s+active`, table)

	// A forced bad model (its test vectors lie) is refused by the agents;
	// v2 keeps serving and the reason reaches the control plane.
	bad := f.train("fraud-bad.onnx", "3")
	v1meta := v1 + ".meta.json"
	f.cli("model", "push", "--name", "fraud", "--version", "3.0.0", "--file", bad, "--meta", v1meta, "--force")
	f.cli("deploy", "fraud@3.0.0", "--device", "dev-1")
	require.Eventually(t, func() bool {
		d, _ := f.cp.Device("dev-1")
		rep := d.Reported["fraud"]
		return rep != nil && rep.State == "failed" && rep.TargetVersion == "3.0.0" &&
			strings.Contains(rep.Reason, "test vectors") && rep.ActiveVersion == "2.0.0"
	}, 30*time.Second, 20*time.Millisecond)
	assert.Equal(t, "2.0.0", infer1(t, a1).ModelVersion)
	// Operators see why, in the device and model lists.
	assert.Regexp(t, `(?m)^dev-1 failed fraud@3\.0\.0: test vectors: .*output "fraud_probability"`, f.cli("devices"))
	models := f.cli("models")
	assert.Regexp(t, `3\.0\.0\s.*FAILED \(forced\)\s+1 device\(s\)`, models)
	assert.Regexp(t, `(?m)^fraud@3\.0\.0 refused by dev-1: test vectors: `, models)
}

// TestDeviceCredentialsStayInTheirSubtree uses one device's real credentials
// to try what the ACL must refuse.
func TestDeviceCredentialsStayInTheirSubtree(t *testing.T) {
	f := startFleet(t)
	a2 := f.addAgent("dev-2", "site=b")
	credsOut := f.cli("device", "add", "dev-1")
	password := fieldAfter(t, credsOut, "password:")
	scheme := topics.Scheme{}

	ctx := context.Background()
	c, err := mqttc.Connect(ctx, mqttc.Options{BrokerURL: f.cp.BrokerURL(), ClientID: "dev-1", Username: "dev-1", Password: password})
	require.NoError(t, err)
	defer c.Close()

	for _, filter := range []string{scheme.Desired("dev-2"), scheme.AllStatus(), "#", "ef/v1/dev/+/desired"} {
		err := c.Subscribe(ctx, filter, 1, func(mqttc.Message) {})
		assert.ErrorIs(t, err, mqttc.ErrSubscribeRefused, "subscribe %q", filter)
	}

	_, err = mqttc.Connect(ctx, mqttc.Options{BrokerURL: f.cp.BrokerURL(), ClientID: "dev-2", Username: "dev-1", Password: password})
	assert.ErrorIs(t, err, mqttc.ErrRefused, "a client id other than the username is refused")

	// dev-1 forges a desired state for dev-2; dev-2 must only ever see the
	// control plane's.
	forged, _ := proto.Marshal(&efpb.Envelope{PayloadType: efpb.PayloadTypeDesired, Payload: []byte("forged")})
	_ = c.Publish(ctx, scheme.Desired("dev-2"), 0, false, forged)
	_ = c.Publish(ctx, scheme.Status("dev-2"), 0, false, []byte("forged status"))
	v1 := f.train("fraud-v1.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", v1)
	f.cli("deploy", "fraud@1.0.0", "--device", "dev-2")
	f.waitReported("fraud", "1.0.0", "dev-2")
	assert.Zero(t, f.cp.Dropped(), "nothing forged reached the control plane's ingest")
	assert.Zero(t, a2.Dropped()+a2.Refused(), "nothing forged reached dev-2")
}

func fieldAfter(t *testing.T, out, label string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, label); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("no %q in output:\n%s", label, out)
	return ""
}
