package console_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
)

// retrainEnv is a real control plane with two capturing agents at site b
// serving fraud v1 (trained on the classic pattern), whose transactions
// now follow the card-testing pattern: 600 labelled rows are captured.
// The policy's trainer "command:slow" is an external trainer that runs
// until it is stopped.
type retrainEnv struct {
	*env
	agents map[string]*agent.Agent
	g      *fraud.Generator
}

func startRetrainEnv(t *testing.T) *retrainEnv {
	t.Helper()
	e := startEnv(t, func(o *controlplane.Options) {
		o.RolloutInterval = 50 * time.Millisecond
		o.Retrain.Trainers = map[string][]string{"slow": {"/bin/sh", "-c", "echo training until stopped; exec sleep 600", "sh"}}
		o.Console.PollInterval = 200 * time.Millisecond
	})
	e.upload("v1", 1)
	r := &retrainEnv{env: e, agents: map[string]*agent.Agent{}}
	for _, id := range []string{"b-1", "b-2"} {
		r.agents[id] = e.cp.StartAgent(t, testRuntime, id, map[string]string{"site": "b"}, func(o *agent.Options) {
			o.Capture = agent.CaptureOptions{FlushInterval: 20 * time.Millisecond, AckTimeout: 300 * time.Millisecond, BatchRows: 8}
		})
	}
	_, err := e.cp.Client.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=b", Capture: &api.CapturePolicy{SampleRate: 1}})
	require.NoError(t, err)
	r.waitServing("v1")
	r.g, err = fraud.NewGenerator(9, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	r.traffic(300)
	var st api.CaptureStatus
	require.Eventually(t, func() bool {
		st, err = e.cp.Client.CapturePolicy(context.Background(), "fraud")
		return err == nil && st.Labelled >= 600
	}, browserWait, 20*time.Millisecond, "600 labelled rows captured: %+v, %v", &st, &err)
	return r
}

// traffic sends n labelled transactions through each agent.
func (r *retrainEnv) traffic(n int) {
	r.t.Helper()
	for _, a := range r.agents {
		labels := fleettest.InferFraud(r.t, a.InferenceAddr(), r.g, n, 20)
		_, err := a.Feedback(context.Background(), "fraud", labels)
		require.NoError(r.t, err)
	}
}

func (r *retrainEnv) waitServing(version string) {
	r.t.Helper()
	require.Eventually(r.t, func() bool {
		for _, a := range r.agents {
			st := a.Status()
			if len(st) != 1 || st[0].Serving != version {
				return false
			}
		}
		return true
	}, browserWait, 10*time.Millisecond, "agents serve fraud %s", version)
}

// setPolicy sets fraud's policy: trainer, and a rollout through a shadow
// stage on site b (the challenger must be at least as good over 200
// labelled rows scored by both).
func (r *retrainEnv) setPolicy(trainer string) {
	r.t.Helper()
	margin, shadowMargin := 0.05, 0.0
	_, err := r.cp.Client.SetRetrainPolicy(context.Background(), "fraud", api.RetrainPolicy{
		Trainer: trainer, Window: api.Duration(time.Hour), MinLabelled: 300, Margin: &margin,
		Rollout: &api.RolloutSpec{Selector: "site=b", AutoPromote: true, Bake: api.Duration(time.Millisecond),
			Gates:  api.Gates{MinLabelled: 200, ShadowMargin: &shadowMargin},
			Stages: []api.RolloutStage{{Name: "shadow", Percent: 100, Shadow: true}, {Name: "all", Percent: 100}}},
	})
	require.NoError(r.t, err)
}

var jobLocation = regexp.MustCompile(`^/ui/retrain/jobs/([^/?]+)\?done=start$`)

// TestRetrainPagesOnARealControlPlane: through the console's forms, an
// operator starts a retrain on the captured data; the job runs through
// its states to a better candidate and its rollout, which the job page,
// the model's lineage and the rollout's shadow panel show as the API
// says; a job on a trainer that does not end is cancelled from its page.
// A viewer's forged start is refused by the API and audited.
func TestRetrainPagesOnARealControlPlane(t *testing.T) {
	r := startRetrainEnv(t)
	ctx := context.Background()
	r.setPolicy(api.TrainerBuiltinFraud)

	vw := r.login(r.viewer)
	code, body, _ := vw.get("/ui/models/fraud/retrain")
	require.Equal(t, http.StatusOK, code, body)
	assert.NotContains(t, body, "data-action=")
	code, _, _ = vw.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {vw.csrf}})
	assert.Equal(t, http.StatusForbidden, code, "a viewer cannot start a retrain")
	jobs, err := r.cp.Client.RetrainJobs(ctx, "fraud")
	require.NoError(t, err)
	assert.Empty(t, jobs)
	refused, err := r.cp.Audit(api.AuditQuery{Action: "api.POST " + api.PathModelRetrainJ})
	require.NoError(t, err)
	require.NotEmpty(t, refused)
	assert.Equal(t, "viewer-bob", refused[len(refused)-1].Actor)
	assert.Equal(t, "console", refused[len(refused)-1].Details["via"])
	assert.True(t, strings.HasPrefix(refused[len(refused)-1].Result, "HTTP 403"), refused[len(refused)-1].Result)

	op := r.login(r.operator)
	code, body, _ = op.get("/ui/models/fraud/retrain")
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `data-action="start"`)
	assert.Contains(t, body, "captured rows of the last 1h0m0s, of every site; at least 300 labelled rows")
	code, body, _ = op.get("/ui/models/fraud/retrain/start")
	require.Equal(t, http.StatusOK, code, body)
	code, body, h := op.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {op.formCSRF(body)}, "reason": {"card testing at site b"}})
	require.Equal(t, http.StatusSeeOther, code, body)
	m := jobLocation.FindStringSubmatch(h.Get("Location"))
	require.NotNil(t, m, "redirected to the job: %s", h.Get("Location"))
	id := m[1]

	// The job page follows the job until it ends.
	var job *api.RetrainJob
	require.Eventually(t, func() bool {
		job, err = r.cp.Client.RetrainJob(ctx, id)
		require.NoError(t, err)
		return job.State.Terminal()
	}, 2*time.Minute, 20*time.Millisecond)
	require.Equal(t, api.RetrainRollingOut, job.State, "job: %+v", job)
	assert.Equal(t, "manual:ops-alice", job.Trigger)
	code, body, _ = op.get("/ui/retrain/jobs/" + id + "?live=1")
	require.Equal(t, http.StatusOK, code, body)
	ev := job.Evaluation
	for _, want := range []string{
		`<span id="job-state" class="state state-rolling-out">rolling-out</span>`,
		"manual:ops-alice",
		`<span id="job-verdict" class="state state-passed">better</span>`,
		"<td>" + f3(ev.Candidate.Accuracy) + "</td><td>" + f3(ev.Parent.Accuracy) + "</td>",
		"fraud dataset " + itoa(job.Dataset.Version) + " · sha256 <code>" + job.Dataset.SHA256 + "</code>",
		itoa(job.TrainRows) + " to train on, " + itoa(job.HoldoutRows) + " held out",
		`<a href="/ui/rollouts/` + job.Rollout + `">rollout ` + job.Rollout + `</a>`,
		`<tr data-state="building-dataset">`, `<tr data-state="evaluating">`,
	} {
		assert.Contains(t, body, want)
	}
	_, body, _ = op.get("/ui/models/fraud/retrain?live=1")
	assert.Contains(t, body, `<tr data-version="`+job.Candidate+`" data-parent="v1">`, "the lineage names the candidate's parent")
	assert.Contains(t, body, "v1 → "+job.Candidate)
	assert.Contains(t, body, `<a href="/ui/retrain/jobs/`+id+`">`)
	assert.Contains(t, body, `<td>`+f3(ev.Candidate.Accuracy)+` vs `+f3(ev.Parent.Accuracy)+` accuracy on `+itoa(ev.Rows)+` rows</td>`)

	// The rollout's shadow stage: labelled traffic until the challenger
	// passes; the panel shows the figures the gate passed on, and site b's.
	var ro *api.Rollout
	require.Eventually(t, func() bool {
		r.traffic(40)
		ro, err = r.cp.Client.Rollout(ctx, job.Rollout, false)
		require.NoError(t, err)
		require.NotEqual(t, api.RolloutPaused, ro.State, "the challenger was held: %s", ro.Reason)
		return ro.Stages[0].Result != ""
	}, 2*time.Minute, 20*time.Millisecond, "the shadow stage ends")
	sh := ro.Stages[0].Shadow
	require.NotNil(t, sh)
	t.Logf("job %s: %s, held out %.3f vs %.3f on %d rows; shadow: %+v", id, job.State, ev.Candidate.Accuracy, ev.Parent.Accuracy, ev.Rows, *sh)
	_, body, _ = op.get("/ui/rollouts/" + ro.ID + "?live=1")
	for _, want := range []string{
		"Stage 1. shadow: challenger " + job.Candidate + " in shadow of v1",
		`<td class="champion-accuracy">` + f3(sh.ChampionAccuracy) + `</td><td class="challenger-accuracy">` + f3(sh.ChallengerAccuracy),
		`<td colspan="2" class="labelled">` + itoa(int(sh.Labelled)) + `</td>`,
		`<tr data-site="b">`,
	} {
		assert.Contains(t, body, want)
	}
	assert.Regexp(t, `<td class="challenger-latency">[0-9.]+ / [0-9.]+ ms</td>`, body, "the agents report the challenger's inference time")
	assert.Regexp(t, `<td class="champion-latency">[0-9.]+ / [0-9.]+ ms</td>`, body)
	r.waitServing(job.Candidate)

	// A job on a trainer that does not end, cancelled from its page.
	r.setPolicy(api.TrainerCommandPrefix + "slow")
	code, body, h = op.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {op.csrf}})
	require.Equal(t, http.StatusSeeOther, code, body)
	m = jobLocation.FindStringSubmatch(h.Get("Location"))
	require.NotNil(t, m, h.Get("Location"))
	slow := m[1]
	require.Eventually(t, func() bool {
		_, body, _ := op.get("/ui/retrain/jobs/" + slow + "?live=1")
		return strings.Contains(body, `id="job-state" class="state state-training"`) && strings.Contains(body, `data-action="cancel"`)
	}, browserWait, 20*time.Millisecond, "the job page shows the job training, with a cancel action")
	code, body, _ = op.get("/ui/retrain/jobs/" + slow + "/cancel")
	require.Equal(t, http.StatusOK, code, body)
	code, body, h = op.post("/ui/retrain/jobs/"+slow+"/cancel", url.Values{"csrf": {op.formCSRF(body)}})
	require.Equal(t, http.StatusSeeOther, code, body)
	assert.Equal(t, "/ui/retrain/jobs/"+slow+"?done=cancel", h.Get("Location"))
	require.Eventually(t, func() bool {
		_, body, _ := op.get("/ui/retrain/jobs/" + slow + "?live=1")
		return strings.Contains(body, `id="job-state" class="state state-failed"`)
	}, browserWait, 20*time.Millisecond, "the cancelled job fails")
	j, err := r.cp.Client.RetrainJob(ctx, slow)
	require.NoError(t, err)
	assert.Contains(t, j.Reason, "cancelled by ops-alice")
	assert.NotNil(t, j.Command, "the trainer ran and was stopped")
}

func f3(v float64) string { return fmt.Sprintf("%.3f", v) }

func itoa(n int) string { return strconv.Itoa(n) }
