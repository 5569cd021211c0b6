package console

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

type fakeRetrain struct {
	mu       sync.Mutex
	status   map[string]api.RetrainStatus
	jobs     []*api.RetrainJob             // newest first
	lineage  map[string][]api.LineageEntry // by version: its chain
	lineages int                           // Lineage calls
}

func (f *fakeRetrain) Policy(model string) (api.RetrainStatus, error) {
	st, ok := f.status[model]
	if !ok {
		return api.RetrainStatus{Model: model}, nil
	}
	return st, nil
}

func (f *fakeRetrain) Jobs(model string) []*api.RetrainJob {
	var out []*api.RetrainJob
	for _, j := range f.jobs {
		if model == "" || j.Model == model {
			c := *j
			c.Log = nil
			out = append(out, &c)
		}
	}
	return out
}

func (f *fakeRetrain) Job(id string) (*api.RetrainJob, error) {
	for _, j := range f.jobs {
		if j.ID == id {
			return j, nil
		}
	}
	return nil, api.Errorf(api.ErrNotFound, "retrain job %q does not exist", id)
}

func (f *fakeRetrain) Lineage(model, version string) (api.Lineage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lineages++
	chain, ok := f.lineage[version]
	if !ok {
		return api.Lineage{}, api.Errorf(api.ErrNotFound, "model %s version %s does not exist", model, version)
	}
	return api.Lineage{Model: model, Chain: chain}, nil
}

func (f *fakeRetrain) lineageCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lineages
}

var t0 = time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)

// retrainFixture is a model fraud with a policy, versions v1 → v2 (v2
// retrained by job j-done), a job that ended and one that runs.
func retrainFixture(s string) *fakeRetrain {
	margin := 0.01
	policy := api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"low_accuracy"}, Params: map[string]string{s: s},
		Margin: &margin, Rollout: &api.RolloutSpec{Selector: s, Stages: []api.RolloutStage{{Name: s, Percent: 100, Shadow: true}, {Name: "all", Percent: 100}}}}.WithDefaults()
	ds := &api.Dataset{Model: "fraud", Version: 3, SHA256: strings.Repeat("ab", 32), Rows: 900, Labelled: 800, Sites: []string{s}, Devices: []string{s},
		ModelVersions: []string{s}, Validation: api.Validation{Passed: false, Checks: []api.ValidationCheck{{Name: s, Severity: "fail", Detail: s}}}}
	done := &api.RetrainJob{ID: "j-done", Model: "fraud", State: api.RetrainRollingOut, Trigger: "alert:low_accuracy site=" + s, Reason: s,
		Created: t0, Updated: t0.Add(4 * time.Second), Policy: policy, Parent: "v1", Dataset: ds, TrainRows: 600, HoldoutRows: 200,
		Evaluation: &api.Evaluation{Metric: api.MetricAccuracy, Rows: 200, Margin: 0.01, Better: true,
			Candidate: api.EvaluationScore{Version: "v2", Accuracy: 0.902, Precision: 0.8, Recall: 0.7, F1: 0.75},
			Parent:    api.EvaluationScore{Version: "v1", Accuracy: 0.777, Precision: 0.6, Recall: 0.5, F1: 0.55}},
		Command:   &api.TrainerRun{Program: s, Args: []string{s}, ExitCode: 0, Stdout: s, Stderr: s, Duration: api.Duration(time.Second)},
		Candidate: "v2", Rollout: "r-1",
		Log: []api.RetrainLogEntry{
			{Time: t0, State: api.RetrainQueued, Message: "queued by " + s},
			{Time: t0.Add(time.Second), State: api.RetrainBuilding, Message: s},
			{Time: t0.Add(4 * time.Second), State: api.RetrainRollingOut, Message: "rollout r-1 created"},
		}}
	running := &api.RetrainJob{ID: "j-run", Model: "fraud", State: api.RetrainTraining, Trigger: "manual:" + s, Created: t0.Add(time.Hour),
		Updated: t0.Add(time.Hour + time.Second), Policy: policy, Parent: "v2",
		Log: []api.RetrainLogEntry{{Time: t0.Add(time.Hour), State: api.RetrainQueued, Message: s}}}
	v1 := api.LineageEntry{Version: "v1", Created: t0.Add(-time.Hour), Algorithm: s}
	v2 := api.LineageEntry{Version: "v2", Created: t0.Add(4 * time.Second), Parent: "v1", Trainer: api.TrainerBuiltinFraud, Params: map[string]string{s: s},
		Trigger: done.Trigger, Job: "j-done", Datasets: []api.LineageDataset{{Model: s, Version: 3, SHA256: s, Rows: 900}},
		Eval: map[string]float64{"holdout_rows": 200, "candidate_accuracy": 0.902, "parent_accuracy": 0.777, "candidate_f1": 0.75, "parent_f1": 0.55}}
	return &fakeRetrain{
		status:  map[string]api.RetrainStatus{"fraud": {Model: "fraud", Policy: policy, Set: true, UpdatedAt: t0, LastJob: "j-run", Running: "j-run"}},
		jobs:    []*api.RetrainJob{running, done},
		lineage: map[string][]api.LineageEntry{"v2": {v2, v1}, "v1": {v1}},
	}
}

