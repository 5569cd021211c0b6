package rollout

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// fakeFleet is the devices' side: desired states the fake issuer wrote and
// the reports a test makes them send. Devices and the desired-state path
// are outside this package, so they are faked; the store and audit log are
// real.
type fakeFleet struct {
	mu      sync.Mutex
	devs    map[string]*Device
	gen     map[string]uint64
	history map[string][]string // versions issued per device, in order
}

func newFakeFleet() *fakeFleet {
	return &fakeFleet{devs: map[string]*Device{}, gen: map[string]uint64{}, history: map[string][]string{}}
}

// add registers online devices running version with the labels.
func (f *fakeFleet) add(version string, lbls map[string]string, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		f.gen[id]++
		f.devs[id] = &Device{ID: id, Labels: maps.Clone(lbls), Online: true, Desired: version,
			Report: Report{State: "active", ActiveVersion: version, TargetVersion: version, Generation: f.gen[id]}}
	}
}

func (f *fakeFleet) Devices(string) []Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Device, 0, len(f.devs))
	for _, d := range f.devs {
		c := *d
		c.Labels = maps.Clone(d.Labels)
		out = append(out, c)
	}
	return out
}

func (f *fakeFleet) Assign(_ context.Context, _, version string, ids []string) (map[string]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]uint64{}
	for _, id := range ids {
		d := f.devs[id]
		if d == nil {
			return nil, fmt.Errorf("unknown device %s", id)
		}
		f.gen[id]++
		d.Desired = version
		out[id] = f.gen[id]
		f.history[id] = append(f.history[id], version)
	}
	return out, nil
}

// settle makes every online device report the outcome of its desired
// state: active, or failed (staying on its active version) when bad says so.
func (f *fakeFleet) settle(bad func(id, version string) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, d := range f.devs {
		if !d.Online || d.Desired == d.Report.ActiveVersion && d.Report.State == api.ModelActive {
			continue
		}
		if bad != nil && bad(id, d.Desired) {
			d.Report = Report{State: "failed", TargetVersion: d.Desired, ActiveVersion: d.Report.ActiveVersion, Reason: "test vectors failed", Generation: f.gen[id]}
			continue
		}
		d.Report = Report{State: "active", TargetVersion: d.Desired, ActiveVersion: d.Desired, Generation: f.gen[id]}
	}
}

func (f *fakeFleet) setOnline(id string, online bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devs[id].Online = online
}

func (f *fakeFleet) issued(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.history[id])
}

