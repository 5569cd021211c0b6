package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

// writeFile writes data under the fleet's directory and returns the path.
func (f *fleet) writeFile(name string, data []byte) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	require.NoError(f.t, os.WriteFile(p, data, 0o644))
	return p
}

// direct runs model in onnxruntime itself: what the agent must answer.
func (f *fleet) direct(model []byte, in []infer.Tensor) []infer.Tensor {
	f.t.Helper()
	s, err := f.rt.Load(model, nil, nil)
	require.NoError(f.t, err)
	defer s.Close()
	out, err := s.Run(in)
	require.NoError(f.t, err)
	return out
}

// inferTyped sends inputs to model over the OIP JSON API.
func inferTyped(t *testing.T, a *agent.Agent, model string, inputs []infer.Tensor, outputs ...string) *oip.InferResponse {
	t.Helper()
	req := &oip.InferRequest{}
	for _, in := range inputs {
		ri, err := oip.NewInput(in)
		require.NoError(t, err)
		req.Inputs = append(req.Inputs, ri)
	}
	for _, o := range outputs {
		req.Outputs = append(req.Outputs, oip.RequestOutput{Name: o})
	}
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	resp, err := c.Infer(context.Background(), model, req)
	require.NoError(t, err)
	return resp
}

// TestAnyONNXModelEndToEnd: models a user brings, with mixed datatypes and
// a converted classifier, are inspected, pushed with sample inputs and no
// hand-written metadata, deployed to a real agent, and answer over the
// Open Inference Protocol exactly what onnxruntime computes; the
// classifier's accuracy is monitored on its label output.
func TestAnyONNXModelEndToEnd(t *testing.T) {
	f := startFleet(t)
	a := f.addAgent("dev-1", "site=a")

	mixed := modelzoo.Mixed()
	mixedPath := f.writeFile("mixed.onnx", mixed)
	out := f.cli("model", "inspect", mixedPath)
	assert.Contains(t, out, "country  tensor(string)  [N]    BYTES [-1]")
	assert.Contains(t, out, "drift: numeric inputs only; country not monitored")
	samples := f.writeFile("mixed.json", []byte(`{"inputs": [
		{"name": "amount", "shape": [2, 1], "datatype": "FP64", "data": [[1.5], [2.25]]},
		{"name": "count", "shape": [2, 1], "datatype": "INT32", "data": [3, -4]},
		{"name": "country", "shape": [2], "datatype": "BYTES", "data": ["de", "日本"]},
		{"name": "flag", "shape": [2], "datatype": "BOOL", "data": [true, false]}]}`))
	out = f.cli("model", "push", "--name", "mixed", "--version", "1", "--file", mixedPath, "--sample-inputs", samples)
	assert.Contains(t, out, "test vectors: 1 recorded by running the model on the sample inputs")
	assert.Contains(t, out, "checks passed: 1 test vectors")

	clf := modelzoo.Classifier(false)
	clfPath := f.writeFile("clf.onnx", clf)
	out = f.cli("model", "inspect", clfPath)
	assert.Contains(t, out, "class map of classes 0, 1")
	var rows, train strings.Builder
	train.WriteString("x0,x1,label\n")
	for i := range 40 {
		x0, x1 := float64(i%7)/6, float64(i%4)/3
		fmt.Fprintf(&rows, "%g,%g\n", x0, x1)
		fmt.Fprintf(&train, "%g,%g,%d\n", x0, x1, i%2)
	}
	out = f.cli("model", "push", "--name", "clf", "--version", "1", "--file", clfPath,
		"--sample-inputs", f.writeFile("rows.csv", []byte(rows.String())), "--reference-data", f.writeFile("train.csv", []byte(train.String())))
	assert.Contains(t, out, "reference statistics: 2 features from the reference data (columns left out: label)")

	f.cli("deploy", "mixed@1", "--device", "dev-1")
	f.cli("deploy", "clf@1", "--device", "dev-1")
	f.waitReported("mixed", "1", "dev-1")
	f.waitReported("clf", "1", "dev-1")

	// Mixed datatypes over JSON, compared with onnxruntime itself.
	in := []infer.Tensor{
		{Name: "amount", Shape: []int64{3, 1}, Data: []float64{0.1, -7, 1e10}},
		{Name: "count", Shape: []int64{3, 1}, Data: []int32{1, 2, -2147483648}},
		{Name: "country", Shape: []int64{3}, Data: []string{"fr", "", "ünïcødé"}},
		{Name: "flag", Shape: []int64{3}, Data: []bool{false, true, true}},
	}
	want := f.direct(mixed, in)
	resp := inferTyped(t, a, "mixed", in)
	require.Len(t, resp.Outputs, len(want))
	for i, w := range want {
		got, err := resp.Outputs[i].Tensor() // half holds +Inf (1e10 is beyond FP16): "Infinity" in JSON
		require.NoError(t, err, w.Name)
		assert.Equal(t, w.Name, got.Name)
		assert.Equal(t, w.DT(), got.DT(), w.Name)
		assert.Equal(t, w.Shape, got.Shape, w.Name)
		assert.Equal(t, w.Data, got.Data, "output %s over OIP JSON equals onnxruntime's", w.Name)
	}
	// Only some outputs, FP16 among them.
	small := []infer.Tensor{
		{Name: "amount", Shape: []int64{1, 1}, Data: []float64{0.1}}, {Name: "count", Shape: []int64{1, 1}, Data: []int32{1}},
		{Name: "country", Shape: []int64{1}, Data: []string{"x"}}, {Name: "flag", Shape: []int64{1}, Data: []bool{true}},
	}
	resp = inferTyped(t, a, "mixed", small, "half", "country_out")
	require.Len(t, resp.Outputs, 2)
	half, err := resp.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, tensor.FP16, half.Datatype)
	assert.Equal(t, []float32{tensor.RoundFP16(0.1)}, half.Data)

	// The classifier: class map with its classes, label output monitored.
	x := infer.Tensor{Name: "float_input", Shape: []int64{4, 2}, Data: []float32{1, 1, 0, 0, 0.9, 0.1, 0.1, 0.6}}
	want = f.direct(clf, []infer.Tensor{x})
	resp = inferTyped(t, a, "clf", []infer.Tensor{x})
	labels, err := resp.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, want[0].Data, labels.Data)
	probs, err := resp.Outputs[1].Tensor()
	require.NoError(t, err)
	assert.Equal(t, want[1].Data, probs.Data)
	assert.Equal(t, []int64{4, 2}, probs.Shape)
	assert.Equal(t, oip.KindClassMap, resp.Outputs[1].Parameters[oip.ParamKind])
	assert.Equal(t, []any{float64(0), float64(1)}, resp.Outputs[1].Parameters[oip.ParamClasses])

	predicted := labels.Data.([]int64) // [1 0 1 1]: x0 + 2·x1 > 1
	truth := []int64{1, 0, 0, 1}
	var fb []oip.Label
	for r, l := range truth {
		fb = append(fb, oip.Label{ID: resp.ID, Row: r, Label: &l})
	}
	res, err := (&oip.Client{BaseURL: "http://" + a.InferenceAddr()}).Feedback(context.Background(), "clf", &oip.FeedbackRequest{Labels: fb})
	require.NoError(t, err)
	assert.Equal(t, 4, res.Accepted)
	correct := 0
	for r := range truth {
		if predicted[r] == truth[r] {
			correct++
		}
	}
	var got *api.ModelMetrics
	require.Eventually(t, func() bool {
		got, err = f.cp.Monitor().Query(monitor.Query{Model: "clf", Version: "1", To: time.Now().Add(time.Minute)})
		return err == nil && got.Total.Labelled == 4
	}, 30*time.Second, 50*time.Millisecond, "labels reach the control plane")
	assert.EqualValues(t, correct, got.Total.Correct, "accuracy compares the labels with the label output")
}