func retrainModels() *fakeModels {
	return &fakeModels{list: []api.ModelVersion{
		{Name: "fraud", Version: "v1", SHA256: "11", Created: t0.Add(-time.Hour)},
		{Name: "fraud", Version: "v2", SHA256: "22", Created: t0.Add(4 * time.Second)},
	}}
}

// shadowMetrics answers the challenger's shadow figures and the
// champion's served figures per site.
type shadowMetrics struct {
	fakeMetrics
	site string
}

func (m *shadowMetrics) Query(q monitor.Query) (*api.ModelMetrics, error) {
	res := &api.ModelMetrics{Model: q.Model, Version: q.Version}
	acc := 0.8
	switch q.Version {
	case "v2":
		res.Groups = []api.MetricsGroup{{Key: m.site, MetricsFigures: api.MetricsFigures{Devices: 2, Shadow: &api.ShadowFigures{DevicesReady: 2, Rows: 640, Agreement: 0.91,
			Labelled: 320, ChampionAccuracy: 0.781, ChallengerAccuracy: 0.934, ChallengerLatencyP50Ms: 0.61, ChallengerLatencyP99Ms: 2.4}}}}
	case "v1":
		res.Groups = []api.MetricsGroup{{Key: m.site, MetricsFigures: api.MetricsFigures{Devices: 2, Reports: 4, Rows: 640, Labelled: 320, Accuracy: &acc,
			LatencyP50Ms: 0.42, LatencyP99Ms: 1.9}}}
	}
	if len(res.Groups) == 1 {
		res.Total = res.Groups[0].MetricsFigures
	}
	return res, nil
}

func shadowRollout(s string) *api.Rollout {
	margin := 0.02
	return &api.Rollout{ID: "r-1", State: api.RolloutRunning, Spec: api.RolloutSpec{Model: "fraud", Version: "v2", Selector: "site=b",
		Gates:  api.Gates{MinLabelled: 300, ShadowMargin: &margin},
		Stages: []api.RolloutStage{{Name: s, Percent: 100, Shadow: true}, {Name: "all", Percent: 100}}},
		Stages: []api.StageStatus{
			{Index: 1, Name: s, Kind: "percent 100 (shadow)", Current: true, StageProgress: api.StageProgress{Started: t0, Shadow: &api.ShadowFigures{
				DevicesReady: 2, DevicesFailed: 1, Failures: []string{"b-3: " + s}, Rows: 640, Agreement: 0.91, MeanScoreDiff: 0.12, Labelled: 320,
				ChampionAccuracy: 0.781, ChallengerAccuracy: 0.934, Skipped: 4, Errors: 1}}},
			{Index: 2, Name: "all", Kind: "percent 100"},
		},
		Devices: map[string]api.RolloutDevice{"b-1": {Stage: 0, Previous: "v1", Want: "v2", Shadow: true}, "b-2": {Stage: 0, Previous: "v1", Want: "v2", Shadow: true}},
	}
}

