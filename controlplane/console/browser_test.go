package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// EnvScreenshots names a directory: the browser test then saves
// screenshots of the main pages there (make screenshots: docs/screenshots).
const EnvScreenshots = "EDGEFLEET_SCREENSHOTS"

// Waits in the browser are polls bounded far above their idle time (each
// takes well under a few seconds on an idle machine): a bound guards
// against a hang, it is not a performance check (docs/testing.md).
const (
	browserWait = 90 * time.Second
	pollEvery   = 100 * time.Millisecond
)

// browser is one headless Chromium for the test.
type browser struct {
	t    *testing.T
	root context.Context
	base string
}

func startBrowser(t *testing.T, base string) *browser {
	t.Helper()
	bin := testkit.ChromiumBin(t)
	// Its own TMPDIR too: Chromium puts its singleton socket in a
	// directory of its own there, which it leaves behind.
	opts := []chromedp.ExecAllocatorOption{chromedp.ExecPath(bin), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 800),
		chromedp.Env("TMPDIR=" + t.TempDir())}
	for _, f := range testkit.ChromiumFlags {
		opts = append(opts, chromedp.Flag(strings.TrimPrefix(f, "--"), true))
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelRoot()
		cancelAlloc() // waits for the browser process to exit
	})
	// The first run on a context starts the browser and ties its life to
	// that context: no timeout here.
	require.NoError(t, chromedp.Do(root), "start chromium %s", bin)
	return &browser{t: t, root: root, base: base}
}

// tab is a page in its own browser context: its own cookies, so two tabs
// are two people.
type tab struct {
	t    *testing.T
	ctx  context.Context
	base string
	name string
}

func (b *browser) tab(name string) *tab {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.root, chromedp.WithNewBrowserContext())
	b.t.Cleanup(cancel)
	require.NoError(b.t, chromedp.Do(ctx), "open a tab") // creates the tab, tied to ctx
	return &tab{t: b.t, ctx: ctx, base: b.base, name: name}
}

func (tb *tab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	require.NoError(tb.t, chromedp.Do(ctx, actions...), "%s: %s", tb.name, what)
}

func (tb *tab) eval(expr string, out any, opts ...chromedp.EvaluateOption) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](expr, opts...))
	require.NoError(tb.t, err, "%s: evaluate %s", tb.name, expr)
	require.NoError(tb.t, json.Unmarshal(raw, out), "%s: evaluate %s = %s", tb.name, expr, raw)
}

func (tb *tab) text(expr string) string {
	tb.t.Helper()
	var s string
	tb.eval(`(function(){ const e = `+expr+`; return e ? e.textContent.replace(/\s+/g, ' ').trim() : ''; })()`, &s)
	return s
}

// waitFor polls a JavaScript condition in the page until it holds.
func (tb *tab) waitFor(cond, what string) {
	tb.t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		var ok bool
		ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](`!!(`+cond+`)`))
		cancel()
		if err == nil && json.Unmarshal(raw, &ok) == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("%s: %s never held (%s); page text: %s", tb.name, what, cond, tb.text(`document.querySelector('main')`))
		}
		time.Sleep(pollEvery)
	}
}

func (tb *tab) open(path string) {
	tb.t.Helper()
	tb.do("open "+path, chromedp.Navigate(tb.base+path))
}

// click clicks sel and, when the click loads another page, waits for
// next (a CSS selector on it).
func (tb *tab) click(sel, next string) {
	tb.t.Helper()
	tb.do("wait for "+sel, chromedp.WaitVisible(chromedp.CSS(sel)))
	// A live region may replace the element between finding it and
	// clicking it: find it again.
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
		err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel)))
		cancel()
		if err == nil {
			break
		}
		if attempt == 10 {
			tb.t.Fatalf("%s: click %s: %v", tb.name, sel, err)
		}
		time.Sleep(pollEvery)
	}
	if next != "" {
		tb.do("wait for "+next, chromedp.WaitVisible(chromedp.CSS(next)))
	}
}

func (tb *tab) login(token string) {
	tb.t.Helper()
	tb.open("/ui/")
	tb.do("log in",
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#devices")),
	)
}

