package agent_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// hookReceiver is the retrain pipeline's end of the webhook.
type hookReceiver struct {
	secret []byte
	mu     sync.Mutex
	alerts []monitor.Alert
	badSig int
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Header.Get(monitor.SignatureHeader) != monitor.Sign(h.secret, b) {
		h.badSig++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var al monitor.Alert
	if json.Unmarshal(b, &al) == nil {
		h.alerts = append(h.alerts, al)
	}
}

func (h *hookReceiver) received() []monitor.Alert {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]monitor.Alert(nil), h.alerts...)
}

func startHookReceiver(t *testing.T, h *hookReceiver) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// startMonitoredFleet is startFleet with monitoring tuned for a test: fast
// evaluation, drift and accuracy rules, and a webhook.
func startMonitoredFleet(t *testing.T, hookURL string, secret []byte) *fleet {
	t.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	f := &fleet{t: t, rt: rt, dir: t.TempDir()}
	f.cp = fleettest.StartControlPlane(t, rt, func(o *controlplane.Options) {
		o.DataDir = filepath.Join(f.dir, "cp")
		o.Monitor = monitor.Config{
			Interval:      100 * time.Millisecond,
			Rules:         monitor.Rules{Window: 10 * time.Minute, MaxPSI: 0.25, MinRows: 200, MinAccuracy: 0.5, MinLabels: 50},
			WebhookURL:    hookURL,
			WebhookSecret: secret,
		}
	})
	f.token = f.cp.Token
	return f
}

// feed sends n transactions from g in batches through a's inference API and
// returns the labels (1 = fraud) keyed by inference id and row.
func feed(t *testing.T, a *agent.Agent, g *fraud.Generator, n, batch int) []oip.Label {
	t.Helper()
	return fleettest.InferFraud(t, a.InferenceAddr(), g, n, batch)
}