// TestRetrainPagesEscapeHostileValues renders the retraining pages and
// the shadow panel with hostile values wherever a trainer, an operator,
// a device or a dataset chooses a string.
func TestRetrainPagesEscapeHostileValues(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Retrain = retrainFixture(hostile)
		o.Models = &fakeModels{list: append(retrainModels().list, api.ModelVersion{Name: hostile, Version: hostile})}
		o.Rollouts = &fakeRollouts{list: []*api.Rollout{shadowRollout(hostile)}}
		o.Metrics = &shadowMetrics{site: hostile}
	})
	cl := f.client()
	cl.login(operatorSecret)
	raw := []string{"<script>alert", "<img src=x", `"pwn"`, `"'&`}
	for _, p := range []string{"/ui/retrain", "/ui/retrain?live=1", "/ui/models/fraud/retrain", "/ui/models/fraud/retrain?live=1", "/ui/models/" + url.PathEscape(hostile) + "/retrain",
		"/ui/retrain/jobs/j-done", "/ui/retrain/jobs/j-done?live=1", "/ui/retrain/jobs/j-run/cancel", "/ui/models/fraud/retrain/start",
		"/ui/rollouts/r-1", "/ui/rollouts/r-1?live=1", "/ui/retrain/jobs/" + url.PathEscape(hostile)} {
		code, body, _ := cl.get(p)
		require.Contains(t, []int{http.StatusOK, http.StatusNotFound}, code, "%s: %s", p, body)
		for _, r := range raw {
			assert.NotContains(t, body, r, "%s shows a hostile value unescaped", p)
		}
		if !strings.Contains(p, "start") && !strings.Contains(p, "cancel") && !strings.HasPrefix(p, "/ui/retrain/jobs/%") {
			assert.Contains(t, body, "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;", "%s shows the hostile value, escaped", p)
		}
	}
	code, body, _ := cl.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {cl.csrf}, "reason": {hostile}})
	assert.Equal(t, http.StatusSeeOther, code, body)
	calls := f.api.called()
	require.NotEmpty(t, calls)
	assert.Equal(t, `alice console POST /api/v1/models/fraud/retrain/jobs {"reason":"\u003cscript\u003ealert(\"pwn\")\u003c/script\u003e\u003cimg src=x onerror=alert(1)\u003e\"'\u0026"}`, calls[len(calls)-1],
		"the reason goes to the API JSON-encoded")
}

