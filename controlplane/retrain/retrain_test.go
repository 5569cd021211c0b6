package retrain

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The jobs' data, models and rollouts are tested end to end in
// controlplane (retrain_e2e_test.go); these tests cover the decisions made
// before a job runs: which trigger starts one, when, and names.

type versions map[string]bool

func (v versions) Has(_, version string) bool { return v[version] }
func (versions) Manifest(string, string) (*efpb.Manifest, error) {
	return nil, api.Errorf(api.ErrNotFound, "none")
}
func (versions) File(string, string) ([]byte, error) { return nil, api.Errorf(api.ErrNotFound, "none") }
func (versions) Publish(context.Context, string, string, []byte, *efpb.Manifest, []byte) (api.ModelVersion, error) {
	return api.ModelVersion{}, fmt.Errorf("not here")
}

type noData struct{}

func (noData) Build(context.Context, string, api.DatasetRequest) (api.Dataset, error) {
	return api.Dataset{}, fmt.Errorf("no")
}
func (noData) Get(string, string) (api.Dataset, error)        { return api.Dataset{}, fmt.Errorf("no") }
func (noData) Export(string, string, string, io.Writer) error { return fmt.Errorf("no") }
func (noData) Base(string, string) (api.BaseDataset, error) {
	return api.BaseDataset{}, api.Errorf(api.ErrNotFound, "no base datasets")
}
func (noData) ExportBase(string, string, io.Writer) error { return fmt.Errorf("no") }

type current string

func (c current) Current(string) (string, bool) { return string(c), c != "" }

type noRollouts struct{}

func (noRollouts) Create(context.Context, api.RolloutSpec, string) (*api.Rollout, error) {
	return nil, fmt.Errorf("no")
}
func (noRollouts) List() []*api.Rollout { return nil }

func newService(t *testing.T, clock *testkit.Clock) *Service {
	t.Helper()
	db, err := store.Open(store.Options{InMemory: true, Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	s, err := New(Options{KV: db.Namespace("retrain"), Datasets: noData{}, Models: versions{"v1": true, "v2": true, "1.2.9": true},
		Fleet: current("v1"), Rollouts: noRollouts{}, WorkDir: t.TempDir(), Clock: clock.Now,
		Trainers: map[string][]string{"xgb": {"/usr/bin/true"}}})
	require.NoError(t, err)
	return s
}

func TestAlertsStartJobsPerPolicy(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s := newService(t, clock)
	alert := Alert{Rule: "low_accuracy", Model: "fraud", Version: "v1", Site: "b", Value: 0.7, Threshold: 0.85}

	s.onAlert(alert)
	assert.Empty(t, s.Jobs(""), "no policy: alerts start nothing")
	_, err := s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"accuracy_drop"}})
	require.NoError(t, err)
	s.onAlert(alert)
	assert.Empty(t, s.Jobs(""), "the policy does not name low_accuracy")

	_, err = s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"low_accuracy"}})
	require.NoError(t, err)
	s.onAlert(alert)
	jobs := s.Jobs("fraud")
	require.Len(t, jobs, 1)
	assert.Equal(t, "alert:low_accuracy site=b", jobs[0].Trigger)
	assert.Equal(t, "v1", jobs[0].Parent)
	assert.Equal(t, api.RetrainQueued, jobs[0].State)

	// One job per model: another alert (another site) while it is queued
	// starts nothing, nor does a manual start.
	s.onAlert(Alert{Rule: "low_accuracy", Model: "fraud", Version: "v1", Site: "c"})
	assert.Len(t, s.Jobs(""), 1)
	_, err = s.Start("fraud", "alice", api.RetrainRequest{})
	require.ErrorIs(t, err, api.ErrExists)

	// Ended: the cooldown (default 1h) holds automatic jobs, not manual ones.
	_, err = s.finish(jobs[0].ID, api.RetrainRejected, "not better")
	require.NoError(t, err)
	clock.Add(30 * time.Minute)
	s.onAlert(alert)
	assert.Len(t, s.Jobs(""), 1, "within the cooldown")
	clock.Add(31 * time.Minute)
	s.onAlert(alert)
	assert.Len(t, s.Jobs(""), 2, "after the cooldown")
	j := s.Jobs("")[0]
	_, err = s.Cancel(j.ID, "bob")
	require.NoError(t, err)
	got, err := s.Job(j.ID)
	require.NoError(t, err)
	assert.Equal(t, api.RetrainFailed, got.State)
	assert.Equal(t, "cancelled by bob before it started", got.Reason)
	m, err := s.Start("fraud", "alice", api.RetrainRequest{Reason: "new labels"})
	require.NoError(t, err, "manual jobs ignore the cooldown")
	assert.Equal(t, "manual:alice", m.Trigger)
	assert.Empty(t, m.Site)
	_, err = s.finish(m.ID, api.RetrainFailed, "test")
	require.NoError(t, err)

	// Site scope: an alert's job trains on its site's rows.
	_, err = s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"low_accuracy"}, SiteScope: api.SiteScopeAlert})
	require.NoError(t, err)
	clock.Add(2 * time.Hour)
	s.onAlert(alert)
	assert.Equal(t, "b", s.Jobs("")[0].Site)
}