// on returns the ids whose desired version is v, sorted.
func (f *fakeFleet) on(v string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, d := range f.devs {
		if d.Desired == v {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

type fakeMetrics struct {
	mu  sync.Mutex
	fig map[string]Figures
}

func (m *fakeMetrics) VersionMetrics(_, version string, _ []string) (Figures, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.fig[version]
	return f, ok
}

func (m *fakeMetrics) set(version string, f Figures) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fig[version] = f
}

type env struct {
	t       *testing.T
	kv      *store.KV
	fleet   *fakeFleet
	clock   *testkit.Clock
	metrics *fakeMetrics
	audit   *audit.Log
	e       *Engine
}

func newEnv(t *testing.T) *env {
	t.Helper()
	db, err := store.Open(store.Options{Dir: t.TempDir(), Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	clock := testkit.NewClock(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	al, err := audit.Open(db.Namespace("audit"), clock.Now)
	require.NoError(t, err)
	v := &env{t: t, kv: db.Namespace("rollouts"), fleet: newFakeFleet(), clock: clock,
		metrics: &fakeMetrics{fig: map[string]Figures{}}, audit: al}
	v.e = v.engine()
	return v
}

func (v *env) engine() *Engine {
	v.t.Helper()
	e, err := New(Options{KV: v.kv, Issuer: v.fleet, Fleet: v.fleet, Metrics: v.metrics, Audit: v.audit, Clock: v.clock.Now})
	require.NoError(v.t, err)
	return e
}

func (v *env) get(id string) *api.Rollout {
	v.t.Helper()
	st, err := v.e.Get(id, true)
	require.NoError(v.t, err)
	return st
}

func (v *env) actions(id string) []string {
	v.t.Helper()
	list, err := v.audit.List(audit.Query{Target: id})
	require.NoError(v.t, err)
	var out []string
	for _, e := range list {
		out = append(out, e.Action)
	}
	return out
}

func ptr(f float64) *float64 { return &f }

func devIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%02d", prefix, i)
	}
	return out
}

func threeStages(bake time.Duration) api.RolloutSpec {
	return api.RolloutSpec{
		Model: "fraud", Version: "2.0.0", Selector: "fleet=demo",
		Stages:      []api.RolloutStage{{Canary: 1}, {Percent: 50}, {Percent: 100}},
		Bake:        api.Duration(bake),
		Gates:       api.Gates{MaxFailureRate: ptr(0.2)},
		AutoPromote: true,
	}
}

func TestPromotionThroughStagesRespectsBakeTime(t *testing.T) {
	v := newEnv(t)
	ids := devIDs("d", 10)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	v.fleet.add("1.0.0", map[string]string{"fleet": "other"}, "x1")
	ctx := context.Background()

	r, err := v.e.Create(ctx, threeStages(30*time.Second), "admin")
	require.NoError(t, err)
	assert.Len(t, v.fleet.on("2.0.0"), 1, "the canary stage assigns one device")

	v.fleet.settle(nil)
	v.clock.Add(29 * time.Second)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, 0, st.Stage, "bake time not over: still the canary")
	assert.Contains(t, st.Stages[0].Waiting, "bake time")

	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, 1, st.Stage)
	assert.Equal(t, "passed", st.Stages[0].Result)
	require.Len(t, st.Stages[0].Gates, 1)
	assert.Equal(t, api.GatePass, st.Stages[0].Gates[0].Status)
	assert.Len(t, v.fleet.on("2.0.0"), 5, "50% of 10")

	v.fleet.settle(nil)
	v.clock.Add(30 * time.Second)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 10)
	v.fleet.settle(nil)
	v.clock.Add(30 * time.Second)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutCompleted, st.State)
	assert.Equal(t, api.DeviceCounts{Assigned: 1, Active: 1}, st.Stages[0].Devices)
	assert.Equal(t, api.DeviceCounts{Assigned: 4, Active: 4}, st.Stages[1].Devices)
	assert.Equal(t, api.DeviceCounts{Assigned: 5, Active: 5}, st.Stages[2].Devices)
	for _, id := range ids {
		assert.Equal(t, []string{"2.0.0"}, v.fleet.issued(id), "device %s got exactly one instruction", id)
		assert.Equal(t, "1.0.0", st.Devices[id].Previous)
	}
	assert.Empty(t, v.fleet.issued("x1"), "outside the selector")
	assert.Equal(t, []string{"rollout.create", "rollout.start", "rollout.stage_passed", "rollout.promote",
		"rollout.stage_passed", "rollout.promote", "rollout.stage_passed", "rollout.completed"}, v.actions(r.ID))
}

func TestMinDevicesAndManualPromotion(t *testing.T) {
	v := newEnv(t)
	ids := devIDs("d", 10)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	ctx := context.Background()
	spec := api.RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: "fleet=demo",
		Stages: []api.RolloutStage{{Percent: 50, MinDevices: 4}, {Percent: 100}}, Bake: api.Duration(time.Second)}
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	cohort := v.fleet.on("2.0.0")
	require.Len(t, cohort, 5)

	// Three of five report: below min_devices 4.
	v.fleet.settle(nil)
	for _, id := range cohort[3:] { // these two are still downloading
		v.fleet.mu.Lock()
		v.fleet.devs[id].Report = Report{State: "downloading", TargetVersion: "2.0.0", ActiveVersion: "1.0.0", Generation: v.fleet.gen[id]}
		v.fleet.mu.Unlock()
	}
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutRunning, st.State)
	assert.Equal(t, "3 of 4 devices reported", st.Stages[0].Waiting)
	assert.Equal(t, api.DeviceCounts{Assigned: 5, Active: 3, Downloading: 2}, st.Stages[0].Devices)

	v.fleet.settle(nil)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutWaitingPromotion, st.State, "no auto-promote: waits for an operator")
	v.clock.Add(time.Hour)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 5, "nothing more assigned without promote")

	st, err = v.e.Promote(ctx, r.ID, "alice")
	require.NoError(t, err)
	assert.Equal(t, 1, st.Stage)
	assert.Len(t, v.fleet.on("2.0.0"), 10)
	_, err = v.e.Resume(ctx, r.ID, "alice")
	assert.ErrorIs(t, err, ErrState)
}

