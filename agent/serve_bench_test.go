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
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// minimalServer is the baseline: a plain net/http + encoding/json server
// that decodes the same request into []float32, runs the same session and
// encodes the answer, with no validation, monitoring or ids.
func minimalServer(sess *infer.Session) http.Handler {
	type input struct {
		Name     string    `json:"name"`
		Shape    []int64   `json:"shape"`
		Datatype string    `json:"datatype"`
		Data     []float32 `json:"data"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Inputs []input `json:"inputs"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Inputs) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		in := req.Inputs[0]
		outs, err := sess.Run([]infer.Tensor{{Name: in.Name, Shape: in.Shape, Data: in.Data}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp := struct {
			Outputs []input `json:"outputs"`
		}{Outputs: []input{{Name: outs[0].Name, Shape: outs[0].Shape, Datatype: "FP32", Data: outs[0].Data.([]float32)}}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
}

// BenchmarkServe measures, in one run with the cases interleaved (so a
// shared machine's load falls on all of them alike), the p50 latency of:
// a single-row fraud inference through the agent's OIP server (validation,
// ids, monitoring on) against the minimal JSON server running the same
// session; and a 20 KB and a 1 MB FP32 input sent as JSON against the
// binary tensor data extension. It reports the p50s and their ratios.
// The payload cases reach the agent on connections of their own (see ac).
//
//	go test ./agent -run '^$' -bench BenchmarkServe -benchtime 2000x
func BenchmarkServe(b *testing.B) {
	a, sess := benchServingAgent(b)
	agentSrv := httptest.NewServer(oip.NewHandler(backend{a}, oip.HandlerOptions{MaxBatch: 1 << 20, MaxBodyBytes: 16 << 20}))
	b.Cleanup(agentSrv.Close)
	minSrv := httptest.NewServer(minimalServer(sess))
	b.Cleanup(minSrv.Close)
	// The payload cases have their own connections: a keep-alive
	// connection that has just carried a megabyte answers the next small
	// request markedly slower (loopback TCP state, not the server: with
	// the payload cases on the single-row pair's connection the agent's
	// single-row p50 rose 20-45 % and the minimal server's, whose
	// connection carries none, did not), which would bias the pair.
	ac := &oip.Client{BaseURL: agentSrv.URL, HTTP: &http.Client{Transport: &http.Transport{}}}
	b.Cleanup(ac.HTTP.CloseIdleConnections)

	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(b, err)
	rowsOf := func(n int) infer.Tensor {
		data := make([]float32, 0, n*fraud.NumFeatures)
		for _, r := range g.Generate(n).Rows {
			data = append(data, r[:]...)
		}
		return infer.Tensor{Name: fraud.InputName, Shape: []int64{int64(n), fraud.NumFeatures}, Data: data}
	}
	one := rowsOf(1)
	small := rowsOf(20 << 10 / (4 * fraud.NumFeatures)) // 20 KB of FP32
	large := rowsOf(1 << 20 / (4 * fraud.NumFeatures))  // 1 MB of FP32
	oneBody, err := json.Marshal(oip.InferRequest{Inputs: []oip.RequestInput{mustInput(b, one)}})
	require.NoError(b, err)

	postOne := func(srv *httptest.Server) error {
		resp, err := srv.Client().Post(srv.URL+"/v2/models/fraud/infer", "application/json", bytes.NewReader(oneBody))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", srv.URL, resp.Status)
		}
		var out struct{ Outputs []struct{ Data []float32 } }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return err
		}
		if len(out.Outputs) == 0 || len(out.Outputs[0].Data) == 0 {
			return fmt.Errorf("%s: no output data", srv.URL)
		}
		return nil
	}
	ctx := context.Background()
	cases := []struct {
		name string
		run  func() error
	}{
		// The single-row pair: the same request bytes from the same client,
		// the same decode of the answer; only the server differs.
		{"agent-1row", func() error { return postOne(agentSrv) }},
		{"minimal-1row", func() error { return postOne(minSrv) }},
		{"json-20KB", func() error {
			resp, err := ac.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{mustInput(b, small)}})
			if err == nil {
				_, err = resp.Outputs[0].Tensor()
			}
			return err
		}},
		{"binary-20KB", func() error {
			resp, err := ac.InferBinary(ctx, "fraud", []infer.Tensor{small})
			if err == nil {
				_, err = resp.Outputs[0].Tensor()
			}
			return err
		}},
		{"json-1MB", func() error {
			resp, err := ac.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{mustInput(b, large)}})
			if err == nil {
				_, err = resp.Outputs[0].Tensor()
			}
			return err
		}},
		{"binary-1MB", func() error {
			resp, err := ac.InferBinary(ctx, "fraud", []infer.Tensor{large})
			if err == nil {
				_, err = resp.Outputs[0].Tensor()
			}
			return err
		}},
	}
	lat := make([][]time.Duration, len(cases))
	for _, c := range cases { // warm every path once
		require.NoError(b, c.run(), c.name)
	}
	timed := func(i int) {
		start := time.Now()
		if err := cases[i].run(); err != nil {
			b.Fatalf("%s: %v", cases[i].name, err)
		}
		lat[i] = append(lat[i], time.Since(start))
	}
	// The single-row pair alternates on its own (a large request's garbage
	// collection must not land on one of them); the payload cases follow,
	// one round per ten single-row rounds.
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		timed(n % 2)
		timed(1 - n%2)
		if n%10 == 0 {
			for i := 2; i < len(cases); i++ {
				timed(i)
			}
		}
	}
	p50 := make([]float64, len(cases))
	for i, l := range lat {
		slices.Sort(l)
		p50[i] = float64(l[len(l)/2].Microseconds())
		b.ReportMetric(p50[i], "µs-p50-"+cases[i].name)
	}
	b.ReportMetric(p50[0]/p50[1], "agent/minimal")
	b.ReportMetric(p50[2]/p50[3], "json/binary-20KB")
	b.ReportMetric(p50[4]/p50[5], "json/binary-1MB")
}

