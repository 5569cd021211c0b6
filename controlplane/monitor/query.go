package monitor

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Group-by dimensions of a Query. ByLabelPrefix + a label key ("label:hw")
// groups by that device label, as the devices are labelled now.
const (
	BySite        = api.GroupBySite
	ByCohort      = api.GroupByCohort
	ByDevice      = api.GroupByDevice
	ByLabelPrefix = api.GroupByLabelPrefix
)

// ValidBy checks a group-by dimension.
func ValidBy(by string) error {
	switch by {
	case "", BySite, ByCohort, ByDevice:
		return nil
	}
	if key, ok := strings.CutPrefix(by, ByLabelPrefix); ok && key != "" && !strings.ContainsAny(key, " ,=") {
		return nil
	}
	return fmt.Errorf("monitor: cannot group by %q (use site, cohort, device or label:<key>)", by)
}

// ModelMetrics answers the model metrics endpoint: Query with the API's
// parameters; an invalid one is api.ErrInvalid.
func (a *Aggregator) ModelMetrics(model, version string, q api.MetricsQuery) (*api.ModelMetrics, error) {
	res, err := a.Query(Query{Model: model, Version: version, From: q.From, To: q.To, By: q.By, Points: q.Points})
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "invalid request: %v", err)
	}
	return res, nil
}

// Query selects the data of one model version.
type Query struct {
	Model, Version string
	// From and To bound the buckets (From inclusive, To exclusive); zero
	// From means To minus a day, zero To means now.
	From, To time.Time
	// By groups the figures: "", BySite, ByCohort or ByDevice.
	By string
	// Devices, if set, restricts the query to these devices.
	Devices []string
	// Points is the number of points of the time series; default 24.
	Points int
}

type bucketCell struct {
	at     time.Time
	device string
	c      cell
}