func TestFailureRateBreach(t *testing.T) {
	for _, action := range []string{api.OnBreachPause, api.OnBreachRollback} {
		t.Run(action, func(t *testing.T) {
			v := newEnv(t)
			ids := devIDs("d", 10)
			v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
			ctx := context.Background()
			spec := threeStages(10 * time.Second)
			spec.Stages[0].Canary = 2
			spec.OnBreach = action
			r, err := v.e.Create(ctx, spec, "admin")
			require.NoError(t, err)
			canary := v.fleet.on("2.0.0")
			require.Len(t, canary, 2)
			// One of two canaries fails: 0.5 > 0.2.
			v.fleet.settle(func(id, version string) bool { return id == canary[0] && version == "2.0.0" })
			v.clock.Add(10 * time.Second)
			v.e.Tick(ctx)
			v.e.Tick(ctx)
			st := v.get(r.ID)
			require.NotEmpty(t, st.Stages[0].Gates)
			g := st.Stages[0].Gates[0]
			assert.Equal(t, api.GateResult{Gate: "failure_rate", Limit: 0.2, Value: 0.5, Status: api.GateBreach,
				Detail: "1 of 2 reporting devices failed: 0.5 > 0.2"}, g)
			assert.Contains(t, st.Reason, "failure_rate")
			for _, id := range ids {
				if !slices.Contains(canary, id) {
					assert.Empty(t, v.fleet.issued(id), "device %s outside the canary got an instruction", id)
				}
			}
			if action == api.OnBreachPause {
				assert.Equal(t, api.RolloutPaused, st.State)
				for _, id := range canary {
					assert.Equal(t, []string{"2.0.0"}, v.fleet.issued(id))
				}
				assert.Contains(t, v.actions(r.ID), "rollout.pause")
				return
			}
			assert.Equal(t, api.RolloutFailed, st.State)
			for _, id := range canary {
				assert.Equal(t, []string{"2.0.0", "1.0.0"}, v.fleet.issued(id), "canary %s returns to 1.0.0", id)
				assert.True(t, st.Devices[id].RolledBack)
			}
			assert.Equal(t, api.DeviceCounts{Assigned: 2, RolledBack: 2}, st.Stages[0].Devices)
			entries, err := v.audit.List(audit.Query{Action: "rollout.gate_breached"})
			require.NoError(t, err)
			require.Len(t, entries, 1)
			assert.Equal(t, "system", entries[0].Actor)
			assert.Contains(t, entries[0].Result, "0.5 > 0.2")
			assert.NotNil(t, entries[0].Details["gates"], "the figures are in the audit entry")
		})
	}
}

