package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Model monitoring on the device: every inference adds its numeric input
// features to per-feature sketches over the manifest's reference bins
// (features of BYTES inputs are skipped), its predicted score to a
// prediction sketch and its latency to a histogram; its predictions are
// kept by inference id for a while so that ground-truth labels arriving
// later (POST /v2/models/{name}/feedback) can be joined to them. Each
// telemetry message carries the counts of the window since the previous
// one and resets them: reports are mergeable, the control plane adds them.
//
// Lock order: predStore.mu, then modelMonitor.mu. monitors.mu is never held
// while taking either.

// Defaults of the monitoring Options.
const (
	DefaultLabelCapacity    = 10_000
	DefaultLabelTTL         = 24 * time.Hour
	DefaultOutboxMaxReports = 1000
	DefaultOutboxMaxBytes   = 4 << 20
)

// monitors holds the monitor of every model version that served, and the
// prediction store of every model name.
type monitors struct {
	clock    func() time.Time
	capacity int
	ttl      time.Duration

	mu     sync.Mutex // guards byKey and stores
	byKey  map[string]*modelMonitor
	stores map[string]*predStore
}

func newMonitors(o *Options) *monitors {
	if o.LabelCapacity <= 0 {
		o.LabelCapacity = DefaultLabelCapacity
	}
	if o.LabelTTL <= 0 {
		o.LabelTTL = DefaultLabelTTL
	}
	return &monitors{
		clock:    o.Clock,
		capacity: o.LabelCapacity,
		ttl:      o.LabelTTL,
		byKey:    map[string]*modelMonitor{},
		stores:   map[string]*predStore{},
	}
}

// get returns the monitor of name at the manifest's version, creating it.
func (ms *monitors) get(name string, man *efpb.Manifest) *modelMonitor {
	key := name + "@" + man.GetVersion()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	mm := ms.byKey[key]
	if mm == nil {
		mm = newModelMonitor(name, man, ms.clock())
		mm.store = ms.stores[name]
		if mm.store == nil {
			mm.store = &predStore{capacity: ms.capacity, ttl: ms.ttl, byKey: map[predKey]int32{}}
			ms.stores[name] = mm.store
		}
		ms.byKey[key] = mm
	}
	return mm
}

// store returns the prediction store of model name, creating it.
func (ms *monitors) store(name string, create bool) *predStore {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ps := ms.stores[name]
	if ps == nil && create {
		ps = &predStore{capacity: ms.capacity, ttl: ms.ttl, byKey: map[predKey]int32{}}
		ms.stores[name] = ps
	}
	return ps
}

// collect returns a report of every monitor that saw anything since the
// last collect, resetting their windows, and forgets monitors idle for
// longer than the label TTL (no label can reach them any more).
func (ms *monitors) collect(now time.Time) []*efpb.MonitorReport {
	ms.mu.Lock()
	all := make(map[string]*modelMonitor, len(ms.byKey))
	for k, mm := range ms.byKey {
		all[k] = mm
	}
	ms.mu.Unlock()
	var out []*efpb.MonitorReport
	for k, mm := range all {
		r, idle := mm.report(now)
		if r != nil {
			out = append(out, r)
		} else if now.Sub(idle) > ms.ttl {
			ms.mu.Lock()
			delete(ms.byKey, k)
			ms.mu.Unlock()
		}
	}
	return out
}

// modelMonitor accumulates one window of one model version.
type modelMonitor struct {
	name, version string
	featNames     []string
	featInputs    []string // the input each feature is read from
	featCols      []int    // its column in that input
	predEdges     []float64
	preds         predictor
	store         *predStore // of this model name, shared by its versions

	mu        sync.Mutex // guards everything below
	start     time.Time
	lastUsed  time.Time
	feats     []*drift.Sketch // per reference feature; nil when the manifest has none
	pred, lat *drift.Sketch
	rows      uint64
	errors    uint64
	binary    bool
	labelled  uint64
	correct   uint64
	tp, fp    uint64
	fn, tn    uint64
	unknown   uint64
	dup       uint64
	calN      [drift.PredictionBins]uint64
	calPos    [drift.PredictionBins]uint64
}

