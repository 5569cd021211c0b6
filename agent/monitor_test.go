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
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func lbl(id string, row int, v int64) oip.Label { return oip.Label{ID: id, Row: row, Label: &v} }

// monitorFixture is a monitor set with one binary model "m" whose reference
// has one feature with bins (-inf,0) [0,1) [1,inf).
func monitorFixture(t *testing.T, capacity int, ttl time.Duration) (*monitors, *modelMonitor, *testkit.Clock) {
	t.Helper()
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o := Options{Clock: clk.Now, LabelCapacity: capacity, LabelTTL: ttl}
	ms := newMonitors(&o)
	man := &efpb.Manifest{Name: "m", Version: "1.0.0", Reference: []*efpb.FeatureStats{
		{Name: "x", BinEdges: []float64{0, 1}, BinFractions: []float64{0.25, 0.5, 0.25}},
	}}
	return ms, ms.get("m", man), clk
}

// infer records one single-row inference with input x and output p.
func recordOne(ms *monitors, mm *modelMonitor, clk *testkit.Clock, id string, x, p float32) {
	in := []oip.Tensor{{Name: "x", Shape: []int64{1, 1}, Data: []float32{x}}}
	out := []oip.Tensor{{Name: "y", Shape: []int64{1, 1}, Data: []float32{p}}}
	rows, src, ok := mm.record(in, out, 300*time.Microsecond)
	if ok {
		ms.store("m", true).put(id, mm, src, rows, clk.Now().UnixNano())
	}
}

func TestMonitorLabelsJoinDelayedOutOfOrderUnknownDuplicate(t *testing.T) {
	ms, mm, clk := monitorFixture(t, 100, time.Hour)
	// Predictions: p>=0.5 predicts fraud.
	preds := map[string]float32{"a": 0.95, "b": 0.8, "c": 0.2, "d": 0.1, "e": 0.6}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		recordOne(ms, mm, clk, id, 0.5, preds[id])
	}
	clk.Add(30 * time.Minute) // labels arrive late, in another order
	ps := ms.store("m", false)
	res := ps.label([]oip.Label{lbl("e", 0, 0), lbl("c", 0, 1), lbl("a", 0, 1), lbl("nope", 0, 1), lbl("a", 0, 1), lbl("a", 3, 1)}, clk.Now())
	assert.Equal(t, oip.FeedbackResult{Accepted: 3, Unknown: 2, Duplicate: 1}, res)
	res = ps.label([]oip.Label{lbl("b", 0, 1), lbl("d", 0, 0)}, clk.Now())
	assert.Equal(t, oip.FeedbackResult{Accepted: 2}, res)

	r, _ := mm.report(clk.Now())
	require.NotNil(t, r)
	assert.EqualValues(t, 5, r.Rows)
	assert.EqualValues(t, 5, r.Labelled)
	// a: TP, b: TP, c: FN, d: TN, e: FP.
	assert.EqualValues(t, 3, r.Correct)
	assert.Equal(t, [4]uint64{2, 1, 1, 1}, [4]uint64{r.Tp, r.Fp, r.Fn, r.Tn})
	assert.True(t, r.Binary)
	assert.EqualValues(t, 2, r.UnknownLabels)
	assert.EqualValues(t, 1, r.DuplicateLabels)
	// Calibration bins by predicted probability: 0.1→1, 0.2→2, 0.6→6, 0.8→8, 0.95→9.
	wantN := make([]uint64, 10)
	wantPos := make([]uint64, 10)
	for b, pos := range map[int]uint64{1: 0, 2: 1, 6: 0, 8: 1, 9: 1} {
		wantN[b], wantPos[b] = 1, pos
	}
	assert.Equal(t, wantN, r.CalibrationCounts)
	assert.Equal(t, wantPos, r.CalibrationPositives)
	require.Len(t, r.Features, 1)
	assert.Equal(t, []uint64{0, 5, 0}, r.Features[0].Counts)
	assert.EqualValues(t, 5, sum(r.LatencyCounts))
	assert.InDelta(t, 375, drift.Quantile(r.LatencyEdgesUs, r.LatencyCounts, 0.5), 125, "300µs lies in the 250–500µs bucket")

	// The window was reset.
	r2, _ := mm.report(clk.Now())
	assert.Nil(t, r2)
}

func sum(v []uint64) (s uint64) {
	for _, x := range v {
		s += x
	}
	return s
}

