package monitor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func shadowTelemetry(f *fixture, seq uint64, r *efpb.ShadowReport) *efpb.Telemetry {
	r.ModelName, r.ChampionVersion, r.ChallengerVersion = "fraud", "1.0.0", "2.0.0"
	r.WindowEndUnixMs = f.clk.Now().UnixMilli()
	return &efpb.Telemetry{Seq: seq, Shadow: []*efpb.ShadowReport{r}}
}

// Shadow reports add up per challenger over the devices asked for, since a
// time; a device that refused it is named with its reason until it scores;
// the challenger never counts as served.
func TestShadowFiguresAddUp(t *testing.T) {
	f := newFixture(t)
	start := f.clk.Now()
	ingest := func(dev string, seq uint64, r *efpb.ShadowReport) {
		t.Helper()
		dup, err := f.agg.Ingest(dev, seq, shadowTelemetry(f, seq, r), nil)
		require.NoError(t, err)
		require.False(t, dup)
	}
	ingest("a1", 1, &efpb.ShadowReport{Ready: true, Rows: 100, Agree: 90, ScoreAbsDiff: 5, Labelled: 50, ChampionCorrect: 40, ChallengerCorrect: 45, Skipped: 2})
	ingest("a2", 1, &efpb.ShadowReport{Failure: "manifest refused: model is built for [riscv64], this device is amd64"})
	f.clk.Add(2 * time.Minute)
	ingest("a1", 2, &efpb.ShadowReport{Ready: true, Rows: 20, Agree: 20, Labelled: 10, ChampionCorrect: 10, ChallengerCorrect: 9, Errors: 1})
	ingest("b1", 1, &efpb.ShadowReport{Ready: true, Rows: 1000, Agree: 1000, Labelled: 1000, ChampionCorrect: 1000, ChallengerCorrect: 1000})

	got := f.agg.ShadowFigures("fraud", "2.0.0", []string{"a1", "a2"}, start)
	assert.Equal(t, map[string]bool{"a1": true}, got.Ready)
	assert.Equal(t, map[string]string{"a2": "manifest refused: model is built for [riscv64], this device is amd64"}, got.Failed)
	assert.Equal(t, uint64(120), got.Rows)
	assert.Equal(t, uint64(110), got.Agree)
	assert.Equal(t, 5.0, got.ScoreDiff)
	assert.Equal(t, uint64(60), got.Labelled)
	assert.Equal(t, uint64(50), got.ChampionCorrect)
	assert.Equal(t, uint64(54), got.ChallengerCorrect)
	assert.Equal(t, uint64(2), got.Skipped)
	assert.Equal(t, uint64(1), got.Errors)

	later := f.agg.ShadowFigures("fraud", "2.0.0", []string{"a1", "a2"}, f.clk.Now())
	assert.Equal(t, uint64(20), later.Rows, "only what was reported since")
	assert.Empty(t, later.Failed)

	ingest("a2", 2, &efpb.ShadowReport{Ready: true, Rows: 1, Agree: 1})
	again := f.agg.ShadowFigures("fraud", "2.0.0", []string{"a1", "a2"}, start)
	assert.Empty(t, again.Failed, "a2 scores it now")
	assert.Len(t, again.Ready, 2)

	_, ok := f.agg.VersionMetrics("fraud", "2.0.0", nil)
	assert.False(t, ok, "a challenger in shadow is not a served version")
}

func TestShadowReportRefused(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		r    *efpb.ShadowReport
		want string
	}{
		{&efpb.ShadowReport{Rows: 1, Agree: 2}, "2 rows agree of 1"},
		{&efpb.ShadowReport{Labelled: 1, ChallengerCorrect: 2}, "more correct than the 1 labelled rows"},
		{&efpb.ShadowReport{ScoreAbsDiff: -1}, "score difference -1"},
		{&efpb.ShadowReport{LatencyEdgesUs: []float64{1, 2}, ChallengerLatencyCounts: []uint64{1, 2}}, "2 latency counts for 2 edges"},
		{&efpb.ShadowReport{ChallengerLatencyCounts: make([]uint64, 2000)}, "2000 latency bins, at most 1024"},
	} {
		_, err := f.agg.Ingest("a1", 1, shadowTelemetry(f, 1, tc.r), nil)
		require.ErrorIs(t, err, ErrInvalidReport)
		assert.ErrorContains(t, err, tc.want)
	}
	bad := shadowTelemetry(f, 1, &efpb.ShadowReport{})
	bad.Shadow[0].ChallengerVersion = "../x"
	_, err := f.agg.Ingest("a1", 1, bad, nil)
	require.ErrorIs(t, err, ErrInvalidReport)
}

