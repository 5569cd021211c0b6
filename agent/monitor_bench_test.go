package agent

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// BenchmarkInferMonitoring measures one single-row fraud inference through
// the agent's backend (the path of POST /v2/models/fraud/infer after
// validation) with monitoring off and on; the difference is the
// per-inference monitoring cost (sketches, latency, prediction store).
// The "observe" case times only the monitoring hook, which is steadier
// than the difference of two noisy inference timings on a shared machine.
//
//	go test ./agent -run '^$' -bench BenchmarkInferMonitoring -benchtime 2s -count 5
func BenchmarkInferMonitoring(b *testing.B) {
	art, rt, man := benchFraudModel(b)
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(b, err)
	rows := g.Generate(1024).Rows
	ids := make([]string, len(rows))
	for i := range ids {
		ids[i] = "id-" + strconv.Itoa(i)
	}

	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			sess, err := rt.Load(art.ONNX, []string{fraud.InputName}, []string{fraud.OutputName})
			require.NoError(b, err)
			a := benchAgent(Options{DisableMonitoring: !on})
			s := &slot{name: "fraud"}
			m := &servedModel{version: "1.0.0", manifest: man, sess: sess}
			s.serving.Store(m)
			a.slots["fraud"] = s
			b.Cleanup(m.close)
			be := backend{a}
			in := []oip.Tensor{{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}}}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r := rows[i%len(rows)]
				in[0].Data = r[:]
				ctx := oip.WithInferenceID(context.Background(), ids[i%len(ids)])
				if _, _, err := be.Infer(ctx, "fraud", in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("observe", func(b *testing.B) {
		a := benchAgent(Options{})
		m := &servedModel{version: "1.0.0", manifest: man}
		in := []oip.Tensor{{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}}}
		out := []oip.Tensor{{Name: fraud.OutputName, Shape: []int64{1, 1}, Data: []float32{0.2}}}
		ctxs := make([]context.Context, len(ids))
		for i := range ctxs {
			ctxs[i] = oip.WithInferenceID(context.Background(), ids[i])
		}
		for i := 0; b.Loop(); i++ {
			r := rows[i%len(rows)]
			in[0].Data = r[:]
			a.observe(ctxs[i%len(ctxs)], "fraud", m, in, out, 120*time.Microsecond)
		}
	})
}