// cells returns every cell of a model version in [from, to).
func (a *Aggregator) cells(model, version string, from, to time.Time, devices []string) ([]bucketCell, error) {
	if err := a.Flush(); err != nil {
		return nil, err
	}
	var only map[string]bool // devices as a set, when there are many
	if len(devices) > 16 {
		only = make(map[string]bool, len(devices))
		for _, d := range devices {
			only[d] = true
		}
	}
	var out []bucketCell
	for _, p := range []string{hourlyPrefix, rawPrefix} {
		prefix := p + model + "/" + version + "/"
		err := a.opts.KV.Scan(prefix, func(key string, val []byte) error {
			_, _, at, dev, ok := parseCellKey(key[len(p):])
			if !ok || at.Before(from) || !at.Before(to) {
				return nil
			}
			if only != nil && !only[dev] || only == nil && devices != nil && !slices.Contains(devices, dev) {
				return nil
			}
			bc := bucketCell{at: at, device: dev}
			if err := json.Unmarshal(val, &bc.c); err != nil {
				return fmt.Errorf("decode %s: %w", key, err)
			}
			out = append(out, bc)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("monitor: query: %w", err)
		}
	}
	return out, nil
}

// Query computes the figures of q.
func (a *Aggregator) Query(q Query) (*api.ModelMetrics, error) {
	if err := a.normalize(&q); err != nil {
		return nil, err
	}
	groupKey := a.groupKey(q.By)
	cells, err := a.cells(q.Model, q.Version, q.From, q.To, q.Devices)
	if err != nil {
		return nil, err
	}
	var ref []*efpb.FeatureStats
	if a.opts.Reference != nil {
		ref, _ = a.opts.Reference(q.Model, q.Version)
	}
	res := &api.ModelMetrics{Model: q.Model, Version: q.Version, From: q.From, To: q.To, By: q.By, Devices: []api.MetricsGroup{}, Series: []api.MetricsPoint{}}

	var total Counts
	var totalReports uint64
	groups := map[string]*Counts{}
	groupReports := map[string]uint64{}
	groupDevices := map[string]map[string]bool{}
	perDev := map[string]*Counts{}
	devReports := map[string]uint64{}
	step := q.To.Sub(q.From) / time.Duration(q.Points)
	if step <= 0 {
		step = time.Minute
	}
	series := make([]Counts, q.Points)
	allDevices := map[string]bool{}
	for _, bc := range cells {
		total.Add(&bc.c.Counts)
		totalReports += bc.c.Reports
		allDevices[bc.device] = true
		if perDev[bc.device] == nil {
			perDev[bc.device] = &Counts{}
		}
		perDev[bc.device].Add(&bc.c.Counts)
		devReports[bc.device] += bc.c.Reports
		if q.By != "" {
			key := groupKey(&bc)
			if groups[key] == nil {
				groups[key] = &Counts{}
				groupDevices[key] = map[string]bool{}
			}
			groups[key].Add(&bc.c.Counts)
			groupReports[key] += bc.c.Reports
			groupDevices[key][bc.device] = true
		}
		if i := int(bc.at.Sub(q.From) / step); i >= 0 && i < q.Points {
			series[i].Add(&bc.c.Counts)
		}
	}
	res.Total = figures(&total, ref, total.Pred)
	res.Total.Reports, res.Total.Devices = totalReports, len(allDevices)
	shadowDevices(res.Total.Shadow, allDevices, perDev)
	for _, k := range sortedKeys(groups) {
		f := figures(groups[k], ref, total.Pred)
		f.Reports, f.Devices = groupReports[k], len(groupDevices[k])
		shadowDevices(f.Shadow, groupDevices[k], perDev)
		res.Groups = append(res.Groups, api.MetricsGroup{Key: k, MetricsFigures: f})
	}
	for _, k := range sortedKeys(perDev) {
		f := figures(perDev[k], ref, total.Pred)
		f.Reports, f.Devices = devReports[k], 1
		shadowDevices(f.Shadow, map[string]bool{k: true}, perDev)
		res.Devices = append(res.Devices, api.MetricsGroup{Key: k, MetricsFigures: f})
	}
	res.Series = points(series, q.From, step, ref)
	return res, nil
}

// normalize checks q and fills its defaults.
func (a *Aggregator) normalize(q *Query) error {
	if err := ValidBy(q.By); err != nil {
		return err
	}
	if q.To.IsZero() {
		q.To = a.opts.Clock()
	}
	if q.From.IsZero() {
		q.From = q.To.Add(-24 * time.Hour)
	}
	if !q.From.Before(q.To) {
		return fmt.Errorf("monitor: from %s is not before to %s", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))
	}
	if q.Points <= 0 {
		q.Points = 24
	}
	return nil
}

// groupKey returns the function naming a cell's group under by.
func (a *Aggregator) groupKey(by string) func(bc *bucketCell) string {
	labelKey, byLabel := strings.CutPrefix(by, ByLabelPrefix)
	return func(bc *bucketCell) string {
		switch {
		case by == BySite:
			return bc.c.Site
		case by == ByCohort:
			return bc.c.Cohort
		case byLabel:
			if a.opts.Labels != nil {
				return a.opts.Labels(bc.device)[labelKey]
			}
			return ""
		}
		return bc.device
	}
}

// points turns the counts of each step into a time series.
func points(series []Counts, from time.Time, step time.Duration, ref []*efpb.FeatureStats) []api.MetricsPoint {
	out := make([]api.MetricsPoint, 0, len(series))
	for i := range series {
		p := api.MetricsPoint{Time: from.Add(time.Duration(i) * step), Rows: series[i].Rows}
		if series[i].Labelled > 0 {
			v := float64(series[i].Correct) / float64(series[i].Labelled)
			p.Accuracy = &v
		}
		if series[i].Rows > 0 && len(ref) > 0 {
			f := figures(&series[i], ref, nil)
			p.MaxPSI = &f.MaxPSI
		}
		out = append(out, p)
	}
	return out
}

// Series is the time series of one group of a query, with the group's
// figures over the whole range.
type Series struct {
	Key     string
	Points  []api.MetricsPoint
	Figures api.MetricsFigures
}