func mustInput(b *testing.B, t infer.Tensor) oip.RequestInput {
	in, err := oip.NewInput(t)
	if err != nil {
		b.Fatal(err)
	}
	return in
}

// benchFraudModel trains the fraud model the agent benchmarks serve, opens
// onnxruntime (closed when b ends) and returns the model's manifest as
// version 1.0.0.
func benchFraudModel(b *testing.B) (*fraud.Artifact, *infer.Runtime, *efpb.Manifest) {
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
	require.NoError(b, err)
	lib, err := infer.FindLibrary("")
	require.NoError(b, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(b, err)
	b.Cleanup(func() { _ = rt.Close() })
	man := art.Metadata()
	man.Version = "1.0.0"
	return art, rt, man
}

// benchAgent is an agent with only what the inference path reads (its
// slots, monitoring unless disabled, the shadow set), for benchmarks
// that drive the backend without connecting.
// benchServingAgent is a bare agent serving the fraud model as fraud
// 1.0.0, and the session it serves with.
func benchServingAgent(b *testing.B) (*Agent, *infer.Session) {
	art, rt, man := benchFraudModel(b)
	sess, err := rt.Load(art.ONNX, nil, nil)
	require.NoError(b, err)
	a := benchAgent(Options{})
	s := &slot{name: "fraud"}
	m := &servedModel{version: "1.0.0", manifest: man, sess: sess}
	s.serving.Store(m)
	a.slots["fraud"] = s
	b.Cleanup(m.close)
	return a, sess
}

func benchAgent(opts Options) *Agent {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	a := &Agent{opts: opts, slots: map[string]*slot{}}
	if !opts.DisableMonitoring {
		a.mon = newMonitors(&a.opts)
	}
	a.shadow = newShadowSet(&a.opts)
	return a
}

// BenchmarkServeHandler times one single-row fraud request through the
// handlers alone, in process (no network): the agent's OIP handler over
// its backend (validation, id, monitoring on) against the minimal
// server's handler running the same session, and onnxruntime called
// directly with the same row. It reports allocations, for the agent's
// hot path.
//
//	go test ./agent -run '^$' -bench BenchmarkServeHandler -benchmem -count 4
func BenchmarkServeHandler(b *testing.B) {
	a, sess := benchServingAgent(b)
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(b, err)
	row := g.Generate(1).Rows[0]
	one := infer.Tensor{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}, Data: row[:]}
	body, err := json.Marshal(oip.InferRequest{Inputs: []oip.RequestInput{mustInput(b, one)}})
	require.NoError(b, err)
	serve := func(h http.Handler) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, "/v2/models/fraud/infer", bytes.NewReader(body))
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		}
	}
	b.Run("agent", serve(oip.NewHandler(backend{a}, oip.HandlerOptions{})))
	b.Run("minimal", serve(minimalServer(sess)))
	b.Run("onnxruntime", func(b *testing.B) {
		for b.Loop() {
			if _, err := sess.Run([]infer.Tensor{one}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
