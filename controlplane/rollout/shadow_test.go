package rollout

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// shadowFleet is fakeFleet that also takes shadow assignments.
type shadowFleet struct {
	*fakeFleet
	smu     sync.Mutex
	shadows map[string][]string // shadow versions issued per device ("" withdraws)
}

func (f *shadowFleet) AssignShadow(_ context.Context, _, version string, ids []string) (map[string]uint64, error) {
	f.fakeFleet.mu.Lock()
	defer f.fakeFleet.mu.Unlock()
	f.smu.Lock()
	defer f.smu.Unlock()
	out := map[string]uint64{}
	for _, id := range ids {
		f.gen[id]++
		out[id] = f.gen[id]
		f.shadows[id] = append(f.shadows[id], version)
	}
	return out, nil
}

func (f *shadowFleet) shadowed(id string) []string {
	f.smu.Lock()
	defer f.smu.Unlock()
	return append([]string(nil), f.shadows[id]...)
}

// shadowMetrics is fakeMetrics with settable shadow figures.
type shadowMetrics struct {
	*fakeMetrics
	smu   sync.Mutex
	f     ShadowFigures
	asked []string // devices of the last question
}

func (m *shadowMetrics) ShadowFigures(_, _ string, devices []string, _ time.Time) ShadowFigures {
	m.smu.Lock()
	defer m.smu.Unlock()
	m.asked = append([]string(nil), devices...)
	return m.f
}

func (m *shadowMetrics) set(f ShadowFigures) {
	m.smu.Lock()
	defer m.smu.Unlock()
	m.f = f
}

func newShadowEnv(t *testing.T) (*env, *shadowFleet, *shadowMetrics) {
	t.Helper()
	v := newEnv(t)
	sf := &shadowFleet{fakeFleet: v.fleet, shadows: map[string][]string{}}
	sm := &shadowMetrics{fakeMetrics: v.metrics}
	e, err := New(Options{KV: v.kv, Issuer: sf, Fleet: sf, Metrics: sm, Audit: v.audit, Clock: v.clock.Now})
	require.NoError(t, err)
	v.e = e
	return v, sf, sm
}

func shadowSpec(onBreach string) api.RolloutSpec {
	return api.RolloutSpec{
		Model: "fraud", Version: "2.0.0", Selector: "fleet=demo", AutoPromote: true, OnBreach: onBreach,
		Bake:   api.Duration(time.Minute),
		Gates:  api.Gates{MinLabelled: 200, ShadowMargin: ptr(0.02)},
		Stages: []api.RolloutStage{{Name: "shadow", Canary: 2, Shadow: true}, {Name: "all", Percent: 100}},
	}
}

func ready(ids ...string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

func TestShadowStagePromotesABetterChallenger(t *testing.T) {
	v, sf, sm := newShadowEnv(t)
	ids := devIDs("d", 4)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
	ctx := context.Background()
	r, err := v.e.Create(ctx, shadowSpec(""), "admin")
	require.NoError(t, err)

	st := v.get(r.ID)
	var canaries []string
	for id, d := range st.Devices {
		assert.True(t, d.Shadow)
		canaries = append(canaries, id)
	}
	sort.Strings(canaries)
	require.Len(t, canaries, 2)
	for _, id := range canaries {
		assert.Equal(t, []string{"2.0.0"}, sf.shadowed(id), "%s scores the challenger", id)
	}
	assert.Empty(t, v.fleet.on("2.0.0"), "nobody serves the challenger yet")

	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	assert.Contains(t, v.get(r.ID).Stages[0].Waiting, "0 of 2 devices report the challenger in shadow")
	assert.Equal(t, canaries, sm.asked, "the gate reads the stage's devices")

	sm.set(ShadowFigures{Ready: ready(canaries...), Rows: 500, Agree: 450, Labelled: 120, ChampionCorrect: 100, ChallengerCorrect: 115})
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, 0, st.Stage)
	assert.Contains(t, st.Stages[0].Waiting, "shadow_accuracy: labelled rows scored by both versions: 120, need 200")
	assert.Equal(t, api.DeviceCounts{Assigned: 2, Active: 2}, st.Stages[0].Devices, "ready shadows count as active")
	assert.Equal(t, "canary 2 (shadow)", st.Stages[0].Kind)

	sm.set(ShadowFigures{Ready: ready(canaries...), Rows: 900, Agree: 800, Labelled: 250, ChampionCorrect: 200, ChallengerCorrect: 230})
	v.e.Tick(ctx)
	st = v.get(r.ID)
	assert.Equal(t, 1, st.Stage, "the challenger beat the champion by 12 points")
	require.NotNil(t, st.Stages[0].Shadow)
	assert.InDelta(t, 0.92, st.Stages[0].Shadow.ChallengerAccuracy, 1e-9)
	assert.InDelta(t, 0.8, st.Stages[0].Shadow.ChampionAccuracy, 1e-9)
	assert.Equal(t, ids, v.fleet.on("2.0.0"), "the next stage serves it everywhere, canaries included")
	for _, id := range ids {
		assert.Equal(t, []string{"2.0.0"}, v.fleet.issued(id), "%s was told once to serve it", id)
		assert.False(t, st.Devices[id].Shadow)
	}
	v.fleet.settle(nil)
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	assert.Equal(t, api.RolloutCompleted, v.get(r.ID).State)
	assert.Contains(t, v.actions(r.ID), "rollout.shadow_promoted")
}