func newModelMonitor(name string, man *efpb.Manifest, now time.Time) *modelMonitor {
	mm := &modelMonitor{name: name, version: man.GetVersion(), start: now, lastUsed: now, predEdges: drift.PredictionEdges(),
		preds: newPredictor(man)}
	mm.pred, _ = drift.NewSketch(mm.predEdges)
	mm.lat, _ = drift.NewSketch(drift.LatencyEdgesMicros())
	first := ""
	if ins := man.GetInputs(); len(ins) > 0 {
		first = ins[0].GetName()
	}
	cols := map[string]int{}
	for _, fs := range man.GetReference() {
		s, err := drift.FromStats(fs)
		if err != nil {
			// A manifest with unusable reference statistics still serves;
			// it only has no input drift.
			mm.feats, mm.featNames, mm.featInputs, mm.featCols = nil, nil, nil, nil
			break
		}
		in := fs.GetInput()
		if in == "" {
			in = first
		}
		mm.feats = append(mm.feats, s)
		mm.featNames = append(mm.featNames, fs.GetName())
		mm.featInputs = append(mm.featInputs, in)
		mm.featCols = append(mm.featCols, cols[in])
		cols[in]++
	}
	return mm
}

// rowCount is the number of rows of a tensor: its first dimension, or 1
// for a tensor of rank 0.
func rowCount(t *oip.Tensor) int {
	if len(t.Shape) == 0 {
		return 1
	}
	return int(t.Shape[0])
}

// findTensor returns the tensor named name in ts, trying index hint first;
// "" names the first.
func findTensor(ts []oip.Tensor, name string, hint int) *oip.Tensor {
	if name == "" && len(ts) > 0 {
		return &ts[0]
	}
	if hint >= 0 && hint < len(ts) && ts[hint].Name == name {
		return &ts[hint]
	}
	for i := range ts {
		if ts[i].Name == name {
			return &ts[i]
		}
	}
	return nil
}

// predictor says where a row's predicted class and score are read from
// an inference's outputs: the score output (a probability per row, or a
// score per class — a class map's columns), and, when the manifest names
// one, the label output (the predicted class label per row; BYTES labels
// count as their index in the score output's classes).
type predictor struct {
	score, label string
	scoreHint    int
	labelHint    int
	stringClass  map[string]int32 // BYTES label -> class index
}

func newPredictor(man *efpb.Manifest) predictor {
	outs := man.GetOutputs()
	p := predictor{score: man.GetScoreOutput(), label: man.GetLabelOutput(), scoreHint: -1, labelHint: -1}
	if p.score == "" && len(outs) > 0 {
		p.score = outs[0].GetName()
	}
	for i, o := range outs {
		switch o.GetName() {
		case p.score:
			p.scoreHint = i
			if c, err := tensor.FromProto(o.GetClasses()); err == nil && c.Datatype == tensor.Bytes {
				p.stringClass = map[string]int32{}
				for j, s := range c.Data.([]string) {
					p.stringClass[s] = int32(j)
				}
			}
		case p.label:
			p.labelHint = i
		}
	}
	return p
}

// source is one inference's outputs as predictions: width score values
// per row, and optionally a label per row.
type source struct {
	p            *predictor
	score, label *oip.Tensor
	width        int
}

// sourceOf finds the prediction outputs among out for rows rows; ok is
// false when they cannot be read as predictions (then none are stored).
func (p *predictor) sourceOf(out []oip.Tensor, rows int) (src source, ok bool) {
	if rows <= 0 {
		return source{}, false
	}
	score := findTensor(out, p.score, p.scoreHint)
	if score == nil || !score.DT().IsNumeric() || score.Len() == 0 || score.Len()%rows != 0 {
		return source{}, false
	}
	src = source{p: p, score: score, width: score.Len() / rows}
	if p.label != "" {
		if src.label = findTensor(out, p.label, p.labelHint); src.label == nil || src.label.Len() != rows {
			return source{}, false
		}
	}
	return src, true
}

// binary reports a model with one probability per row, or two classes.
func (s source) binary() bool { return s.width == 1 || s.width == 2 }

// row returns row r's predicted class and its score: for a binary model
// the probability of class 1 (the second column of two), else the
// highest score. The class is the label output's when there is one, else
// 1 for a probability >= 0.5, else the argmax.
func (s source) row(r int) (class int32, score float32) {
	best, bestV := 0, 0.0
	for i := range s.width {
		v, _ := s.score.Float64(r*s.width + i)
		if i == 0 || v > bestV {
			best, bestV = i, v
		}
	}
	switch s.width {
	case 1:
		score = float32(bestV)
		if score >= 0.5 {
			class = 1
		}
	case 2:
		v, _ := s.score.Float64(r*2 + 1)
		score, class = float32(v), int32(best)
	default:
		score, class = float32(bestV), int32(best)
	}
	if s.label == nil {
		return class, score
	}
	if strs, ok := s.label.Data.([]string); ok {
		c, known := s.p.stringClass[strs[r]]
		if !known {
			return -1, score // never matches a label
		}
		return c, score
	}
	v, _ := s.label.Float64(r)
	return int32(v), score
}

