package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// retrainFleet is a control plane with two capturing agents at site b
// serving fraud v1 (trained on the classic pattern).
type retrainFleet struct {
	*testServer
	agents map[string]*agent.Agent
}

func newRetrainFleet(t *testing.T, mod func(*controlplane.Options)) *retrainFleet {
	t.Helper()
	ts := newTestServer(t, func(o *controlplane.Options) {
		o.RolloutInterval = 50 * time.Millisecond
		// Alerts are evaluated when the test says (EvaluateAlerts), after
		// the data they are about has been captured.
		o.Monitor.Interval = time.Hour
		o.Monitor.Rules = monitorRules()
		if mod != nil {
			mod(o)
		}
	})
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	f := &retrainFleet{testServer: ts, agents: map[string]*agent.Agent{}}
	for _, id := range []string{"b-1", "b-2"} {
		f.agents[id] = ts.StartAgent(t, testRuntime, id, map[string]string{"site": "b"}, fastCapture)
	}
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=b", Capture: &api.CapturePolicy{SampleRate: 1}})
	waitServing(t, f.agents, "v1")
	return f
}

func monitorRules() (r monitor.Rules) {
	// The window covers the whole test however slow the machine: a loaded
	// run took over a minute from the first labels to the evaluation, and
	// a one-minute window had dropped them by then.
	r.Window = time.Hour
	r.MinAccuracy = 0.85
	r.MinLabels = 50
	return r
}

// traffic sends n labelled transactions of g through each agent and waits
// until the control plane stored want labelled rows in all.
func (f *retrainFleet) traffic(t *testing.T, g *fraud.Generator, n int, want uint64) {
	t.Helper()
	for _, a := range f.agents {
		labels := fleettest.InferFraud(t, a.InferenceAddr(), g, n, 20)
		_, err := a.Feedback(context.Background(), "fraud", labels)
		require.NoError(t, err)
	}
	waitCaptured(t, f.Client, "fraud", want, want)
}

// waitJob waits until job id ends and returns it.
func (f *retrainFleet) waitJob(t *testing.T, id string) *api.RetrainJob {
	t.Helper()
	var j *api.RetrainJob
	require.Eventually(t, func() bool {
		var err error
		j, err = f.Client.RetrainJob(context.Background(), id)
		require.NoError(t, err)
		return j.State.Terminal()
	}, 2*time.Minute, 20*time.Millisecond, "retrain job %s never ended", id)
	return j
}

func jobText(j *api.RetrainJob) string {
	b, _ := json.MarshalIndent(j, "", "  ")
	return string(b)
}