// TestRetrainRolesAndCSRF: an operator sees the start and cancel
// actions, confirms them, and the console calls the API's routes; without
// the CSRF token nothing reaches the API; a viewer sees no action, cannot
// open a confirmation, and its forged POSTs are refused by the API.
func TestRetrainRolesAndCSRF(t *testing.T) {
	rt := retrainFixture("x")
	f := newFixture(t, func(o *Options) {
		o.Retrain = rt
		o.Models = retrainModels()
	})
	op := f.client()
	op.login(operatorSecret)
	_, body, _ := op.get("/ui/models/fraud/retrain")
	assert.NotContains(t, body, `data-action="start"`, "a job runs: no start")
	assert.Contains(t, body, `href="/ui/retrain/jobs/j-run"`)
	_, body, _ = op.get("/ui/retrain/jobs/j-run")
	assert.Contains(t, body, `data-action="cancel"`)
	_, body, _ = op.get("/ui/retrain/jobs/j-done")
	assert.NotContains(t, body, `data-action="cancel"`, "an ended job cannot be cancelled")
	code, body, _ := op.get("/ui/retrain/jobs/j-done/cancel")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "is over (rolling-out)")
	assert.NotContains(t, body, `id="confirm"`)
	code, body, _ = op.get("/ui/models/fraud/retrain/start")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "Retrain job j-run of fraud has not ended")

	// With no job running, the operator may start one.
	st := rt.status["fraud"]
	st.Running = ""
	rt.status["fraud"] = st
	_, body, _ = op.get("/ui/models/fraud/retrain")
	assert.Contains(t, body, `data-action="start"`)
	code, body, _ = op.get("/ui/models/fraud/retrain/start")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `id="confirm"`)
	assert.Contains(t, body, "trains with builtin:fraud")

	for _, p := range []string{"/ui/models/fraud/retrain/start", "/ui/retrain/jobs/j-run/cancel"} {
		code, _, _ = op.post(p, url.Values{})
		assert.Equal(t, http.StatusForbidden, code, "%s without a CSRF token", p)
		code, _, _ = op.post(p, url.Values{"csrf": {op.csrf}}, "Sec-Fetch-Site", "cross-site")
		assert.Equal(t, http.StatusForbidden, code, "%s from another site", p)
	}
	assert.Empty(t, f.api.called(), "nothing without the token reached the API")
	code, _, resp := op.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {op.csrf}})
	assert.Equal(t, http.StatusSeeOther, code)
	assert.Equal(t, "/ui/models/fraud/retrain?done=start", resp.Header.Get("Location"))
	code, _, resp = op.post("/ui/retrain/jobs/j-run/cancel", url.Values{"csrf": {op.csrf}})
	assert.Equal(t, http.StatusSeeOther, code)
	assert.Equal(t, "/ui/retrain/jobs/j-run?done=cancel", resp.Header.Get("Location"))
	assert.Equal(t, []string{"alice console POST /api/v1/models/fraud/retrain/jobs ", "alice console POST /api/v1/retrain/jobs/j-run/cancel "}, f.api.called())

	vw := f.client()
	vw.login(viewerSecret)
	for _, p := range []string{"/ui/retrain", "/ui/models/fraud/retrain", "/ui/retrain/jobs/j-run"} {
		code, body, _ := vw.get(p)
		assert.Equal(t, http.StatusOK, code, p)
		assert.NotContains(t, body, "data-action=", "a viewer sees no action on %s", p)
	}
	code, body, _ = vw.get("/ui/models/fraud/retrain/start")
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, "has role viewer; POST /api/v1/models/{name}/retrain/jobs needs operator")
	code, _, _ = vw.get("/ui/retrain/jobs/j-run/cancel")
	assert.Equal(t, http.StatusForbidden, code)
	code, _, _ = vw.post("/ui/models/fraud/retrain/start", url.Values{"csrf": {vw.csrf}})
	assert.Equal(t, http.StatusForbidden, code)
	code, _, _ = vw.post("/ui/retrain/jobs/j-run/cancel", url.Values{"csrf": {vw.csrf}})
	assert.Equal(t, http.StatusForbidden, code)
	calls := f.api.called()
	assert.Equal(t, []string{"bob console POST /api/v1/models/fraud/retrain/jobs ", "bob console POST /api/v1/retrain/jobs/j-run/cancel "}, calls[2:],
		"the viewer's attempts went to the API, which refused (and audits) them")
}

// TestRetrainPagesShowTheJob: the figures of a job and a model's lineage
// as the pages show them; the lineage of a straight line of versions is
// one walk, and is not walked again while the versions stay the same.
func TestRetrainPagesShowTheJob(t *testing.T) {
	rt := retrainFixture("site-b")
	f := newFixture(t, func(o *Options) {
		o.Retrain = rt
		o.Models = retrainModels()
	})
	cl := f.client()
	cl.login(operatorSecret)
	_, body, _ := cl.get("/ui/retrain/jobs/j-done")
	for _, want := range []string{
		`<span id="job-state" class="state state-rolling-out">rolling-out</span>`,
		"took 4s",
		"200 held-out labelled rows",
		"had to reach 0.787 (current 0.777 + margin 0.010)",
		`<tr data-figure="accuracy" class="current">`, "<td>0.902</td><td>0.777</td><td>&#43;0.125</td>",
		"fraud dataset 3 · sha256 <code>" + strings.Repeat("ab", 32),
		"800 labelled: 600 to train on, 200 held out",
		`<a href="/ui/rollouts/r-1">rollout r-1</a>`,
		"<td>1s</td>", "<td>3s</td>", // the log's steps
	} {
		assert.Contains(t, body, want)
	}
	_, body, _ = cl.get("/ui/models/fraud/retrain")
	for _, want := range []string{
		`<dd id="policy-triggers">alerts low_accuracy</dd>`,
		"the candidate's accuracy must beat the current version's by &#43;0.010",
		"site-b (percent 100 (shadow)) → all (percent 100) on site-b",
		`<tr data-version="v2" data-parent="v1">`, "v1 → v2",
		`<a href="/ui/retrain/jobs/j-done">j-done</a>`,
		"accuracy 0.902 vs 0.777 (parent), f1 0.750 vs 0.550 on 200 rows",
		`<tr data-version="v1" data-parent="">`,
		`<td>0.902 vs 0.777 accuracy on 200 rows</td>`,
	} {
		assert.Contains(t, body, want)
	}
	assert.Equal(t, 1, rt.lineageCalls(), "v2's chain covers v1")
	_, _, _ = cl.get("/ui/models/fraud/retrain?live=1")
	assert.Equal(t, 1, rt.lineageCalls(), "cached while the versions stay the same")

	_, body, _ = cl.get("/ui/retrain")
	assert.Contains(t, body, `<tr data-model="fraud">`)
	assert.Contains(t, body, `<tr data-job="j-run" data-state="training">`)

	g := newFixture(t, nil)
	cl = g.client()
	cl.login(operatorSecret)
	for _, p := range []string{"/ui/retrain", "/ui/models/fraud/retrain", "/ui/retrain/jobs/j-1", "/ui/models/fraud/retrain/start"} {
		code, body, _ := cl.get(p)
		assert.Equal(t, http.StatusServiceUnavailable, code, p)
		assert.Contains(t, body, errNoRetrain)
	}
}