func TestMonitorLabelExpiryAndEviction(t *testing.T) {
	ms, mm, clk := monitorFixture(t, 3, time.Hour)
	for i := range 5 { // capacity 3: p0 and p1 are evicted
		recordOne(ms, mm, clk, fmt.Sprintf("p%d", i), 0, 0.9)
	}
	ps := ms.store("m", false)
	res := ps.label([]oip.Label{lbl("p0", 0, 1), lbl("p1", 0, 1), lbl("p2", 0, 1)}, clk.Now())
	assert.Equal(t, oip.FeedbackResult{Accepted: 1, Unknown: 2}, res)
	clk.Add(61 * time.Minute)
	res = ps.label([]oip.Label{lbl("p3", 0, 1)}, clk.Now())
	assert.Equal(t, oip.FeedbackResult{Unknown: 1}, res, "a label after LabelTTL finds no prediction")
	// A label outside a binary model's classes is not joined.
	recordOne(ms, mm, clk, "q", 0, 0.1)
	res = ps.label([]oip.Label{lbl("q", 0, 7)}, clk.Now())
	assert.Equal(t, oip.FeedbackResult{Unknown: 1}, res)
}

func TestMonitorBatchRowsAndMulticlass(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	o := Options{Clock: clk.Now}
	ms := newMonitors(&o)
	mm := ms.get("c", &efpb.Manifest{Version: "2"})
	// Three rows, three class scores each.
	in := []oip.Tensor{{Shape: []int64{3, 2}, Data: make([]float32, 6)}}
	out := []oip.Tensor{{Shape: []int64{3, 3}, Data: []float32{0.1, 0.7, 0.2, 0.8, 0.1, 0.1, 0.3, 0.3, 0.4}}}
	rows, src, ok := mm.record(in, out, time.Millisecond)
	require.True(t, ok)
	require.Equal(t, 3, rows)
	require.Equal(t, 3, src.width)
	ms.store("c", true).put("batch", mm, src, rows, clk.Now().UnixNano())
	res := ms.store("c", false).label([]oip.Label{lbl("batch", 0, 1), lbl("batch", 1, 2), lbl("batch", 2, 2)}, clk.Now())
	assert.Equal(t, 3, res.Accepted)
	r, _ := mm.report(clk.Now())
	assert.False(t, r.Binary)
	assert.EqualValues(t, 2, r.Correct)
	assert.EqualValues(t, 3, r.Labelled)
	assert.Zero(t, r.Tp+r.Fp+r.Fn+r.Tn)
}

func TestMonitorRecordDoesNotAllocate(t *testing.T) {
	v1, _ := testModels(t)
	ms := newMonitors(&Options{Clock: time.Now})
	mm := ms.get("fraud", v1.Metadata())
	require.Len(t, mm.feats, fraud.NumFeatures)
	row := sampleRows(t, 1)[0]
	in := []oip.Tensor{{Shape: []int64{1, fraud.NumFeatures}, Data: row[:]}}
	out := []oip.Tensor{{Shape: []int64{1, 1}, Data: []float32{0.3}}}
	allocs := testing.AllocsPerRun(200, func() { mm.record(in, out, time.Millisecond) })
	assert.Zero(t, allocs)
}

// TestFeedbackOverHTTP runs the real agent: inferences over the OIP API,
// labels through the feedback route, and the monitoring report it queues.
func TestFeedbackOverHTTP(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-fb", t.TempDir())
	// The test collects the monitoring report itself: a heartbeat between
	// the inferences and the collect would move some of the rows into a
	// telemetry report (seen on a busy machine: 9 of 40 left).
	opts.HeartbeatInterval = time.Hour
	a := h.startAgent(t, opts)
	m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-fb", assign(m1))
	waitServing(t, a, "fraud", "1.0.0")

	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	g, err := fraud.NewGenerator(5, fraud.Params{})
	require.NoError(t, err)
	type sent struct {
		id    string
		label int64
	}
	var all []sent
	for range 40 {
		row, isFraud := g.Next()
		resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{fp32(t, "features", []int64{1, fraud.NumFeatures}, row[:])}})
		require.NoError(t, err)
		l := int64(0)
		if isFraud {
			l = 1
		}
		all = append(all, sent{resp.ID, l})
	}
	var labels []oip.Label
	for i := len(all) - 1; i >= 0; i-- { // out of order
		labels = append(labels, lbl(all[i].id, 0, all[i].label))
	}
	labels = append(labels, lbl(all[0].id, 0, 1), lbl("unknown-id", 0, 0))
	res, err := c.Feedback(context.Background(), "fraud", &oip.FeedbackRequest{Labels: labels})
	require.NoError(t, err)
	assert.Equal(t, oip.FeedbackResult{Accepted: 40, Unknown: 1, Duplicate: 1}, *res)

	one := int64(1)
	_, err = c.Feedback(context.Background(), "fraud", &oip.FeedbackRequest{ID: "x", Label: &one, Labels: labels})
	assert.ErrorContains(t, err, "not both")
	_, err = c.Feedback(context.Background(), "nosuch", &oip.FeedbackRequest{ID: "x", Label: &one})
	assert.ErrorContains(t, err, "not found")

	reps := a.mon.collect(time.Now())
	require.Len(t, reps, 1)
	r := reps[0]
	assert.Equal(t, "1.0.0", r.ModelVersion)
	assert.EqualValues(t, 40, r.Rows)
	assert.EqualValues(t, 40, r.Labelled)
	assert.EqualValues(t, r.Tp+r.Fp+r.Fn+r.Tn, r.Labelled)
	assert.Greater(t, r.Correct, uint64(30), "the trained model is mostly right")
	require.Len(t, r.Features, fraud.NumFeatures)
	for _, f := range r.Features {
		assert.EqualValues(t, 40, sum(f.Counts), f.Name)
	}
}

