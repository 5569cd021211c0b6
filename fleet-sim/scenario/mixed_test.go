package scenario

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

var updateMixed = flag.Bool("update-mixed-inputs", false, "rewrite the files of scenarios/mixed-inputs")

const mixedDir = "../scenarios/mixed-inputs"

// mixedRows makes n rows for modelzoo.Mixed's four inputs: amount (FP64),
// count (INT32), country (BYTES) and flag (BOOL), amounts scaled by scale.
// With country the flag is true/false and countries include non-ASCII
// text and a quoted comma; without (the reference data, which the control
// plane reads as numbers) the flag is 1/0.
func mixedRows(seed uint64, n int, scale float64, country bool) []byte {
	countries := []string{"de", "fr", "日本", `"São Paulo, BR"`}
	r := rand.New(rand.NewPCG(seed, 0))
	var b bytes.Buffer
	if country {
		b.WriteString("amount,count,country,flag\n")
	} else {
		b.WriteString("amount,count,flag\n")
	}
	for range n {
		amount := float64(int(r.ExpFloat64()*4000*scale)) / 100
		count := r.IntN(20) - 2
		flag := r.Float64() < 0.3
		fmt.Fprintf(&b, "%g,%d,", amount, count)
		if country {
			fmt.Fprintf(&b, "%s,%t\n", countries[r.IntN(len(countries))], flag)
			continue
		}
		f := 0
		if flag {
			f = 1
		}
		fmt.Fprintf(&b, "%d\n", f)
	}
	return b.Bytes()
}

// TestMixedInputsExampleFiles keeps the mixed-inputs scenario's files
// what their generators make (-update-mixed-inputs rewrites them) and
// checks the traffic it loads: one row feeds the model's four inputs, an
// FP64 and an INT32 of shape [1, 1], a BYTES and a BOOL of shape [1],
// each from the column named after it.
func TestMixedInputsExampleFiles(t *testing.T) {
	var samples []byte
	for _, e := range modelzoo.Corpus() {
		if e.Name == "mixed" {
			samples = e.Samples
		}
	}
	require.NotNil(t, samples)
	want := map[string][]byte{
		"model.onnx":   modelzoo.Mixed(),
		"samples.json": samples,
		"train.csv":    mixedRows(41, 400, 1, false),
		"traffic.csv":  mixedRows(42, 400, 1, true),
		"shifted.csv":  mixedRows(43, 400, 20, true),
	}
	for name, b := range want {
		path := filepath.Join(mixedDir, name)
		if *updateMixed {
			require.NoError(t, os.WriteFile(path, b, 0o644))
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(b, got), "%s differs from its generator: go test ./fleet-sim/scenario -run TestMixedInputsExampleFiles -update-mixed-inputs", name)
	}
	sc, err := Load("../scenarios/mixed-inputs.yaml", NewRegistry())
	require.NoError(t, err)
	d := sc.Traffic.csv
	require.NotNil(t, d)
	assert.Equal(t, 400, d.Len())
	in, _, labelled := d.Row(0)
	assert.False(t, labelled)
	require.Len(t, in, 4)
	for i, w := range []struct {
		name  string
		dt    tensor.Datatype
		shape []int64
	}{{"amount", tensor.FP64, []int64{1, 1}}, {"count", tensor.Int32, []int64{1, 1}}, {"country", tensor.Bytes, []int64{1}}, {"flag", tensor.Bool, []int64{1}}} {
		assert.Equal(t, w.name, in[i].Name)
		assert.Equal(t, w.dt, in[i].Datatype, w.name)
		assert.Equal(t, w.shape, in[i].Shape, w.name)
		assert.Equal(t, []string{w.name}, d.Inputs[i].Columns, w.name)
		require.NoError(t, in[i].Check(), w.name)
	}
	countries := map[string]bool{}
	for r := range d.Len() {
		in, _, _ := d.Row(r)
		countries[in[2].Data.([]string)[0]] = true
	}
	assert.Equal(t, map[string]bool{"de": true, "fr": true, "日本": true, "São Paulo, BR": true}, countries)
}

// TestINT64CSVTrafficRuns runs a fleet whose csv traffic feeds an INT64
// input of three columns (modelzoo.Lookup, pushed with its sample inputs
// and no metadata): every row reaches onnxruntime as INT64 ids ("1.0" is
// read as 1), and none fails. A row read as any other datatype would be
// refused by the agent's validation, an id out of the model's table by
// onnxruntime.
func TestINT64CSVTrafficRuns(t *testing.T) {
	var samples []byte
	for _, e := range modelzoo.Corpus() {
		if e.Name == "lookup" {
			samples = e.Samples
		}
	}
	require.NotNil(t, samples)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"lookup.onnx":  string(modelzoo.Lookup()),
		"samples.json": string(samples),
		"ids.csv":      "a,b,c\n0,1,1\n1,0,0\n1.0,1,1\n0,0,1\n",
		"s.yaml": `name: int64-traffic
fleet: {sites: 1, devices_per_site: 2}
agent: {heartbeat: 300ms, fetch_retry: 500ms}
traffic: {model: lookup, rate: 20, seed: 1, csv: ids.csv}
timeout: 2m
timeline:
  - push_model: {model: lookup, version: 1.0.0, file: lookup.onnx, sample_inputs: samples.json}
  - deploy: {model: lookup, version: 1.0.0}
  - wait_active: {model: lookup, version: 1.0.0, timeout: 30s}
  - sleep: {for: 2s}
assertions:
  - all_active: {model: lookup, version: 1.0.0}
  - no_failed_inference: {min_ok: 40}
`,
	})
	sc, err := Load(filepath.Join(dir, "s.yaml"), NewRegistry())
	require.NoError(t, err)
	d := sc.Traffic.csv
	require.Len(t, d.Inputs, 1)
	assert.Equal(t, tensor.Int64, d.Inputs[0].Datatype, "from the model")
	in, _, _ := d.Row(2)
	assert.Equal(t, []int64{1, 1, 1}, in[0].Data)
	assert.Equal(t, []int64{1, 3}, in[0].Shape)

	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir()})
	require.NoError(t, err)
	var sum strings.Builder
	rep.Summary(&sum)
	assert.True(t, rep.Passed, sum.String())
	require.NotNil(t, rep.Inference)
	assert.Zero(t, rep.Inference.Failed, rep.Inference.FirstFailure)
}
