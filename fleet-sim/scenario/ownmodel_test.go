package scenario

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
)

var updateOwnModel = flag.Bool("update-own-model", false, "rewrite the CSV files of scenarios/own-model")

const ownModelDir = "../scenarios/own-model"

// writeFraudCSV writes n transactions of the fraud generator as CSV: the
// feature columns, then is_fraud.
func writeFraudCSV(t *testing.T, path string, seed uint64, p fraud.Params, n int) {
	t.Helper()
	g, err := fraud.NewGenerator(seed, p)
	require.NoError(t, err)
	d := g.Generate(n)
	var b strings.Builder
	b.WriteString(strings.Join(fraud.FeatureNames(), ",") + ",is_fraud\n")
	for i, row := range d.Rows {
		for _, v := range row {
			b.WriteString(strconv.FormatFloat(float64(v), 'g', -1, 32) + ",")
		}
		if d.Labels[i] {
			b.WriteString("1\n")
		} else {
			b.WriteString("0\n")
		}
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
}

// TestOwnModelExampleFiles checks the committed own-model example: its
// model and metadata are edgefleet model train's output (--seed 5 --rows
// 2000), its CSVs come from the fraud generator (go test -run
// TestOwnModelExampleFiles -update-own-model rewrites them), and they are
// small.
func TestOwnModelExampleFiles(t *testing.T) {
	if *updateOwnModel {
		writeFraudCSV(t, filepath.Join(ownModelDir, "data.csv"), 21, fraud.Params{}, 500)
		writeFraudCSV(t, filepath.Join(ownModelDir, "shifted.csv"), 22, fraud.Params{AmountScale: 4, HourShift: 9, DistanceScale: 3}, 300)
	}
	var total int64
	entries, err := os.ReadDir(ownModelDir)
	require.NoError(t, err)
	for _, e := range entries {
		fi, err := e.Info()
		require.NoError(t, err)
		total += fi.Size()
	}
	assert.Less(t, total, int64(200<<10), "the example's files are %d bytes", total)

	sc, err := Load("../scenarios/own-model.yaml", NewRegistry())
	require.NoError(t, err)
	push := sc.Timeline[0].Action.(*PushModel)
	require.NotNil(t, push.meta, "meta defaults to <file>.meta.json")
	assert.NotEmpty(t, push.onnx)
	assert.NotEmpty(t, push.meta.GetTestVectors())
	d := sc.Traffic.csv
	require.NotNil(t, d)
	require.Len(t, d.Inputs, 1)
	assert.Equal(t, fraud.FeatureNames(), d.Inputs[0].Columns, "named by the metadata's reference statistics")
	assert.Equal(t, "features", d.Inputs[0].Name)
	assert.Equal(t, 500, d.Len())
	assert.Len(t, d.Labels, 500)
}

// writeFiles writes name → content under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
}

