package retrain

import (
	"context"
	"fmt"
	"strings"
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

// A cancel that was recorded before a control-plane restart stands: the
// job does not resume, never publishes and never rolls out, whatever
// step it was in (publishing included).
func TestCancelSurvivesRestart(t *testing.T) {
	for _, state := range []api.RetrainState{api.RetrainBuilding, api.RetrainTraining, api.RetrainPublishing} {
		t.Run(string(state), func(t *testing.T) {
			kv := newKV(t)
			clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
			job := api.RetrainJob{ID: "j-1", Model: "fraud", State: state, Trigger: "manual:alice", Created: clock.Now(), Parent: "v1",
				CancelledBy: "bob", Dataset: &api.Dataset{Model: "fraud", Version: 1, SHA256: "0123456789abcdef0123"},
				Policy: api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Rollout: &api.RolloutSpec{Stages: []api.RolloutStage{{Percent: 100}}}}.WithDefaults()}
			if state == api.RetrainPublishing {
				job.Candidate = "v2"
			}
			require.NoError(t, kv.SetJSON(prefixJob+job.ID, job, true))
			p := &published{byJob: map[string]string{}}
			r := startService(t, kv, &fieldData{rows: fraudDataset(t, 400)}, p, nil)
			j := waitJob(t, r.s, "j-1", func(j *api.RetrainJob) bool { return j.State.Terminal() })
			assert.Equal(t, api.RetrainFailed, j.State)
			assert.Equal(t, "cancelled by bob while "+string(state)+"; the control plane restarted before the job stopped", j.Reason)
			p.mu.Lock()
			defer p.mu.Unlock()
			assert.Zero(t, p.uploads, "a cancelled job never publishes")
			assert.Empty(t, p.creates, "nor rolls out")
		})
	}
}

// A cancel racing the control plane's shutdown: once Cancel answered,
// the job ends cancelled — in this run or at the next start — and never
// publishes.
func TestCancelRacingShutdown(t *testing.T) {
	rows := fraudDataset(t, 400)
	for i := range 20 {
		kv := newKV(t)
		hangs := make(chan string, 4)
		release := make(chan struct{})
		data := &fieldData{rows: rows, hang: true, honour: true, entered: hangs, release: release}
		models := &oneVersion{}
		r := startService(t, kv, data, models, nil)
		_, err := r.s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, MinLabelled: 10})
		require.NoError(t, err)
		a, err := r.s.Start("fraud", "alice", api.RetrainRequest{})
		require.NoError(t, err)
		entered(t, hangs, "building")
		var wg sync.WaitGroup
		var cancelErr error
		wg.Go(func() { _, cancelErr = r.s.Cancel(a.ID, "bob") })
		wg.Go(func() { r.stop(t) })
		wg.Wait()
		require.NoError(t, cancelErr, "round %d", i)

		// The next start: the dataset no longer hangs, so a job that
		// resumed would train, evaluate (and fail on the fake parent) —
		// one that stays cancelled does nothing.
		close(release)
		data.hang = false
		r2 := startService(t, kv, data, models, nil)
		j := waitJob(t, r2.s, a.ID, func(j *api.RetrainJob) bool { return j.State.Terminal() })
		require.Equal(t, api.RetrainFailed, j.State, "round %d", i)
		require.True(t, strings.HasPrefix(j.Reason, "cancelled by bob while building-dataset"), "round %d: %s", i, j.Reason)
		require.Zero(t, models.published())
		r2.stop(t)
	}
}
