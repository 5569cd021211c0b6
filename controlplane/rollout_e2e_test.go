package controlplane_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// Rollouts with real agents: the real control plane (REST API, embedded
// broker, badger, onnxruntime) and real agents in one process, driven
// through the CLI an operator types.

type rolloutFleet struct {
	t     *testing.T
	rt    *infer.Runtime
	dir   string
	cp    *controlplane.Server
	stop  func() // stops the control plane and waits for it
	token string
	mqtt  string // the broker address, kept across restarts
	// metrics feeds the quality gates (the monitoring work's figures).
	metrics *fedMetrics
}

// fedMetrics stands in for the monitoring work's figures until it lands:
// the same Metrics path the control plane reads.
type fedMetrics struct {
	mu  sync.Mutex
	fig map[string]rollout.Figures
}

func (m *fedMetrics) VersionMetrics(_, version string, _ []string) (rollout.Figures, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.fig[version]
	return f, ok
}

func startRolloutFleet(t *testing.T) *rolloutFleet {
	t.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	f := &rolloutFleet{t: t, rt: rt, dir: t.TempDir(), mqtt: "127.0.0.1:0", metrics: &fedMetrics{fig: map[string]rollout.Figures{}}}
	f.startCP()
	return f
}

// startCP runs a control plane on the fleet's DataDir (a restart when one
// ran before: same data, same broker address).
func (f *rolloutFleet) startCP() {
	t := f.t
	t.Helper()
	cp := fleettest.StartControlPlane(t, f.rt, func(o *controlplane.Options) {
		o.DataDir, o.MQTTListen = filepath.Join(f.dir, "cp"), f.mqtt
		o.RolloutInterval = 50 * time.Millisecond
		o.RolloutMetrics = f.metrics
	})
	f.cp, f.stop = cp.Server, cp.Stop
	if f.token == "" {
		f.token = cp.Token
		f.mqtt = strings.TrimPrefix(cp.BrokerURL(), "tcp://")
	}
}

func (f *rolloutFleet) cli(args ...string) string {
	f.t.Helper()
	out, errOut, code := f.tryCLI(args...)
	require.Equal(f.t, 0, code, "edgefleet %s: %s%s", strings.Join(args, " "), out, errOut)
	return out
}

func (f *rolloutFleet) tryCLI(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	all := append([]string{"--api", f.cp.APIURL(), "--token", f.token}, args...)
	code := cli.Main(context.Background(), all, &out, &errOut)
	return out.String(), errOut.String(), code
}

// addAgent registers a device and runs its agent; it returns a function
// that stops the agent (and, called again, starts it on the same data).
func (f *rolloutFleet) addAgent(id string, labels ...string) (toggle func()) {
	t := f.t
	t.Helper()
	cfgPath := filepath.Join(f.dir, id+".yaml")
	args := []string{"device", "add", id, "--config-out", cfgPath, "--data-dir", filepath.Join(f.dir, id), "--inference-listen", "127.0.0.1:0"}
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
	var stop func()
	start := func() {
		a, err := agent.New(opts)
		require.NoError(t, err)
		stop = testkit.Start(t, "agent "+id, a.Run, a.Ready())
	}
	start()
	running := true
	return func() {
		if running {
			stop()
		} else {
			start()
		}
		running = !running
	}
}

// push trains (seed) and uploads a fraud model version; it returns the
// model file.
func (f *rolloutFleet) push(version, seed string, extra ...string) string {
	f.t.Helper()
	out := filepath.Join(f.dir, "fraud-"+version+".onnx")
	f.cli("model", "train", "--out", out, "--seed", seed, "--rows", "2000")
	f.cli(append([]string{"model", "push", "--name", "fraud", "--version", version, "--file", out}, extra...)...)
	return out
}

func (f *rolloutFleet) waitActive(version string, ids ...string) {
	f.t.Helper()
	waitReportedActive(f.t, f.cp, version, 30*time.Second, ids...)
}