func TestScheduleStartsJobs(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s := newService(t, clock)
	_, err := s.SetPolicy("fraud", api.RetrainPolicy{Trainer: "command:xgb", Schedule: api.Duration(24 * time.Hour), Cooldown: api.Duration(time.Minute)})
	require.NoError(t, err)
	st, err := s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, clock.Now().Add(24*time.Hour), st.NextScheduled)
	s.Tick()
	assert.Empty(t, s.Jobs(""), "not due")
	clock.Add(24 * time.Hour)
	s.Tick()
	jobs := s.Jobs("")
	require.Len(t, jobs, 1)
	assert.Equal(t, "schedule", jobs[0].Trigger)
	s.Tick()
	assert.Len(t, s.Jobs(""), 1, "the next one is a day later")
	st, err = s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, clock.Now().Add(24*time.Hour), st.NextScheduled)
	assert.Equal(t, jobs[0].ID, st.Running)
}

func TestPolicyRefusesUnknownTrainers(t *testing.T) {
	s := newService(t, testkit.NewClock(time.Now()))
	_, err := s.SetPolicy("fraud", api.RetrainPolicy{Trainer: "command:rm"})
	require.ErrorIs(t, err, api.ErrInvalid)
	assert.Contains(t, err.Error(), "it has: xgb")
	_, err = s.SetPolicy("bad name!", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud})
	require.ErrorIs(t, err, api.ErrInvalid)
	st, err := s.Policy("other")
	require.NoError(t, err)
	assert.False(t, st.Set)
}

func TestNextVersion(t *testing.T) {
	s := newService(t, testkit.NewClock(time.Now()))
	for _, tt := range []struct{ parent, want string }{
		{"v1", "v3"}, // v2 exists
		{"v9", "v10"},
		{"1.2.0", "1.2.1"},
		{"1.2.8", "1.2.10"}, // 1.2.9 exists
		{"prod", "prod-r1"},
	} {
		assert.Equal(t, tt.want, s.nextVersion("fraud", tt.parent), "nextVersion(%q)", tt.parent)
	}
}

func TestHeldOutIsStable(t *testing.T) {
	var rows []labelledRow
	for i := range 4000 {
		rows = append(rows, labelledRow{InferenceID: fmt.Sprintf("id-%d", i/10), Row: uint32(i % 10)})
	}
	train, holdout := split(rows, 0.25)
	assert.InDelta(t, 1000, len(holdout), 100, "about a quarter held out")
	assert.Len(t, train, 3000+1000-len(holdout))
	_, again := split(rows, 0.25)
	assert.Equal(t, holdout, again, "the same rows every time")
}

func TestTailKeepsTheEnd(t *testing.T) {
	tl := &tail{max: 8}
	_, _ = tl.Write([]byte("0123456789"))
	_, _ = tl.Write([]byte("ab"))
	assert.Equal(t, "456789ab", tl.String())
	assert.Equal(t, "last", lastLine("first\nlast\n"))
	assert.True(t, strings.Contains(lastLine(""), "no output"))
}