func TestAccuracyDropRollsBack(t *testing.T) {
	v := newEnv(t)
	ids := devIDs("d", 4)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	ctx := context.Background()
	spec := threeStages(time.Second)
	spec.OnBreach = api.OnBreachRollback
	spec.Gates = api.Gates{MaxAccuracyDrop: ptr(0.02), MaxDriftScore: ptr(0.5), MinLabelled: 200}
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	v.fleet.settle(nil)
	v.metrics.set("1.0.0", Figures{Accuracy: 0.95, Labelled: 5000})
	v.metrics.set("2.0.0", Figures{Accuracy: 0.80, Labelled: 150, DriftScore: 0.1})
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutRunning, st.State, "too few labelled predictions to judge")
	assert.Contains(t, st.Stages[0].Waiting, "need 200 each")

	v.metrics.set("2.0.0", Figures{Accuracy: 0.80, Labelled: 400, DriftScore: 0.1})
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutFailed, st.State)
	assert.Contains(t, st.Reason, "accuracy_drop")
	assert.Contains(t, st.Reason, "accuracy 2.0.0 0.8000 (400 labelled) vs 1.0.0 0.9500 (5000 labelled)")
	assert.Len(t, v.fleet.on("1.0.0"), 4, "the canary returned to 1.0.0")
}

func TestDriftAndGoodQualityPass(t *testing.T) {
	v := newEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 3)...)
	ctx := context.Background()
	spec := threeStages(time.Second)
	spec.Stages = spec.Stages[:1]
	spec.Gates = api.Gates{MaxAccuracyDrop: ptr(0.02), MaxDriftScore: ptr(0.5), MinLabelled: 10}
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	v.fleet.settle(nil)
	v.metrics.set("1.0.0", Figures{Accuracy: 0.90, Labelled: 50})
	v.metrics.set("2.0.0", Figures{Accuracy: 0.89, Labelled: 50, DriftScore: 0.7})
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutPaused, st.State, "drift 0.7 > 0.5 pauses (default on_breach)")
	assert.Contains(t, st.Reason, "drift_score")

	v.metrics.set("2.0.0", Figures{Accuracy: 0.89, Labelled: 50, DriftScore: 0.2})
	_, err = v.e.Resume(ctx, r.ID, "alice")
	require.NoError(t, err)
	v.e.Tick(ctx)
	assert.Equal(t, api.RolloutRunning, v.get(r.ID).State, "resume restarts the bake time")
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutCompleted, st.State)
	require.Len(t, st.Stages[0].Gates, 2)
	assert.InDelta(t, 0.01, st.Stages[0].Gates[0].Value, 1e-9)
}

func TestPauseResumeAbort(t *testing.T) {
	v := newEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 10)...)
	ctx := context.Background()
	r, err := v.e.Create(ctx, threeStages(time.Second), "admin")
	require.NoError(t, err)
	st, err := v.e.Pause(ctx, r.ID, "alice")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutPaused, st.State)
	assert.Equal(t, "paused by alice", st.Reason)
	v.fleet.settle(nil)
	v.clock.Add(time.Hour)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 1, "paused: no promotion")
	_, err = v.e.Pause(ctx, r.ID, "alice")
	assert.ErrorIs(t, err, ErrState)

	_, err = v.e.Resume(ctx, r.ID, "alice")
	require.NoError(t, err)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 1, "resume restarts the bake time")
	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 5)

	st, err = v.e.Abort(ctx, r.ID, "alice")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutAborted, st.State)
	v.fleet.settle(nil)
	v.clock.Add(time.Hour)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 5, "aborted: devices keep what they got, nothing more")
	_, err = v.e.Resume(ctx, r.ID, "alice")
	assert.ErrorIs(t, err, ErrState)
	acts := v.actions(r.ID)
	assert.Contains(t, acts, "rollout.pause")
	assert.Contains(t, acts, "rollout.resume")
	assert.Contains(t, acts, "rollout.abort")

	_, err = v.e.Create(ctx, threeStages(time.Second), "admin")
	assert.NoError(t, err, "an aborted rollout does not block a new one")
	_, err = v.e.Create(ctx, threeStages(time.Second), "admin")
	assert.ErrorIs(t, err, ErrState, "one unfinished rollout per model")
}

