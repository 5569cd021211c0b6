package monitor

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

type allowAll struct{}

func (allowAll) AuthenticateDevice(string, []byte) bool { return true }

// BenchmarkIngestRatio is the ingest benchmark: devices publish
// telemetry with a fraud-sized monitoring report (QoS 1) through the
// embedded broker; in the same run a raw subscriber only counts the
// messages and the aggregator decodes, merges and persists them. It
// reports both rates and aggregated/raw (goal >= 0.8).
//
//	go test ./controlplane/monitor -run '^$' -bench BenchmarkIngestRatio -benchtime 3x
func BenchmarkIngestRatio(b *testing.B) {
	const devices, perDevice = 8, 500
	const total = devices * perDevice
	scheme := topics.Scheme{}
	br, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Scheme: scheme, Auth: allowAll{}, SubscriptionQueue: 4 * total})
	require.NoError(b, err)
	require.NoError(b, br.Start())
	b.Cleanup(func() { _ = br.Close() })
	db, err := store.Open(store.Options{Dir: b.TempDir(), Profile: store.ProfileServer})
	require.NoError(b, err)
	b.Cleanup(func() { _ = db.Close() })
	agg, err := Open(Options{KV: db.Namespace("monitor"), Site: func(string) string { return "s" }})
	require.NoError(b, err)

	var raw, aggregated atomic.Int64
	// rawDone and aggDone receive the time the run's last message was handled.
	rawDone, aggDone := make(chan time.Time, 1), make(chan time.Time, 1)
	var target atomic.Int64
	unsub, err := br.Subscribe(scheme.AllTelemetry(), func(string, []byte, string) {
		if raw.Add(1) == target.Load() {
			rawDone <- time.Now()
		}
	})
	require.NoError(b, err)
	b.Cleanup(unsub)
	unsub, err = br.Subscribe(scheme.AllTelemetry(), func(topic string, payload []byte, _ string) {
		t := &efpb.Telemetry{}
		if proto.Unmarshal(payload, t) != nil {
			return
		}
		if _, err := agg.Ingest(t.DeviceId, t.Seq, t, nil); err != nil {
			b.Error(err)
		}
		if aggregated.Add(1) == target.Load() {
			if err := agg.Flush(); err != nil {
				b.Error(err)
			}
			aggDone <- time.Now()
		}
	})
	require.NoError(b, err)
	b.Cleanup(unsub)

	clients := make([]*mqttc.Client, devices)
	for i := range clients {
		id := fmt.Sprintf("dev-%02d", i)
		c, err := mqttc.Connect(context.Background(), mqttc.Options{BrokerURL: br.URL(), ClientID: id, Username: id, Password: "x"})
		require.NoError(b, err)
		b.Cleanup(c.Close)
		clients[i] = c
	}
	report := func(dev string, seq uint64) []byte {
		r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: "1.0.0", Rows: 300, WindowEndUnixMs: time.Now().UnixMilli(),
			PredictionCounts: make([]uint64, 10), LatencyEdgesUs: make([]float64, 16), LatencyCounts: make([]uint64, 17),
			CalibrationCounts: make([]uint64, 10), CalibrationPositives: make([]uint64, 10), Labelled: 200, Correct: 180, Binary: true}
		for i := range 9 {
			r.Features = append(r.Features, &efpb.FeatureSketch{Name: fmt.Sprintf("f%d", i), Counts: []uint64{3, 5, 8, 13, 21, 34, 55, 89, 144, 233}})
		}
		p, _ := proto.Marshal(&efpb.Telemetry{ProtocolVersion: 1, DeviceId: dev, Seq: seq, Monitoring: []*efpb.MonitorReport{r}})
		return p
	}
	var seq uint64
	var rawRate, aggRate float64
	runs := 0
	for b.Loop() {
		raw.Store(0)
		aggregated.Store(0)
		target.Store(total)
		base := seq
		seq += perDevice
		start := time.Now()
		var wg sync.WaitGroup
		for i, c := range clients {
			dev := fmt.Sprintf("dev-%02d", i)
			wg.Go(func() {
				for k := range perDevice {
					if err := c.Publish(context.Background(), scheme.Telemetry(dev), 1, false, report(dev, base+uint64(k)+1)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		timeout := time.After(2 * time.Minute)
		var rawAt, aggAt time.Time
		for rawAt.IsZero() || aggAt.IsZero() {
			select {
			case rawAt = <-rawDone:
			case aggAt = <-aggDone:
			case <-timeout:
				b.Fatalf("timed out: raw subscriber got %d, aggregator %d of %d", raw.Load(), aggregated.Load(), total)
			}
		}
		rawRate += total / rawAt.Sub(start).Seconds()
		aggRate += total / aggAt.Sub(start).Seconds()
		runs++
	}
	b.ReportMetric(rawRate/float64(runs), "raw-msgs/s")
	b.ReportMetric(aggRate/float64(runs), "agg-msgs/s")
	b.ReportMetric(aggRate/rawRate, "ratio")
}
