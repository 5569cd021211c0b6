package retrain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func runtimeForTest(t *testing.T) *infer.Runtime {
	t.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(t, err, "the real onnxruntime library is needed: run `make deps`")
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	return rt
}

// specsOf describes model as the registry's manifest would.
func specsOf(t *testing.T, rt *infer.Runtime, model []byte, score, label string) *efpb.Manifest {
	t.Helper()
	d, err := rt.Describe(model)
	require.NoError(t, err)
	require.NoError(t, d.Err())
	ins, outs := d.Specs()
	return &efpb.Manifest{Inputs: ins, Outputs: outs, ScoreOutput: score, LabelOutput: label}
}

// decoded is a dataset row as a job reads it from the export (numbers as
// json.Number).
func decoded(t *testing.T, r api.DatasetRow) labelledRow {
	t.Helper()
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var out api.DatasetRow
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&out))
	return out
}

// Evaluation feeds every datatype the agents serve: the held-out rows
// become inputs through the inference route's own decoding.
func TestEvaluationFeedsEveryDatatype(t *testing.T) {
	rt := runtimeForTest(t)
	s := &Service{opts: Options{Runtime: rt}}
	label := func(v int64) *int64 { return &v }

	// Identity models: the two scores are the row's values, the class
	// their argmax.
	for _, d := range tensor.Datatypes() {
		if !d.IsNumeric() || d == tensor.Bool {
			continue
		}
		t.Run(string(d), func(t *testing.T) {
			model := modelzoo.Identity(d)
			m := specsOf(t, rt, model, "y", "")
			var rows []labelledRow
			for i := range 10 {
				vals := []api.Value{int64(i % 2), int64(1 - i%2)} // class 1 - i%2
				if d == tensor.Uint64 {
					vals = []api.Value{uint64(i % 2), uint64(1 - i%2)}
				}
				rows = append(rows, decoded(t, api.DatasetRow{InferenceID: fmt.Sprint(i), Inputs: map[string][]api.Value{"x": vals}, Label: label(int64(1 - i%2))}))
			}
			sc, err := s.score(context.Background(), model, m, rows)
			require.NoError(t, err)
			assert.Equal(t, 1.0, sc.Accuracy, "Identity(%s) scored its own argmax", d)
		})
	}

	// A model of FP64, INT32, BYTES and BOOL inputs whose label output is
	// the negated BOOL input.
	model := modelzoo.Mixed()
	m := specsOf(t, rt, model, "score", "negated")
	var rows []labelledRow
	for i := range 9 {
		flag := i%3 == 0
		l := int64(1)
		if flag {
			l = 0
		}
		rows = append(rows, decoded(t, api.DatasetRow{InferenceID: fmt.Sprint(i), Label: &l, Inputs: map[string][]api.Value{
			"amount": {float64(i) + 0.5}, "count": {int64(i)}, "country": {"de"}, "flag": {flag},
		}}))
	}
	sc, err := s.score(context.Background(), model, m, rows)
	require.NoError(t, err)
	assert.Equal(t, 1.0, sc.Accuracy)
	assert.Equal(t, 1.0, sc.Recall)

	// A value of the wrong kind is refused with what was wrong.
	rows[0].Inputs["count"] = []api.Value{"hashed-7f3a"}
	_, err = s.score(context.Background(), model, m, rows)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "count")
}