func TestManualRollbackOfOneGroupAndDevice(t *testing.T) {
	v := newEnv(t)
	a, b := devIDs("a", 4), devIDs("b", 4)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo", "site": "a"}, a...)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo", "site": "b"}, b...)
	ctx := context.Background()
	spec := threeStages(time.Second)
	spec.Stages = []api.RolloutStage{{Selector: "site=a"}, {Selector: "site=b"}}
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	assert.Equal(t, a, v.fleet.on("2.0.0"), "stage 1 is the site=a group")
	v.fleet.settle(nil)
	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	require.Len(t, v.fleet.on("2.0.0"), 8)
	v.fleet.settle(nil)

	st, err := v.e.Rollback(ctx, r.ID, api.RollbackRequest{Selector: "site=b"}, "alice")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutRunning, st.State, "a group rollback leaves the rollout running")
	assert.Equal(t, a, v.fleet.on("2.0.0"))
	assert.Equal(t, b, v.fleet.on("1.0.0"))
	v.fleet.settle(nil)
	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutCompleted, st.State)
	for _, id := range b {
		assert.Equal(t, []string{"2.0.0", "1.0.0"}, v.fleet.issued(id), "%s is not re-assigned", id)
	}

	_, err = v.e.Rollback(ctx, r.ID, api.RollbackRequest{Device: a[0]}, "alice")
	require.NoError(t, err)
	assert.Equal(t, []string{"2.0.0", "1.0.0"}, v.fleet.issued(a[0]))
	_, err = v.e.Rollback(ctx, r.ID, api.RollbackRequest{Device: a[0]}, "alice")
	assert.ErrorIs(t, err, ErrState)
	_, err = v.e.Rollback(ctx, r.ID, api.RollbackRequest{Device: "nope"}, "alice")
	assert.ErrorIs(t, err, api.ErrInvalid)
	_, err = v.e.Rollback(ctx, r.ID, api.RollbackRequest{Selector: "site=zzz"}, "alice")
	assert.ErrorIs(t, err, api.ErrInvalid)

	st, err = v.e.Rollback(ctx, r.ID, api.RollbackRequest{}, "alice")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutRolledBack, st.State)
	assert.Empty(t, v.fleet.on("2.0.0"))
}

func TestDynamicTargetsAndOfflineDevices(t *testing.T) {
	v := newEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 4)...)
	ctx := context.Background()
	spec := threeStages(time.Second)
	spec.Stages = []api.RolloutStage{{Canary: 1}, {Percent: 100}}
	spec.Gates.MaxOfflineFraction = ptr(0.5)
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	v.fleet.settle(nil)
	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	require.Len(t, v.fleet.on("2.0.0"), 4)

	// A stage-2 device goes offline before it reported: it keeps its
	// assignment and the default min_devices counts only online devices.
	off := ""
	for id, rec := range v.get(r.ID).Devices {
		if rec.Stage == 1 {
			off = id
		}
	}
	require.NotEmpty(t, off)
	v.fleet.setOnline(off, false)
	v.fleet.settle(nil)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, "late")
	v.e.Tick(ctx)
	assert.Contains(t, v.fleet.on("2.0.0"), "late", "a device joining the selector follows the current stage")
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutRunning, st.State, "late has not reported yet")
	v.fleet.settle(nil)
	v.clock.Add(time.Second)
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutCompleted, st.State, st.Stages[1].Waiting)
	assert.Equal(t, api.DeviceCounts{Assigned: 4, Active: 3, Pending: 1, Offline: 1}, st.Stages[1].Devices)
	assert.Equal(t, "2.0.0", st.Devices[off].Issued, "the offline device keeps its assignment")
}

func TestRestartContinuesWhereItWas(t *testing.T) {
	v := newEnv(t)
	ids := devIDs("d", 10)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	ctx := context.Background()
	r, err := v.e.Create(ctx, threeStages(10*time.Second), "admin")
	require.NoError(t, err)
	v.fleet.settle(nil)
	v.clock.Add(10 * time.Second)
	v.e.Tick(ctx)
	before := v.get(r.ID)
	require.Equal(t, 1, before.Stage)

	v.e = v.engine() // a control-plane restart: same store, new engine
	after := v.get(r.ID)
	assert.Equal(t, before.Stage, after.Stage)
	assert.Equal(t, before.Devices, after.Devices)
	assert.Equal(t, before.Stages, after.Stages)
	v.e.Tick(ctx)
	v.fleet.settle(nil)
	v.clock.Add(10 * time.Second)
	v.e.Tick(ctx)
	v.fleet.settle(nil)
	v.clock.Add(10 * time.Second)
	v.e.Tick(ctx)
	assert.Equal(t, api.RolloutCompleted, v.get(r.ID).State)
	for _, id := range ids {
		assert.Equal(t, []string{"2.0.0"}, v.fleet.issued(id), "no device gets a second instruction")
	}
}