// copyExample copies the example's model and metadata into dir.
func copyExample(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{"model.onnx", "model.onnx.meta.json"} {
		data, err := os.ReadFile(filepath.Join(ownModelDir, name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
	}
}

const ownHeader = "amount,hour,merchant_risk,distance_km,velocity_1h,foreign,card_age_days,is_fraud\n"

func TestParseOwnModelErrors(t *testing.T) {
	good := ownHeader + "10,12,0.1,3,1,0,400,0\n20,3,0.9,300,6,1,5,1\n"
	tests := []struct {
		name  string
		doc   string // after name and fleet
		files map[string]string
		want  string
	}{
		{"file and seed", "timeline:\n  - push_model: {model: m, version: 1, file: model.onnx, seed: 3}\n", nil,
			"line 4: push_model: file excludes seed, rows, params and bad_test_vectors"},
		{"file and bad vectors", "timeline:\n  - push_model: {model: m, version: 1, file: model.onnx, bad_test_vectors: true}\n", nil,
			"file excludes seed"},
		{"meta without file", "timeline:\n  - push_model: {model: m, version: 1, meta: model.onnx.meta.json}\n", nil, "line 4: push_model: meta needs file"},
		{"missing model file", "timeline:\n  - push_model: {model: m, version: 1, file: nope.onnx}\n", nil,
			"line 4: push_model: file: open DIR/nope.onnx: no such file or directory"},
		{"missing meta file", "timeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: nope.json}\n", nil,
			"line 4: push_model: meta: open DIR/nope.json"},
		{"bad meta", "timeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: bad.json}\n", map[string]string{"bad.json": `{"inputz": []}`},
			"is not a manifest JSON document"},
		{"missing csv", "traffic: {model: m, rate: 5, csv: nope.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n", nil,
			"line 3: traffic: sim: csv: open DIR/nope.csv: no such file or directory"},
		{"empty csv", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n", map[string]string{"d.csv": ""},
			"DIR/d.csv: empty: the first line must be a header"},
		{"missing columns", "traffic: {model: m, rate: 5, csv: d.csv, label_column: y}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": "amount,hour,y\n1,2,0\n"},
			"DIR/d.csv:1: missing columns merchant_risk, distance_km, velocity_1h, foreign, card_age_days (the header has amount, hour, y)"},
		{"missing label column", "traffic: {model: m, rate: 5, csv: d.csv, label_column: y}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": good}, "missing columns y (label)"},
		{"bad cell", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": good + "1,2,3,4,5,6,7,0\n1,2,x3,4,5,6,7,0\n"}, `DIR/d.csv:5: column merchant_risk (input features, FP32): "x3" is not a finite number`},
		{"bad label", "traffic: {model: m, rate: 5, csv: d.csv, label_column: is_fraud}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": good + "1,2,3,4,5,6,7,0.5\n"}, `DIR/d.csv:4: label column is_fraud: "0.5" is not an integer class`},
		{"short row", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": good + "1,2\n"}, "DIR/d.csv:4: wrong number of fields"},
		{"header only", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n",
			map[string]string{"d.csv": ownHeader}, "no rows after the header"},
		{"csv and params", "traffic: {model: m, rate: 5, csv: d.csv, params: {amount_scale: 2}}\n", nil, "line 3: traffic: csv excludes params and sites"},
		{"label fraction without column", "traffic: {model: m, rate: 5, csv: d.csv, label_fraction: 0.5}\n", nil, "label_fraction needs label_column"},
		{"label column without csv", "traffic: {model: m, rate: 5, label_column: y}\n", nil, "label_column needs csv"},
		{"csv without push_model", "traffic: {model: m, rate: 5, csv: d.csv}\n", map[string]string{"d.csv": good}, "needs a push_model step of that model"},
		{"shift params of csv traffic", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n  - shift_traffic: {params: {amount_scale: 2}}\n",
			map[string]string{"d.csv": good}, "line 6: shift_traffic: the traffic replays a csv: shift it with csv"},
		{"shift csv of fraud traffic", "traffic: {model: m, rate: 5}\ntimeline:\n  - shift_traffic: {csv: d.csv}\n", nil, "line 5: shift_traffic: csv needs traffic from a csv"},
		{"shift csv missing column", "traffic: {model: m, rate: 5, csv: d.csv, label_column: is_fraud}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx}\n  - shift_traffic: {csv: e.csv}\n",
			map[string]string{"d.csv": good, "e.csv": "amount,hour,merchant_risk,distance_km,velocity_1h,foreign,card_age_days\n1,2,3,4,5,6,7\n"},
			"line 6: shift_traffic: sim: csv: DIR/e.csv:1: missing columns is_fraud (label)"},
		{"no metadata, not a model", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: bare.onnx}\n",
			map[string]string{"d.csv": good, "bare.onnx": "x"}, "line 3: traffic: csv traffic of model m: push_model at line 5: bare.onnx: not an ONNX model"},
		{"samples without file", "timeline:\n  - push_model: {model: m, version: 1, sample_inputs: s.csv}\n", nil, "line 4: push_model: sample_inputs and reference_data need file"},
		{"missing samples", "timeline:\n  - push_model: {model: m, version: 1, file: model.onnx, sample_inputs: nope.csv}\n", nil,
			"line 4: push_model: sample_inputs: open DIR/nope.csv: no such file or directory"},
		{"two inputs", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: two.json}\n",
			map[string]string{"d.csv": good, "two.json": `{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 1]}, {"name": "b", "datatype": "FP32", "shape": [-1, 1]}]}`},
			"DIR/d.csv:1: missing columns a, b (the header has"}, // one column per input, named after it
		{"wide input among several", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: two.json}\n",
			map[string]string{"d.csv": good, "two.json": `{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]}, {"name": "b", "datatype": "INT64", "shape": [-1]}]}`},
			`input a of model.onnx takes several values per row (shape [-1 3]); with 2 inputs, csv traffic needs its columns named in the metadata's reference statistics (features with input "a")`},
		{"image input", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: img.json}\n",
			map[string]string{"d.csv": good, "img.json": `{"inputs": [{"name": "img", "datatype": "UINT8", "shape": [-1, 3, 8, 8]}]}`},
			"input img of model.onnx has shape [-1 3 8 8]; csv traffic feeds inputs of shape [-1] or [-1, features]"},
		{"width mismatch", "traffic: {model: m, rate: 5, csv: d.csv}\ntimeline:\n  - push_model: {model: m, version: 1, file: model.onnx, meta: w.json}\n",
			map[string]string{"d.csv": "a,b\n1,2\n", "w.json": `{"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]}`},
			"has 2 feature columns (a, b), model m's input features takes 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyExample(t, dir)
			writeFiles(t, dir, tt.files)
			file := filepath.Join(dir, "s.yaml")
			require.NoError(t, os.WriteFile(file, []byte(minimal+tt.doc), 0o644))
			_, err := Load(file, NewRegistry())
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), strings.ReplaceAll(tt.want, "DIR", dir))
		})
	}
}

