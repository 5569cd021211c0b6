package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// shadowRig is an agent serving a fraud champion with a challenger loaded
// in shadow, on the real onnxruntime, without the update loop: the request
// path, the worker and the label join are what is exercised. The worker
// runs only when the test starts it.
type shadowRig struct {
	a            *Agent
	champ, chall *fraud.Artifact
}

func newShadowRig(tb testing.TB, o Options, challenger bool) *shadowRig {
	tb.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(tb, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = rt.Close() })
	train := func(seed uint64, p fraud.Pattern) *fraud.Artifact {
		art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: 4000, Params: fraud.Params{Pattern: p},
			Now: func() time.Time { return time.Unix(1_700_000_000, 0) }})
		require.NoError(tb, err)
		return art
	}
	load := func(art *fraud.Artifact, version string) *servedModel {
		sess, err := rt.Load(art.ONNX, nil, nil)
		require.NoError(tb, err)
		man := art.Metadata()
		man.Version = version
		m := &servedModel{version: version, manifest: man, sess: sess}
		tb.Cleanup(m.close)
		return m
	}
	r := &shadowRig{champ: train(1, fraud.PatternClassic), chall: train(2, fraud.PatternCardTesting)}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	a := &Agent{opts: o, slots: map[string]*slot{}}
	a.mon = newMonitors(&a.opts)
	a.shadow = newShadowSet(&a.opts)
	s := &slot{name: "fraud"}
	s.serving.Store(load(r.champ, "1.0.0"))
	a.slots["fraud"] = s
	if challenger {
		m := load(r.chall, "2.0.0")
		a.shadow.byName["fraud"] = &shadow{name: "fraud", version: "2.0.0", stats: &shadowStats{start: o.Clock()},
			run: &shadowRun{name: "fraud", model: m, preds: newPredictor(m.manifest), stats: nil,
				ring: newShadowRing(a.opts.LabelCapacity, a.opts.LabelTTL), champ: map[string]*predictor{}}}
		a.shadow.byName["fraud"].run.stats = a.shadow.byName["fraud"].stats
		a.publishLive()
	}
	r.a = a
	return r
}