// TestMonitorClassifierUsesLabelOutput: a converted classifier (label
// output + ZipMap class map) is judged by its label output, and its drift
// sketches read the numeric input the reference names, skipping a BYTES
// one.
func TestMonitorClassifierUsesLabelOutput(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1_800_000_000, 0))
	ms := newMonitors(&Options{Clock: clk.Now})
	man := &efpb.Manifest{
		Version: "1",
		Inputs: []*efpb.TensorSpec{
			{Name: "country", Datatype: "BYTES", Shape: []int64{-1}},
			{Name: "amount", Datatype: "FP64", Shape: []int64{-1, 2}},
		},
		Outputs: []*efpb.TensorSpec{
			{Name: "label", Datatype: "BYTES", Shape: []int64{-1}},
			{Name: "probs", Datatype: "FP32", Shape: []int64{-1, 2}, Kind: efpb.TensorKind_TENSOR_KIND_CLASS_MAP,
				Classes: &efpb.Tensor{Datatype: "BYTES", Shape: []int64{2}, BytesData: [][]byte{[]byte("legit"), []byte("fraud")}}},
		},
		LabelOutput: "label", ScoreOutput: "probs",
		Reference: []*efpb.FeatureStats{
			{Name: "country", Input: "country", BinEdges: []float64{0}, BinFractions: []float64{0.5, 0.5}},
			{Name: "amount", Input: "amount", BinEdges: []float64{10}, BinFractions: []float64{0.5, 0.5}},
			{Name: "age", Input: "amount", BinEdges: []float64{30}, BinFractions: []float64{0.5, 0.5}},
		},
	}
	mm := ms.get("clf", man)
	in := []oip.Tensor{
		{Name: "amount", Datatype: "FP64", Shape: []int64{3, 2}, Data: []float64{5, 40, 50, 20, 7, 31}},
		{Name: "country", Datatype: "BYTES", Shape: []int64{3}, Data: []string{"de", "fr", "it"}},
	}
	out := []oip.Tensor{
		{Name: "label", Shape: []int64{3}, Data: []string{"fraud", "legit", "nope"}},
		{Name: "probs", Shape: []int64{3, 2}, Data: []float32{0.4, 0.6, 0.9, 0.1, 0.25, 0.75}},
	}
	rows, src, ok := mm.record(in, out, time.Millisecond)
	require.True(t, ok)
	require.Equal(t, 3, rows)
	ms.store("clf", true).put("r", mm, src, rows, clk.Now().UnixNano())
	// Labels are class indexes: 1 is "fraud".
	res := ms.store("clf", false).label([]oip.Label{lbl("r", 0, 1), lbl("r", 1, 1), lbl("r", 2, 1)}, clk.Now())
	assert.Equal(t, 3, res.Accepted)
	r, _ := mm.report(clk.Now())
	assert.True(t, r.Binary)
	assert.EqualValues(t, 1, r.Correct, "row 0 predicted fraud (label output), row 1 legit, row 2 an unknown label")
	assert.Equal(t, [4]uint64{1, 0, 2, 0}, [4]uint64{r.Tp, r.Fp, r.Fn, r.Tn})
	// The prediction sketch holds P(fraud): 0.6, 0.1, 0.75.
	assert.Equal(t, []uint64{0, 1, 0, 0, 0, 0, 1, 1, 0, 0}, r.PredictionCounts)
	require.Len(t, r.Features, 3)
	assert.Zero(t, sum(r.Features[0].Counts), "a BYTES input is not sketched")
	assert.Equal(t, []uint64{2, 1}, r.Features[1].Counts, "amount is column 0 of input amount: 5, 50, 7")
	assert.Equal(t, []uint64{1, 2}, r.Features[2].Counts, "age is column 1: 40, 20, 31")
}