// blockingData's Build waits until release is closed, then fails: a job
// that holds the worker in building-dataset.
type blockingData struct {
	noData
	building chan string
	release  chan struct{}
}

func (b blockingData) Build(_ context.Context, model string, _ api.DatasetRequest) (api.Dataset, error) {
	b.building <- model
	<-b.release
	return api.Dataset{}, fmt.Errorf("released")
}

// An alert that comes while another model's job runs starts its job: the
// alerter raises an alert once until it clears, so one left in the
// channel until the job ended could be dropped and never start anything.
func TestAlertsAreTakenWhileAJobRuns(t *testing.T) {
	db, err := store.Open(store.Options{InMemory: true, Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	alerts := make(chan Alert)
	data := blockingData{building: make(chan string, 4), release: make(chan struct{})}
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s, err := New(Options{KV: db.Namespace("retrain"), Datasets: data, Models: &published{byJob: map[string]string{}},
		Fleet: current("v1"), Rollouts: noRollouts{}, WorkDir: t.TempDir(), Clock: clock.Now, Alerts: alerts})
	require.NoError(t, err)
	for _, m := range []string{"fraud", "churn"} {
		_, err = s.SetPolicy(m, api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Triggers: []string{"low_accuracy"}})
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); close(data.release); <-done })

	_, err = s.Start("fraud", "alice", api.RetrainRequest{})
	require.NoError(t, err)
	select {
	case m := <-data.building:
		require.Equal(t, "fraud", m, "fraud's job holds the worker")
	case <-time.After(time.Minute):
		t.Fatalf("fraud's job never built its dataset: %s", s.Jobs("fraud")[0].Reason)
	}
	select {
	case alerts <- Alert{Rule: "low_accuracy", Model: "churn", Version: "v1"}:
	case <-time.After(time.Minute):
		t.Fatal("the alert was not taken while fraud's job ran")
	}
	require.Eventually(t, func() bool { return len(s.Jobs("churn")) == 1 }, time.Minute, 5*time.Millisecond)
	assert.Equal(t, api.RetrainQueued, s.Jobs("churn")[0].State)
}

// A schedule that comes due while a job of the model runs (or within the
// cooldown) is not lost: it starts one job as soon as it may, not one per
// missed interval.
func TestScheduleWaitsWhileBlocked(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s := newService(t, clock)
	_, err := s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Schedule: api.Duration(time.Hour), Cooldown: api.Duration(90 * time.Minute)})
	require.NoError(t, err)
	manual, err := s.Start("fraud", "alice", api.RetrainRequest{})
	require.NoError(t, err)

	clock.Add(time.Hour)
	s.Tick()
	require.Len(t, s.Jobs("fraud"), 1, "the manual job is unfinished")
	st, err := s.Policy("fraud")
	require.NoError(t, err)
	assert.Contains(t, st.ScheduleWaiting, manual.ID, "the status says why the due job waits")

	// Three more intervals pass while the job runs.
	clock.Add(3 * time.Hour)
	s.Tick()
	require.Len(t, s.Jobs("fraud"), 1)
	_, err = s.finish(manual.ID, api.RetrainRejected, "not better")
	require.NoError(t, err)
	s.Tick()
	jobs := s.Jobs("fraud")
	require.Len(t, jobs, 2, "due since 11:00: starts once the manual job ended")
	assert.Equal(t, "schedule", jobs[0].Trigger)
	s.Tick()
	assert.Len(t, s.Jobs("fraud"), 2, "one job for the missed intervals, not a burst")

	// The scheduled job ends; the next interval comes within the
	// cooldown (90 minutes after the scheduled job started): it waits for
	// the cooldown, then starts once.
	_, err = s.finish(jobs[0].ID, api.RetrainRejected, "not better")
	require.NoError(t, err)
	clock.Add(time.Hour)
	s.Tick()
	assert.Len(t, s.Jobs("fraud"), 2, "due, but within the cooldown")
	st, err = s.Policy("fraud")
	require.NoError(t, err)
	assert.Contains(t, st.ScheduleWaiting, "cooldown")
	clock.Add(31 * time.Minute)
	s.Tick()
	s.Tick()
	assert.Len(t, s.Jobs("fraud"), 3, "started once the cooldown passed")
	st, err = s.Policy("fraud")
	require.NoError(t, err)
	assert.Empty(t, st.ScheduleWaiting)
	assert.Equal(t, clock.Now().Add(time.Hour), st.NextScheduled, "the next interval counts from the start")
}