// screenshot saves the page as name.png when EnvScreenshots names a
// directory.
func (tb *tab) screenshot(name string, width, height int64) {
	tb.t.Helper()
	dir := os.Getenv(EnvScreenshots)
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(tb.ctx, browserWait)
	defer cancel()
	require.NoError(tb.t, chromedp.Do(ctx, chromedp.EmulateViewport(width, height)))
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(tb.t, err)
	require.NoError(tb.t, chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)))
	require.NoError(tb.t, os.MkdirAll(dir, 0o755))
	require.NoError(tb.t, os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644))
}

// fleet is the browser test's fleet: four devices at two sites, one of
// them (the canary, n-1) registered but started only when the test says.
type fleet struct {
	t      *testing.T
	e      *env
	agents map[string]*agent.Agent
	canary agent.Options
}

var fleetLabels = map[string]map[string]string{
	"n-1": {"site": "north", "fleet": "demo", "role": "gateway"},
	"n-2": {"site": "north", "fleet": "demo"},
	"s-1": {"site": "south", "fleet": "demo"},
	"s-2": {"site": "south", "fleet": "demo"},
}

func (f *fleet) startCanary() {
	f.agents["n-1"] = fleettest.RunAgent(f.t, f.canary)
}

func (f *fleet) waitActive(version string, ids ...string) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		for _, id := range ids {
			d, err := f.e.cp.Device(id)
			if err != nil || d.Reported["fraud"] == nil || d.Reported["fraud"].State != api.ModelActive || d.Reported["fraud"].ActiveVersion != version {
				return false
			}
		}
		return true
	}, browserWait, 50*time.Millisecond, "devices %v never served fraud@%s", ids, version)
}

// feed sends n transactions from g through a's inference API and their
// true labels through its feedback API.
func feed(t *testing.T, a *agent.Agent, g *fraud.Generator, n, batch int) {
	t.Helper()
	labels := fleettest.InferFraud(t, a.InferenceAddr(), g, n, batch)
	res, err := a.Feedback(context.Background(), "fraud", labels)
	require.NoError(t, err)
	require.Equal(t, n, res.Accepted)
}