func (f *rolloutFleet) waitState(id string, want api.RolloutState) *api.Rollout {
	f.t.Helper()
	var st *api.Rollout
	require.Eventually(f.t, func() bool {
		var err error
		st, err = f.cp.Rollout(id, true)
		return err == nil && st.State == want
	}, 30*time.Second, 20*time.Millisecond, "rollout %s never reached %s", id, want)
	return st
}

func (f *rolloutFleet) generation(id string) uint64 {
	f.t.Helper()
	d, err := f.cp.Device(id)
	require.NoError(f.t, err)
	require.NotNil(f.t, d.Desired)
	return d.Desired.Generation
}

func (f *rolloutFleet) desiredVersion(id string) string {
	f.t.Helper()
	d, err := f.cp.Device(id)
	require.NoError(f.t, err)
	require.NotNil(f.t, d.Desired)
	for _, m := range d.Desired.Models {
		if m.Name == "fraud" {
			return m.Version
		}
	}
	return ""
}

func rolloutID(t *testing.T, createOut string) string {
	t.Helper()
	fields := strings.Fields(createOut)
	require.GreaterOrEqual(t, len(fields), 2, createOut)
	require.Equal(t, "rollout", fields[0], createOut)
	return fields[1]
}

var devices4 = []string{"dev-1", "dev-2", "dev-3", "dev-4"}

// startOnV1 starts a fleet of four agents running fraud 1.0.0.
func startOnV1(t *testing.T, labels func(i int) []string) (*rolloutFleet, string) {
	f := startRolloutFleet(t)
	for i, id := range devices4 {
		f.addAgent(id, append([]string{"fleet=demo"}, labels(i)...)...)
	}
	v1 := f.push("1.0.0", "1")
	f.cli("deploy", "fraud@1.0.0", "--selector", "fleet=demo")
	f.waitActive("1.0.0", devices4...)
	return f, v1
}

func noLabels(int) []string { return nil }

// (a) A version whose test vectors fail stops at the canary.
func TestRolloutBadVersionStopsAtCanary(t *testing.T) {
	f, v1 := startOnV1(t, noLabels)
	gens := map[string]uint64{}
	for _, id := range devices4 {
		gens[id] = f.generation(id)
	}
	bad := filepath.Join(f.dir, "fraud-bad.onnx")
	f.cli("model", "train", "--out", bad, "--seed", "3", "--rows", "2000")
	f.cli("model", "push", "--name", "fraud", "--version", "3.0.0", "--file", bad, "--meta", v1+".meta.json", "--force")

	id := rolloutID(t, f.cli("rollout", "create", "fraud@3.0.0", "--selector", "fleet=demo",
		"--stage", "canary:1", "--stage", "percent:50", "--stage", "percent:100",
		"--bake", "200ms", "--max-failure-rate", "0", "--on-breach", "rollback", "--auto-promote"))
	st := f.waitState(id, api.RolloutFailed)
	assert.Contains(t, st.Reason, "failure_rate")
	assert.Contains(t, st.Reason, "1 of 1 reporting devices failed")
	require.Len(t, st.Devices, 1, "only the canary was assigned")
	var canary string
	for dev, rec := range st.Devices {
		canary = dev
		assert.True(t, rec.RolledBack)
		assert.Equal(t, "1.0.0", rec.Previous)
	}
	f.waitActive("1.0.0", devices4...)
	for _, dev := range devices4 {
		assert.Equal(t, "1.0.0", f.desiredVersion(dev))
		if dev == canary {
			assert.Equal(t, gens[dev]+2, f.generation(dev), "the canary got 3.0.0, then 1.0.0 again")
			continue
		}
		assert.Equal(t, gens[dev], f.generation(dev), "%s outside the canary never got a new desired state", dev)
	}
	d, err := f.cp.Device(canary)
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", d.Reported["fraud"].ActiveVersion)

	out := f.cli("rollout", "get", id)
	t.Logf("edgefleet rollout get %s:\n%s", id, out)
	assert.Contains(t, out, "failed")
	assert.Regexp(t, `failure_rate\s+breach`, out)
	auditOut := f.cli("audit", "--action", "rollout.", "--target", id)
	assert.Contains(t, auditOut, "rollout.gate_breached")
	assert.Contains(t, auditOut, "rollout.rollback")
}