// The loop closed, with real agents, badger and onnxruntime: site b's
// fraud pattern changes, its accuracy falls below the rule (site a's does
// not), the alert starts a retrain job that trains on site b's captured
// labelled rows, beats v1 on held-out rows by the margin, is published as
// v2 with its lineage and rolled out through a shadow stage to site b
// until its agents serve it. The audit log links alert → job → version →
// rollout.
func TestRetrainFromAlertPublishesAndRollsOut(t *testing.T) {
	f := newRetrainFleet(t, nil)
	ctx := context.Background()
	siteA := f.StartAgent(t, testRuntime, "a-1", map[string]string{"site": "a"}, fastCapture)
	f.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"a-1"}})
	waitServes(t, siteA, "fraud", "v1")
	classic, err := fraud.NewGenerator(8, fraud.Params{})
	require.NoError(t, err)
	_, err = siteA.Feedback(ctx, "fraud", fleettest.InferFraud(t, siteA.InferenceAddr(), classic, 200, 20))
	require.NoError(t, err)
	drifted, err := fraud.NewGenerator(9, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	f.traffic(t, drifted, 300, 800)

	margin := 0.05
	shadowMargin := 0.0
	st, err := f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{
		Trainer: api.TrainerBuiltinFraud, Triggers: []string{"low_accuracy"}, Window: api.Duration(time.Hour),
		MinLabelled: 300, Margin: &margin, SiteScope: api.SiteScopeAlert,
		Rollout: &api.RolloutSpec{Selector: "site!=none", AutoPromote: true, Bake: api.Duration(time.Millisecond),
			Gates:  api.Gates{MinLabelled: 100, ShadowMargin: &shadowMargin},
			Stages: []api.RolloutStage{{Name: "shadow", Percent: 100, Shadow: true}, {Name: "all", Percent: 100}}},
	})
	require.NoError(t, err)
	assert.True(t, st.Set)
	assert.Equal(t, api.DefaultHoldoutFraction, st.Policy.HoldoutFraction, "defaults are shown")

	// The accuracy alert of site b (from the agents' telemetry) is what
	// starts the job.
	require.Eventually(t, func() bool {
		alerts, err := f.Internals().EvaluateAlerts()
		require.NoError(t, err)
		found := false
		for _, a := range alerts {
			require.Equal(t, "b", a.Site, "only site b alerts: %+v", a)
			found = found || a.Rule == "low_accuracy" && a.Version == "v1"
		}
		return found
	}, time.Minute, 50*time.Millisecond, "no low_accuracy alert for site b")
	var jobs []*api.RetrainJob
	require.Eventually(t, func() bool {
		jobs, err = f.Client.RetrainJobs(ctx, "fraud")
		require.NoError(t, err)
		return len(jobs) == 1
	}, time.Minute, 20*time.Millisecond, "the alert started no job")
	j := f.waitJob(t, jobs[0].ID)
	require.Equal(t, api.RetrainRollingOut, j.State, "job: %s", jobText(j))
	assert.Equal(t, "alert:low_accuracy site=b", j.Trigger)
	assert.Equal(t, "v1", j.Parent)
	assert.Equal(t, "v2", j.Candidate)
	require.NotNil(t, j.Dataset)
	assert.True(t, j.Dataset.Validation.Passed)
	assert.Equal(t, 800, j.Dataset.Labelled, "the dataset holds both sites' rows")
	assert.Equal(t, "b", j.Site)
	assert.Equal(t, 600, j.TrainRows+j.HoldoutRows, "the job trains on site b's rows")
	assert.InDelta(t, 150, j.HoldoutRows, 60, "a quarter held out")
	require.NotNil(t, j.Evaluation)
	assert.True(t, j.Evaluation.Better)
	assert.Equal(t, j.HoldoutRows, j.Evaluation.Rows)
	assert.GreaterOrEqual(t, j.Evaluation.Candidate.Accuracy, j.Evaluation.Parent.Accuracy+margin, "evaluation: %+v", *j.Evaluation)
	t.Logf("held-out accuracy: v2 %.3f, v1 %.3f on %d rows", j.Evaluation.Candidate.Accuracy, j.Evaluation.Parent.Accuracy, j.Evaluation.Rows)

	// The rollout from the template: shadow on site b, then served.
	require.NotEmpty(t, j.Rollout)
	ro, err := f.Client.Rollout(ctx, j.Rollout, false)
	require.NoError(t, err)
	assert.Equal(t, "v2", ro.Spec.Version)
	assert.Equal(t, "site!=none,site=b", ro.Spec.Selector, "narrowed to the alert's site")
	assert.True(t, ro.Spec.Stages[0].Shadow)
	var final *api.Rollout
	require.Eventually(t, func() bool {
		sendLabelled(t, f.agents, drifted, "v1", "v2")
		final, err = f.Client.Rollout(ctx, ro.ID, false)
		require.NoError(t, err)
		require.NotEqual(t, api.RolloutPaused, final.State, "held: %s", final.Reason)
		return final.State == api.RolloutCompleted
	}, 2*time.Minute, 20*time.Millisecond, "rollout: %s", rolloutText{&final})
	waitServing(t, f.agents, "v2")
	waitServes(t, siteA, "fraud", "v1")

	// Lineage: v2 names v1, the dataset, the trainer, its figures and
	// the alert; the API serves it and the CLI prints the chain.
	l, err := f.Client.Lineage(ctx, "fraud", "")
	require.NoError(t, err)
	require.Len(t, l.Chain, 2, "v2 then v1: %+v", l)
	v2, v1 := l.Chain[0], l.Chain[1]
	assert.Equal(t, "v2", v2.Version)
	assert.Equal(t, "v1", v2.Parent)
	assert.Equal(t, api.TrainerBuiltinFraud, v2.Trainer)
	assert.Equal(t, "b", v2.Params["site"])
	assert.Equal(t, "alert:low_accuracy site=b", v2.Trigger)
	assert.Equal(t, j.ID, v2.Job)
	require.Len(t, v2.Datasets, 1)
	assert.Equal(t, j.Dataset.SHA256, v2.Datasets[0].SHA256)
	assert.Equal(t, j.Dataset.Version, v2.Datasets[0].Version)
	assert.InDelta(t, j.Evaluation.Candidate.Accuracy, v2.Eval["candidate_accuracy"], 1e-9)
	assert.InDelta(t, j.Evaluation.Parent.Accuracy, v2.Eval["parent_accuracy"], 1e-9)
	assert.Equal(t, "v1", v1.Version)
	assert.Empty(t, v1.Parent, "v1 was uploaded by hand")
	out, errOut, code := runCLI(f.testServer, "model", "lineage", "fraud")
	require.Equal(t, 0, code, errOut)
	t.Logf("edgefleet model lineage fraud:\n%s", out)
	for _, want := range []string{"fraud v2", "trigger: alert:low_accuracy site=b", "parent: v1; trainer builtin:fraud", "dataset: fraud " + strconv.Itoa(j.Dataset.Version), "fraud v1", "uploaded without lineage"} {
		assert.Contains(t, out, want)
	}
	out, errOut, code = runCLI(f.testServer, "retrain", "show", j.ID)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "rolling-out")
	assert.Contains(t, out, "better")

	// Audit: alert → job → version → rollout.
	entries, err := f.Client.Audit(ctx, api.AuditQuery{})
	require.NoError(t, err)
	var chain []string
	for _, e := range entries {
		switch {
		case e.Action == "monitor.alert.low_accuracy" && e.Target == "fraud@v1",
			e.Action == "retrain.start" && e.Target == j.ID && e.Details["trigger"] == j.Trigger,
			e.Action == "retrain.version" && e.Target == j.ID && e.Details["version"] == "v2",
			e.Action == "rollout.create" && e.Actor == "retrain/"+j.ID,
			e.Action == "retrain.rollout" && e.Target == j.ID && e.Details["rollout"] == ro.ID:
			chain = append(chain, e.Action)
		}
	}
	assert.Equal(t, []string{"monitor.alert.low_accuracy", "retrain.start", "retrain.version", "rollout.create", "retrain.rollout"}, chain)
}