// The metrics of a challenger's version carry its shadow figures per site
// and per device, which the console's shadow panel shows: each site's
// rows, agreement and both accuracies, and its devices scoring or refusing.
func TestShadowFiguresPerGroup(t *testing.T) {
	f := newFixture(t)
	start := f.clk.Now()
	for _, in := range []struct {
		dev string
		r   *efpb.ShadowReport
	}{
		{"a1", &efpb.ShadowReport{Ready: true, Rows: 100, Agree: 90, ScoreAbsDiff: 5, Labelled: 50, ChampionCorrect: 40, ChallengerCorrect: 45,
			LatencyEdgesUs: []float64{1000, 2000, 4000}, ChallengerLatencyCounts: []uint64{0, 10, 0, 0}}},
		{"a2", &efpb.ShadowReport{Failure: "does not load"}},
		{"b1", &efpb.ShadowReport{Ready: true, Rows: 10, Agree: 10, Labelled: 10, ChampionCorrect: 10, ChallengerCorrect: 9, Skipped: 3}},
	} {
		_, err := f.agg.Ingest(in.dev, 1, shadowTelemetry(f, 1, in.r), nil)
		require.NoError(t, err)
	}
	res, err := f.agg.Query(Query{Model: "fraud", Version: "2.0.0", By: BySite, From: start.Add(-time.Minute), To: f.clk.Now().Add(time.Minute)})
	require.NoError(t, err)
	require.NotNil(t, res.Total.Shadow)
	assert.Equal(t, uint64(110), res.Total.Shadow.Rows)
	assert.Equal(t, 2, res.Total.Shadow.DevicesReady)
	assert.Equal(t, 1, res.Total.Shadow.DevicesFailed)
	assert.Zero(t, res.Total.Rows, "a challenger's served figures stay empty")
	bySite := map[string]*api.ShadowFigures{}
	for _, g := range res.Groups {
		bySite[g.Key] = g.Shadow
	}
	require.Len(t, bySite, 2)
	a, b := bySite[sites["a1"]], bySite[sites["b1"]]
	require.NotNil(t, a)
	require.NotNil(t, b)
	assert.Equal(t, uint64(100), a.Rows)
	assert.InDelta(t, 0.9, a.Agreement, 1e-9)
	assert.InDelta(t, 0.05, a.MeanScoreDiff, 1e-9)
	assert.InDelta(t, 0.8, a.ChampionAccuracy, 1e-9)
	assert.InDelta(t, 0.9, a.ChallengerAccuracy, 1e-9)
	assert.Equal(t, 1, a.DevicesReady)
	assert.Equal(t, []string{"a2: does not load"}, a.Failures)
	assert.InDelta(t, 1.5, a.ChallengerLatencyP50Ms, 1e-9, "ten requests between 1 and 2 ms")
	assert.Zero(t, b.ChallengerLatencyP50Ms, "b1's agent reported no latency")
	assert.InDelta(t, 0.9, b.ChallengerAccuracy, 1e-9)
	assert.Equal(t, uint64(3), b.Skipped)
	assert.Equal(t, 1, b.DevicesReady)
	assert.Zero(t, b.DevicesFailed)

	served, err := f.agg.Query(Query{Model: "fraud", Version: "1.0.0", From: start.Add(-time.Minute), To: f.clk.Now().Add(time.Minute)})
	require.NoError(t, err)
	assert.Nil(t, served.Total.Shadow, "a served version has no shadow figures")
}