func TestUndeliveredIntentIsNotIssuedTwice(t *testing.T) {
	// A crash between issuing and saving: the record says not issued, the
	// device's desired state already names the version.
	v := newEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, "d1")
	ctx := context.Background()
	r, err := v.e.Create(ctx, threeStages(time.Second), "admin")
	require.NoError(t, err)
	require.Equal(t, []string{"2.0.0"}, v.fleet.issued("d1"))
	var stored Rollout
	require.NoError(t, v.kv.GetJSON(keyPrefix+r.ID, &stored))
	require.Equal(t, "2.0.0", stored.Devices["d1"].Issued)
	stored.Devices["d1"].Issued = ""
	require.NoError(t, v.kv.SetJSON(keyPrefix+r.ID, &stored, true))
	v.e = v.engine()
	v.e.Tick(ctx)
	assert.Equal(t, []string{"2.0.0"}, v.fleet.issued("d1"))
	assert.Equal(t, "2.0.0", v.get(r.ID).Devices["d1"].Issued)
}

func TestStableRandomOrder(t *testing.T) {
	ids := devIDs("d", 50)
	o1 := order("r-1", ids)
	assert.Equal(t, o1, order("r-1", slices.Clone(ids)), "same rollout, same order")
	rev := slices.Clone(ids)
	slices.Reverse(rev)
	assert.Equal(t, o1, order("r-1", rev), "input order does not matter")
	assert.NotEqual(t, ids, o1, "not creation order")
	assert.NotEqual(t, o1, order("r-2", ids), "another rollout, another order")
	assert.ElementsMatch(t, ids, o1)
	// Adding devices keeps the relative order of the others.
	more := order("r-1", append(slices.Clone(ids), devIDs("e", 10)...))
	var filtered []string
	for _, id := range more {
		if id[0] == 'd' {
			filtered = append(filtered, id)
		}
	}
	assert.Equal(t, o1, filtered)
}

func TestScheduleStartWindowAndRate(t *testing.T) {
	v := newEnv(t) // the clock starts at 12:00 UTC
	ids := devIDs("d", 6)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	ctx := context.Background()
	spec := api.RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: "fleet=demo",
		Stages: []api.RolloutStage{{Percent: 100}}, Bake: api.Duration(time.Second),
		StartAt:      v.clock.Now().Add(time.Hour),
		Windows:      []string{"13:30-14:00", "23:00-01:00"},
		MaxPerMinute: 4,
	}
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	assert.Equal(t, api.RolloutPending, v.get(r.ID).State)
	assert.Empty(t, v.fleet.on("2.0.0"), "before start_at")

	v.clock.Add(time.Hour) // 13:00: started, outside the windows
	v.e.Tick(ctx)
	assert.Equal(t, api.RolloutRunning, v.get(r.ID).State)
	assert.Empty(t, v.fleet.on("2.0.0"), "outside the maintenance windows")

	v.clock.Add(30 * time.Minute) // 13:30: inside
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 4, "at most 4 per minute")
	v.fleet.settle(nil)
	v.clock.Add(30 * time.Second)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutRunning, st.State, "not every device of the stage is assigned yet")
	assert.Contains(t, st.Stages[0].Waiting, "at most 4 per minute")
	v.clock.Add(30 * time.Second)
	v.e.Tick(ctx)
	assert.Len(t, v.fleet.on("2.0.0"), 6)
	v.fleet.settle(nil)
	v.clock.Add(29 * time.Minute) // 14:29: outside again
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, api.RolloutRunning, st.State)
	assert.Contains(t, st.Stages[0].Waiting, "outside the maintenance windows")
	v.clock.Add(9 * time.Hour) // 23:29: inside the window that wraps midnight
	v.e.Tick(ctx)
	assert.Equal(t, api.RolloutCompleted, v.get(r.ID).State)

	bad := api.RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: "fleet=demo", Stages: []api.RolloutStage{{Percent: 100}}, Windows: []string{"25:00-01:00"}}
	assert.ErrorIs(t, bad.Validate(), api.ErrInvalid)
}