// A candidate that is not better by the margin is not published, and the
// job says why with both figures; a dataset that fails validation is not
// trained on; one job per model at a time.
func TestRetrainRejectedAndRefused(t *testing.T) {
	f := newRetrainFleet(t, nil)
	ctx := context.Background()
	classic, err := fraud.NewGenerator(5, fraud.Params{})
	require.NoError(t, err)
	f.traffic(t, classic, 200, 400)

	_, err = f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.ErrorIs(t, err, api.ErrNotFound, "no policy yet")
	margin := 0.2
	_, err = f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, MinLabelled: 200, Margin: &margin})
	require.NoError(t, err)
	j, err := f.Client.Retrain(ctx, "fraud", api.RetrainRequest{Reason: "weekly check"})
	require.NoError(t, err)
	assert.Equal(t, "v1", j.Parent)
	_, err = f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	if err != nil { // the first may have ended already on a fast machine
		require.ErrorIs(t, err, api.ErrExists)
	}
	j = f.waitJob(t, j.ID)
	require.Equal(t, api.RetrainRejected, j.State, "job: %s", jobText(j))
	assert.Contains(t, j.Reason, "not better than v1 by the margin")
	assert.Contains(t, j.Reason, "candidate ")
	require.NotNil(t, j.Evaluation)
	assert.False(t, j.Evaluation.Better)
	assert.Less(t, j.Evaluation.Candidate.Accuracy-j.Evaluation.Parent.Accuracy, margin)
	assert.False(t, f.Internals().Models.Has("fraud", "v2"), "a rejected candidate is not published")
	assert.Empty(t, j.Rollout)
	out, errOut, code := runCLI(f.testServer, "retrain", "show", j.ID)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "rejected")
	assert.Contains(t, out, "not better")

	// The same transaction over and over: the dataset fails its
	// duplicates check and the job refuses to train on it.
	row, _ := classic.Next()
	dup := &repeatGen{row: row}
	for _, a := range f.agents {
		labels := inferRepeated(t, a, dup, 300)
		_, err := a.Feedback(ctx, "fraud", labels)
		require.NoError(t, err)
	}
	waitCaptured(t, f.Client, "fraud", 1000, 1000)
	// Jobs from `edgefleet retrain` ignore the cooldown; --wait prints
	// the job and fails with its reason.
	out, errOut, code = runCLI(f.testServer, "retrain", "fraud", "--wait", "2m")
	require.Equal(t, 1, code, "stdout %s\nstderr %s", out, errOut)
	assert.Contains(t, out, "queued")
	assert.Contains(t, errOut, "failed validation")
	jobs, err := f.Client.RetrainJobs(ctx, "fraud")
	require.NoError(t, err)
	require.Len(t, jobs, 2)
	j = f.waitJob(t, jobs[0].ID)
	require.Equal(t, api.RetrainFailed, j.State, "job: %s", jobText(j))
	assert.Contains(t, j.Reason, "failed validation")
	assert.Contains(t, j.Reason, "duplicates")
	assert.Nil(t, j.Evaluation, "nothing was trained")

	// Bad policies: a clear 400.
	for _, p := range []api.RetrainPolicy{
		{Trainer: "pytorch"},
		{Trainer: "command:nope"},
		{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"sunspots"}},
		{Trainer: api.TrainerBuiltinFraud, HoldoutFraction: 0.95},
		{Trainer: api.TrainerBuiltinFraud, Rollout: &api.RolloutSpec{Selector: "site=b"}},
	} {
		_, err := f.Client.SetRetrainPolicy(ctx, "fraud", p)
		assert.ErrorIs(t, err, api.ErrInvalid, "policy %+v", p)
	}
	_, err = f.Client.RetrainJob(ctx, "j-nope")
	require.ErrorIs(t, err, api.ErrNotFound)
}

