package infer

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
)

// BenchmarkInfer measures one Run of the fraud model, input validation and
// tensor copies included, at batch 1 and batch 64.
func BenchmarkInfer(b *testing.B) {
	r := newRuntime(b)
	s := loadFraud(b, r)
	g, err := fraud.NewGenerator(9, fraud.Params{})
	require.NoError(b, err)
	d := g.Generate(64)
	for _, batch := range []int{1, 64} {
		in := []Tensor{rowsTensor(d.Rows[:batch])}
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Run(in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
