package console_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestRetrainInBrowser drives the retraining pages in headless Chromium
// against a real control plane and two real capturing agents: an operator
// starts a retrain from the model's page and watches the job advance
// without reloading until its trainer runs, a viewer sees it without the
// cancel action and is refused when it posts anyway, the operator cancels
// it; a second retrain on the builtin trainer ends with a better
// candidate, which the lineage shows, and its rollout's shadow panel fills
// with champion and challenger figures as labelled traffic arrives.
func TestRetrainInBrowser(t *testing.T) {
	testkit.ChromiumBin(t) // skip before starting anything when there is no browser
	r := startRetrainEnv(t)
	r.setPolicy(api.TrainerCommandPrefix + "slow")
	b := startBrowser(t, r.cp.APIURL())
	op := b.tab("operator")
	op.login(r.operator)

	// From the navigation to the model's page, and a retrain with a reason.
	op.click(`nav a[href="/ui/retrain"]`, `#retrain-models tr[data-model="fraud"]`)
	assert.Contains(t, op.text(`document.querySelector('#retrain-models tr[data-model="fraud"]')`), "command:slow")
	op.click(`#retrain-models tr[data-model="fraud"] th a`, "#policy")
	assert.Equal(t, "command:slow", op.text(`document.querySelector('#policy-trainer code')`))
	assert.Contains(t, op.text(`document.getElementById('policy-rollout')`), "shadow (percent 100 (shadow)) → all (percent 100) on site=b")
	op.click(`a[data-action="start"]`, "#confirm")
	op.do("give a reason", chromedp.SendKeys(chromedp.CSS("#retrain-reason"), "card testing at site b"))
	op.click("#confirm", "#job-state")
	assert.Contains(t, op.text(`document.getElementById('done')`), "Retrain job started")
	var path string
	op.eval(`location.pathname`, &path)
	id := strings.TrimPrefix(path, "/ui/retrain/jobs/")
	require.NotEqual(t, path, id, "the form led to the job's page: %s", path)
	op.eval(`document.body.setAttribute('data-probe', 'not reloaded'), true`, new(bool))
	op.waitFor(`document.getElementById('job-state').textContent.trim() === 'training'`, "the job reaches training")
	var probe, updated string
	op.eval(`document.body.getAttribute('data-probe')`, &probe)
	op.eval(`document.getElementById('live').getAttribute('data-updated') || ''`, &updated)
	assert.Equal(t, "not reloaded", probe, "the job advanced on the page without a reload")
	assert.NotEmpty(t, updated, "the live region was replaced by a poll")
	op.waitFor(`document.querySelector('#job-log tr[data-state="building-dataset"]') && document.querySelector('#job-log tr[data-state="training"]')`, "the log lists the steps")
	job, err := r.cp.Client.RetrainJob(t.Context(), id)
	require.NoError(t, err)
	assert.Equal(t, "manual:ops-alice", job.Trigger)

	// A viewer sees the job but no action, and is refused when it posts.
	vw := b.tab("viewer")
	vw.login(r.viewer)
	vw.open("/ui/retrain/jobs/" + id)
	vw.waitFor(`document.getElementById('job-state')`, "the viewer sees the job")
	var actions, status int
	vw.eval(`document.querySelectorAll('[data-action]').length`, &actions)
	assert.Zero(t, actions, "a viewer sees no cancel action")
	vw.eval(fmt.Sprintf(`(async () => {
		const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value});
		const res = await fetch('/ui/retrain/jobs/%s/cancel', {method: 'POST', body, redirect: 'manual'});
		return res.status;
	})()`, id), &status, chromedp.EvalAwaitPromise)
	assert.Equal(t, 403, status, "a viewer's cancel is refused")
	job, err = r.cp.Client.RetrainJob(t.Context(), id)
	require.NoError(t, err)
	assert.Equal(t, api.RetrainTraining, job.State, "the viewer's cancel changed nothing")

	// The operator cancels it.
	op.screenshot("retrain-job-running", 1280, 800)
	op.click(`a[data-action="cancel"]`, "#confirm")
	op.click("#confirm", "#done")
	op.waitFor(`document.getElementById('job-state').textContent.trim() === 'failed'`, "the cancelled job fails")
	assert.Contains(t, op.text(`document.getElementById('job-reason')`), "cancelled by ops-alice")
	var cancelActions int
	op.eval(`document.querySelectorAll('[data-action]').length`, &cancelActions)
	assert.Zero(t, cancelActions, "an ended job has no cancel action")

	// A retrain on the builtin trainer: a better candidate, rolled out.
	r.setPolicy(api.TrainerBuiltinFraud)
	op.open("/ui/models/fraud/retrain")
	op.click(`a[data-action="start"]`, "#confirm")
	op.click("#confirm", "#job-state")
	op.waitFor(`document.getElementById('job-state').textContent.trim() === 'rolling-out'`, "the job publishes a better candidate and rolls it out")
	assert.Equal(t, "better", op.text(`document.getElementById('job-verdict')`))
	var candidate, rollout string
	op.eval(`document.querySelector('#job-candidate').firstChild.textContent.replace(/[\s·]+$/, '').trim()`, &candidate)
	op.eval(`document.querySelector('#job-candidate a').getAttribute('href')`, &rollout)
	require.NotEmpty(t, candidate)
	op.screenshot("retrain-job", 1280, 800)
	op.click(`.crumbs a[href="/ui/models/fraud/retrain"]`, "#lineage")
	op.waitFor(fmt.Sprintf(`document.querySelector('#lineage tr[data-version=%q][data-parent="v1"]')`, candidate), "the lineage shows the candidate from v1")
	assert.Contains(t, op.text(fmt.Sprintf(`document.querySelector('#lineage tr[data-version=%q]')`, candidate)), "manual:ops-alice")
	op.screenshot("retrain", 1280, 800)

	// The rollout's shadow panel fills as labelled traffic arrives.
	op.open(rollout)
	op.waitFor(`document.querySelector('section.shadow')`, "the rollout has a shadow stage")
	deadline := time.Now().Add(browserWait)
	for {
		r.traffic(40)
		var ok bool
		// The gate needs 200 labelled rows scored by both: the figures
		// are final once the stage passed on them.
		op.eval(`(function () {
			const l = document.querySelector('.shadow-figures .labelled');
			const c = document.querySelector('.shadow-sites tr[data-site="b"] .challenger-accuracy');
			return !!l && parseInt(l.textContent, 10) >= 200 && !!document.querySelector('section.shadow h3 .state-passed') && !!c && c.textContent.trim() !== '—';
		})()`, &ok)
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shadow panel never showed figures; page: %s", op.text(`document.querySelector('main')`))
		}
	}
	assert.Contains(t, op.text(`document.querySelector('section.shadow h3')`), "challenger "+candidate+" in shadow of v1")
	assert.Regexp(t, `^[0-9.]+ / [0-9.]+ ms$`, op.text(`document.querySelector('.shadow-figures .challenger-latency')`), "the challenger's inference time")
	op.screenshot("rollout-shadow", 1280, 800)
}
