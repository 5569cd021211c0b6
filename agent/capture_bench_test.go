package agent

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// BenchmarkInferCapture measures what field data capture adds to an
// inference's request path: the capture hook (sample, slice the row,
// encode it, buffer it within the hourly budget) against, in the same run
// and interleaved, a single-row fraud inference through the agent's
// backend with monitoring on and capture off. The disk writes and uploads
// run on the capture goroutine, off the request path. It reports both
// per-operation times and their ratio (capture_ratio).
//
//	go test ./agent -run '^$' -bench BenchmarkInferCapture -benchtime 20000x -count 3
func BenchmarkInferCapture(b *testing.B) {
	art, rt, man := benchFraudModel(b)
	sess, err := rt.Load(art.ONNX, []string{fraud.InputName}, []string{fraud.OutputName})
	require.NoError(b, err)
	a := benchAgent(Options{})
	s := &slot{name: "fraud"}
	m := &servedModel{version: "1.0.0", manifest: man, sess: sess}
	s.serving.Store(m)
	a.slots["fraud"] = s
	b.Cleanup(m.close)
	be := backend{a}

	db, err := store.Open(store.Options{InMemory: true})
	require.NoError(b, err)
	b.Cleanup(func() { _ = db.Close() })
	c, err := openCapture(db.Namespace("capture"), CaptureOptions{RowsPerHour: 1 << 30, BytesPerHour: 1 << 40}, "dev-1", time.Now, time.Hour, slog.New(slog.DiscardHandler), func(string) {})
	require.NoError(b, err)
	c.setPolicies(&efpb.DesiredState{Models: []*efpb.ModelAssignment{{Name: "fraud", Capture: &efpb.CapturePolicy{SampleRate: 1}}}})

	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(b, err)
	rows := g.Generate(1024).Rows
	ctxs := make([]context.Context, len(rows))
	for i := range ctxs {
		ctxs[i] = oip.WithInferenceID(context.Background(), "id-"+strconv.Itoa(i))
	}
	in := []oip.Tensor{{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}}}
	var inferT, captureT time.Duration
	n := 0
	for i := 0; b.Loop(); i++ {
		r := rows[i%len(rows)]
		in[0].Data = r[:]
		t0 := time.Now()
		_, out, err := be.Infer(ctxs[i%len(ctxs)], "fraud", in)
		t1 := time.Now()
		if err != nil {
			b.Fatal(err)
		}
		c.record(ctxs[i%len(ctxs)], "fraud", "1.0.0", in, out)
		t2 := time.Now()
		inferT += t1.Sub(t0)
		captureT += t2.Sub(t1)
		n++
		if len(c.buffer) >= captureBufferRows-1 { // what the capture goroutine's flush does
			c.mu.Lock()
			c.buffer = c.buffer[:0]
			c.mu.Unlock()
		}
	}
	b.ReportMetric(float64(inferT.Nanoseconds())/float64(n), "infer-ns/op")
	b.ReportMetric(float64(captureT.Nanoseconds())/float64(n), "capture-ns/op")
	b.ReportMetric(float64(captureT)/float64(inferT), "capture_ratio")
}
