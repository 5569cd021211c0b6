package retrain

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// keepMeta is a model registry that keeps what is published.
type keepMeta struct {
	oneVersion
	mu   sync.Mutex // guards meta
	meta *efpb.Manifest
}

func (k *keepMeta) Publish(ctx context.Context, name, v string, onnx []byte, meta *efpb.Manifest, ref []byte) (api.ModelVersion, error) {
	k.mu.Lock()
	k.meta = meta
	k.mu.Unlock()
	return k.oneVersion.Publish(ctx, name, v, onnx, meta, ref)
}

// A policy naming an uploaded base dataset trains on the base rows and
// the captured training rows; the held-out rows are field rows only; the
// lineage names both datasets.
func TestBaseDatasetJoinsTraining(t *testing.T) {
	field := fraudDataset(t, 400)
	base := fraudDataset(t, 1000)
	for i := range base {
		base[i].InferenceID = "base-" + base[i].InferenceID
		base[i].Device = ""
	}
	const baseID = "ba5e0000000000000000000000000000000000000000000000000000000000aa"
	data := &fieldData{rows: field, base: base, baseID: baseID}
	models := &keepMeta{}
	var heldOut []labelledRow
	r := startService(t, newKV(t), data, models, func(s *Service) {
		s.evaluator = func(_ context.Context, _ []byte, _ *efpb.Manifest, _ []byte, _ *efpb.Manifest, rows []labelledRow) (*api.Evaluation, error) {
			heldOut = rows
			return &api.Evaluation{Rows: len(rows), Candidate: api.EvaluationScore{Accuracy: 0.9}, Parent: api.EvaluationScore{Accuracy: 0.8}}, nil
		}
	})

	_, err := r.s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, BaseDataset: "ffff0000"})
	require.ErrorIs(t, err, api.ErrInvalid, "an unknown base dataset is refused")
	assert.Contains(t, err.Error(), "no base dataset")
	st, err := r.s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, BaseDataset: baseID[:12]})
	require.NoError(t, err)
	assert.Equal(t, baseID, st.Policy.BaseDataset, "stored as the full id")

	j, err := r.s.Start("fraud", "alice", api.RetrainRequest{})
	require.NoError(t, err)
	j = waitJob(t, r.s, j.ID, func(j *api.RetrainJob) bool { return j.State.Terminal() })
	require.Equal(t, api.RetrainPublished, j.State, "reason %q", j.Reason)
	require.NotNil(t, j.Base)
	assert.Equal(t, baseID, j.Base.ID)
	assert.Equal(t, len(base)+len(field), j.TrainRows+j.HoldoutRows, "training rows are base ∪ the field rows not held out")
	for _, h := range heldOut {
		require.False(t, strings.HasPrefix(h.InferenceID, "base-"), "a base row was held out")
	}
	assert.Len(t, heldOut, j.HoldoutRows)

	models.mu.Lock()
	defer models.mu.Unlock()
	ti := models.meta.GetTraining()
	require.Len(t, ti.GetDatasets(), 2)
	assert.Equal(t, uint32(1), ti.GetDatasets()[0].GetVersion())
	assert.Equal(t, &efpb.DatasetRef{Model: "fraud", Sha256: baseID, Rows: uint64(len(base))}, ti.GetDatasets()[1])
	var trainRows string
	for _, kv := range ti.GetParams() {
		if kv.GetKey() == "train_rows" {
			trainRows = kv.GetValue()
		}
	}
	assert.Equal(t, strconv.Itoa(j.TrainRows), trainRows, "the trainer fitted base ∪ captured training rows")
	e := lineageEntry(models.meta)
	require.Len(t, e.Datasets, 2)
	assert.True(t, e.Datasets[1].Base)
	assert.False(t, e.Datasets[0].Base)
}
