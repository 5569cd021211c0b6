package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// pageBudget is what a console page's handler may take with the
// benchmark's fleet (the bound).
const pageBudget = 300 * time.Millisecond

// BenchmarkConsolePages times every console page's handler (through the
// real listener, logged in) on a control plane holding 10,000 devices
// (online, reporting a model), 100 rollouts (99 finished, one running) and
// monitoring reports from 1,000 devices. Each sub-benchmark fails when its
// mean exceeds pageBudget.
//
//	go test ./controlplane -run '^$' -bench BenchmarkConsolePages -benchtime 20x
func BenchmarkConsolePages(b *testing.B) {
	const (
		devices  = 10_000
		groups   = 100
		rollouts = 100
	)
	ts := newTestServer(b, nil)
	in := ts.internals()
	ctx := context.Background()

	// Devices: registered from 16 goroutines (each registration is a
	// synced write), then online and reporting fraud@1.0.0 active.
	var wg sync.WaitGroup
	ids := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range ids {
				_, err := ts.RegisterDevice(fmt.Sprintf("dev-%05d", i), map[string]string{
					"site": fmt.Sprintf("site-%d", i%4), "group": fmt.Sprintf("g%02d", i%groups), "hw": []string{"arm64", "x86"}[i%2],
				})
				if err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range devices {
		ids <- i
	}
	close(ids)
	wg.Wait()
	require.False(b, b.Failed())
	for i := range devices {
		id := fmt.Sprintf("dev-%05d", i)
		pres, err := proto.Marshal(&efpb.Presence{DeviceId: id, Online: true, AgentVersion: "1.4.2"})
		require.NoError(b, err)
		in.OnPresence(in.Scheme.Presence(id), pres)
		st, err := proto.Marshal(&efpb.StatusEvent{DeviceId: id, ModelName: "fraud", ModelVersion: "1.0.0", ActiveVersion: "1.0.0",
			State: efpb.ModelState_MODEL_STATE_ACTIVE, Seq: 1, Generation: 1})
		require.NoError(b, err)
		in.OnStatus(in.Scheme.Status(id), st)
	}

	// Models and rollouts: each rollout takes a canary of five devices of
	// its group; all but the last are aborted.
	ts.mustUpload("fraud", "1.0.0", fleettest.TrainedModel(b, 1))
	ts.mustUpload("fraud", "2.0.0", fleettest.TrainedModel(b, 2))
	var last *api.Rollout
	maxFailures := 0.1
	for g := range rollouts {
		spec := api.RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: fmt.Sprintf("group=g%02d", g%groups),
			Stages: []api.RolloutStage{{Canary: 5}, {Percent: 100}}, Gates: api.Gates{MaxFailureRate: &maxFailures}}
		if g == rollouts-1 {
			// The running one scores 2.0.0 in shadow on a quarter of
			// the fleet: its page has the shadow panel.
			spec.Selector = "site=site-1"
			spec.Stages = []api.RolloutStage{{Name: "shadow", Percent: 100, Shadow: true}, {Percent: 100}}
		}
		ro, err := ts.CreateRollout(ctx, spec, "bench")
		require.NoError(b, err)
		if g < rollouts-1 {
			_, err = ts.RolloutAction(ctx, ro.ID, api.ActionAbort, api.RollbackRequest{}, "bench")
			require.NoError(b, err)
		}
		last = ro
	}

	// Monitoring: one report from each of 1,000 devices.
	names := fraud.FeatureNames()
	for i := range 1000 {
		r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: "1.0.0", Rows: 300, Labelled: 200, Correct: 180, Binary: true,
			PredictionCounts: make([]uint64, 10), WindowEndUnixMs: time.Now().UnixMilli()}
		for _, n := range names {
			r.Features = append(r.Features, &efpb.FeatureSketch{Name: n, Counts: make([]uint64, 10)})
		}
		_, err := ts.Monitor().Ingest(fmt.Sprintf("dev-%05d", i), 1, &efpb.Telemetry{Seq: 1, Monitoring: []*efpb.MonitorReport{r}}, nil)
		require.NoError(b, err)
		if i%4 == 1 { // site-1: the shadow stage's devices
			sr := &efpb.ShadowReport{ModelName: "fraud", ChampionVersion: "1.0.0", ChallengerVersion: "2.0.0", Ready: true,
				Rows: 300, Agree: 280, Labelled: 200, ChampionCorrect: 170, ChallengerCorrect: 185, WindowEndUnixMs: time.Now().UnixMilli()}
			_, err = ts.Monitor().Ingest(fmt.Sprintf("dev-%05d", i), 2, &efpb.Telemetry{Seq: 2, Shadow: []*efpb.ShadowReport{sr}}, nil)
			require.NoError(b, err)
		}
	}

	// Retraining: a policy and a job (which fails: nothing was captured).
	_, err := ts.Client.SetRetrainPolicy(ctx, "fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud})
	require.NoError(b, err)
	job, err := ts.Client.Retrain(ctx, "fraud", api.RetrainRequest{Reason: "bench"})
	require.NoError(b, err)

	hc := consoleLogin(b, ts.APIURL(), ts.Token)
	resp, err := hc.Get(ts.APIURL() + "/ui/rollouts/" + last.ID)
	require.NoError(b, err)
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(b, err)
	require.Contains(b, string(page), `<tr data-site="site-1">`, "the running rollout's page has the shadow panel by site")
	pages := []struct{ name, path string }{
		{"fleet", "/ui/fleet"},
		{"fleet-page-100", "/ui/fleet?page=100"},
		{"fleet-filtered", "/ui/fleet?selector=" + url.QueryEscape("hw=arm64,group!=g01") + "&site=site-2&state=online&version=" + url.QueryEscape("fraud@1.0.0")},
		{"fleet-search", "/ui/fleet?q=dev-09"},
		{"fleet-live-304", "/ui/fleet?live=1"},
		{"device", "/ui/devices/dev-00042"},
		{"models", "/ui/models"},
		{"rollouts", "/ui/rollouts"},
		{"rollout", "/ui/rollouts/" + last.ID},
		{"rollout-live", "/ui/rollouts/" + last.ID + "?live=1"},
		{"monitoring", "/ui/monitoring"},
		{"monitoring-by-label", "/ui/monitoring?by=label%3Ahw&range=24h"},
		{"audit", "/ui/audit"},
		{"audit-filtered", "/ui/audit?action=rollout.&actor=bench"},
		{"retrain", "/ui/retrain"},
		{"retrain-model", "/ui/models/fraud/retrain"},
		{"retrain-job", "/ui/retrain/jobs/" + job.ID},
	}
	for _, p := range pages {
		b.Run(p.name, func(b *testing.B) {
			etag := ""
			if strings.HasSuffix(p.name, "-304") {
				_, h := consoleGet(b, hc, ts.APIURL()+p.path, "")
				etag = h.Get("ETag")
			}
			for b.Loop() {
				code, _ := consoleGet(b, hc, ts.APIURL()+p.path, etag)
				if code != http.StatusOK && code != http.StatusNotModified {
					b.Fatalf("GET %s: %d", p.path, code)
				}
			}
			mean := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(mean.Microseconds())/1000, "ms/page")
			if mean > pageBudget {
				b.Errorf("GET %s took %v on average; the budget is %v", p.path, mean, pageBudget)
			}
		})
	}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// consoleLogin returns an HTTP client logged in to the console with token.
func consoleLogin(tb testing.TB, base, token string) *http.Client {
	tb.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(tb, err)
	hc := &http.Client{Jar: jar, Timeout: time.Minute}
	resp, err := hc.Get(base + "/ui/login")
	require.NoError(tb, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(tb, err)
	m := csrfField.FindSubmatch(body)
	require.NotNil(tb, m)
	resp, err = hc.PostForm(base+"/ui/login", url.Values{"token": {token}, "csrf": {string(m[1])}})
	require.NoError(tb, err)
	resp.Body.Close()
	require.Equal(tb, http.StatusOK, resp.StatusCode)
	require.Equal(tb, "/ui/fleet", resp.Request.URL.Path, "logged in")
	return hc
}

func consoleGet(tb testing.TB, hc *http.Client, u, etag string) (int, http.Header) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(tb, err)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := hc.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(tb, err)
	return resp.StatusCode, resp.Header
}
