package monitor

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var reference = []*efpb.FeatureStats{
	{Name: "amount", BinEdges: []float64{10, 100}, BinFractions: []float64{0.25, 0.5, 0.25}},
}

var sites = map[string]string{"a1": "alpha", "a2": "alpha", "b1": "beta"}

type fixture struct {
	agg *Aggregator
	clk *clock
	db  *store.DB
	dir string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{clk: &clock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}, dir: t.TempDir()}
	f.open(t)
	return f
}

func (f *fixture) open(t *testing.T) {
	t.Helper()
	db, err := store.Open(store.Options{Dir: f.dir, Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	f.db = db
	f.agg, err = Open(Options{
		KV:        db.Namespace("monitor"),
		Clock:     f.clk.Now,
		Reference: func(m, v string) ([]*efpb.FeatureStats, bool) { return reference, m == "fraud" },
		Site:      func(d string) string { return sites[d] },
		Labels:    func(d string) map[string]string { return map[string]string{"hw": "hw-" + d[:1]} },
	})
	require.NoError(t, err)
}

// report is one window: amounts counted in the reference bins, labels.
func report(f *fixture, amount []uint64, labelled, correct uint64) *efpb.Telemetry {
	var rows uint64
	for _, c := range amount {
		rows += c
	}
	return &efpb.Telemetry{Monitoring: []*efpb.MonitorReport{{
		ModelName: "fraud", ModelVersion: "1.0.0",
		WindowEndUnixMs:  f.clk.Now().UnixMilli(),
		Rows:             rows,
		Features:         []*efpb.FeatureSketch{{Name: "amount", Counts: amount}},
		PredictionCounts: []uint64{rows, 0},
		LatencyEdgesUs:   []float64{100, 1000},
		LatencyCounts:    []uint64{0, rows, 0},
		Labelled:         labelled, Correct: correct, Binary: true,
		Tp: correct / 2, Tn: correct - correct/2, Fp: labelled - correct,
	}}}
}

func TestIngestDedupQueryBySite(t *testing.T) {
	f := newFixture(t)
	ingest := func(dev string, seq uint64, tm *efpb.Telemetry) bool {
		t.Helper()
		dup, err := f.agg.Ingest(dev, seq, tm, nil)
		require.NoError(t, err)
		return dup
	}
	// Alpha sees the reference distribution, beta has drifted to big amounts.
	assert.False(t, ingest("a1", 1, report(f, []uint64{25, 50, 25}, 100, 90)))
	assert.False(t, ingest("a2", 7, report(f, []uint64{25, 50, 25}, 100, 90)))
	assert.False(t, ingest("b1", 3, report(f, []uint64{5, 25, 70}, 100, 60)))
	assert.True(t, ingest("b1", 3, report(f, []uint64{5, 25, 70}, 100, 60)), "same seq again")
	assert.Equal(t, Stats{Ingested: 3, Duplicates: 1}, f.agg.Stats())
	// (An older seq never seen before is a late report, not a duplicate:
	// see TestIngestAcceptsLateReportsOnce.)

	_, err := f.agg.Ingest("b1", 9, &efpb.Telemetry{Monitoring: []*efpb.MonitorReport{{ModelName: "fraud", ModelVersion: "1.0.0", Labelled: 1, Correct: 2}}}, nil)
	assert.ErrorIs(t, err, ErrInvalidReport)

	res, err := f.agg.Query(Query{Model: "fraud", Version: "1.0.0", By: BySite, To: f.clk.Now().Add(time.Minute)})
	require.NoError(t, err)
	assert.EqualValues(t, 300, res.Total.Rows)
	assert.EqualValues(t, 3, res.Total.Devices)
	require.NotNil(t, res.Total.Accuracy)
	assert.InDelta(t, 0.8, *res.Total.Accuracy, 1e-9)
	require.Len(t, res.Groups, 2)
	alpha, beta := res.Groups[0], res.Groups[1]
	assert.Equal(t, "alpha", alpha.Key)
	assert.Equal(t, 2, alpha.Devices)
	assert.InDelta(t, 0, alpha.MaxPSI, 1e-9)
	assert.InDelta(t, 0.9, *alpha.Accuracy, 1e-9)
	// Beta: PSI computed from the fractions directly.
	ref := []float64{0.25, 0.5, 0.25}
	wantPSI := drift.PSI(ref, []float64{0.05, 0.25, 0.7})
	assert.Greater(t, wantPSI, 0.25)
	assert.InDelta(t, wantPSI, beta.MaxPSI, 1e-9)
	assert.Equal(t, "amount", beta.MaxPSIFeature)
	require.Len(t, beta.Features, 1)
	assert.InDelta(t, 0.45, beta.Features[0].KS, 1e-9) // CDFs .25/.75 vs .05/.30
	assert.InDelta(t, 0.6, *beta.Accuracy, 1e-9)
	require.NotNil(t, beta.Precision)
	assert.InDelta(t, 30.0/(30+40), *beta.Precision, 1e-9)
	assert.Greater(t, alpha.LatencyP50Ms, 0.1)
	assert.Less(t, alpha.LatencyP99Ms, 1.0+1e-9)
	assert.Len(t, res.Devices, 3)

	// VersionMetrics for the rollout gates.
	g, ok := f.agg.VersionMetrics("fraud", "1.0.0", []string{"b1"})
	require.True(t, ok)
	assert.InDelta(t, 0.6, g.Accuracy, 1e-9)
	assert.Equal(t, 100, g.Labelled)
	assert.InDelta(t, wantPSI, g.DriftScore, 1e-9)
	_, ok = f.agg.VersionMetrics("fraud", "9.9.9", nil)
	assert.False(t, ok)

	_, err = f.agg.Query(Query{Model: "fraud", Version: "1.0.0", By: "colour"})
	assert.ErrorContains(t, err, "colour")

	// Sequence numbers survive a restart: a resent report stays a duplicate.
	require.NoError(t, f.db.Close())
	f.open(t)
	dup, err := f.agg.Ingest("b1", 3, report(f, []uint64{5, 25, 70}, 100, 60), nil)
	require.NoError(t, err)
	assert.True(t, dup)
}

func TestSweepRollsUpAndExpires(t *testing.T) {
	f := newFixture(t)
	start := f.clk.Now()
	for i := range 6 { // one report every 10 minutes in one hour
		_, err := f.agg.Ingest("a1", uint64(i+1), report(f, []uint64{1, 2, 1}, 4, 3), nil)
		require.NoError(t, err)
		f.clk.Add(10 * time.Minute)
	}
	countKeys := func(prefix string) int {
		n := 0
		require.NoError(t, f.agg.opts.KV.Scan(prefix, func(string, []byte) error { n++; return nil }))
		return n
	}
	q := Query{Model: "fraud", Version: "1.0.0", From: start.Add(-time.Hour), To: start.Add(2 * time.Hour)}
	before, err := f.agg.Query(q)
	require.NoError(t, err)
	require.NoError(t, f.agg.Sweep())
	assert.Equal(t, 6, countKeys(rawPrefix), "fresh raw buckets stay")

	f.clk.Add(25 * time.Hour)
	require.NoError(t, f.agg.Sweep())
	assert.Zero(t, countKeys(rawPrefix))
	assert.Equal(t, 1, countKeys(hourlyPrefix), "six raw buckets of one hour became one rollup")
	after, err := f.agg.Query(q)
	require.NoError(t, err)
	assert.Equal(t, before.Total.Rows, after.Total.Rows)
	assert.Equal(t, before.Total.Labelled, after.Total.Labelled)
	assert.Equal(t, before.Total.Correct, after.Total.Correct)
	assert.Equal(t, before.Total.Reports, after.Total.Reports)
	assert.InDelta(t, before.Total.MaxPSI, after.Total.MaxPSI, 1e-12)

	f.clk.Add(30 * 24 * time.Hour)
	require.NoError(t, f.agg.Sweep())
	assert.Zero(t, countKeys(hourlyPrefix), "rollups older than the retention are deleted")
}

// hookServer is a webhook receiver on 127.0.0.1 that fails the first
// failFirst requests.
type hookServer struct {
	mu        sync.Mutex
	failFirst int
	calls     int
	bodies    [][]byte
	sigs      []string
}

func (h *hookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.calls <= h.failFirst {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	h.bodies = append(h.bodies, b)
	h.sigs = append(h.sigs, r.Header.Get(SignatureHeader))
}

func startHook(t *testing.T, h *hookServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestAlertsAuditAndSignedWebhookWithRetries(t *testing.T) {
	f := newFixture(t)
	h := &hookServer{failFirst: 2}
	secret := []byte("s3cret")
	hook, err := NewWebhook(WebhookOptions{URL: startHook(t, h), Secret: secret, MinBackoff: 10 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); hook.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	log, err := audit.Open(f.db.Namespace("audit"), f.clk.Now)
	require.NoError(t, err)
	retrainer := &offered{}
	al := NewAlerter(f.agg, Rules{Window: 10 * time.Minute, MaxPSI: 0.2, MinRows: 50, MinAccuracy: 0.7, MaxAccuracyDrop: 0.1, MinLabels: 20}, log, hook, retrainer)

	// Previous window: both sites fine.
	_, err = f.agg.Ingest("a1", 1, report(f, []uint64{25, 50, 25}, 100, 90), nil)
	require.NoError(t, err)
	_, err = f.agg.Ingest("b1", 1, report(f, []uint64{25, 50, 25}, 100, 90), nil)
	require.NoError(t, err)
	f.clk.Add(10 * time.Minute)
	raised, err := al.Evaluate()
	require.NoError(t, err)
	assert.Empty(t, raised)

	// Current window: beta drifts and loses accuracy; alpha stays fine;
	// a third site has too few rows to judge.
	f.clk.Add(time.Minute)
	_, err = f.agg.Ingest("a1", 2, report(f, []uint64{25, 50, 25}, 100, 88), nil)
	require.NoError(t, err)
	_, err = f.agg.Ingest("b1", 2, report(f, []uint64{5, 25, 70}, 100, 60), nil)
	require.NoError(t, err)
	sites["c1"] = "gamma"
	defer delete(sites, "c1")
	_, err = f.agg.Ingest("c1", 1, report(f, []uint64{0, 0, 10}, 10, 1), nil)
	require.NoError(t, err)

	raised, err = al.Evaluate()
	require.NoError(t, err)
	rules := map[string]Alert{}
	for _, a := range raised {
		assert.Equal(t, "beta", a.Site, "only the drifted site alerts: %+v", a)
		rules[a.Rule] = a
	}
	require.Len(t, rules, 3, "feature_drift, low_accuracy, accuracy_drop: %+v", raised)
	assert.Equal(t, "amount", rules["feature_drift"].Feature)
	assert.InDelta(t, 0.6, rules["low_accuracy"].Value, 1e-9)
	assert.InDelta(t, 0.3, rules["accuracy_drop"].Value, 1e-9)

	assert.ElementsMatch(t, raised, retrainer.alerts, "every raised alert is offered to retraining")

	// Raised once while it holds, also by an alerter made after a
	// control-plane restart.
	again, err := al.Evaluate()
	require.NoError(t, err)
	assert.Empty(t, again)
	restarted, err := NewAlerter(f.agg, al.rules, log, nil, nil).Evaluate()
	require.NoError(t, err)
	assert.Empty(t, restarted, "alerts holding before the restart are not raised again")

	entries, err := log.List(audit.Query{Action: "monitor."})
	require.NoError(t, err)
	assert.Len(t, entries, 3)
	for _, e := range entries {
		assert.Equal(t, "fraud@1.0.0", e.Target)
		assert.Equal(t, "system", e.Actor)
	}

	require.Eventually(t, func() bool { d, _, _ := hook.Counts(); return d == 3 }, 10*time.Second, 10*time.Millisecond)
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, 5, h.calls, "two failed attempts were retried")
	for i, b := range h.bodies {
		assert.Equal(t, Sign(secret, b), h.sigs[i], "HMAC-SHA256 of the body")
		var got Alert
		require.NoError(t, json.Unmarshal(b, &got))
		assert.Equal(t, "fraud", got.Model)
		assert.Equal(t, "beta", got.Site)
	}
}

// TestAlertWindowTakesTheBucketItStartsIn: data is stored per raw bucket
// (a minute) under the bucket's start. An alert window that starts in the
// middle of a bucket judges that bucket too: with a one-minute window,
// labels of 12:00:58 that reached the control plane at 12:01:05 (a report
// a few seconds late) were never judged, and the alert never came.
func TestAlertWindowTakesTheBucketItStartsIn(t *testing.T) {
	f := newFixture(t)
	al := NewAlerter(f.agg, Rules{Window: time.Minute, MinAccuracy: 0.85, MinLabels: 20}, nil, nil, nil)
	f.clk.Add(58 * time.Second)
	_, err := f.agg.Ingest("b1", 1, report(f, []uint64{25, 50, 25}, 100, 60), nil)
	require.NoError(t, err)
	f.clk.Add(7 * time.Second)
	raised, err := al.Evaluate()
	require.NoError(t, err)
	require.Len(t, raised, 1, "the labels of 12:00:58 are judged at 12:01:05")
	assert.Equal(t, "low_accuracy", raised[0].Rule)
	assert.Equal(t, "beta", raised[0].Site)

	f.clk.Add(2 * time.Minute)
	raised, err = al.Evaluate()
	require.NoError(t, err)
	assert.Empty(t, raised, "out of the window once its bucket is")
}

func TestWebhookGivesUpAfterAttempts(t *testing.T) {
	h := &hookServer{failFirst: 100}
	hook, err := NewWebhook(WebhookOptions{URL: startHook(t, h), Secret: []byte("k"), Attempts: 3, MinBackoff: time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); hook.Run(ctx) }()
	defer func() { cancel(); <-done }()
	hook.Send(Alert{Rule: "low_accuracy"})
	require.Eventually(t, func() bool { _, f, _ := hook.Counts(); return f == 1 }, 5*time.Second, 5*time.Millisecond)
	h.mu.Lock()
	assert.Equal(t, 3, h.calls)
	h.mu.Unlock()
	_, err = NewWebhook(WebhookOptions{URL: "http://127.0.0.1:1"})
	assert.ErrorContains(t, err, "secret")
}

func TestIngestAcceptsLateReportsOnce(t *testing.T) {
	f := newFixture(t)
	for _, seq := range []uint64{5, 3, 4, 1, 2} { // out of order, as parallel ingest delivers them
		dup, err := f.agg.Ingest("a1", seq, report(f, []uint64{25, 50, 25}, 10, 9), nil)
		require.NoError(t, err)
		assert.False(t, dup, "seq %d arrives for the first time", seq)
	}
	for _, seq := range []uint64{4, 5, 1} {
		dup, err := f.agg.Ingest("a1", seq, report(f, []uint64{25, 50, 25}, 10, 9), nil)
		require.NoError(t, err)
		assert.True(t, dup, "seq %d again", seq)
	}
	assert.Equal(t, Stats{Ingested: 5, Duplicates: 3}, f.agg.Stats())

	// The window survives a restart of the aggregator.
	require.NoError(t, f.agg.Flush())
	again, err := Open(f.agg.opts)
	require.NoError(t, err)
	dup, err := again.Ingest("a1", 3, report(f, []uint64{25, 50, 25}, 10, 9), nil)
	require.NoError(t, err)
	assert.True(t, dup, "seen before the restart")
	dup, err = again.Ingest("a1", 6, report(f, []uint64{25, 50, 25}, 10, 9), nil)
	require.NoError(t, err)
	assert.False(t, dup)
}

func TestQueryByLabel(t *testing.T) {
	f := newFixture(t)
	for i, dev := range []string{"a1", "a2", "b1"} {
		_, err := f.agg.Ingest(dev, uint64(i+1), report(f, []uint64{25, 50, 25}, 100, 90), nil)
		require.NoError(t, err)
	}
	res, err := f.agg.Query(Query{Model: "fraud", Version: "1.0.0", By: "label:hw", To: f.clk.Now().Add(time.Minute)})
	require.NoError(t, err)
	byKey := map[string]api.MetricsGroup{}
	for _, g := range res.Groups {
		byKey[g.Key] = g
	}
	require.Len(t, byKey, 2, "groups: %+v", res.Groups)
	assert.Equal(t, 2, byKey["hw-a"].Devices)
	assert.EqualValues(t, 200, byKey["hw-a"].Rows)
	assert.Equal(t, 1, byKey["hw-b"].Devices)

	for _, by := range []string{"label:", "hardware", "label:a,b"} {
		_, err := f.agg.Query(Query{Model: "fraud", Version: "1.0.0", By: by})
		assert.Error(t, err, "by %q", by)
	}
}

// ackRecorder is an Acker that records what it was told.
type ackRecorder struct {
	mu  sync.Mutex
	got map[string][]uint64
}

func (r *ackRecorder) Ack(dev string, seqs ...uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[dev] = append(r.got[dev], seqs...)
}

func (r *ackRecorder) take() map[string][]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = map[string][]uint64{}
	return got
}

// A telemetry message is acknowledged only once the write holding it
// committed; a duplicate is acknowledged too (the device resent it because
// it never heard of the first copy), after the next write.
func TestIngestAcknowledgesOnlyWhatIsWritten(t *testing.T) {
	f := newFixture(t)
	rec := &ackRecorder{got: map[string][]uint64{}}
	agg, err := Open(Options{KV: f.db.Namespace("monitor-acks"), Clock: f.clk.Now, FlushEvery: 1000, FlushInterval: time.Hour, Acker: rec})
	require.NoError(t, err)
	_, err = agg.Ingest("a1", 1, report(f, []uint64{1, 1, 1}, 0, 0), nil)
	require.NoError(t, err)
	_, err = agg.Ingest("a1", 2, &efpb.Telemetry{}, nil) // no monitoring: its seq still counts
	require.NoError(t, err)
	assert.Empty(t, rec.take(), "nothing acknowledged before the write")
	require.NoError(t, agg.Flush())
	assert.Equal(t, map[string][]uint64{"a1": {1, 2}}, rec.take())

	dup, err := agg.Ingest("a1", 2, &efpb.Telemetry{}, nil)
	require.NoError(t, err)
	assert.True(t, dup)
	assert.Empty(t, rec.take())
	require.NoError(t, agg.Flush())
	assert.Equal(t, map[string][]uint64{"a1": {2}}, rec.take(), "a duplicate is acknowledged again")

	// Reopened on the same store: the seqs written are known, so a resend
	// after a control-plane restart is a duplicate, not counted twice.
	agg, err = Open(Options{KV: f.db.Namespace("monitor-acks"), Clock: f.clk.Now, Acker: rec})
	require.NoError(t, err)
	dup, err = agg.Ingest("a1", 1, report(f, []uint64{1, 1, 1}, 0, 0), nil)
	require.NoError(t, err)
	assert.True(t, dup)
}

// offered records the alerts offered to a Retrainer.
type offered struct {
	mu     sync.Mutex // guards alerts
	alerts []Alert
}

func (o *offered) OfferAlert(a Alert) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.alerts = append(o.alerts, a)
}

// TestFlushMergesIntoWrittenCells: a device reporting several times in one
// bucket, each report flushed on its own, ends with one cell holding the
// sum — merged into the cell the previous flush wrote (not read back) —
// and the sum is what the store holds, across a restart, an old-bucket
// report swept between flushes and the eviction of older buckets.
func TestFlushMergesIntoWrittenCells(t *testing.T) {
	f := newFixture(t)
	f.agg.opts.FlushEvery = 1
	f.clk.Add(10 * time.Second) // inside the 12:00 bucket, not at its edge
	seq := uint64(0)
	ingest := func(dev string) {
		t.Helper()
		seq++
		_, err := f.agg.Ingest(dev, seq, report(f, []uint64{1, 2, 1}, 4, 3), nil)
		require.NoError(t, err)
	}
	stored := func(dev string, at time.Time) cell {
		t.Helper()
		var c cell
		require.NoError(t, f.agg.opts.KV.GetJSON(cellKey(rawPrefix, "fraud", "1.0.0", at.Truncate(f.agg.opts.RawBucket), dev), &c))
		return c
	}
	bucket := f.clk.Now()
	for range 5 {
		ingest("a1")
		f.clk.Add(time.Second)
	}
	c := stored("a1", bucket)
	assert.EqualValues(t, 5, c.Reports)
	assert.EqualValues(t, 20, c.Rows)
	assert.Equal(t, []uint64{5, 10, 5}, c.Features["amount"])
	assert.EqualValues(t, 15, c.Correct)
	assert.Equal(t, "alpha", c.Site)
	f.agg.mu.Lock()
	assert.Len(t, f.agg.written, 1, "the cell is remembered as written")
	f.agg.mu.Unlock()

	// A restart forgets what was written: the next flush reads it back.
	require.NoError(t, f.db.Close())
	f.open(t)
	f.agg.opts.FlushEvery = 1
	ingest("a1")
	assert.EqualValues(t, 6, stored("a1", bucket).Reports)

	// Sweep deletes and rolls up old cells: a cell it moved is not written
	// back from memory.
	require.NoError(t, f.agg.Sweep())
	f.agg.mu.Lock()
	assert.Empty(t, f.agg.written, "a sweep forgets the written cells")
	f.agg.mu.Unlock()
	ingest("a1")
	assert.EqualValues(t, 7, stored("a1", bucket).Reports)

	// Two buckets later the old bucket's cell is evicted, the new one kept.
	f.clk.Add(2 * f.agg.opts.RawBucket)
	ingest("a2")
	f.agg.mu.Lock()
	var buckets []time.Time
	for _, w := range f.agg.written {
		buckets = append(buckets, w.bucket)
	}
	f.agg.mu.Unlock()
	assert.Equal(t, []time.Time{f.clk.Now().Truncate(f.agg.opts.RawBucket)}, buckets)
	assert.EqualValues(t, 1, stored("a2", f.clk.Now()).Reports)
	assert.EqualValues(t, 7, stored("a1", bucket).Reports, "the old cell is as written")
}