// record adds one successful inference and returns where its row
// predictions are (ok false when the outputs cannot be read as
// predictions, then none are stored). Features of a non-numeric input
// (BYTES) are not sketched.
func (mm *modelMonitor) record(in, out []oip.Tensor, latency time.Duration) (rows int, src source, ok bool) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	mm.lat.Add(float64(latency.Microseconds()))
	if len(in) == 0 {
		return 0, source{}, false
	}
	rows = rowCount(&in[0])
	if rows <= 0 {
		return 0, source{}, false
	}
	mm.rows += uint64(rows)
	for j, s := range mm.feats {
		t := findTensor(in, mm.featInputs[j], -1)
		if t == nil || !t.DT().IsNumeric() || rowCount(t) != rows || t.Len()%rows != 0 {
			continue
		}
		width, col := t.Len()/rows, mm.featCols[j]
		if col >= width {
			continue
		}
		for r := range rows {
			v, _ := t.Float64(r*width + col)
			s.Add(v)
		}
	}
	src, ok = mm.preds.sourceOf(out, rows)
	if !ok {
		return rows, source{}, false
	}
	mm.binary = src.binary()
	for r := range rows {
		_, score := src.row(r)
		mm.pred.Add(float64(score))
	}
	return rows, src, true
}

func (mm *modelMonitor) recordError() {
	mm.mu.Lock()
	mm.errors++
	mm.mu.Unlock()
}

// addLabel joins a true label to a stored prediction.
func (mm *modelMonitor) addLabel(p *prediction, label int64) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	mm.labelled++
	if int64(p.class) == label {
		mm.correct++
	}
	if !p.binary {
		return
	}
	predPos, pos := p.class == 1, label == 1
	switch {
	case predPos && pos:
		mm.tp++
	case predPos:
		mm.fp++
	case pos:
		mm.fn++
	default:
		mm.tn++
	}
	b := drift.Bin(mm.predEdges, float64(p.score))
	mm.calN[b]++
	if pos {
		mm.calPos[b]++
	}
}

func (mm *modelMonitor) countLabel(unknown, dup uint64) {
	mm.mu.Lock()
	mm.unknown += unknown
	mm.dup += dup
	mm.mu.Unlock()
}

// report returns the window's report and starts a new window, or nil (and
// when the monitor was last used) when nothing happened.
func (mm *modelMonitor) report(now time.Time) (*efpb.MonitorReport, time.Time) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if mm.rows == 0 && mm.errors == 0 && mm.labelled == 0 && mm.unknown == 0 && mm.dup == 0 && mm.lat.Total() == 0 {
		return nil, mm.lastUsed
	}
	r := &efpb.MonitorReport{
		ModelName:            mm.name,
		ModelVersion:         mm.version,
		WindowStartUnixMs:    mm.start.UnixMilli(),
		WindowEndUnixMs:      now.UnixMilli(),
		Rows:                 mm.rows,
		PredictionCounts:     append([]uint64(nil), mm.pred.Counts()...),
		LatencyEdgesUs:       mm.lat.Edges(),
		LatencyCounts:        append([]uint64(nil), mm.lat.Counts()...),
		Labelled:             mm.labelled,
		Correct:              mm.correct,
		Binary:               mm.binary,
		Tp:                   mm.tp,
		Fp:                   mm.fp,
		Fn:                   mm.fn,
		Tn:                   mm.tn,
		UnknownLabels:        mm.unknown,
		DuplicateLabels:      mm.dup,
		Errors:               mm.errors,
		CalibrationCounts:    append([]uint64(nil), mm.calN[:]...),
		CalibrationPositives: append([]uint64(nil), mm.calPos[:]...),
	}
	for i, s := range mm.feats {
		r.Features = append(r.Features, &efpb.FeatureSketch{Name: mm.featNames[i], Counts: append([]uint64(nil), s.Counts()...), Nan: s.NaN()})
		s.Reset()
	}
	mm.pred.Reset()
	mm.lat.Reset()
	mm.rows, mm.errors, mm.labelled, mm.correct = 0, 0, 0, 0
	mm.tp, mm.fp, mm.fn, mm.tn, mm.unknown, mm.dup = 0, 0, 0, 0, 0, 0
	mm.calN, mm.calPos = [drift.PredictionBins]uint64{}, [drift.PredictionBins]uint64{}
	mm.start, mm.lastUsed = now, now
	return r, now
}

// predKey names one row of one inference.
type predKey struct {
	id  string
	row int32
}

// prediction is what the agent keeps of one row until its label arrives.
type prediction struct {
	key      predKey
	mon      *modelMonitor
	at       int64 // unix nanos
	score    float32
	class    int32
	binary   bool
	labelled bool
}