// repeatGen yields one transaction forever.
type repeatGen struct{ row fraud.Row }

// inferRepeated sends g's transaction n times (in batches of 20)
// through a's fraud model and returns a label for each (not fraud).
func inferRepeated(t *testing.T, a *agent.Agent, g *repeatGen, n int) []oip.Label {
	t.Helper()
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	var labels []oip.Label
	for sent := 0; sent < n; sent += 20 {
		flat := make([]float32, 0, 20*fraud.NumFeatures)
		for range 20 {
			flat = append(flat, g.row[:]...)
		}
		in, err := oip.NewFP32Input(fraud.InputName, []int64{20, fraud.NumFeatures}, flat)
		require.NoError(t, err)
		resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
		require.NoError(t, err)
		for i := range 20 {
			zero := int64(0)
			labels = append(labels, oip.Label{ID: resp.ID, Row: i, Label: &zero})
		}
	}
	return labels
}

// gone reports whether process pid has ended (a zombie nobody reaped
// counts as ended).
func gone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(rest, "Z")
}

// An external trainer runs under the contract (--data DIR --out DIR with
// the dataset's rows, schema and the current manifest), its model is
// evaluated and published with command:NAME in its lineage; a trainer
// that exits non-zero fails the job with its stderr; one past its time
// limit is killed with its process group.
func TestRetrainExternalTrainer(t *testing.T) {
	dir := t.TempDir()
	candidate := filepath.Join(dir, "candidate.onnx")
	require.NoError(t, os.WriteFile(candidate, trainFraud(t, 2, fraud.PatternCardTesting).ONNX, 0o600))
	pidFile, orphanFile := filepath.Join(dir, "child.pid"), filepath.Join(dir, "orphan.pid")
	script, err := filepath.Abs("testdata/retrain-trainer.sh")
	require.NoError(t, err)
	f := newRetrainFleet(t, func(o *controlplane.Options) {
		o.Retrain.Trainers = map[string][]string{
			"copy":   {"/bin/sh", script, "ok", candidate},
			"fail":   {"/bin/sh", script, "fail", "-"},
			"hang":   {"/bin/sh", script, "hang", pidFile},
			"orphan": {"/bin/sh", script, "orphan", orphanFile},
			"env":    {"/bin/sh", script, "env", "-"},
		}
	})
	t.Setenv("EDGEFLEET_MQTT_PASSWORD", "do-not-leak-7f3a") // what serve reads the broker password from
	ctx := context.Background()
	drifted, err := fraud.NewGenerator(11, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	// The held-out quarter depends on the agents' random inference ids:
	// with 400 rows (about 100 held out) the candidate's lead over v1
	// (0.09–0.17 in 8 runs) once fell to 0.01, under the margin. With
	// 1,600 rows (about 400 held out) a lead under the margin is over
	// three standard deviations away.
	f.traffic(t, drifted, 800, 1600)
	margin := 0.05

	run := func(trainer string, limit time.Duration) *api.RetrainJob {
		t.Helper()
		_, err := f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: trainer, MinLabelled: 200, Margin: &margin,
			TimeLimit: api.Duration(limit), Params: map[string]string{"rounds": "3"}})
		require.NoError(t, err)
		j, err := f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
		require.NoError(t, err)
		return f.waitJob(t, j.ID)
	}

	j := run("command:copy", time.Minute)
	if e := j.Evaluation; e != nil {
		t.Logf("evaluation: candidate %.4f parent %.4f rows %d", e.Candidate.Accuracy, e.Parent.Accuracy, e.Rows)
	}
	require.Equal(t, api.RetrainPublished, j.State, "job: %s", jobText(j))
	require.NotNil(t, j.Command)
	assert.Equal(t, 0, j.Command.ExitCode)
	assert.Contains(t, j.Command.Stdout, "training on")
	assert.Equal(t, []string{script, "ok", candidate, "--data"}, j.Command.Args[:4])
	assert.Equal(t, "v2", j.Candidate)
	mv, err := f.Client.Model(ctx, "fraud", "v2")
	require.NoError(t, err)
	assert.True(t, mv.Checks.Passed)
	l, err := f.Client.Lineage(ctx, "fraud", "v2")
	require.NoError(t, err)
	require.Len(t, l.Chain, 2)
	assert.Equal(t, "command:copy", l.Chain[0].Trainer)
	assert.Equal(t, map[string]string{"rounds": "3"}, l.Chain[0].Params)
	assert.True(t, strings.HasPrefix(l.Chain[0].Trigger, "manual:"), "trigger %q names the operator", l.Chain[0].Trigger)
	var man struct {
		Reference []struct {
			Name string `json:"name"`
		} `json:"reference"`
	}
	require.NoError(t, json.Unmarshal(mv.Manifest, &man))
	assert.Len(t, man.Reference, fraud.NumFeatures, "drift reference from the training rows")

	j = run("command:fail", time.Minute)
	require.Equal(t, api.RetrainFailed, j.State, "job: %s", jobText(j))
	assert.Contains(t, j.Reason, "exited with status 3: diverged: loss is NaN")
	require.NotNil(t, j.Command)
	assert.Equal(t, 3, j.Command.ExitCode)
	assert.Contains(t, j.Command.Stderr, "diverged")

	// The limit covers building the dataset too: it has to leave the
	// trainer time to start on a loaded machine (2 s did not once, and the
	// job ended before there was a command to kill).
	start := time.Now()
	j = run("command:hang", 10*time.Second)
	require.Equal(t, api.RetrainFailed, j.State, "job: %s", jobText(j))
	assert.Contains(t, j.Reason, "time limit of 10s")
	require.NotNil(t, j.Command, "job: %s", jobText(j))
	assert.True(t, j.Command.TimedOut)
	assert.Less(t, time.Since(start), time.Minute, "the job did not wait for the sleeping child")
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return gone(pid) }, 30*time.Second, 20*time.Millisecond, "the trainer's child %d outlived the time limit", pid)
	assert.False(t, f.Internals().Models.Has("fraud", "v3"))

	// A trainer that exits and leaves a child running: the child does not
	// outlive the job.
	j = run("command:orphan", time.Minute)
	require.Equal(t, api.RetrainFailed, j.State, "job: %s", jobText(j))
	b, err = os.ReadFile(orphanFile)
	require.NoError(t, err)
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return gone(pid) }, 30*time.Second, 20*time.Millisecond, "the trainer's background child %d outlived its job", pid)

	// The trainer gets the locale and paths, not the control plane's secrets.
	j = run("command:env", time.Minute)
	require.Equal(t, api.RetrainFailed, j.State, "job: %s", jobText(j))
	require.NotNil(t, j.Command)
	assert.Contains(t, j.Command.Stdout, "PATH=")
	assert.NotContains(t, j.Command.Stdout, "do-not-leak-7f3a", "the broker password reached the trainer")
}