func TestSiteAwareWaves(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		canary    int
		wantSites int // distinct sites in the first wave
	}{
		{api.SitesSpread, 3, 3},
		{api.SitesOneAtATime, 4, 1},
		{"", 12, 3},
	} {
		t.Run("sites="+tc.mode, func(t *testing.T) {
			v := newEnv(t)
			for _, site := range []string{"a", "b", "c"} {
				v.fleet.add("1.0.0", map[string]string{"fleet": "demo", "site": site}, devIDs(site, 4)...)
			}
			spec := threeStages(time.Minute)
			spec.Stages = []api.RolloutStage{{Canary: tc.canary}, {Percent: 100}}
			spec.Sites = tc.mode
			r, err := v.e.Create(context.Background(), spec, "ops")
			require.NoError(t, err)
			v.e.Tick(context.Background())

			st := v.get(r.ID)
			sites := map[string]int{}
			for id, rec := range st.Devices {
				if rec.Stage == 0 {
					sites[id[:1]]++
				}
			}
			assert.Len(t, sites, tc.wantSites, "first wave by site: %v", sites)
			if tc.mode == api.SitesSpread {
				for site, n := range sites {
					assert.Equal(t, 1, n, "site %s", site)
				}
			}
		})
	}
	v := newEnv(t)
	spec := threeStages(time.Minute)
	spec.Sites = "everywhere"
	_, err := v.e.Create(context.Background(), spec, "ops")
	assert.ErrorIs(t, err, api.ErrInvalid)
}

func TestCohortNamesTheStage(t *testing.T) {
	v := newEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 4)...)
	spec := threeStages(time.Minute)
	spec.Stages[0].Name = "canary"
	r, err := v.e.Create(context.Background(), spec, "ops")
	require.NoError(t, err)
	v.e.Tick(context.Background())
	canary := v.fleet.on("2.0.0")
	require.Len(t, canary, 1)

	assert.Equal(t, r.ID+"/canary", v.e.Cohort(canary[0], "fraud", "2.0.0"))
	assert.Empty(t, v.e.Cohort(canary[0], "fraud", "1.0.0"), "another version")
	for _, id := range devIDs("d", 4) {
		if id != canary[0] {
			assert.Empty(t, v.e.Cohort(id, "fraud", "2.0.0"), "%s is not in the rollout yet", id)
		}
	}
}

