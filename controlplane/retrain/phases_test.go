package retrain

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// fieldData is a data service with one passing dataset of fraud rows per
// model. With hang set, Build blocks (and says so on entered) until
// release is closed, or, with honour, until its context ends too.
type fieldData struct {
	rows    []api.DatasetRow
	base    []api.DatasetRow // the base dataset baseID's rows
	baseID  string
	hang    bool
	honour  bool
	entered chan string
	release chan struct{}
}

func fraudDataset(t testing.TB, n int) []api.DatasetRow {
	t.Helper()
	g, err := fraud.NewGenerator(7, fraud.Params{FraudRate: 0.3})
	require.NoError(t, err)
	d := g.Generate(n)
	rows := make([]api.DatasetRow, n)
	for i, r := range d.Rows {
		vals := make([]api.Value, len(r))
		for k, v := range r {
			vals[k] = float64(v)
		}
		var l int64
		if d.Labels[i] {
			l = 1
		}
		rows[i] = api.DatasetRow{Time: time.Unix(int64(i), 0).UTC(), Device: "d1", ModelVersion: "v1", InferenceID: fmt.Sprintf("id-%d", i),
			Inputs: map[string][]api.Value{fraud.InputName: vals}, Label: &l}
	}
	return rows
}

func (f *fieldData) dataset(model string) api.Dataset {
	return api.Dataset{Model: model, Version: 1, SHA256: "0123456789abcdef0123", Rows: len(f.rows), Labelled: len(f.rows),
		Validation: api.Validation{Passed: true}}
}

func (f *fieldData) Build(ctx context.Context, model string, _ api.DatasetRequest) (api.Dataset, error) {
	if f.hang {
		f.entered <- model
		if f.honour {
			select {
			case <-ctx.Done():
				return api.Dataset{}, fmt.Errorf("build: %w", ctx.Err())
			case <-f.release:
			}
		} else {
			<-f.release
		}
	}
	return f.dataset(model), nil
}

func (f *fieldData) Get(model, _ string) (api.Dataset, error) { return f.dataset(model), nil }

func (f *fieldData) Base(model, ref string) (api.BaseDataset, error) {
	if f.baseID == "" || len(ref) < 8 || !strings.HasPrefix(f.baseID, ref) {
		return api.BaseDataset{}, api.Errorf(api.ErrNotFound, "model %s has no base dataset %q", model, ref)
	}
	return api.BaseDataset{Model: model, ID: f.baseID, Rows: len(f.base), Labelled: len(f.base)}, nil
}

