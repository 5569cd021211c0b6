package retrain

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// published is a model registry holding versions published by jobs.
type published struct {
	mu       sync.Mutex        // guards byJob and uploads
	byJob    map[string]string // version → the job id in its lineage
	uploads  int
	rollouts []*api.Rollout
	creates  []api.RolloutSpec
}

func (p *published) Has(_, v string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byJob[v]
	return ok || v == "v1"
}

func (p *published) Manifest(_, v string) (*efpb.Manifest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if job, ok := p.byJob[v]; ok {
		return &efpb.Manifest{Version: v, Training: &efpb.TrainingInfo{RetrainJob: job, ParentVersion: "v1"}}, nil
	}
	if v == "v1" {
		return &efpb.Manifest{Version: v}, nil
	}
	return nil, api.Errorf(api.ErrNotFound, "no %s", v)
}

func (p *published) File(string, string) ([]byte, error) { return nil, fmt.Errorf("not read here") }

func (p *published) Publish(context.Context, string, string, []byte, *efpb.Manifest, []byte) (api.ModelVersion, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.uploads++
	return api.ModelVersion{}, fmt.Errorf("a resumed job must not publish again")
}

func (p *published) Create(_ context.Context, spec api.RolloutSpec, _ string) (*api.Rollout, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.creates = append(p.creates, spec)
	r := &api.Rollout{ID: fmt.Sprintf("r-%d", len(p.creates)), Spec: spec}
	p.rollouts = append(p.rollouts, r)
	return r, nil
}

func (p *published) List() []*api.Rollout {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*api.Rollout(nil), p.rollouts...)
}

// A job a restart interrupted while publishing goes on from what it had
// done: its candidate (found by the job id in its lineage) is not
// published again, and a rollout of it is created only if none exists.
func TestResumeAfterPublishing(t *testing.T) {
	for _, tt := range []struct {
		name         string
		rolloutExist bool
		wantRollout  string
		wantCreates  int
	}{
		{"rollout created before the restart", true, "r-0", 0},
		{"rollout not created yet", false, "r-1", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db, err := store.Open(store.Options{InMemory: true, Profile: store.ProfileServer})
			require.NoError(t, err)
			t.Cleanup(func() { _ = db.Close() })
			kv := db.Namespace("retrain")
			clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
			p := &published{byJob: map[string]string{"v2": "j-1"}}
			if tt.rolloutExist {
				p.rollouts = []*api.Rollout{{ID: "r-0", Spec: api.RolloutSpec{Model: "fraud", Version: "v2"}}}
			}
			job := api.RetrainJob{ID: "j-1", Model: "fraud", State: api.RetrainPublishing, Trigger: "manual:alice", Created: clock.Now(),
				Parent: "v1", Candidate: "v2", Dataset: &api.Dataset{Model: "fraud", Version: 1, SHA256: "ab"},
				Policy: api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Rollout: &api.RolloutSpec{Selector: "site=b",
					Stages: []api.RolloutStage{{Percent: 100}}}}.WithDefaults()}
			require.NoError(t, kv.SetJSON(prefixJob+job.ID, job, true))

			s, err := New(Options{KV: kv, Datasets: noData{}, Models: p, Fleet: current("v1"), Rollouts: p, WorkDir: t.TempDir(), Clock: clock.Now})
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })

			var j *api.RetrainJob
			require.Eventually(t, func() bool {
				j, err = s.Job("j-1")
				require.NoError(t, err)
				return j.State.Terminal()
			}, 30*time.Second, 5*time.Millisecond)
			assert.Equal(t, api.RetrainRollingOut, j.State, "reason %q", j.Reason)
			assert.Equal(t, tt.wantRollout, j.Rollout)
			p.mu.Lock()
			defer p.mu.Unlock()
			assert.Zero(t, p.uploads, "published once")
			require.Len(t, p.creates, tt.wantCreates)
			if tt.wantCreates > 0 {
				assert.Equal(t, "v2", p.creates[0].Version)
				assert.Equal(t, "site=b", p.creates[0].Selector)
			}
			require.NotEmpty(t, j.Log)
			assert.Contains(t, j.Log[0].Message, "interrupted while publishing")
		})
	}
}

// A job interrupted by restarts twice already is not run a third time: a
// job that takes the control plane down would otherwise do so at every
// start.
func TestResumeGivesUpAfterRepeatedInterruptions(t *testing.T) {
	db, err := store.Open(store.Options{InMemory: true, Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	kv := db.Namespace("retrain")
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	var log []api.RetrainLogEntry
	for range 2 {
		log = append(log, api.RetrainLogEntry{Time: clock.Now(), State: api.RetrainQueued,
			Message: "interrupted in training by a control-plane restart; runs again from its dataset"})
	}
	job := api.RetrainJob{ID: "j-1", Model: "fraud", State: api.RetrainTraining, Trigger: "manual:alice", Created: clock.Now(),
		Parent: "v1", Log: log, Policy: api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud}.WithDefaults()}
	require.NoError(t, kv.SetJSON(prefixJob+job.ID, job, true))

	s, err := New(Options{KV: kv, Datasets: noData{}, Models: versions{"v1": true}, Fleet: current("v1"), Rollouts: noRollouts{},
		WorkDir: t.TempDir(), Clock: clock.Now})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var j *api.RetrainJob
	require.Eventually(t, func() bool {
		j, err = s.Job("j-1")
		require.NoError(t, err)
		return j.State.Terminal()
	}, 30*time.Second, 5*time.Millisecond)
	assert.Equal(t, api.RetrainFailed, j.State)
	assert.Contains(t, j.Reason, "interrupted in training by a control-plane restart for the 3rd time; not run again")
}
