package monitor

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// BenchmarkIngest measures the aggregator alone: one telemetry message
// with a fraud-sized monitoring report (9 features × 10 bins, prediction,
// latency and calibration bins) decoded-in-memory, merged into its bucket
// and persisted, from 100 devices in turn.
//
//	go test ./controlplane/monitor -run '^$' -bench BenchmarkIngest -benchtime 3s
func BenchmarkIngest(b *testing.B) {
	db, err := store.Open(store.Options{Dir: b.TempDir(), Profile: store.ProfileServer})
	require.NoError(b, err)
	b.Cleanup(func() { _ = db.Close() })
	agg, err := Open(Options{KV: db.Namespace("monitor"), Site: func(string) string { return "s" }})
	require.NoError(b, err)
	r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: "1.0.0", Rows: 300,
		PredictionCounts: make([]uint64, 10), LatencyEdgesUs: make([]float64, 16), LatencyCounts: make([]uint64, 17),
		CalibrationCounts: make([]uint64, 10), CalibrationPositives: make([]uint64, 10), Labelled: 200, Correct: 180, Binary: true}
	for i := range 9 {
		r.Features = append(r.Features, &efpb.FeatureSketch{Name: fmt.Sprintf("f%d", i), Counts: make([]uint64, 10)})
	}
	devs := make([]string, 100)
	for i := range devs {
		devs[i] = fmt.Sprintf("dev-%03d", i)
	}
	tm := &efpb.Telemetry{Monitoring: []*efpb.MonitorReport{r}}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		r.WindowEndUnixMs = agg.opts.Clock().UnixMilli()
		if _, err := agg.Ingest(devs[i%len(devs)], uint64(i/len(devs)+1), tm, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