// SeriesBy returns the time series of every group of q (q.By: site,
// cohort, device or label:<key>), by key: accuracy and largest feature PSI
// per step, as the web console charts them per site or label, and each
// group's figures as Query gives them, from one scan.
func (a *Aggregator) SeriesBy(q Query) ([]Series, error) {
	if err := a.normalize(&q); err != nil {
		return nil, err
	}
	if q.By == "" {
		return nil, fmt.Errorf("monitor: series by what? (site, cohort, device or label:<key>)")
	}
	groupKey := a.groupKey(q.By)
	cells, err := a.cells(q.Model, q.Version, q.From, q.To, q.Devices)
	if err != nil {
		return nil, err
	}
	var ref []*efpb.FeatureStats
	if a.opts.Reference != nil {
		ref, _ = a.opts.Reference(q.Model, q.Version)
	}
	step := q.To.Sub(q.From) / time.Duration(q.Points)
	if step <= 0 {
		step = time.Minute
	}
	type group struct {
		steps   []Counts
		total   Counts
		reports uint64
		devices map[string]bool
	}
	var all Counts
	groups := map[string]*group{}
	for _, bc := range cells {
		key := groupKey(&bc)
		g := groups[key]
		if g == nil {
			g = &group{steps: make([]Counts, q.Points), devices: map[string]bool{}}
			groups[key] = g
		}
		if i := int(bc.at.Sub(q.From) / step); i >= 0 && i < q.Points {
			g.steps[i].Add(&bc.c.Counts)
		}
		g.total.Add(&bc.c.Counts)
		all.Add(&bc.c.Counts)
		g.reports += bc.c.Reports
		g.devices[bc.device] = true
	}
	out := make([]Series, 0, len(groups))
	for _, k := range sortedKeys(groups) {
		g := groups[k]
		f := figures(&g.total, ref, all.Pred)
		f.Reports, f.Devices = g.reports, len(g.devices)
		out = append(out, Series{Key: k, Points: points(g.steps, q.From, step, ref), Figures: f})
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func ptr(v float64) *float64 { return &v }

// figures computes what c says; ref are the reference statistics and
// basePred the prediction counts the group is compared with.
func figures(c *Counts, ref []*efpb.FeatureStats, basePred []uint64) api.MetricsFigures {
	f := api.MetricsFigures{
		Rows: c.Rows, Errors: c.Errors, Labelled: c.Labelled, Correct: c.Correct,
		UnknownLabels: c.Unknown, DuplicateLabels: c.Duplicate,
	}
	if c.Labelled > 0 {
		f.Accuracy = ptr(float64(c.Correct) / float64(c.Labelled))
	}
	if c.Binary && c.Labelled > 0 {
		if c.TP+c.FP > 0 {
			f.Precision = ptr(float64(c.TP) / float64(c.TP+c.FP))
		}
		if c.TP+c.FN > 0 {
			f.Recall = ptr(float64(c.TP) / float64(c.TP+c.FN))
		}
		if f.Precision != nil && f.Recall != nil && *f.Precision+*f.Recall > 0 {
			f.F1 = ptr(2 * *f.Precision * *f.Recall / (*f.Precision + *f.Recall))
		}
		if len(c.CalN) > 0 && len(c.CalN) == len(c.CalPos) {
			f.Calibration = make([]float64, len(c.CalN))
			for i, n := range c.CalN {
				f.Calibration[i] = -1
				if n > 0 {
					f.Calibration[i] = float64(c.CalPos[i]) / float64(n)
				}
			}
		}
	}
	for _, fs := range ref {
		counts, ok := c.Features[fs.GetName()]
		if !ok {
			continue
		}
		refFr, err := drift.ReferenceFractions(fs)
		if err != nil || len(refFr) != len(counts) {
			continue
		}
		var n uint64
		for _, v := range counts {
			n += v
		}
		if n == 0 {
			continue
		}
		live := drift.Fractions(counts)
		fd := api.FeatureDrift{Name: fs.GetName(), Rows: n, PSI: drift.PSI(refFr, live), KS: drift.KS(refFr, live)}
		f.Features = append(f.Features, fd)
		if fd.PSI > f.MaxPSI {
			f.MaxPSI, f.MaxPSIFeature = fd.PSI, fd.Name
		}
	}
	if len(c.Pred) > 0 {
		fr := drift.Fractions(c.Pred)
		for i, v := range fr {
			f.MeanScore += v * (float64(i) + 0.5) / float64(len(fr))
		}
		if len(basePred) == len(c.Pred) {
			base := drift.Fractions(basePred)
			f.PredictionPSI, f.PredictionKS = drift.PSI(base, fr), drift.KS(base, fr)
		}
	}
	if s := c.Shadow; s != nil {
		f.Shadow = &api.ShadowFigures{Rows: s.Rows, Skipped: s.Skipped, Errors: s.Errors, Labelled: s.Labelled}
		if s.Rows > 0 {
			f.Shadow.Agreement = float64(s.Agree) / float64(s.Rows)
			f.Shadow.MeanScoreDiff = s.ScoreDiff / float64(s.Rows)
		}
		if s.Labelled > 0 {
			f.Shadow.ChampionAccuracy = float64(s.ChampionCorrect) / float64(s.Labelled)
			f.Shadow.ChallengerAccuracy = float64(s.ChallengerCorrect) / float64(s.Labelled)
		}
		if len(s.Lat) > 0 {
			f.Shadow.ChallengerLatencyP50Ms = nanToZero(drift.Quantile(s.LatEdges, s.Lat, 0.5) / 1000)
			f.Shadow.ChallengerLatencyP99Ms = nanToZero(drift.Quantile(s.LatEdges, s.Lat, 0.99) / 1000)
		}
	}
	if len(c.Lat) > 0 {
		f.LatencyP50Ms = nanToZero(drift.Quantile(c.LatEdges, c.Lat, 0.5) / 1000)
		f.LatencyP99Ms = nanToZero(drift.Quantile(c.LatEdges, c.Lat, 0.99) / 1000)
	}
	return f
}

// shadowDevices counts the devices of a group that scored the challenger
// in shadow (a ready report in the range) and those whose last word was a
// refusal, as ShadowFigures does for the gate.
func shadowDevices(f *api.ShadowFigures, devices map[string]bool, perDev map[string]*Counts) {
	if f == nil {
		return
	}
	for _, id := range sortedKeys(devices) {
		s := perDev[id].Shadow
		switch {
		case s == nil:
		case s.ReadyReports > 0:
			f.DevicesReady++
		case s.Failure != "":
			f.DevicesFailed++
			if len(f.Failures) < 5 {
				f.Failures = append(f.Failures, id+": "+s.Failure)
			}
		}
	}
}

func nanToZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// VersionMetrics answers the rollout engine's quality gates: the accuracy,
// labelled count and drift score (largest feature PSI) of a model version
// on devices (nil: every device) over the last GateWindow. ok is false when nothing was
// reported. *Aggregator implements rollout.Metrics.
func (a *Aggregator) VersionMetrics(model, version string, devices []string) (rollout.Figures, bool) {
	now := a.opts.Clock()
	res, err := a.Query(Query{Model: model, Version: version, From: now.Add(-a.opts.GateWindow), To: now.Add(time.Nanosecond), Devices: devices, Points: 1})
	if err != nil {
		a.log.Warn("version metrics", "model", model, "version", version, "err", err)
		return rollout.Figures{}, false
	}
	if res.Total.Reports == 0 {
		return rollout.Figures{}, false
	}
	f := rollout.Figures{Labelled: int(res.Total.Labelled), DriftScore: res.Total.MaxPSI}
	if res.Total.Accuracy != nil {
		f.Accuracy = *res.Total.Accuracy
	}
	return f, true
}

var _ rollout.Metrics = (*Aggregator)(nil)