func TestParseOwnModelResolvesPaths(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "m"), 0o755))
	copyExample(t, filepath.Join(dir, "m"))
	// Columns in another order, an extra one, no meta.json beside a second
	// copy of the model (unnamed features: the csv's columns, in order).
	writeFiles(t, dir, map[string]string{
		"m/d.csv": "id,is_fraud,card_age_days,foreign,velocity_1h,distance_km,merchant_risk,hour,amount\n" +
			"a,1,7,6,5,4,3,2,1\nb,0,70,60,50,40,30,20,10\n",
		"s.yaml": minimal + "traffic: {model: m, rate: 5, csv: m/d.csv, label_column: is_fraud, label_fraction: 1}\n" +
			"timeline:\n  - push_model: {model: m, version: 1, file: m/model.onnx, pad_bytes: 10, force: true}\n" +
			"  - push_model: {model: n, version: 1, file: m/model.onnx, meta: m/model.onnx.meta.json}\n",
	})
	sc, err := Load(filepath.Join(dir, "s.yaml"), NewRegistry())
	require.NoError(t, err)
	d := sc.Traffic.csv
	assert.Equal(t, fraud.FeatureNames(), d.Inputs[0].Columns)
	var rows []float32
	for r := range d.Len() {
		in, _, _ := d.Row(r)
		rows = append(rows, in[0].Data.([]float32)...)
	}
	assert.Equal(t, []float32{1, 2, 3, 4, 5, 6, 7, 10, 20, 30, 40, 50, 60, 70}, rows, "in the model's input order")
	assert.Equal(t, []int64{1, 0}, d.Labels)
	p := sc.Timeline[0].Action.(*PushModel)
	assert.True(t, p.Force)
	assert.Equal(t, 10, p.PadBytes)
	assert.NotNil(t, p.meta)

	// Parse (no file): paths are relative to the working directory.
	_, err = Parse([]byte(minimal+"timeline:\n  - push_model: {model: m, version: 1, file: "+filepath.Join(ownModelDir, "model.onnx")+"}\n"), NewRegistry())
	require.NoError(t, err)
}

// TestCSVTrafficRun runs a small fleet on the example's model with CSV
// traffic: requests carry the CSV's rows (the model answers them) and the
// label column is fed back.
func TestCSVTrafficRun(t *testing.T) {
	lib, err := infer.FindLibrary("")
	require.NoError(t, err)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })

	dir := t.TempDir()
	copyExample(t, dir)
	writeFraudCSV(t, filepath.Join(dir, "d.csv"), 3, fraud.Params{}, 50)
	doc := fmt.Sprintf(`name: csv-run
fleet: {sites: 1, devices_per_site: 2}
agent: {heartbeat: 300ms, fetch_retry: 500ms}
traffic: {model: own, rate: 20, seed: 4, csv: %s, label_column: is_fraud, label_fraction: 1, label_delay: 200ms}
timeout: 1m
timeline:
  - push_model: {model: own, version: 1.0.0, file: model.onnx}
  - deploy: {model: own, version: 1.0.0}
  - wait_active: {model: own, version: 1.0.0, timeout: 30s}
  - sleep: {for: 1s}
assertions:
  - no_failed_inference: {min_ok: 20}
`, filepath.Join(dir, "d.csv"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "s.yaml"), []byte(doc), 0o644))
	sc, err := Load(filepath.Join(dir, "s.yaml"), NewRegistry())
	require.NoError(t, err)
	var progress strings.Builder
	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir(), Runtime: rt, Progress: &progress})
	require.NoError(t, err)
	assert.True(t, rep.Passed, progress.String())
	require.NotNil(t, rep.Inference)
	assert.Zero(t, rep.Inference.Failed, rep.Inference.FirstFailure)
	assert.Positive(t, rep.Inference.ByVersion["1.0.0"])
	assert.Positive(t, rep.Inference.Labelled, "labels from the is_fraud column were fed back")
}

// TestParseOwnModelReadmeExample loads the scenario of the README's "Your
// own model" section.
func TestParseOwnModelReadmeExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(readme), "### Your own model")
	require.True(t, ok)
	_, after, ok = strings.Cut(after, "```yaml\n")
	require.True(t, ok)
	block, _, ok := strings.Cut(after, "```")
	require.True(t, ok)
	var doc strings.Builder
	for _, line := range strings.Split(block, "\n") {
		doc.WriteString(strings.TrimPrefix(line, "   ") + "\n")
	}
	dir := t.TempDir()
	for _, sub := range []string{"model", "data"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, sub), 0o755))
	}
	copyExample(t, filepath.Join(dir, "model"))
	rows := strings.Replace(ownHeader, "is_fraud", "label", 1) + "10,12,0.1,3,1,0,400,0\n"
	writeFiles(t, dir, map[string]string{"data/inputs.csv": rows, "data/drifted.csv": rows, "my-model.yaml": doc.String()})
	sc, err := Load(filepath.Join(dir, "my-model.yaml"), NewRegistry())
	require.NoError(t, err, doc.String())
	assert.Equal(t, fraud.FeatureNames(), sc.Traffic.csv.Inputs[0].Columns)
}
