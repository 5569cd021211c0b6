package rollout

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Shadow stages (champion/challenger). A stage with Shadow set gives its
// devices the rollout's version as a challenger (ShadowIssuer) instead of
// serving it: each device keeps serving its version and scores every
// request with both. The stage is judged on the challenger's figures from
// the Metrics (ShadowMetrics): its devices count as reported once they
// score the challenger (or refused it), and the shadow gate passes only
// when, over at least MinLabelled labelled rows scored by both, the
// challenger's accuracy is at least the champion's plus ShadowMargin; it
// waits for labels until then, and is breached (pause or roll back, as
// OnBreach says) when the challenger is behind. When the rollout moves
// past the last shadow stage, its devices are assigned the version like
// any stage's (the served version changes; the shadow ends with it). A
// rollback, a breach with rollback, or an abort withdraws the shadows.

// ShadowIssuer gives devices a challenger to score in shadow; the control
// plane's deploy path implements it. version "" withdraws model's shadow.
// Like Assign it is called with the engine's lock held.
type ShadowIssuer interface {
	AssignShadow(ctx context.Context, model, version string, devices []string) (map[string]uint64, error)
}

// ShadowMetrics gives a challenger's shadow figures over devices since a
// time; the monitoring aggregator implements it.
type ShadowMetrics interface {
	ShadowFigures(model, version string, devices []string, since time.Time) ShadowFigures
}

// ShadowFigures are a challenger's shadow counts over some devices.
type ShadowFigures struct {
	// Ready are the devices that reported the challenger scoring; Failed
	// those that reported it refused, with the last reason.
	Ready  map[string]bool
	Failed map[string]string
	// Counts summed over the devices (see efpb.ShadowReport).
	Rows, Agree, Skipped, Errors                 uint64
	ScoreDiff                                    float64
	Labelled, ChampionCorrect, ChallengerCorrect uint64
}

// hasShadow reports whether spec has a shadow stage.
func hasShadow(spec api.RolloutSpec) bool {
	for _, st := range spec.Stages {
		if st.Shadow {
			return true
		}
	}
	return false
}

// checkShadow refuses a spec with a shadow stage when the engine cannot
// run one.
func (e *Engine) checkShadow(spec api.RolloutSpec) error {
	if !hasShadow(spec) {
		return nil
	}
	if _, ok := e.opts.Issuer.(ShadowIssuer); !ok {
		return invalidf("shadow stages are not supported by this control plane's deploy path")
	}
	return nil
}

