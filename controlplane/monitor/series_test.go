package monitor

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestSeriesByAgreesWithQuery: each group's series and figures from
// SeriesBy are Query's for that group.
func TestSeriesByAgreesWithQuery(t *testing.T) {
	db, err := store.Open(store.Options{Dir: t.TempDir(), Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	clock := testkit.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	site := func(dev string) string { return map[bool]string{true: "north", false: "south"}[dev < "dev-2"] }
	agg, err := Open(Options{KV: db.Namespace("monitor"), Clock: clock.Now, Site: site, FlushEvery: 1})
	require.NoError(t, err)
	for minute := range 3 {
		for d := range 4 {
			r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: "1.0.0", Rows: uint64(10 * (d + 1)), Labelled: 10, Correct: uint64(5 + d),
				PredictionCounts: []uint64{1, 2, 3}, WindowEndUnixMs: clock.Now().UnixMilli()}
			_, err := agg.Ingest(fmt.Sprintf("dev-%d", d), uint64(minute+1), &efpb.Telemetry{Seq: uint64(minute + 1), Monitoring: []*efpb.MonitorReport{r}}, nil)
			require.NoError(t, err)
		}
		clock.Add(time.Minute)
	}
	q := Query{Model: "fraud", Version: "1.0.0", From: clock.Now().Add(-10 * time.Minute), To: clock.Now(), By: BySite, Points: 10}
	res, err := agg.Query(q)
	require.NoError(t, err)
	series, err := agg.SeriesBy(q)
	require.NoError(t, err)
	require.Len(t, series, 2)
	for i, s := range series {
		assert.Equal(t, res.Groups[i].Key, s.Key)
		assert.Equal(t, res.Groups[i].MetricsFigures, s.Figures, "figures of %s", s.Key)
		assert.Len(t, s.Points, 10)
	}
	assert.Equal(t, "north", series[0].Key)
	assert.EqualValues(t, 90, series[0].Figures.Rows, "dev-0 and dev-1 over three minutes")
	_, err = agg.SeriesBy(Query{Model: "fraud", Version: "1.0.0"})
	assert.Error(t, err, "series need a grouping")
}