// A job is stopped by an operator (its trainer killed), and a job
// interrupted by a control-plane restart runs again from its dataset
// after the restart, never publishing twice.
func TestRetrainJobCancelAndRestart(t *testing.T) {
	h := newHangingRetrain(t, 13)
	f, dir, candidate, pidFile, script := h.f, h.dir, h.candidate, h.pidFile, h.script
	ctx := context.Background()
	var err error
	margin := 0.05
	_, err = f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: "command:t", MinLabelled: 200, Margin: &margin,
		TimeLimit: api.Duration(10 * time.Minute)})
	require.NoError(t, err)

	training := func(c interface {
		RetrainJob(context.Context, string) (*api.RetrainJob, error)
	}, id string) int {
		t.Helper()
		require.Eventually(t, func() bool {
			j, err := c.RetrainJob(ctx, id)
			require.NoError(t, err)
			require.False(t, j.State.Terminal(), "job: %s", jobText(j))
			b, err := os.ReadFile(pidFile)
			return j.State == api.RetrainTraining && err == nil && strings.HasSuffix(string(b), "\n")
		}, time.Minute, 20*time.Millisecond)
		b, err := os.ReadFile(pidFile)
		require.NoError(t, err)
		require.NoError(t, os.Remove(pidFile))
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		require.NoError(t, err)
		return pid
	}

	// Cancel: the trainer's process group is killed, the job ends failed.
	j, err := f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.NoError(t, err)
	pid := training(f.Client, j.ID)
	_, err = f.Client.CancelRetrainJob(ctx, j.ID)
	require.NoError(t, err)
	j = f.waitJob(t, j.ID)
	require.Equal(t, api.RetrainFailed, j.State)
	assert.Contains(t, j.Reason, "cancelled by ")
	require.Eventually(t, func() bool { return gone(pid) }, 30*time.Second, 20*time.Millisecond, "the cancelled trainer's child lives on")
	_, err = f.Client.CancelRetrainJob(ctx, j.ID)
	require.ErrorIs(t, err, api.ErrExists, "a job that is over cannot be cancelled")

	// Restart while training: the trainer dies with the control plane;
	// the job resumes at the next start (here with a trainer that works)
	// on the same dataset.
	j, err = f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.NoError(t, err)
	pid = training(f.Client, j.ID)
	before, err := f.Client.RetrainJob(ctx, j.ID)
	require.NoError(t, err)
	require.NotNil(t, before.Dataset)
	token := f.Token
	f.Stop()
	require.Eventually(t, func() bool { return gone(pid) }, 30*time.Second, 20*time.Millisecond, "the trainer outlived the control plane")
	second := newTestServer(t, func(o *controlplane.Options) {
		o.DataDir = dir
		o.Retrain.Trainers = map[string][]string{"t": {"/bin/sh", script, "ok", candidate}}
	})
	c2 := second.WithToken(token)
	var after *api.RetrainJob
	require.Eventually(t, func() bool {
		after, err = c2.RetrainJob(ctx, j.ID)
		require.NoError(t, err)
		return after.State.Terminal()
	}, 2*time.Minute, 20*time.Millisecond)
	require.Equal(t, api.RetrainPublished, after.State, "job: %s", jobText(after))
	assert.Equal(t, before.Dataset.SHA256, after.Dataset.SHA256, "the same dataset after the restart")
	assert.Equal(t, "v2", after.Candidate)
	resumed := false
	for _, l := range after.Log {
		resumed = resumed || strings.Contains(l.Message, "interrupted in training by a control-plane restart")
	}
	assert.True(t, resumed, "the log says the job was resumed: %s", jobText(after))
	mvs, err := c2.Models(ctx)
	require.NoError(t, err)
	assert.Len(t, mvs, 2, "v1 and one v2")
}