// TestSameBytesNewMetadataActivates: a version with the same ONNX bytes as
// the active one but new metadata (here: new test vectors) activates, and
// the old version can be reactivated.
func TestSameBytesNewMetadataActivates(t *testing.T) {
	f := startFleet(t)
	a := f.addAgent("dev-1")
	v1 := f.train("fraud.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1", "--file", v1)
	f.cli("deploy", "fraud@1", "--device", "dev-1")
	f.waitReported("fraud", "1", "dev-1")

	// Same bytes, no .meta.json beside them: other test vectors.
	same := f.writeFile("same.onnx", mustRead(t, v1))
	out := f.cli("model", "push", "--name", "fraud", "--version", "2", "--file", same,
		"--sample-inputs", f.writeFile("rows.csv", []byte("10,3,0.9,800,5,1,3\n")))
	assert.Contains(t, out, "test vectors: 1 recorded")
	f.cli("deploy", "fraud@2", "--device", "dev-1")
	f.waitReported("fraud", "2", "dev-1")
	assert.Equal(t, "2", infer1(t, a).ModelVersion)
	st := a.Status()[0]
	assert.Equal(t, "1", st.Previous, "the first version stays as the one to roll back to")

	f.cli("deploy", "fraud@1", "--device", "dev-1")
	f.waitReported("fraud", "1", "dev-1")
	assert.Equal(t, "1", infer1(t, a).ModelVersion)

	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	require.NoError(t, c.Ready(context.Background()))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// TestReadyMeansEveryAssignedModelServes: readiness is false (a 4xx, with
// the reason) while an assigned model has no version serving, even though
// another model serves; inference on the serving model goes on.
func TestReadyMeansEveryAssignedModelServes(t *testing.T) {
	f := startFleet(t)
	a := f.addAgent("dev-1")
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	err := c.Ready(context.Background())
	var se *oip.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 400, se.StatusCode)
	assert.Contains(t, se.Message, "no model is assigned")

	v1 := f.train("fraud.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1", "--file", v1)
	// A second model whose only version is refused (its test vectors lie).
	f.cli("model", "push", "--name", "other", "--version", "1", "--file", f.train("other.onnx", "2"), "--meta", v1+".meta.json", "--force")
	f.cli("deploy", "fraud@1", "--device", "dev-1")
	f.waitReported("fraud", "1", "dev-1")
	require.NoError(t, c.Ready(context.Background()))

	f.cli("deploy", "other@1", "--device", "dev-1")
	require.Eventually(t, func() bool {
		err := c.Ready(context.Background())
		return errors.As(err, &se) && strings.Contains(se.Message, `model "other" has no version serving: version 1 was refused: test vectors`)
	}, 30*time.Second, 20*time.Millisecond, "not ready while other has nothing serving")
	assert.Equal(t, 400, se.StatusCode)
	assert.Equal(t, "1", infer1(t, a).ModelVersion, "fraud keeps serving")
}