// startWorker runs the shadow worker until the test ends.
func (r *shadowRig) startWorker(tb testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.a.shadowWorker(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
}

// infer sends rows as one request with inference id id.
func (r *shadowRig) infer(tb testing.TB, id string, rows []fraud.Row) string {
	tb.Helper()
	flat := make([]float32, 0, len(rows)*fraud.NumFeatures)
	for _, row := range rows {
		flat = append(flat, row[:]...)
	}
	ctx := oip.WithInferenceID(context.Background(), id)
	v, out, err := r.a.Infer(ctx, "fraud", []oip.Tensor{{Name: fraud.InputName, Shape: []int64{int64(len(rows)), fraud.NumFeatures}, Data: flat}})
	require.NoError(tb, err)
	require.Len(tb, out, 1)
	return v
}

func (r *shadowRig) report() *efpb.ShadowReport {
	reps := r.a.collectShadows(time.Now())
	if len(reps) != 1 {
		return nil
	}
	return reps[0]
}

func class(p float32) int64 {
	if p >= 0.5 {
		return 1
	}
	return 0
}

// TestShadowScoresOffThePathAndJoinsLabels: the champion answers every
// request; the challenger scores the same rows on the worker; agreement and
// both versions' correct counts are what the two models (evaluated in Go)
// say, for labels that arrive before the challenger ran as well as after.
func TestShadowScoresOffThePathAndJoinsLabels(t *testing.T) {
	r := newShadowRig(t, Options{}, true)
	g, err := fraud.NewGenerator(11, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	d := g.Generate(200)
	const batch = 20
	truth := make([]int64, d.Len())
	for i, f := range d.Labels {
		if f {
			truth[i] = 1
		}
	}
	var labels []oip.Label
	for i := 0; i < d.Len(); i += batch {
		id := fmt.Sprintf("req-%d", i)
		assert.Equal(t, "1.0.0", r.infer(t, id, d.Rows[i:i+batch]), "the champion answers")
		for j := range batch {
			labels = append(labels, oip.Label{ID: id, Row: j, Label: &truth[i+j]})
		}
	}
	// Half the labels arrive while every request still waits for the
	// challenger (the worker has not started), the rest after it ran.
	_, err = r.a.Feedback(context.Background(), "fraud", labels[:100])
	require.NoError(t, err)
	r.startWorker(t)
	require.Eventually(t, func() bool { return len(r.a.shadow.queue) == 0 && r.a.shadow.queued.Load() == 0 }, time.Minute, time.Millisecond)
	// The last job was taken; wait until its counts are in.
	var rep efpb.ShadowReport
	require.Eventually(t, func() bool {
		st := r.a.shadow.byName["fraud"].stats
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.rows == uint64(d.Len())
	}, time.Minute, time.Millisecond)
	_, err = r.a.Feedback(context.Background(), "fraud", labels[100:])
	require.NoError(t, err)
	_, err = r.a.Feedback(context.Background(), "fraud", labels[:10]) // repeated: not counted twice
	require.NoError(t, err)
	rep = *r.report()

	champ, chall := r.champ.Predict(d.Rows), r.chall.Predict(d.Rows)
	var agree, champOK, challOK uint64
	for i := range d.Len() {
		if class(champ[i]) == class(chall[i]) {
			agree++
		}
		champOK += b2u(class(champ[i]) == truth[i])
		challOK += b2u(class(chall[i]) == truth[i])
	}
	assert.Equal(t, "fraud", rep.ModelName)
	assert.Equal(t, "1.0.0", rep.ChampionVersion)
	assert.Equal(t, "2.0.0", rep.ChallengerVersion)
	assert.True(t, rep.Ready)
	assert.Equal(t, uint64(d.Len()), rep.Rows)
	assert.Equal(t, agree, rep.Agree)
	assert.Less(t, rep.Agree, rep.Rows, "models trained on different patterns disagree somewhere")
	assert.Equal(t, uint64(d.Len()), rep.Labelled)
	assert.Equal(t, champOK, rep.ChampionCorrect)
	assert.Equal(t, challOK, rep.ChallengerCorrect)
	assert.Greater(t, rep.ChallengerCorrect, rep.ChampionCorrect, "the challenger knows the new pattern")
	assert.Zero(t, rep.Skipped)
	assert.Zero(t, rep.Errors)
	// The challenger's time: one count per request scored (ten batches).
	require.Equal(t, drift.LatencyEdgesMicros(), rep.LatencyEdgesUs)
	require.Len(t, rep.ChallengerLatencyCounts, len(rep.LatencyEdgesUs)+1)
	var timed uint64
	for _, n := range rep.ChallengerLatencyCounts {
		timed += n
	}
	assert.Equal(t, uint64(d.Len()/batch), timed)

	next := r.report()
	assert.Zero(t, next.Rows, "a report starts a new window")
	assert.Empty(t, next.ChallengerLatencyCounts, "and a new histogram")
	assert.True(t, next.Ready)
}

// TestShadowQueueFullSkips: with the worker stalled, a request beyond the
// queue is answered at once and counted as skipped, never waited for; so
// are requests beyond the queue's byte budget.
func TestShadowQueueFullSkips(t *testing.T) {
	r := newShadowRig(t, Options{ShadowQueue: 2}, true)
	g, err := fraud.NewGenerator(3, fraud.Params{})
	require.NoError(t, err)
	d := g.Generate(10)
	for i := range 5 {
		assert.Equal(t, "1.0.0", r.infer(t, fmt.Sprintf("q-%d", i), d.Rows[i:i+1]))
	}
	assert.Len(t, r.a.shadow.queue, 2)
	r.startWorker(t)
	require.Eventually(t, func() bool { return r.a.shadow.queued.Load() == 0 && len(r.a.shadow.queue) == 0 }, time.Minute, time.Millisecond)
	require.Eventually(t, func() bool {
		st := r.a.shadow.byName["fraud"].stats
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.rows == 2
	}, time.Minute, time.Millisecond)
	rep := r.report()
	assert.Equal(t, uint64(3), rep.Skipped)

	small := newShadowRig(t, Options{ShadowQueueBytes: 100}, true) // one row is 28 bytes
	small.infer(t, "b-1", d.Rows[:3])
	small.infer(t, "b-2", d.Rows[:3])
	assert.Len(t, small.a.shadow.queue, 1)
	assert.Equal(t, uint64(1), small.report().Skipped)
}

// TestNoShadowNoReports: without a challenger nothing is queued or reported.
func TestNoShadowNoReports(t *testing.T) {
	r := newShadowRig(t, Options{}, false)
	g, err := fraud.NewGenerator(3, fraud.Params{})
	require.NoError(t, err)
	r.infer(t, "x", g.Generate(5).Rows)
	assert.Empty(t, r.a.shadow.queue)
	assert.Nil(t, r.report())
}