// (c) A good version goes through all stages; (d) the control plane
// restarted in the middle of stage 2 resumes and completes, with no device
// getting a second instruction.
func TestRolloutGoodVersionSurvivesRestart(t *testing.T) {
	f, _ := startOnV1(t, noLabels)
	gens := map[string]uint64{}
	for _, id := range devices4 {
		gens[id] = f.generation(id)
	}
	f.push("2.0.0", "2")
	zero := 0.0
	st, err := f.cp.CreateRollout(context.Background(), api.RolloutSpec{
		Model: "fraud", Version: "2.0.0", Selector: "fleet=demo",
		Stages: []api.RolloutStage{
			{Canary: 1},
			{Percent: 50, Bake: api.Duration(1500 * time.Millisecond)},
			{Percent: 100},
		},
		Bake:        api.Duration(200 * time.Millisecond),
		Gates:       api.Gates{MaxFailureRate: &zero},
		AutoPromote: true,
	}, "test")
	require.NoError(t, err)
	id := st.ID
	require.Eventually(t, func() bool {
		st, err := f.cp.Rollout(id, false)
		return err == nil && st.Stage == 1
	}, 30*time.Second, 10*time.Millisecond)

	f.stop()
	f.startCP()
	st, err = f.cp.Rollout(id, true)
	require.NoError(t, err)
	assert.Equal(t, 1, st.Stage, "resumes in stage 2")
	assert.Equal(t, api.RolloutRunning, st.State)

	st = f.waitState(id, api.RolloutCompleted)
	f.waitActive("2.0.0", devices4...)
	assert.Len(t, st.Devices, 4)
	for _, dev := range devices4 {
		assert.Equal(t, gens[dev]+1, f.generation(dev), "%s got exactly one new desired state", dev)
	}
	for i, s := range st.Stages {
		assert.Equal(t, "passed", s.Result, "stage %d", i+1)
	}
	assert.Equal(t, 1, st.Stages[0].Devices.Active)
	assert.Equal(t, 1, st.Stages[1].Devices.Active)
	assert.Equal(t, 2, st.Stages[2].Devices.Active)
}

// (e) Pause/resume, manual promotion and rollback of one label group.
func TestRolloutPauseResumeAndGroupRollback(t *testing.T) {
	f, _ := startOnV1(t, func(i int) []string {
		if i < 2 {
			return []string{"site=a"}
		}
		return []string{"site=b"}
	})
	f.push("2.0.0", "2")
	id := rolloutID(t, f.cli("rollout", "create", "fraud@2.0.0", "--selector", "fleet=demo",
		"--stage", "group:site=a", "--stage", "group:site=b", "--bake", "200ms", "--max-failure-rate", "0.5"))
	f.waitState(id, api.RolloutWaitingPromotion)
	f.waitActive("2.0.0", "dev-1", "dev-2")
	assert.Equal(t, "1.0.0", f.desiredVersion("dev-3"), "site=b waits for promote")

	f.cli("rollout", "pause", id)
	_, errOut, code := f.tryCLI("rollout", "promote", id)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "is paused")
	f.cli("rollout", "resume", id)
	f.waitState(id, api.RolloutWaitingPromotion)
	f.cli("rollout", "promote", id)
	f.waitState(id, api.RolloutCompleted)
	f.waitActive("2.0.0", devices4...)

	out := f.cli("rollout", "rollback", id, "--selector", "site=b")
	assert.Contains(t, out, "completed", "a group rollback keeps the rollout's state")
	f.waitActive("1.0.0", "dev-3", "dev-4")
	f.waitActive("2.0.0", "dev-1", "dev-2")
	st, err := f.cp.Rollout(id, false)
	require.NoError(t, err)
	assert.Equal(t, 2, st.Stages[1].Devices.RolledBack)

	list := f.cli("rollout", "list")
	assert.Contains(t, list, id)
	table := f.cli("rollout", "get", id)
	t.Logf("edgefleet rollout get %s:\n%s", id, table)
	assert.Regexp(t, `\n\s+2\s+group site=b\s+2\s+0\s+0\s+0\s+0\s+2`, table)
	auditOut := f.cli("audit", "--target", id)
	for _, a := range []string{"rollout.pause", "rollout.resume", "rollout.promote", "rollout.rollback"} {
		assert.Contains(t, auditOut, a)
	}
}