// TestShadowPanel: a rollout's shadow stage shows the gate's figures,
// champion against challenger, and each site's with the champion's
// latency.
func TestShadowPanel(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Rollouts = &fakeRollouts{list: []*api.Rollout{shadowRollout("shadow")}}
		o.Metrics = &shadowMetrics{site: "b"}
	})
	cl := f.client()
	cl.login(viewerSecret)
	_, body, _ := cl.get("/ui/rollouts/r-1?live=1")
	for _, want := range []string{
		"Stage 1. shadow: challenger v2 in shadow of v1",
		"reaches the champion's &#43;0.020 on at least 300 labelled rows",
		`<td class="champion-accuracy">0.781</td><td class="challenger-accuracy">0.934 (&#43;0.153)</td>`,
		`<td colspan="2" class="labelled">320</td>`,
		`<td colspan="2" class="agreement">91.0 %</td>`,
		"2 / 1<div class=\"reason\">b-3: shadow</div>",
		"4 / 1",
		`<td class="champion-latency">0.42 / 1.9 ms</td>
      <td class="challenger-latency">0.61 / 2.4 ms</td>`,
		`<tr data-site="b">`, `<td class="champion-latency">0.42 / 1.9 ms</td>
    <td class="challenger-latency">0.61 / 2.4 ms</td>`,
	} {
		assert.Contains(t, body, want)
	}
}

// A cron schedule, a base dataset, a schedule that waits and a stored
// policy that cannot be read are shown on the model's retraining page.
func TestRetrainPageShowsCronBaseAndWaits(t *testing.T) {
	rt := retrainFixture("site-b")
	st := rt.status["fraud"]
	st.Policy.Cron, st.Policy.BaseDataset = "30 2 * * *", "0123abcd"
	st.ScheduleWaiting = "job j-run of fraud is unfinished"
	rt.status["fraud"] = st
	rt.status["broken"] = api.RetrainStatus{Model: "broken", Error: "decode policy: unexpected EOF"}
	f := newFixture(t, func(o *Options) {
		o.Retrain = rt
		o.Models = &fakeModels{list: append(retrainModels().list, api.ModelVersion{Name: "broken", Version: "v1"})}
	})
	cl := f.client()
	cl.login(operatorSecret)
	_, body, _ := cl.get("/ui/models/fraud/retrain")
	for _, want := range []string{
		`<dd id="policy-schedule">cron 30 2 * * * (UTC)`,
		`<span class="notice" id="schedule-waiting">due, waiting: job j-run of fraud is unfinished</span>`,
		"joined with the uploaded base dataset <code>0123abcd</code> (training rows only)",
	} {
		assert.Contains(t, body, want)
	}
	_, body, _ = cl.get("/ui/models/broken/retrain")
	assert.Contains(t, body, `id="policy-error">The stored policy cannot be used: decode policy: unexpected EOF.`)
}
