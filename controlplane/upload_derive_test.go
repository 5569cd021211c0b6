package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// push uploads through the typed client and returns the version and the
// manifest it got.
func (ts *testServer) push(u client.Upload) (api.ModelVersion, *efpb.Manifest, error) {
	ts.t.Helper()
	mv, err := ts.Client.UploadModel(ts.t.Context(), u)
	if err != nil {
		return mv, nil, err
	}
	m := &efpb.Manifest{}
	require.NoError(ts.t, protojson.Unmarshal(mv.Manifest, m))
	return mv, m, nil
}

func TestPushMixedModelWithSampleRequests(t *testing.T) {
	ts := newTestServer(t, nil)
	samples := `[
	 {"inputs": [
	   {"name": "amount", "shape": [2, 1], "datatype": "FP64", "data": [[1.5], [2.25]]},
	   {"name": "count", "shape": [2, 1], "datatype": "INT32", "data": [3, -4]},
	   {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["de", "日本"]},
	   {"name": "flag", "shape": [2], "datatype": "BOOL", "data": [true, false]}]},
	 {"inputs": [
	   {"name": "amount", "shape": [1, 1], "datatype": "FP64", "data": [0.1]},
	   {"name": "count", "shape": [1, 1], "datatype": "INT32", "data": [7]},
	   {"name": "country", "shape": [1], "datatype": "BYTES", "data": [""]},
	   {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [true]}]}]`
	mv, m, err := ts.push(client.Upload{Name: "mixed", Version: "1", Model: bytes.NewReader(modelzoo.Mixed()), Samples: []byte(samples)})
	require.NoError(t, err)
	assert.True(t, mv.Checks.Passed)
	assert.Equal(t, 2, mv.Checks.TestVectors)
	assert.EqualValues(t, 2, m.ProtocolVersion, "typed tensors need protocol version 2")
	require.Len(t, m.Inputs, 4)
	assert.Equal(t, "BYTES", m.Inputs[2].Datatype)
	require.Len(t, m.Outputs, 6)
	require.Len(t, m.TestVectors, 2)
	exp := m.TestVectors[0].Expected
	assert.Equal(t, "INT64", exp[1].Datatype)
	assert.Equal(t, []int64{3, -4}, exp[1].IntData)
	assert.Equal(t, [][]byte{[]byte("de"), []byte("日本")}, exp[2].BytesData)
	assert.Equal(t, "FP16", exp[4].Datatype)
	assert.InDelta(t, 1e-3, m.Tolerance, 1e-9, "an FP16 output takes the half tolerance")
	assert.InDelta(t, 1e-2, m.RelativeTolerance, 1e-9)
	assert.Contains(t, strings.Join(mv.Checks.Notes, "\n"), "test vectors: 2 recorded by running the model on the sample inputs")
	assert.EqualValues(t, 15, m.Opset, "taken from the model")
	assert.Contains(t, mv.Checks.Notes, "drift: numeric inputs only; country (BYTES) not monitored")
	metrics, err := ts.Client.ModelMetrics(context.Background(), "mixed", "1", api.MetricsQuery{})
	require.NoError(t, err)
	assert.Equal(t, []string{"country (BYTES)"}, metrics.UnmonitoredInputs, "the metrics say which inputs drift skips")
}

func TestPushClassifierWithCSV(t *testing.T) {
	ts := newTestServer(t, nil)
	var csv, ref strings.Builder
	csv.WriteString("x0,x1\n")
	ref.WriteString("x0,x1,is_fraud\n")
	for i := range 20 {
		x0, x1 := float64(i%5)/4, float64(i%3)/2
		fmt.Fprintf(&csv, "%g,%g\n", x0, x1)
		fmt.Fprintf(&ref, "%g,%g,%d\n", x0, x1, i%2)
	}
	mv, m, err := ts.push(client.Upload{Name: "clf", Version: "1", Model: bytes.NewReader(modelzoo.Classifier(false)),
		Samples: []byte(csv.String()), Reference: []byte(ref.String())})
	require.NoError(t, err)
	notes := strings.Join(mv.Checks.Notes, "\n")
	assert.Equal(t, 2, mv.Checks.TestVectors, "20 rows in vectors of at most 16")
	assert.Equal(t, "output_label", m.LabelOutput, "accuracy is judged on the label output")
	assert.Equal(t, "output_probability", m.ScoreOutput)
	probs := m.Outputs[1]
	assert.Equal(t, efpb.TensorKind_TENSOR_KIND_CLASS_MAP, probs.Kind)
	assert.Equal(t, []int64{0, 1}, probs.Classes.IntData)
	require.Len(t, m.Reference, 2)
	assert.Equal(t, "x0", m.Reference[0].Name)
	assert.Contains(t, notes, "reference statistics: 2 features from the reference data (columns left out: is_fraud)")
	assert.Equal(t, []int64{16, 2}, m.TestVectors[0].Expected[1].Shape, "class maps are recorded as [rows, classes]")
}