// A base dataset uploaded through the API (here an exported CSV of
// other captured rows, generated with another seed) joins a job's
// training rows; the lineage names it beside the captured dataset. Bad
// uploads are refused with a 400 and the reason, through the CLI too.
func TestRetrainWithBaseDataset(t *testing.T) {
	f := newRetrainFleet(t, nil)
	ctx := context.Background()
	classic, err := fraud.NewGenerator(21, fraud.Params{})
	require.NoError(t, err)
	f.traffic(t, classic, 200, 400)
	first, err := f.Client.BuildDataset(ctx, "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	var csvRows bytes.Buffer
	_, err = f.Client.ExportDataset(ctx, "fraud", strconv.Itoa(first.Version), api.FormatCSV, &csvRows)
	require.NoError(t, err)
	base, err := f.Client.UploadBaseDataset(ctx, "fraud", "first-week", bytes.NewReader(csvRows.Bytes()))
	require.NoError(t, err)
	assert.Equal(t, first.Rows, base.Rows)
	assert.Equal(t, "first-week", base.Name)

	// Bad uploads: 400 with the reason.
	_, err = f.Client.UploadBaseDataset(ctx, "fraud", "", strings.NewReader("amount,label\n1,0\n"))
	require.ErrorIs(t, err, api.ErrInvalid)
	assert.Contains(t, err.Error(), "header lacks")
	_, err = f.Client.UploadBaseDataset(ctx, "fraud", "", strings.NewReader(""))
	require.ErrorIs(t, err, api.ErrInvalid)
	_, err = f.Client.UploadBaseDataset(ctx, "nope", "", bytes.NewReader(csvRows.Bytes()))
	require.ErrorIs(t, err, api.ErrNotFound)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	require.NoError(t, os.WriteFile(bad, []byte("nothing,here\n1,2\n"), 0o600))
	_, errOut, code := runCLI(f.testServer, "data", "upload", "fraud", bad)
	require.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "header lacks")
	good := filepath.Join(dir, "good.csv")
	require.NoError(t, os.WriteFile(good, csvRows.Bytes(), 0o600))
	out, errOut, code := runCLI(f.testServer, "data", "upload", "fraud", good)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, base.ID, "the same rows are the same base dataset")
	out, errOut, code = runCLI(f.testServer, "data", "bases", "fraud")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, base.ID[:12])

	// More field rows; a policy joining the base dataset, accepting any
	// candidate.
	f.traffic(t, classic, 200, 800)
	margin := -1.0
	_, err = f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, MinLabelled: 100, Margin: &margin,
		BaseDataset: "0000000000"})
	require.ErrorIs(t, err, api.ErrInvalid, "an unknown base dataset")
	st, err := f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, MinLabelled: 100, Margin: &margin,
		BaseDataset: base.ID[:10]})
	require.NoError(t, err)
	assert.Equal(t, base.ID, st.Policy.BaseDataset)
	j, err := f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.NoError(t, err)
	j = f.waitJob(t, j.ID)
	require.Equal(t, api.RetrainPublished, j.State, "job: %s", jobText(j))
	require.NotNil(t, j.Base)
	assert.Equal(t, base.ID, j.Base.ID)
	assert.Equal(t, j.Dataset.Labelled+base.Rows, j.TrainRows+j.HoldoutRows, "training = base ∪ field rows not held out")

	l, err := f.Client.Lineage(ctx, "fraud", j.Candidate)
	require.NoError(t, err)
	require.NotEmpty(t, l.Chain)
	require.Len(t, l.Chain[0].Datasets, 2)
	assert.Equal(t, api.LineageDataset{Model: "fraud", SHA256: base.ID, Rows: uint64(base.Rows), Base: true}, l.Chain[0].Datasets[1])
	assert.Equal(t, j.Dataset.SHA256, l.Chain[0].Datasets[0].SHA256)

	_, err = f.Client.DeleteBaseDataset(ctx, "fraud", base.ID)
	require.NoError(t, err)
	j, err = f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.NoError(t, err)
	j = f.waitJob(t, j.ID)
	require.Equal(t, api.RetrainFailed, j.State)
	assert.Contains(t, j.Reason, "base dataset "+base.ID[:12]+" of the policy")
}

