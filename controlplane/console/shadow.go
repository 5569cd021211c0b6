package console

import (
	"fmt"
	"maps"
	"slices"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// The shadow panel of a rollout page: for each shadow stage, the
// challenger against the champions serving on the stage's devices — the
// figures the shadow gate judged (the rollout's), then per site the
// challenger's shadow figures and the champions' served figures (rows,
// accuracy, latency) from the monitoring store.

// shadowSite is one site's figures in a shadow stage.
type shadowSite struct {
	Site string
	// Shadow is the challenger's comparison with the champions there.
	Shadow *api.ShadowFigures
	// Served are the champions' own figures on the same devices (nil
	// when they reported nothing in the stage).
	Served *api.MetricsFigures
}

type shadowPanel struct {
	Stage      int
	Name       string
	Current    bool
	Result     string
	Challenger string
	// Champions are the versions the stage's devices served meanwhile.
	Champions []string
	// F is what the shadow gate last judged (nil before the first
	// evaluation).
	F *api.ShadowFigures
	// The gate: the challenger's accuracy must reach the champion's plus
	// Margin over at least MinLabelled labelled rows.
	MinLabelled int
	Margin      float64
	Devices     int
	// Served and Scored are the monitoring store's totals over the stage's
	// devices: the champions' served figures and the challenger's shadow
	// figures (which carry its latency).
	Served *api.MetricsFigures
	Scored *api.ShadowFigures
	Sites  []shadowSite
	// SitesErr says why the per-site figures are missing.
	SitesErr string
}

// maxShadowChampions bounds the champion versions queried per stage.
const maxShadowChampions = 3

// shadowPanels builds the panels of ro's shadow stages that started.
func (c *Console) shadowPanels(ro *api.Rollout) []shadowPanel {
	var stages []int
	for i, s := range ro.Spec.Stages {
		if s.Shadow && i < len(ro.Stages) && !ro.Stages[i].Started.IsZero() {
			stages = append(stages, i)
		}
	}
	if len(stages) == 0 {
		return nil
	}
	// The stages' devices and what they served: only the rollouts with a
	// started shadow stage pay for the copy of their device records.
	full, err := c.opts.Rollouts.Get(ro.ID, true)
	if err != nil {
		full = ro
	}
	var out []shadowPanel
	for _, i := range stages {
		st, spec := ro.Stages[i], ro.Spec.Stages[i]
		g := ro.Spec.Gates
		if spec.Gates != nil {
			g = *spec.Gates
		}
		p := shadowPanel{Stage: st.Index, Name: st.Name, Current: st.Current, Result: st.Result, Challenger: ro.Spec.Version,
			F: st.Shadow, MinLabelled: g.MinLabelled}
		if p.MinLabelled == 0 {
			p.MinLabelled = 100
		}
		if g.ShadowMargin != nil {
			p.Margin = *g.ShadowMargin
		}
		var devs []string
		champions := map[string]bool{}
		for id, rec := range full.Devices {
			if rec.Stage == i {
				devs = append(devs, id)
				if rec.Previous != "" {
					champions[rec.Previous] = true
				}
			}
		}
		slices.Sort(devs)
		p.Devices = len(devs)
		p.Champions = slices.Sorted(maps.Keys(champions))
		if len(devs) > 0 {
			total := shadowSite{}
			p.Sites, total, err = c.shadowSites(ro.Spec.Model, ro.Spec.Version, p.Champions, devs, st)
			p.Served, p.Scored = total.Served, total.Shadow
			if err != nil {
				p.SitesErr = err.Error()
			}
		}
		out = append(out, p)
	}
	return out
}

// shadowSites queries the challenger's shadow figures and the champions'
// served figures on devs since the stage started, per site and in total.
func (c *Console) shadowSites(model, challenger string, champions, devs []string, st api.StageStatus) ([]shadowSite, shadowSite, error) {
	var total shadowSite
	q := monitor.Query{Model: model, By: monitor.BySite, Devices: devs, From: st.Started.Truncate(monitor.DefaultRawBucket), Points: 1}
	if !st.Finished.IsZero() {
		q.To = st.Finished.Add(monitor.DefaultRawBucket)
	}
	q.Version = challenger
	res, err := c.opts.Metrics.Query(q)
	if err != nil {
		return nil, total, fmt.Errorf("shadow figures of %s %s: %w", model, challenger, err)
	}
	total.Shadow = res.Total.Shadow
	bySite := map[string]*shadowSite{}
	site := func(k string) *shadowSite {
		if bySite[k] == nil {
			bySite[k] = &shadowSite{Site: k}
		}
		return bySite[k]
	}
	for _, gr := range res.Groups {
		if gr.Shadow != nil {
			site(gr.Key).Shadow = gr.Shadow
		}
	}
	for _, champ := range champions[:min(len(champions), maxShadowChampions)] {
		q.Version = champ
		res, err := c.opts.Metrics.Query(q)
		if err != nil {
			return nil, total, fmt.Errorf("figures of %s %s: %w", model, champ, err)
		}
		total.Served = addServed(total.Served, res.Total)
		for _, gr := range res.Groups {
			s := site(gr.Key)
			s.Served = addServed(s.Served, gr.MetricsFigures)
		}
	}
	out := make([]shadowSite, 0, len(bySite))
	for _, k := range slices.Sorted(maps.Keys(bySite)) {
		out = append(out, *bySite[k])
	}
	return out, total, nil
}

// addServed adds a champion's served figures f to sum (nil: none yet).
// Two champions at one site add what adds up; the latencies are the
// larger of the two.
func addServed(sum *api.MetricsFigures, f api.MetricsFigures) *api.MetricsFigures {
	if f.Reports == 0 {
		return sum
	}
	if sum == nil {
		return &f
	}
	sum.Rows += f.Rows
	sum.Labelled += f.Labelled
	sum.Correct += f.Correct
	sum.Devices += f.Devices
	sum.Reports += f.Reports
	sum.LatencyP50Ms = max(sum.LatencyP50Ms, f.LatencyP50Ms)
	sum.LatencyP99Ms = max(sum.LatencyP99Ms, f.LatencyP99Ms)
	if sum.Labelled > 0 {
		acc := float64(sum.Correct) / float64(sum.Labelled)
		sum.Accuracy = &acc
	}
	return sum
}