// deliverShadows issues the shadow assignments in byVersion ("" withdraws)
// and records them.
func (e *Engine) deliverShadows(ctx context.Context, r *Rollout, byVersion map[string][]string) {
	si, ok := e.opts.Issuer.(ShadowIssuer)
	if !ok {
		return
	}
	versions := make([]string, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	for _, v := range versions {
		ids := byVersion[v]
		sort.Strings(ids)
		gens, err := si.AssignShadow(ctx, r.Spec.Model, v, ids)
		if err != nil {
			e.log.Error("issue shadow assignments failed; retrying next tick", "rollout", r.ID, "version", v, "devices", len(ids), "err", err)
			continue
		}
		for _, id := range ids {
			rec := r.Devices[id]
			rec.Issued, rec.Generation = v, gens[id]
		}
		e.log.Info("shadow assignments issued", "rollout", r.ID, "model", r.Spec.Model, "version", v, "devices", len(ids))
	}
}

// serveShadowed turns the shadow records into ordinary ones: the next
// deliver assigns them the version to serve (which ends their shadow).
// Called when the rollout leaves its last shadow stage.
func (r *Rollout) serveShadowed() int {
	n := 0
	for _, rec := range r.Devices {
		if rec.Shadow && !rec.RolledBack {
			rec.Shadow, rec.Issued, rec.Generation = false, "", 0
			n++
		}
	}
	return n
}

// withdrawShadows makes the next deliver take every shadow away (abort).
func (r *Rollout) withdrawShadows() {
	for _, rec := range r.Devices {
		if rec.Shadow {
			rec.Want = ""
		}
	}
}

// evaluateShadow is evaluate for a shadow stage.
func (e *Engine) evaluateShadow(r *Rollout, devs map[string]Device, now time.Time) ([]api.GateResult, string, *api.GateResult) {
	var cohort []string
	online := 0
	for id, rec := range r.Devices {
		if rec.RolledBack || !rec.Shadow {
			continue
		}
		cohort = append(cohort, id)
		if devs[id].Online {
			online++
		}
	}
	sort.Strings(cohort)
	p := &r.Progress[r.Stage]
	if left := p.Started.Add(r.bake(r.Stage)).Sub(now); left > 0 {
		return nil, fmt.Sprintf("bake time (%s left)", left.Round(time.Millisecond)), nil
	}
	if len(cohort) == 0 {
		return nil, "no devices in the cohort yet", nil
	}
	sm, ok := e.opts.Metrics.(ShadowMetrics)
	if !ok {
		return nil, "shadow figures: this control plane's monitoring has none", nil
	}
	f := sm.ShadowFigures(r.Spec.Model, r.Spec.Version, cohort, p.Started)
	p.Shadow = shadowView(f)
	need := r.Spec.Stages[r.Stage].MinDevices
	if need == 0 {
		need = max(1, online)
	}
	reported := len(f.Ready) + len(f.Failed)
	if reported < need {
		return nil, fmt.Sprintf("%d of %d devices report the challenger in shadow", reported, need), nil
	}
	g := r.gates(r.Stage)
	var results []api.GateResult
	if g.MaxFailureRate != nil {
		v := float64(len(f.Failed)) / float64(reported)
		results = append(results, limitGate("failure_rate", v, *g.MaxFailureRate,
			fmt.Sprintf("%d of %d reporting devices refused the challenger", len(f.Failed), reported)))
	}
	minL := g.MinLabelled
	if minL == 0 {
		minL = defaultMinLabels
	}
	margin := 0.0
	if g.ShadowMargin != nil {
		margin = *g.ShadowMargin
	}
	res := api.GateResult{Gate: "shadow_accuracy", Limit: margin}
	switch {
	case len(f.Ready) == 0:
		res.Status, res.Detail = api.GateWaiting, "no device scores the challenger"
	case f.Labelled < uint64(minL):
		res.Status = api.GateWaiting
		res.Detail = fmt.Sprintf("labelled rows scored by both versions: %d, need %d", f.Labelled, minL)
	default:
		champ := float64(f.ChampionCorrect) / float64(f.Labelled)
		chall := float64(f.ChallengerCorrect) / float64(f.Labelled)
		res.Value = chall - champ
		res.Detail = fmt.Sprintf("challenger %s accuracy %.4f vs champion %.4f on %d labelled rows (gain %+.4f, margin %+.4f)",
			r.Spec.Version, chall, champ, f.Labelled, res.Value, margin)
		res.Status = api.GatePass
		if res.Value < margin-1e-12 {
			res.Status = api.GateBreach
		}
	}
	results = append(results, res)
	var breach *api.GateResult
	waiting := ""
	for i := range results {
		switch results[i].Status {
		case api.GateBreach:
			if breach == nil {
				breach = &results[i]
			}
		case api.GateWaiting:
			if waiting == "" {
				waiting = results[i].Gate + ": " + results[i].Detail
			}
		}
	}
	return results, waiting, breach
}

// shadowView is the API's form of f.
func shadowView(f ShadowFigures) *api.ShadowFigures {
	v := &api.ShadowFigures{DevicesReady: len(f.Ready), DevicesFailed: len(f.Failed), Rows: f.Rows,
		Skipped: f.Skipped, Errors: f.Errors, Labelled: f.Labelled}
	ids := make([]string, 0, len(f.Failed))
	for id := range f.Failed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids[:min(len(ids), 5)] {
		v.Failures = append(v.Failures, id+": "+f.Failed[id])
	}
	if f.Rows > 0 {
		v.Agreement = float64(f.Agree) / float64(f.Rows)
		v.MeanScoreDiff = f.ScoreDiff / float64(f.Rows)
	}
	if f.Labelled > 0 {
		v.ChampionAccuracy = float64(f.ChampionCorrect) / float64(f.Labelled)
		v.ChallengerAccuracy = float64(f.ChallengerCorrect) / float64(f.Labelled)
	}
	return v
}

// shadowCounts shows a shadow stage's devices by the challenger's state:
// ready ones as active, refusals as failed.
func shadowCounts(st *api.StageStatus) {
	f := st.Shadow
	if f == nil {
		return
	}
	c := &st.Devices
	live := c.Assigned - c.RolledBack
	c.Active = min(f.DevicesReady, live)
	c.Failed = min(f.DevicesFailed, live-c.Active)
	c.Pending = live - c.Active - c.Failed
	c.Downloading = 0
}