// TestCorpusEndToEnd pushes every model of testdata/models with its
// sample inputs (no metadata), deploys them all to one real agent, and
// checks that its answers over OIP, as JSON and with the binary
// extension, equal what onnxruntime computes directly.
func TestCorpusEndToEnd(t *testing.T) {
	f := startFleet(t)
	a := f.addAgent("dev-1")
	const dir = "../testdata/models"
	corpus := modelzoo.Corpus()
	for _, e := range corpus {
		out := f.cli("model", "push", "--name", e.Name, "--version", "1", "--file", filepath.Join(dir, e.Name+".onnx"),
			"--sample-inputs", filepath.Join(dir, e.Name+".samples.json"))
		require.Contains(t, out, "checks passed", e.Name)
		f.cli("deploy", e.Name+"@1", "--device", "dev-1")
	}
	for _, e := range corpus {
		if !assert.Eventually(t, func() bool {
			d, err := f.cp.Device("dev-1")
			return err == nil && d.Reported[e.Name] != nil && d.Reported[e.Name].State == "active"
		}, 30*time.Second, 20*time.Millisecond) {
			d, _ := f.cp.Device("dev-1")
			t.Fatalf("%s: %+v; desired %+v; agent %+v", e.Name, d.Reported[e.Name], d.Desired, a.Status())
		}
	}
	c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
	for _, e := range corpus {
		reqs, err := oip.ParseRequests(mustRead(t, filepath.Join(dir, e.Name+".samples.json")))
		require.NoError(t, err)
		md, err := c.Metadata(context.Background(), e.Name)
		require.NoError(t, err, e.Name)
		sess, err := f.rt.Load(e.Model, nil, nil)
		require.NoError(t, err, e.Name)
		for i, req := range reqs {
			in, err := oip.DecodeInputs(req, e.Name, sess.Inputs(), 1<<20)
			require.NoError(t, err, "%s request %d", e.Name, i)
			want, err := sess.Run(in)
			require.NoError(t, err, "%s request %d", e.Name, i)

			viaJSON, err := c.Infer(context.Background(), e.Name, req)
			require.NoError(t, err, "%s request %d over JSON", e.Name, i)
			viaBinary, err := c.InferBinary(context.Background(), e.Name, in)
			require.NoError(t, err, "%s request %d over binary", e.Name, i)
			for how, resp := range map[string]*oip.InferResponse{"JSON": viaJSON, "binary": viaBinary} {
				require.Len(t, resp.Outputs, len(want), "%s %s", e.Name, how)
				for k, w := range want {
					got, err := resp.Outputs[k].Tensor()
					require.NoError(t, err, "%s %s output %s", e.Name, how, w.Name)
					assert.Equal(t, w.Name, got.Name)
					assert.Equal(t, w.DT(), got.DT(), "%s %s output %s", e.Name, how, w.Name)
					assert.Equal(t, w.Shape, got.Shape, "%s %s output %s", e.Name, how, w.Name)
					assert.Equal(t, w.Data, got.Data, "%s %s output %s equals onnxruntime's", e.Name, how, w.Name)
					assert.Equal(t, md.Outputs[k].Datatype, string(got.DT()), "%s metadata", e.Name)
				}
			}
		}
		require.NoError(t, sess.Close())
	}
	require.NoError(t, c.Ready(context.Background()), "every assigned model serves")
}