// A cron schedule fires at its times by the control plane's clock (UTC).
func TestCronStartsJobs(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	s := newService(t, clock)
	_, err := s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Cron: "30 3 * * *", Cooldown: api.Duration(time.Minute)})
	require.NoError(t, err)
	st, err := s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 12, 7, 3, 30, 0, 0, time.UTC), st.NextScheduled)
	assert.Equal(t, "30 3 * * *", st.Policy.Cron)

	clock.Set(time.Date(2026, 12, 7, 3, 29, 0, 0, time.UTC))
	s.Tick()
	assert.Empty(t, s.Jobs(""), "not yet")
	clock.Set(time.Date(2026, 12, 7, 3, 30, 20, 0, time.UTC))
	s.Tick()
	jobs := s.Jobs("")
	require.Len(t, jobs, 1)
	assert.Equal(t, "schedule", jobs[0].Trigger)
	_, err = s.finish(jobs[0].ID, api.RetrainRejected, "not better")
	require.NoError(t, err)
	s.Tick()
	assert.Len(t, s.Jobs(""), 1, "once per cron time")
	st, err = s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 12, 8, 3, 30, 0, 0, time.UTC), st.NextScheduled)

	for _, tt := range []struct {
		p    api.RetrainPolicy
		want string
	}{
		{api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Cron: "*/10 * * * *"}, "fires 6 times an hour"},
		{api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Cron: "0 3 * *"}, "want 5 fields"},
		{api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Cron: "@every 1h"}, "unknown shorthand"},
		{api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Cron: "@daily", Schedule: api.Duration(time.Hour)}, "pick one"},
	} {
		_, err := s.SetPolicy("fraud", tt.p)
		require.ErrorIs(t, err, api.ErrInvalid, "cron %q", tt.p.Cron)
		assert.Contains(t, err.Error(), tt.want)
	}
}

// One stored policy that cannot be read does not stop the others'
// schedules: it is skipped and counted, the API says what is wrong with
// it, and setting it again repairs it.
func TestUnreadablePolicyIsSkipped(t *testing.T) {
	clock := testkit.NewClock(time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	s, err := New(Options{KV: newKV(t), Datasets: noData{}, Models: versions{"v1": true}, Fleet: current("v1"), Rollouts: noRollouts{},
		WorkDir: t.TempDir(), Clock: clock.Now, Registerer: reg})
	require.NoError(t, err)
	for _, m := range []string{"aaa", "fraud", "zzz"} {
		_, err := s.SetPolicy(m, api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud, Schedule: api.Duration(time.Hour)})
		require.NoError(t, err)
	}
	require.NoError(t, s.opts.KV.SetSync(prefixPolicy+"fraud", []byte(`{"policy": {"trainer": 7`)))
	clock.Add(time.Hour)
	s.Tick()
	var models []string
	for _, j := range s.Jobs("") {
		models = append(models, j.Model)
	}
	assert.ElementsMatch(t, []string{"aaa", "zzz"}, models, "the readable policies' schedules ran")
	assert.Equal(t, 1.0, counter(t, reg, "edgefleet_retrain_policy_unreadable_total"))

	st, err := s.Policy("fraud")
	require.NoError(t, err, "the API answers for the unreadable policy")
	assert.False(t, st.Set)
	assert.Contains(t, st.Error, "stored retrain policy cannot be read")
	s.onAlert(Alert{Rule: "low_accuracy", Model: "fraud", Version: "v1"}) // logged, nothing else

	st, err = s.SetPolicy("fraud", api.RetrainPolicy{Trainer: api.TrainerBuiltinFraud})
	require.NoError(t, err, "setting the policy again repairs it")
	assert.True(t, st.Set)
	assert.Empty(t, st.Error)
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