func (f *fieldData) ExportBase(_, _ string, w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, r := range f.base {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func (f *fieldData) Export(_, _, _ string, w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, r := range f.rows {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// oneVersion is a model registry holding v1 of every model; it counts
// publishes.
type oneVersion struct {
	mu       sync.Mutex // guards uploads
	uploads  int
	versions map[string]bool
}

func (m *oneVersion) Has(_, v string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return v == "v1" || m.versions[v]
}
func (*oneVersion) Manifest(_, v string) (*efpb.Manifest, error) {
	if v != "v1" {
		return nil, api.Errorf(api.ErrNotFound, "no %s", v)
	}
	return &efpb.Manifest{Version: "v1"}, nil
}
func (*oneVersion) File(string, string) ([]byte, error) { return []byte("v1 bytes"), nil }
func (m *oneVersion) Publish(_ context.Context, _, v string, _ []byte, _ *efpb.Manifest, _ []byte) (api.ModelVersion, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.uploads++
	if m.versions == nil {
		m.versions = map[string]bool{}
	}
	m.versions[v] = true
	return api.ModelVersion{Version: v}, nil
}

func (m *oneVersion) published() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.uploads
}

// running is a retrain service run by Run until the test ends (or stop).
type running struct {
	s      *Service
	kv     *store.KV
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after its context ended")
	}
}

func startService(t *testing.T, kv *store.KV, data Datasets, models Models, mod func(*Service)) *running {
	t.Helper()
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s, err := New(Options{KV: kv, Datasets: data, Models: models, Fleet: current("v1"), Rollouts: noRollouts{}, WorkDir: t.TempDir(), Clock: clock.Now})
	require.NoError(t, err)
	if mod != nil {
		mod(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, kv: kv, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func newKV(t *testing.T) *store.KV {
	t.Helper()
	db, err := store.Open(store.Options{InMemory: true, Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db.Namespace("retrain")
}

func waitJob(t *testing.T, s *Service, id string, ok func(*api.RetrainJob) bool) *api.RetrainJob {
	t.Helper()
	var j *api.RetrainJob
	require.Eventually(t, func() bool {
		var err error
		j, err = s.Job(id)
		require.NoError(t, err)
		return ok(j)
	}, time.Minute, 5*time.Millisecond, "job %s", id)
	return j
}

func entered(t *testing.T, ch chan string, what string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(time.Minute):
		t.Fatalf("no job reached %s", what)
	}
	return ""
}

// A phase that hangs — building the dataset or evaluating a candidate —
// and does not notice its context does not hold the single worker: a
// cancel or the time limit ends the job, and the worker takes the next
// job. Shutdown leaves the job where it stands, and it runs again at the
// next start.
func TestHangingPhaseIsCancelled(t *testing.T) {
	rows := fraudDataset(t, 800)
	for _, phaseName := range []api.RetrainState{api.RetrainBuilding, api.RetrainEvaluating} {
		for _, stopBy := range []string{"cancel", "time limit"} {
			t.Run(string(phaseName)+" by "+stopBy, func(t *testing.T) {
				release := make(chan struct{})
				hangs := make(chan string, 4)
				data := &fieldData{rows: rows, hang: phaseName == api.RetrainBuilding, entered: hangs, release: release}
				models := &oneVersion{}
				r := startService(t, newKV(t), data, models, func(s *Service) {
					if phaseName == api.RetrainEvaluating {
						s.evaluator = func(context.Context, []byte, *efpb.Manifest, []byte, *efpb.Manifest, []labelledRow) (*api.Evaluation, error) {
							hangs <- "eval"
							<-release
							return &api.Evaluation{Candidate: api.EvaluationScore{Accuracy: 1}}, nil
						}
					}
				})
				// Closed after Run's cleanup is registered, so it runs first:
				// Run waits for the abandoned phases.
				t.Cleanup(func() { close(release) })
				// The limit must leave time to train before evaluation
				// (tens of milliseconds idle): 3s is far above that.
				limit := time.Hour
				if stopBy == "time limit" {
					limit = 300 * time.Millisecond
					if phaseName == api.RetrainEvaluating {
						limit = 3 * time.Second
					}
				}
				for _, m := range []string{"fraud", "churn"} {
					_, err := r.s.SetPolicy(m, api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, TimeLimit: api.Duration(limit)})
					require.NoError(t, err)
				}
				a, err := r.s.Start("fraud", "alice", api.RetrainRequest{})
				require.NoError(t, err)
				entered(t, hangs, string(phaseName))
				got, err := r.s.Job(a.ID)
				require.NoError(t, err)
				require.Equal(t, phaseName, got.State)
				if stopBy == "cancel" {
					_, err = r.s.Cancel(a.ID, "bob")
					require.NoError(t, err)
				}
				got = waitJob(t, r.s, a.ID, func(j *api.RetrainJob) bool { return j.State.Terminal() })
				assert.Equal(t, api.RetrainFailed, got.State)
				if stopBy == "cancel" {
					assert.Equal(t, "cancelled by bob while "+string(phaseName), got.Reason)
				} else {
					assert.Contains(t, got.Reason, fmt.Sprintf("passed the job's time limit of %v while %s", limit, phaseName))
				}

				// The worker is free: the next job runs (and reaches the
				// same phase).
				b, err := r.s.Start("churn", "alice", api.RetrainRequest{})
				require.NoError(t, err)
				entered(t, hangs, string(phaseName))
				got, err = r.s.Job(b.ID)
				require.NoError(t, err)
				assert.Equal(t, phaseName, got.State)
				assert.Zero(t, models.published())
			})
		}
		t.Run(string(phaseName)+" by shutdown", func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			hangs := make(chan string, 4)
			kv := newKV(t)
			data := &fieldData{rows: rows, hang: phaseName == api.RetrainBuilding, honour: true, entered: hangs, release: release}
			models := &oneVersion{}
			hangEval := func(s *Service) {
				if phaseName == api.RetrainEvaluating {
					s.evaluator = func(ctx context.Context, _ []byte, _ *efpb.Manifest, _ []byte, _ *efpb.Manifest, _ []labelledRow) (*api.Evaluation, error) {
						hangs <- "eval"
						<-ctx.Done()
						return nil, ctx.Err()
					}
				}
			}
			r := startService(t, kv, data, models, hangEval)
			_, err := r.s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud})
			require.NoError(t, err)
			a, err := r.s.Start("fraud", "alice", api.RetrainRequest{})
			require.NoError(t, err)
			entered(t, hangs, string(phaseName))
			r.stop(t)
			got, err := r.s.Job(a.ID)
			require.NoError(t, err)
			assert.Equal(t, phaseName, got.State, "shutdown leaves the job where it stands: %s", got.Reason)

			r2 := startService(t, kv, data, models, hangEval)
			entered(t, hangs, string(phaseName)+" after the restart")
			got = waitJob(t, r2.s, a.ID, func(j *api.RetrainJob) bool { return j.State == phaseName })
			resumed := false
			for _, l := range got.Log {
				resumed = resumed || strings.HasPrefix(l.Message, "interrupted in "+string(phaseName)+" by a control-plane restart")
			}
			assert.True(t, resumed, "the log says why it runs again: %v", got.Log)
		})
	}
}