// A control plane that just restarted has heard from no device yet: a
// stage must not pass on the few that happen to report first, while the
// rest are "offline" only because they have not reconnected. Devices that
// never come back hold it for PresenceGrace only.
func TestStageWaitsForDevicesAfterARestart(t *testing.T) {
	for _, back := range []bool{true, false} {
		v := newEnv(t)
		ids := devIDs("d", 4)
		v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
		ctx := context.Background()
		spec := threeStages(time.Second)
		spec.Stages = []api.RolloutStage{{Percent: 100}}
		r, err := v.e.Create(ctx, spec, "admin")
		require.NoError(t, err)
		v.fleet.mu.Lock()
		for _, id := range ids[1:] {
			v.fleet.devs[id].Online, v.fleet.devs[id].Unknown = false, true
		}
		v.fleet.mu.Unlock()
		v.fleet.settle(nil) // only d-1 is connected: it alone gets there

		// The restart, past the bake time.
		v.clock.Add(2 * time.Second)
		v.e = v.engine()
		v.e.Tick(ctx)
		st := v.get(r.ID)
		require.Equal(t, api.RolloutRunning, st.State, "back=%v: 3 devices not heard from yet", back)
		assert.Contains(t, st.Stages[0].Waiting, "3 devices not heard from since the control plane started")

		if back {
			v.fleet.mu.Lock()
			for _, id := range ids[1:] {
				v.fleet.devs[id].Online, v.fleet.devs[id].Unknown = true, false
			}
			v.fleet.mu.Unlock()
			v.fleet.settle(nil)
			v.e.Tick(ctx)
			st = v.get(r.ID)
			assert.Equal(t, api.RolloutCompleted, st.State)
			assert.Equal(t, 4, st.Stages[0].Devices.Active, "the stage passed on all four")
			continue
		}
		v.clock.Add(DefaultPresenceGrace)
		v.e.Tick(ctx)
		st = v.get(r.ID)
		assert.Equal(t, api.RolloutCompleted, st.State, "after the grace the offline devices keep their assignment and do not block")
		assert.Equal(t, 3, st.Stages[0].Devices.Offline)
	}
}

// stallingIssuer holds an Assign until released, once armed: a stage's
// desired states being issued to hundreds of devices on a busy control
// plane.
type stallingIssuer struct {
	*fakeFleet
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (s *stallingIssuer) Assign(ctx context.Context, model, version string, ids []string) (map[string]uint64, error) {
	if s.armed.CompareAndSwap(true, false) {
		close(s.entered)
		<-s.release
	}
	return s.fakeFleet.Assign(ctx, model, version, ids)
}

// Cohort is asked by the telemetry ingest for every monitoring report; it
// must answer while the engine issues a stage (the engine holds its lock
// across Assign). It used to take that lock: the chaos soak saw the single
// ingest goroutine stall behind a stage's issuance at 1,000 devices until
// the broker's queue overflowed and dropped acknowledged reports.
func TestCohortAnswersWhileAStageIsIssued(t *testing.T) {
	v := newEnv(t)
	iss := &stallingIssuer{fakeFleet: v.fleet, entered: make(chan struct{}), release: make(chan struct{})}
	e, err := New(Options{KV: v.kv, Issuer: iss, Fleet: v.fleet, Metrics: v.metrics, Audit: v.audit, Clock: v.clock.Now})
	require.NoError(t, err)
	v.e = e
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 4)...)
	spec := threeStages(time.Second)
	spec.Stages[0].Name = "canary"
	spec.Stages[1].Name = "half"
	ctx := context.Background()
	r, err := e.Create(ctx, spec, "ops")
	require.NoError(t, err)
	canary := v.fleet.on("2.0.0")
	require.Len(t, canary, 1)

	v.fleet.settle(nil)
	v.clock.Add(time.Second)
	iss.armed.Store(true)
	ticked := make(chan struct{})
	go func() { defer close(ticked); e.Tick(ctx) }() // waited on below
	<-iss.entered

	answered := make(chan string, 1)
	go func() { answered <- e.Cohort(canary[0], "fraud", "2.0.0") }() // waited on below
	select {
	case got := <-answered:
		assert.Equal(t, r.ID+"/canary", got)
	case <-time.After(30 * time.Second): // a hang guard: the answer needs no lock the tick holds
		close(iss.release)
		<-ticked
		t.Fatal("Cohort waited for the stage being issued")
	}
	close(iss.release)
	<-ticked
	half := v.fleet.on("2.0.0")
	require.Len(t, half, 2)
	for _, id := range half {
		want := r.ID + "/half"
		if id == canary[0] {
			want = r.ID + "/canary"
		}
		assert.Equal(t, want, e.Cohort(id, "fraud", "2.0.0"), id)
	}

	// A restarted engine answers from what it loaded.
	v.e = v.engine()
	assert.Equal(t, r.ID+"/canary", v.e.Cohort(canary[0], "fraud", "2.0.0"))
	assert.Empty(t, v.e.Cohort(canary[0], "fraud", "1.0.0"))
}
