package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// BenchmarkShadowCost measures what scoring a challenger in shadow costs a
// served answer: two agents serve the same fraud champion over HTTP, one
// with a challenger in shadow (its worker running), one without; requests
// alternate between them from one client, so a shared machine's load falls
// on both alike. It reports the served answers' p50 and p99 for a
// single-row request and for a 512-row batch, with and without shadow, the
// ratios with/without, and the fraction of requests the challenger scored
// (the rest were skipped because the shadow queue was full).
//
//	go test ./agent -run '^$' -bench BenchmarkShadowCost -benchtime 4000x
func BenchmarkShadowCost(b *testing.B) {
	plain := newShadowRig(b, Options{}, false)
	shadowed := newShadowRig(b, Options{}, true)
	shadowed.startWorker(b)
	servers := []*httptest.Server{
		httptest.NewServer(oip.NewHandler(backend{plain.a}, oip.HandlerOptions{})),
		httptest.NewServer(oip.NewHandler(backend{shadowed.a}, oip.HandlerOptions{})),
	}
	for _, s := range servers {
		b.Cleanup(s.Close)
	}
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(b, err)
	body := func(n int) []byte {
		data := make([]float32, 0, n*fraud.NumFeatures)
		for _, r := range g.Generate(n).Rows {
			data = append(data, r[:]...)
		}
		in, err := oip.NewFP32Input(fraud.InputName, []int64{int64(n), fraud.NumFeatures}, data)
		require.NoError(b, err)
		bb, err := json.Marshal(oip.InferRequest{Inputs: []oip.RequestInput{in}})
		require.NoError(b, err)
		return bb
	}
	bodies := [][]byte{body(1), body(512)}
	post := func(srv *httptest.Server, bb []byte) error {
		resp, err := srv.Client().Post(srv.URL+"/v2/models/fraud/infer", "application/json", bytes.NewReader(bb))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var out oip.InferResponse
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || out.ModelVersion != "1.0.0" {
			return fmt.Errorf("%s: %s, served by %q", srv.URL, resp.Status, out.ModelVersion)
		}
		return nil
	}
	// lat[size][server]
	var lat [2][2][]time.Duration
	timed := func(size, srv int) {
		start := time.Now()
		if err := post(servers[srv], bodies[size]); err != nil {
			b.Fatal(err)
		}
		lat[size][srv] = append(lat[size][srv], time.Since(start))
	}
	for size := range bodies {
		for srv := range servers {
			timed(size, srv) // warm every path
		}
	}
	lat = [2][2][]time.Duration{}
	b.ResetTimer()
	requests := 0
	for n := 0; b.Loop(); n++ {
		size := 0
		if n%4 == 3 {
			size = 1
		}
		timed(size, n%2)
		timed(size, 1-n%2)
		requests++
	}
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for len(shadowed.a.shadow.queue) > 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond) // benchmark only: let the queue drain before reading the counts
	}
	rep := shadowed.report()
	q := func(l []time.Duration, p float64) float64 {
		slices.Sort(l)
		return float64(l[int(p*float64(len(l)-1))].Microseconds())
	}
	names := []string{"1row", "512rows"}
	for size, name := range names {
		if len(lat[size][0]) == 0 {
			continue
		}
		p50off, p50on := q(lat[size][0], 0.5), q(lat[size][1], 0.5)
		p99off, p99on := q(lat[size][0], 0.99), q(lat[size][1], 0.99)
		b.ReportMetric(p50off, "µs-p50-"+name+"-plain")
		b.ReportMetric(p50on, "µs-p50-"+name+"-shadow")
		b.ReportMetric(p99off, "µs-p99-"+name+"-plain")
		b.ReportMetric(p99on, "µs-p99-"+name+"-shadow")
		b.ReportMetric(p50on/p50off, "p50-ratio-"+name)
		b.ReportMetric(p99on/p99off, "p99-ratio-"+name)
	}
	if rep != nil && requests > 0 {
		scored := float64(len(lat[0][1])) + float64(len(lat[1][1])) - float64(rep.Skipped) - float64(rep.Errors)
		b.ReportMetric(scored/float64(len(lat[0][1])+len(lat[1][1])), "shadowed-fraction")
	}
}