// TestConsoleInBrowser drives the console in headless Chromium against a
// real control plane and real agents: an operator logs in, finds a device
// by label, watches a staged rollout advance without reloading, pauses and
// resumes it; a viewer is refused; a drift alert for one site appears on
// the monitoring page; the operator logs out.
func TestConsoleInBrowser(t *testing.T) {
	testkit.ChromiumBin(t) // skip before starting anything when there is no browser
	e := startEnv(t, func(o *controlplane.Options) {
		o.RolloutInterval = 50 * time.Millisecond
		o.Monitor = monitor.Config{
			Interval: 100 * time.Millisecond,
			Rules:    monitor.Rules{Window: 10 * time.Minute, MaxPSI: 0.25, MinRows: 200, MinAccuracy: 0.5, MinLabels: 50},
		}
		o.Console.PollInterval = 200 * time.Millisecond
	})
	f := &fleet{t: t, e: e, agents: map[string]*agent.Agent{}}
	for _, id := range []string{"n-2", "s-1", "s-2"} {
		f.agents[id] = e.cp.StartAgent(t, testRuntime, id, fleetLabels[id], nil)
	}
	creds, err := e.cp.RegisterDevice("n-1", fleetLabels["n-1"])
	require.NoError(t, err)
	f.canary = fleettest.AgentOptions(t, creds, testRuntime)
	e.upload("1.0.0", 1)
	e.upload("2.0.0", 2)
	_, err = e.cp.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "1.0.0", Selector: "fleet=demo"})
	require.NoError(t, err)
	f.waitActive("1.0.0", "n-2", "s-1", "s-2")

	b := startBrowser(t, e.cp.APIURL())
	op := b.tab("operator")

	// Log in, and find the gateway by its label.
	op.login(e.operator)
	assert.Contains(t, op.text(`document.getElementById('whoami')`), "ops-alice (operator)")
	op.do("filter by label",
		chromedp.SendKeys(chromedp.CSS("#selector"), "role=gateway"),
		chromedp.Click(chromedp.CSS("#apply")),
	)
	op.waitFor(`document.querySelectorAll('#devices tbody tr[data-device]').length === 1 && document.querySelector('#devices tr[data-device="n-1"]')`, "the fleet shows only n-1")
	op.screenshot("fleet", 1280, 800)
	op.click(`#devices tr[data-device="n-1"] a`, "#device-id")
	assert.Equal(t, "n-1", op.text(`document.getElementById('device-id')`))
	assert.Contains(t, op.text(`document.getElementById('device-online')`), "offline")

	// A staged rollout: stage 1 is the gateway alone, which is offline, so
	// the rollout waits there until the test starts its agent; stage 2
	// bakes for an hour (it is promoted by hand); stage 3 takes the rest.
	opClient := e.cp.WithToken(e.operator)
	ro, err := opClient.CreateRollout(context.Background(), api.RolloutSpec{
		Model: "fraud", Version: "2.0.0", Selector: "fleet=demo", AutoPromote: true,
		Bake: api.Duration(200 * time.Millisecond),
		Stages: []api.RolloutStage{
			{Name: "gateway", Devices: []string{"n-1"}},
			{Name: "half", Percent: 50, Bake: api.Duration(time.Hour)},
			{Name: "all", Percent: 100},
		},
		Gates: api.Gates{MaxFailureRate: ptr(0.5)},
	})
	require.NoError(t, err)
	op.open("/ui/rollouts/" + ro.ID)
	op.waitFor(`document.querySelector('#stages tr[data-stage="1"].current')`, "stage 1 is current")
	op.eval(`document.body.setAttribute('data-probe', 'not reloaded'), true`, new(bool))

	// The gateway comes online: the page follows the rollout live.
	f.startCanary()
	op.waitFor(`document.querySelector('#device-online, #live') && document.querySelector('#stages tr[data-stage="2"].current') && document.querySelector('#stages tr[data-stage="2"] .active-count').textContent.trim() === '1' && document.getElementById('rollout-active').textContent.trim() === '2'`,
		"stage 2 current with both of its devices active")
	var probe string
	op.eval(`document.body.getAttribute('data-probe')`, &probe)
	assert.Equal(t, "not reloaded", probe, "the rollout advanced on the page without a reload")
	var updated string
	op.eval(`document.getElementById('live').getAttribute('data-updated') || ''`, &updated)
	assert.NotEmpty(t, updated, "the live region was replaced by a poll")
	assert.Contains(t, op.text(`document.getElementById('decisions')`), "rollout.stage_passed")
	op.screenshot("rollout", 1280, 800)
	op.screenshot("rollout-tablet", 820, 1180)

	// A viewer sees no action and is refused when it tries anyway.
	vw := b.tab("viewer")
	vw.login(e.viewer)
	vw.open("/ui/rollouts/" + ro.ID)
	vw.waitFor(`document.querySelector('#stages')`, "the viewer sees the rollout")
	var actions int
	vw.eval(`document.querySelectorAll('[data-action]').length`, &actions)
	assert.Zero(t, actions, "a viewer sees no action buttons")
	vw.open("/ui/rollouts/" + ro.ID + "/pause")
	vw.waitFor(`document.getElementById('error-message')`, "the confirmation page refuses the viewer")
	assert.Contains(t, vw.text(`document.getElementById('error-message')`), "has role viewer")
	vw.open("/ui/rollouts/" + ro.ID)
	var status int
	vw.eval(fmt.Sprintf(`(async () => {
		const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value});
		const res = await fetch('/ui/rollouts/%s/pause', {method: 'POST', body, redirect: 'manual'});
		return res.status;
	})()`, ro.ID), &status, chromedp.EvalAwaitPromise)
	assert.Equal(t, 403, status, "a viewer's pause is refused")
	st, err := e.cp.Rollout(ro.ID, false)
	require.NoError(t, err)
	assert.Equal(t, api.RolloutRunning, st.State, "the viewer's pause changed nothing")

	// The operator pauses and resumes, each after a confirmation.
	op.click(`a[data-action="pause"]`, "#confirm")
	op.screenshot("confirm", 1280, 800)
	op.click("#confirm", "#done")
	op.waitFor(`document.getElementById('rollout-state').textContent.trim() === 'paused'`, "the rollout is paused")
	assert.Contains(t, op.text(`document.getElementById('rollout-reason')`), "paused by ops-alice")
	op.click(`a[data-action="resume"]`, "#confirm")
	op.click("#confirm", "#done")
	op.waitFor(`document.getElementById('rollout-state').textContent.trim() === 'running'`, "the rollout runs again")
	op.click(`a[data-action="promote"]`, "#confirm")
	op.click("#confirm", "#done")
	op.waitFor(`document.getElementById('rollout-state').textContent.trim() === 'completed' && document.getElementById('rollout-active').textContent.trim() === '4'`,
		"the rollout completes with all four devices active")
	f.waitActive("2.0.0", "n-1", "n-2", "s-1", "s-2")

	// Both refusals and actions are in the audit log as API calls made
	// through the console.
	entries, err := e.cp.Audit(api.AuditQuery{Action: "api.POST " + api.PathRolloutAction(api.ActionPause)})
	require.NoError(t, err)
	var refused, paused bool
	for _, en := range entries {
		if en.Details["via"] != "console" {
			continue
		}
		refused = refused || en.Actor == "viewer-bob" && strings.HasPrefix(en.Result, "HTTP 403")
		paused = paused || en.Actor == "ops-alice" && en.Result == "ok"
	}
	assert.True(t, refused, "the viewer's refused pause is audited: %+v", entries)
	assert.True(t, paused, "the operator's pause is audited: %+v", entries)

	// Drift at one site: south's transactions change, north's do not.
	op.open("/ui/monitoring")
	op.waitFor(`document.getElementById('no-alerts')`, "no alert yet")
	for i, id := range []string{"n-1", "n-2"} {
		g, err := fraud.NewGenerator(uint64(100+i), fraud.Params{})
		require.NoError(t, err)
		feed(t, f.agents[id], g, 400, 50)
	}
	for i, id := range []string{"s-1", "s-2"} {
		g, err := fraud.NewGenerator(uint64(200+i), fraud.Params{AmountScale: 6, DistanceScale: 8, ForeignRate: 0.6, HourShift: 9, Pattern: fraud.PatternCardTesting})
		require.NoError(t, err)
		feed(t, f.agents[id], g, 400, 50)
	}
	op.waitFor(`document.querySelector('#alerts tr[data-rule="feature_drift"][data-site="south"]')`, "a drift alert for south appears")
	var northAlerts int
	op.eval(`document.querySelectorAll('#alerts tr[data-site="north"]').length`, &northAlerts)
	assert.Zero(t, northAlerts, "north did not drift")
	op.waitFor(`document.querySelector('#chart-drift g[data-series="south"] circle') && document.querySelector('#chart-drift g[data-series="north"] circle') && document.querySelector('#chart-drift .threshold')`,
		"the drift chart has both sites and the threshold")
	op.screenshot("monitoring", 1280, 800)

	// The other pages, for the screenshots.
	if os.Getenv(EnvScreenshots) != "" {
		op.open("/ui/devices/s-1")
		op.waitFor(`document.getElementById('device-recent')`, "device page")
		op.screenshot("device", 1280, 800)
		op.open("/ui/models")
		op.screenshot("models", 1280, 800)
		op.open("/ui/rollouts")
		op.screenshot("rollouts", 1280, 800)
		op.open("/ui/audit?action=rollout.")
		op.screenshot("audit", 1280, 800)
		op.open("/ui/fleet")
		op.screenshot("fleet-all", 1280, 800)
		op.screenshot("fleet-tablet", 820, 1180)
	}

	// Log out: the session is gone, the pages ask for a login again.
	op.open("/ui/fleet")
	op.click("#logout", "#login-form")
	op.waitFor(`document.querySelector('main').textContent.includes('You are logged out.')`, "the login page says the operator logged out")
	op.screenshot("login", 1280, 800)
	op.open("/ui/fleet")
	op.waitFor(`document.getElementById('login-form')`, "a logged-out browser is sent to the login")
}

func ptr[T any](v T) *T { return &v }