func TestMonitoringDriftAtOneSiteRaisesAlertAndWebhook(t *testing.T) {
	secret := []byte("retrain-secret")
	hook := &hookReceiver{secret: secret}
	f := startMonitoredFleet(t, startHookReceiver(t, hook), secret)
	north := []*agent.Agent{f.addAgent("n-1", "site=north"), f.addAgent("n-2", "site=north")}
	south := []*agent.Agent{f.addAgent("s-1", "site=south")}

	v1 := f.train("fraud-v1.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", v1)
	f.cli("deploy", "fraud@1.0.0", "--selector", "site!=none")
	f.waitReported("fraud", "1.0.0", "n-1", "n-2", "s-1")

	// North sees the training distribution; south's transactions have
	// drifted: bigger amounts, farther away, more foreign, and a new fraud
	// pattern (card testing).
	for i, a := range north {
		g, err := fraud.NewGenerator(uint64(100+i), fraud.Params{})
		require.NoError(t, err)
		labels := feed(t, a, g, 400, 50)
		res, err := a.Feedback(context.Background(), "fraud", labels)
		require.NoError(t, err)
		assert.Equal(t, 400, res.Accepted)
	}
	g, err := fraud.NewGenerator(200, fraud.Params{AmountScale: 6, DistanceScale: 8, ForeignRate: 0.6, HourShift: 9, Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	labels := feed(t, south[0], g, 400, 50)
	c := &oip.Client{BaseURL: "http://" + south[0].InferenceAddr()}
	res, err := c.Feedback(context.Background(), "fraud", &oip.FeedbackRequest{Labels: labels})
	require.NoError(t, err)
	assert.Equal(t, 400, res.Accepted)

	// The control plane shows drift at south only.
	var got *api.ModelMetrics
	require.Eventually(t, func() bool {
		got, err = f.cp.Monitor().Query(monitor.Query{Model: "fraud", Version: "1.0.0", By: monitor.BySite, To: time.Now().Add(time.Minute)})
		return err == nil && got.Total.Rows == 1200 && got.Total.Labelled == 1200
	}, 30*time.Second, 50*time.Millisecond, "every row and label reaches the control plane: %+v", got)
	require.Len(t, got.Groups, 2)
	n, s := got.Groups[0], got.Groups[1]
	require.Equal(t, "north", n.Key)
	require.Equal(t, "south", s.Key)
	t.Logf("north: max PSI %.3f (%s), accuracy %.3f; south: max PSI %.3f (%s), accuracy %.3f",
		n.MaxPSI, n.MaxPSIFeature, *n.Accuracy, s.MaxPSI, s.MaxPSIFeature, *s.Accuracy)
	assert.Less(t, n.MaxPSI, 0.1, "north matches the reference")
	assert.Greater(t, s.MaxPSI, 0.25, "south drifted")
	assert.Greater(t, *n.Accuracy, 0.85)

	// The alert: audited, and the retrain webhook called, for south only.
	require.Eventually(t, func() bool {
		for _, al := range hook.received() {
			if al.Rule == "feature_drift" {
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond, "webhook never called")
	for _, al := range hook.received() {
		assert.Equal(t, "south", al.Site, "alert %+v", al)
		assert.Equal(t, "fraud", al.Model)
	}
	hook.mu.Lock()
	assert.Zero(t, hook.badSig)
	hook.mu.Unlock()
	entries := f.cli("audit", "--action", "monitor.")
	assert.Contains(t, entries, "monitor.alert.feature_drift")

	// The CLI table and sparklines.
	out := f.cli("metrics", "fraud@1.0.0", "--by", "site")
	t.Logf("edgefleet metrics fraud@1.0.0 --by site\n%s", out)
	assert.Regexp(t, `north\s+2\s+800\s+800`, out)
	assert.Regexp(t, `south\s+1\s+400\s+400`, out)
	assert.Contains(t, out, "max PSI")

	// Prometheus gauges.
	require.Eventually(t, func() bool {
		return scrapeContains(t, f, `edgefleet_model_site_max_psi{model="fraud",site="south",version="1.0.0"}`)
	}, 10*time.Second, 50*time.Millisecond)
	assert.True(t, scrapeContains(t, f, "edgefleet_monitor_reports_ingested_total"))
	assert.True(t, scrapeContains(t, f, `edgefleet_model_accuracy{model="fraud",version="1.0.0"}`))

	// The exposition passes promtool's lint when promtool is installed
	// (Debian package prometheus; CI has it).
	if path, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(path, "check", "metrics")
		cmd.Stdin = strings.NewReader(scrape(t, f))
		out, err := cmd.CombinedOutput()
		assert.NoError(t, err, "promtool check metrics: %s", out)
	} else if os.Getenv("CI") != "" {
		t.Error("promtool is not installed, and CI must lint the exposition (.ci/run installs prometheus)")
	}
}

func scrapeContains(t *testing.T, f *fleet, s string) bool {
	t.Helper()
	return strings.Contains(scrape(t, f), s)
}

func scrape(t *testing.T, f *fleet) string {
	t.Helper()
	req, err := http.NewRequest("GET", f.cp.APIURL()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// TestMonitoringReportsSurviveControlPlaneOutage stops the control plane
// (and with it the embedded broker) while the agent keeps inferring, then
// restarts it on the same DataDir and port: every report arrives once.
func TestMonitoringReportsSurviveControlPlaneOutage(t *testing.T) {
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	mqttAddr := ln.Addr().String()
	require.NoError(t, ln.Close())

	startCP := func() *fleettest.ControlPlane {
		return fleettest.StartControlPlane(t, rt, func(o *controlplane.Options) {
			o.DataDir, o.MQTTListen = filepath.Join(dir, "cp"), mqttAddr // the same broker address again
		})
	}
	cp := startCP()
	f := &fleet{t: t, rt: rt, dir: dir, cp: cp, token: cp.Token}
	a := f.addAgent("d-1", "site=x")
	v1 := f.train("fraud-v1.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", v1)
	f.cli("deploy", "fraud@1.0.0", "--device", "d-1")
	f.waitReported("fraud", "1.0.0", "d-1")

	g, err := fraud.NewGenerator(3, fraud.Params{})
	require.NoError(t, err)
	feed(t, a, g, 100, 10)
	require.Eventually(t, func() bool {
		r, err := cp.Monitor().Query(monitor.Query{Model: "fraud", Version: "1.0.0", To: time.Now().Add(time.Minute)})
		return err == nil && r.Total.Rows == 100
	}, 20*time.Second, 50*time.Millisecond)

	cp.Stop()     // the broker is gone
	for range 5 { // several heartbeats' worth of reports queue on the agent
		feed(t, a, g, 40, 10)
	}
	require.Eventually(t, func() bool { return a.QueuedReports() >= 2 }, 20*time.Second, 50*time.Millisecond,
		"reports queue while the broker is unreachable")

	cp = startCP()
	require.Eventually(t, func() bool {
		r, err := cp.Monitor().Query(monitor.Query{Model: "fraud", Version: "1.0.0", To: time.Now().Add(time.Minute)})
		return err == nil && r.Total.Rows == 300 && a.QueuedReports() == 0
	}, 30*time.Second, 50*time.Millisecond, "every queued report arrives after the restart")
	r, err := cp.Monitor().Query(monitor.Query{Model: "fraud", Version: "1.0.0", To: time.Now().Add(time.Minute)})
	require.NoError(t, err)
	assert.EqualValues(t, 300, r.Total.Rows, "each report counted once")
	assert.Zero(t, a.ReportsDropped())
}