// predStore keeps the latest predictions of one model name in a ring:
// the oldest is overwritten when it is full, and one older than ttl is
// treated as unknown.
type predStore struct {
	capacity int
	ttl      time.Duration

	mu      sync.Mutex // guards below
	ring    []prediction
	next    int
	byKey   map[predKey]int32
	lastMon *modelMonitor // receives unknown/duplicate counts
}

func (ps *predStore) put(id string, mm *modelMonitor, src source, rows int, now int64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.lastMon = mm
	binary := src.binary()
	for r := range rows {
		class, score := src.row(r)
		p := prediction{key: predKey{id: id, row: int32(r)}, mon: mm, at: now, score: score, class: class, binary: binary}
		if len(ps.ring) < ps.capacity {
			ps.ring = append(ps.ring, p)
			ps.byKey[p.key] = int32(len(ps.ring) - 1)
			continue
		}
		old := ps.ring[ps.next].key
		if i, ok := ps.byKey[old]; ok && int(i) == ps.next {
			delete(ps.byKey, old)
		}
		ps.ring[ps.next] = p
		ps.byKey[p.key] = int32(ps.next)
		ps.next = (ps.next + 1) % ps.capacity
	}
}

// label joins labels to predictions.
func (ps *predStore) label(labels []oip.Label, now time.Time) oip.FeedbackResult {
	var res oip.FeedbackResult
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, l := range labels {
		if l.Row > 1<<30 {
			res.Unknown++
			continue
		}
		i, ok := ps.byKey[predKey{id: l.ID, row: int32(l.Row)}]
		if !ok {
			res.Unknown++
			continue
		}
		p := &ps.ring[i]
		switch {
		case now.UnixNano()-p.at > int64(ps.ttl):
			res.Unknown++
		case p.labelled:
			res.Duplicate++
		case p.binary && *l.Label > 1:
			res.Unknown++ // not a class of this model
		default:
			p.labelled = true
			p.mon.addLabel(p, *l.Label)
			res.Accepted++
		}
	}
	if ps.lastMon != nil && (res.Unknown > 0 || res.Duplicate > 0) {
		ps.lastMon.countLabel(uint64(res.Unknown), uint64(res.Duplicate))
	}
	return res
}

// observe records a successful inference of m; called by backend.Infer.
func (a *Agent) observe(ctx context.Context, name string, m *servedModel, in, out []oip.Tensor, latency time.Duration) {
	if a.mon == nil {
		return
	}
	mm := m.monitor(a.mon, name)
	rows, src, ok := mm.record(in, out, latency)
	if !ok {
		return
	}
	if id := oip.InferenceID(ctx); id != "" {
		mm.store.put(id, mm, src, rows, a.opts.Clock().UnixNano())
	}
}

func (a *Agent) observeError(name string, m *servedModel) {
	if a.mon != nil {
		m.monitor(a.mon, name).recordError()
	}
}

// monitor returns m's monitor, looking it up once.
func (m *servedModel) monitor(ms *monitors, name string) *modelMonitor {
	if mm := m.mon.Load(); mm != nil {
		return mm
	}
	mm := ms.get(name, m.manifest)
	m.mon.Store(mm)
	return mm
}

// Feedback joins ground-truth labels to earlier inferences of model name
// (the in-process form of POST /v2/models/{name}/feedback). Labels for ids
// the agent does not hold (never seen, evicted, older than LabelTTL) and
// repeated labels are counted, not errors.
func (a *Agent) Feedback(ctx context.Context, name string, labels []oip.Label) (oip.FeedbackResult, error) {
	return backend{a}.Feedback(ctx, name, labels)
}

var _ oip.FeedbackBackend = backend{}

func (b backend) Feedback(_ context.Context, name string, labels []oip.Label) (oip.FeedbackResult, error) {
	if b.a.slot(name) == nil {
		return oip.FeedbackResult{}, fmt.Errorf("model %q: %w", name, oip.ErrModelNotFound)
	}
	for _, l := range labels {
		if l.Label == nil {
			return oip.FeedbackResult{}, fmt.Errorf("label for id %q: no label value", l.ID)
		}
	}
	b.a.shadowLabels(name, labels) // the challenger's join (shadow.go)
	if b.a.mon == nil {
		return oip.FeedbackResult{Unknown: len(labels)}, nil
	}
	ps := b.a.mon.store(name, false)
	if ps == nil {
		return oip.FeedbackResult{Unknown: len(labels)}, nil
	}
	return ps.label(labels, b.a.opts.Clock()), nil
}