func TestRolloutAPIRejectsBadInput(t *testing.T) {
	f := startRolloutFleet(t)
	f.addAgent("dev-1", "fleet=demo")
	f.push("1.0.0", "1")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"rollout", "create", "fraud@9.9.9", "--selector", "fleet=demo", "--stage", "percent:100"}, "does not exist"},
		{[]string{"rollout", "create", "fraud@1.0.0", "--selector", "fleet=nope", "--stage", "percent:100"}, "matches no registered device"},
		{[]string{"rollout", "create", "fraud@1.0.0", "--selector", "fleet=demo", "--stage", "percent:150"}, "percent wants"},
		{[]string{"rollout", "create", "fraud@1.0.0", "--selector", "fleet=demo", "--stage", "canary:1", "--on-breach", "boom"}, "on_breach"},
		{[]string{"rollout", "get", "r-nope"}, "no rollout"},
		{[]string{"rollout", "pause", "r-nope"}, "no rollout"},
	}
	for _, tt := range tests {
		_, errOut, code := f.tryCLI(tt.args...)
		assert.NotEqual(t, 0, code, "%v", tt.args)
		assert.Contains(t, errOut, tt.want, "%v", tt.args)
	}

	// The API itself, past the CLI's own checks.
	raw := []struct {
		path, body string
		code       int
		want       string
	}{
		{"/api/v1/rollouts", `{"model":"fraud","version":"1.0.0","selector":"fleet=demo","stages":[{"percent":100}],"colour":"red"}`, 400, `unknown field`},
		{"/api/v1/rollouts", `{"model":"fraud","version":"1.0.0","selector":"fleet=demo","stages":[{"percent":100,"canary":2}]}`, 400, "stage 1: give exactly one of"},
		{"/api/v1/rollouts", `{"model":"fraud","version":"1.0.0","selector":"fleet=demo","stages":[{"percent":100}],"bake":"soon"}`, 400, "soon"},
		{"/api/v1/rollouts", `{"model":"fraud",`, 400, "malformed JSON"},
		{"/api/v1/rollouts", `{"model":"fraud","version":"1.0.0","selector":"fleet=demo","stages":[{"percent":100}],"gates":{"max_failure_rate":2}}`, 400, "max_failure_rate 2"},
	}
	for _, tt := range raw {
		code, body := f.post(tt.path, tt.body)
		assert.Equal(t, tt.code, code, "POST %s %s: %s", tt.path, tt.body, body)
		assert.Contains(t, body, tt.want, "POST %s %s", tt.path, tt.body)
	}
	st, err := f.cp.CreateRollout(context.Background(), api.RolloutSpec{Model: "fraud", Version: "1.0.0", Selector: "fleet=demo",
		Stages: []api.RolloutStage{{Percent: 100}}, Bake: api.Duration(time.Hour)}, "test")
	require.NoError(t, err)
	for _, tt := range []struct {
		action, body string
		code         int
		want         string
	}{
		{"rollback", `{"selector":"site=="}`, 400, "selector"},
		{"rollback", `{"device":"dev-1","selector":"a=b"}`, 400, "not both"},
		{"rollback", `{"device":"dev-9"}`, 400, "was not assigned"},
		{"pause", `{"device":"dev-1"}`, 400, "rollback only"},
		{"resume", ``, 409, "it is running"},
		{"explode", ``, 404, "no endpoint"},
	} {
		code, body := f.post("/api/v1/rollouts/"+st.ID+"/"+tt.action, tt.body)
		assert.Equal(t, tt.code, code, "%s %s: %s", tt.action, tt.body, body)
		assert.Contains(t, body, tt.want, "%s %s", tt.action, tt.body)
	}
	code, body := f.post("/api/v1/rollouts", `{"model":"fraud","version":"1.0.0","selector":"fleet=demo","stages":[{"percent":100}]}`)
	assert.Equal(t, 409, code, "one unfinished rollout per model: %s", body)
}