func TestShadowStageHoldsAWorseChallenger(t *testing.T) {
	for _, onBreach := range []string{api.OnBreachPause, api.OnBreachRollback} {
		t.Run(onBreach, func(t *testing.T) {
			v, sf, sm := newShadowEnv(t)
			ids := devIDs("d", 4)
			v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, ids...)
			ctx := context.Background()
			r, err := v.e.Create(ctx, shadowSpec(onBreach), "admin")
			require.NoError(t, err)
			st := v.get(r.ID)
			var canaries []string
			for id := range st.Devices {
				canaries = append(canaries, id)
			}
			// Better, but by less than the margin.
			sm.set(ShadowFigures{Ready: ready(canaries...), Labelled: 1000, ChampionCorrect: 900, ChallengerCorrect: 910})
			v.clock.Add(time.Minute)
			v.e.Tick(ctx)
			st = v.get(r.ID)
			assert.Contains(t, st.Reason, "shadow: gate shadow_accuracy breached: challenger 2.0.0 accuracy 0.9100 vs champion 0.9000 on 1000 labelled rows")
			assert.Empty(t, v.fleet.on("2.0.0"), "a held challenger never serves")
			for _, id := range ids {
				assert.Empty(t, v.fleet.issued(id), "%s kept its served version", id)
			}
			if onBreach == api.OnBreachPause {
				assert.Equal(t, api.RolloutPaused, st.State)
				_, err := v.e.Abort(ctx, r.ID, "admin")
				require.NoError(t, err)
			} else {
				assert.Equal(t, api.RolloutFailed, st.State)
			}
			v.e.Tick(ctx)
			for _, id := range canaries {
				assert.Equal(t, []string{"2.0.0", ""}, sf.shadowed(id), "%s: the shadow is withdrawn", id)
			}
		})
	}
}

func TestShadowStageReportsRefusals(t *testing.T) {
	v, _, sm := newShadowEnv(t)
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, devIDs("d", 2)...)
	ctx := context.Background()
	spec := shadowSpec("")
	spec.Gates.MaxFailureRate = ptr(0.4)
	r, err := v.e.Create(ctx, spec, "admin")
	require.NoError(t, err)
	sm.set(ShadowFigures{Ready: ready("d00"), Failed: map[string]string{"d01": "manifest refused: model needs ONNX opset 30"}})
	v.clock.Add(time.Minute)
	v.e.Tick(ctx)
	st := v.get(r.ID)
	assert.Equal(t, api.RolloutPaused, st.State)
	assert.Contains(t, st.Reason, "gate failure_rate breached: 1 of 2 reporting devices refused the challenger")
	require.NotNil(t, st.Stages[0].Shadow)
	assert.Equal(t, []string{"d01: manifest refused: model needs ONNX opset 30"}, st.Stages[0].Shadow.Failures)
}

func TestShadowSpecRefused(t *testing.T) {
	v := newEnv(t) // its issuer takes no shadow assignments
	v.fleet.add("1.0.0", map[string]string{"fleet": "demo"}, "d1")
	ctx := context.Background()
	_, err := v.e.Create(ctx, shadowSpec(""), "admin")
	require.ErrorIs(t, err, api.ErrInvalid)
	assert.Contains(t, err.Error(), "shadow stages are not supported")

	for _, tc := range []struct {
		stages []api.RolloutStage
		want   string
	}{
		{[]api.RolloutStage{{Canary: 1}, {Percent: 100, Shadow: true}}, "stage 2: the last stage cannot be a shadow stage"},
		{[]api.RolloutStage{{Canary: 1}, {Percent: 50, Shadow: true}, {Percent: 100}}, "stage 2: a shadow stage cannot follow a stage that serves the version"},
	} {
		spec := shadowSpec("")
		spec.Stages = tc.stages
		err := spec.Validate()
		require.ErrorIs(t, err, api.ErrInvalid)
		assert.Contains(t, err.Error(), tc.want)
	}
	spec := shadowSpec("")
	spec.Gates.ShadowMargin = ptr(2)
	assert.ErrorContains(t, spec.Validate(), "shadow_margin 2 must be in [-1, 1]")
}