func TestPushFP32ModelStaysVersion1(t *testing.T) {
	ts := newTestServer(t, nil)
	a := fleettest.TrainedModel(t, 1)
	_, m, err := ts.push(client.Upload{Name: "fraud", Version: "1", Model: bytes.NewReader(a.ONNX),
		Samples: []byte("1,2,0.5,3,1,0,100\n40,3,0.9,900,6,1,5\n")})
	require.NoError(t, err)
	assert.EqualValues(t, 1, m.ProtocolVersion, "an FP32 model pushed with samples is still readable by version 1 agents")
	assert.Zero(t, m.RelativeTolerance)
	assert.Greater(t, m.Tolerance, float32(1e-5), "the relative part is folded into one absolute tolerance")
	assert.Less(t, m.Tolerance, float32(2e-4))
}

func TestPushRefusalsNameProblemAndFix(t *testing.T) {
	ts := newTestServer(t, nil)
	tests := []struct {
		name    string
		u       client.Upload
		want    []string
		notWant string
	}{
		{"fails on synthetic inputs", client.Upload{Model: bytes.NewReader(modelzoo.Lookup())},
			[]string{"fails on synthetic inputs", "--sample-inputs FILE", "--meta FILE"}, ""},
		{"sequence output", client.Upload{Model: bytes.NewReader(modelzoo.SequenceOutput())},
			[]string{`cannot be served: output "parts" is a seq(tensor(float))`, "edgefleet model inspect"}, "not a loadable"},
		{"map input", client.Upload{Model: bytes.NewReader(modelzoo.MapInput())},
			[]string{`input "features" is a map(string,tensor(float))`}, "not a loadable"},
		{"sample of another datatype", client.Upload{Model: bytes.NewReader(modelzoo.Lookup()),
			Samples: []byte(`{"inputs":[{"name":"ids","shape":[1,3],"datatype":"FP32","data":[1,0,1]}]}`)},
			[]string{`sample inputs: request 0: input "ids": datatype is FP32, but the model's input is INT64`}, ""},
		{"sample the model fails on", client.Upload{Model: bytes.NewReader(modelzoo.Lookup()),
			Samples: []byte(`{"inputs":[{"name":"ids","shape":[1,3],"datatype":"INT64","data":[5,0,0]}]}`)},
			[]string{"the model fails on the sample inputs", "ids INT64 [-1,3]"}, ""},
		{"CSV for several inputs", client.Upload{Model: bytes.NewReader(modelzoo.Mixed()), Samples: []byte("1,2\n")},
			[]string{"a CSV feeds a model with one input, this one has 4", "send an OIP request JSON instead"}, ""},
		{"reference of a string input", client.Upload{Model: bytes.NewReader(modelzoo.Identity("BYTES")),
			Samples: []byte(`{"inputs":[{"name":"x","shape":[1,2],"datatype":"BYTES","data":["a","b"]}]}`), Reference: []byte("a,b\n1,2\n")},
			[]string{`reference data: input "x" is BYTES; a CSV feeds numeric inputs only`}, ""},
		{"bad JSON samples", client.Upload{Model: bytes.NewReader(modelzoo.Lookup()), Samples: []byte(`{"inputs": [}`)},
			[]string{"sample inputs: invalid JSON"}, ""},
	}
	for i, tt := range tests {
		tt.u.Name, tt.u.Version = "m", fmt.Sprint(i)
		_, err := ts.Client.UploadModel(t.Context(), tt.u)
		require.Error(t, err, tt.name)
		t.Logf("%s: %v", tt.name, err)
		assert.ErrorIs(t, err, api.ErrInvalid, tt.name)
		for _, w := range tt.want {
			assert.Contains(t, err.Error(), w, tt.name)
		}
		if tt.notWant != "" {
			assert.NotContains(t, err.Error(), tt.notWant, tt.name)
		}
	}
	// Given a real sample, the lookup model is accepted.
	mv, err := ts.Client.UploadModel(t.Context(), client.Upload{Name: "m", Version: "ok", Model: bytes.NewReader(modelzoo.Lookup()),
		Samples: []byte(`{"inputs":[{"name":"ids","shape":[1,3],"datatype":"INT64","data":[0,1,1]}]}`)})
	require.NoError(t, err)
	out, _ := json.Marshal(mv.Checks)
	assert.Contains(t, string(out), `"passed":true`)
}