func (f *rolloutFleet) post(path, body string) (int, string) {
	f.t.Helper()
	req, err := http.NewRequest("POST", f.cp.APIURL()+path, strings.NewReader(body))
	require.NoError(f.t, err)
	req.Header.Set("Authorization", "Bearer "+f.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(f.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(f.t, err)
	return resp.StatusCode, string(b)
}

// (b) A version whose field accuracy is worse than its predecessor's by
// more than the allowed drop is rolled back automatically after the canary.
func TestRolloutAccuracyDropRollsBack(t *testing.T) {
	f, _ := startOnV1(t, noLabels)
	gens := map[string]uint64{}
	for _, id := range devices4 {
		gens[id] = f.generation(id)
	}
	f.push("2.0.0", "2")
	f.metrics.mu.Lock()
	f.metrics.fig["1.0.0"] = rollout.Figures{Accuracy: 0.96, Labelled: 4000}
	f.metrics.fig["2.0.0"] = rollout.Figures{Accuracy: 0.88, Labelled: 300}
	f.metrics.mu.Unlock()

	id := rolloutID(t, f.cli("rollout", "create", "fraud@2.0.0", "--selector", "fleet=demo",
		"--stage", "canary:1", "--stage", "percent:100", "--bake", "200ms",
		"--max-failure-rate", "0", "--max-accuracy-drop", "0.02", "--min-labelled", "100",
		"--on-breach", "rollback", "--auto-promote"))
	st := f.waitState(id, api.RolloutFailed)
	assert.Contains(t, st.Reason, "accuracy_drop")
	assert.Contains(t, st.Reason, "accuracy 2.0.0 0.8800 (300 labelled) vs 1.0.0 0.9600 (4000 labelled)")
	require.Len(t, st.Devices, 1)
	f.waitActive("1.0.0", devices4...)
	for dev := range st.Devices {
		assert.Equal(t, gens[dev]+2, f.generation(dev), "the canary got 2.0.0 and then 1.0.0")
	}
	for _, dev := range devices4 {
		if _, assigned := st.Devices[dev]; !assigned {
			assert.Equal(t, gens[dev], f.generation(dev), "%s outside the canary never got 2.0.0", dev)
		}
	}
}

// (f) An offline device keeps its assignment and completes when it returns.
func TestRolloutOfflineDeviceCompletesOnReconnect(t *testing.T) {
	f := startRolloutFleet(t)
	var toggle3 func()
	for i, id := range []string{"dev-1", "dev-2", "dev-3"} {
		tg := f.addAgent(id, "fleet=demo")
		if i == 2 {
			toggle3 = tg
		}
	}
	f.push("1.0.0", "1")
	f.cli("deploy", "fraud@1.0.0", "--selector", "fleet=demo")
	f.waitActive("1.0.0", "dev-1", "dev-2", "dev-3")
	toggle3() // dev-3 goes offline
	require.Eventually(t, func() bool {
		d, err := f.cp.Device("dev-3")
		return err == nil && !d.Online
	}, 30*time.Second, 20*time.Millisecond)

	f.push("2.0.0", "2")
	id := rolloutID(t, f.cli("rollout", "create", "fraud@2.0.0", "--selector", "fleet=demo",
		"--stage", "percent:100", "--bake", "200ms", "--max-failure-rate", "0"))
	st := f.waitState(id, api.RolloutCompleted)
	require.Contains(t, st.Devices, "dev-3", "the offline device is assigned")
	assert.Equal(t, "2.0.0", st.Devices["dev-3"].Issued)
	assert.Equal(t, 1, st.Stages[0].Devices.Offline)
	assert.Equal(t, 2, st.Stages[0].Devices.Active)

	toggle3() // back online: it finds its retained desired state
	f.waitActive("2.0.0", "dev-1", "dev-2", "dev-3")
	require.Eventually(t, func() bool {
		st, err := f.cp.Rollout(id, false)
		return err == nil && st.Stages[0].Devices.Active == 3
	}, 30*time.Second, 20*time.Millisecond)
}