// A cancel the control plane answered, then a restart before (or while)
// the job stops: at the next start the job is over, cancelled, and
// nothing is published — even with a trainer that would now succeed.
func TestRetrainCancelStandsAcrossRestart(t *testing.T) {
	h := newHangingRetrain(t, 17)
	f, dir, candidate, pidFile, script := h.f, h.dir, h.candidate, h.pidFile, h.script
	ctx := context.Background()
	var err error
	margin := -1.0 // any candidate would be published
	_, err = f.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: "command:t", MinLabelled: 200, Margin: &margin})
	require.NoError(t, err)
	j, err := f.Client.Retrain(ctx, "fraud", api.RetrainRequest{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		j, err = f.Client.RetrainJob(ctx, j.ID)
		require.NoError(t, err)
		require.False(t, j.State.Terminal(), "job: %s", jobText(j))
		_, err := os.Stat(pidFile)
		return j.State == api.RetrainTraining && err == nil
	}, time.Minute, 20*time.Millisecond)

	cancelled, err := f.Client.CancelRetrainJob(ctx, j.ID)
	require.NoError(t, err)
	assert.NotEmpty(t, cancelled.CancelledBy, "the answer records who cancelled")
	token := f.Token
	f.Stop() // at once: the worker may not have recorded the end

	second := newTestServer(t, func(o *controlplane.Options) {
		o.DataDir = dir
		o.Retrain.Trainers = map[string][]string{"t": {"/bin/sh", script, "ok", candidate}}
	})
	c2 := second.WithToken(token)
	var after *api.RetrainJob
	require.Eventually(t, func() bool {
		after, err = c2.RetrainJob(ctx, j.ID)
		require.NoError(t, err)
		return after.State.Terminal()
	}, time.Minute, 20*time.Millisecond)
	require.Equal(t, api.RetrainFailed, after.State, "job: %s", jobText(after))
	assert.True(t, strings.HasPrefix(after.Reason, "cancelled by "), "reason %q", after.Reason)
	mvs, err := c2.Models(ctx)
	require.NoError(t, err)
	assert.Len(t, mvs, 1, "nothing published after the cancel")
	for _, l := range after.Log {
		assert.NotContains(t, l.Message, "runs again", "the cancelled job resumed: %s", jobText(after))
	}
}

// hangingRetrain is a retrain fleet on its own data directory whose trainer
// "t" hangs (its pid in pidFile), with a better candidate model at
// candidate for a trainer that would succeed, and 400 captured rows of the
// card-testing pattern (generator seed).
type hangingRetrain struct {
	f                               *retrainFleet
	dir, candidate, pidFile, script string
}

func newHangingRetrain(t *testing.T, seed uint64) hangingRetrain {
	t.Helper()
	h := hangingRetrain{dir: t.TempDir()}
	work := t.TempDir()
	h.candidate = filepath.Join(work, "candidate.onnx")
	require.NoError(t, os.WriteFile(h.candidate, trainFraud(t, 2, fraud.PatternCardTesting).ONNX, 0o600))
	h.pidFile = filepath.Join(work, "child.pid")
	var err error
	h.script, err = filepath.Abs("testdata/retrain-trainer.sh")
	require.NoError(t, err)
	h.f = newRetrainFleet(t, func(o *controlplane.Options) {
		o.DataDir = h.dir
		o.Retrain.Trainers = map[string][]string{"t": {"/bin/sh", h.script, "hang", h.pidFile}}
	})
	drifted, err := fraud.NewGenerator(seed, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	h.f.traffic(t, drifted, 200, 400)
	return h
}
