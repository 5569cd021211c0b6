package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Model monitoring on the device: every inference adds its input features
// to per-feature sketches over the manifest's reference bins, its output to
// a prediction sketch and its latency to a histogram; its predictions are
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
	predEdges     []float64
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
	mm := &modelMonitor{name: name, version: man.GetVersion(), start: now, lastUsed: now, predEdges: drift.PredictionEdges()}
	mm.pred, _ = drift.NewSketch(mm.predEdges)
	mm.lat, _ = drift.NewSketch(drift.LatencyEdgesMicros())
	for _, fs := range man.GetReference() {
		s, err := drift.FromStats(fs)
		if err != nil {
			// A manifest with unusable reference statistics still serves;
			// it only has no input drift.
			mm.feats, mm.featNames = nil, nil
			break
		}
		mm.feats = append(mm.feats, s)
		mm.featNames = append(mm.featNames, fs.GetName())
	}
	return mm
}

// rowCount is the number of rows of a tensor: its first dimension, or 1
// for a tensor of rank 0 or 1.
func rowCount(t oip.Tensor) int {
	if len(t.Shape) < 2 {
		return 1
	}
	return int(t.Shape[0])
}

// rowPrediction is the predicted class and its score for row r of out,
// which holds width values per row: a binary model (width 1) predicts
// class 1 when the probability is at least 0.5; otherwise the class is the
// argmax.
func rowPrediction(data []float32, width, r int) (class int32, score float32) {
	row := data[r*width : (r+1)*width]
	if width == 1 {
		if row[0] >= 0.5 {
			return 1, row[0]
		}
		return 0, row[0]
	}
	best := 0
	for i, v := range row {
		if v > row[best] {
			best = i
		}
	}
	return int32(best), row[best]
}

// record adds one successful inference. It returns the output width per
// row (0 when the output cannot be read as one value or a score vector per
// row, then no predictions are stored).
func (mm *modelMonitor) record(in, out []oip.Tensor, latency time.Duration) (rows, width int) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	mm.lat.Add(float64(latency.Microseconds()))
	if len(in) == 0 {
		return 0, 0
	}
	rows = rowCount(in[0])
	if rows <= 0 {
		return 0, 0
	}
	mm.rows += uint64(rows)
	if nf := len(mm.feats); nf > 0 && len(in[0].Data) == rows*nf {
		d := in[0].Data
		for r := range rows {
			for j, s := range mm.feats {
				s.Add(float64(d[r*nf+j]))
			}
		}
	}
	if len(out) == 0 || len(out[0].Data) == 0 || len(out[0].Data)%rows != 0 {
		return rows, 0
	}
	width = len(out[0].Data) / rows
	mm.binary = width == 1
	for r := range rows {
		_, score := rowPrediction(out[0].Data, width, r)
		mm.pred.Add(float64(score))
	}
	return rows, width
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
	predPos, pos := p.score >= 0.5, label == 1
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

func (ps *predStore) put(id string, mm *modelMonitor, out []float32, rows, width int, now int64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.lastMon = mm
	for r := range rows {
		class, score := rowPrediction(out, width, r)
		p := prediction{key: predKey{id: id, row: int32(r)}, mon: mm, at: now, score: score, class: class, binary: width == 1}
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
	rows, width := mm.record(in, out, latency)
	if width == 0 {
		return
	}
	if id := oip.InferenceID(ctx); id != "" {
		mm.store.put(id, mm, out[0].Data, rows, width, a.opts.Clock().UnixNano())
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
	if b.a.mon == nil {
		return oip.FeedbackResult{Unknown: len(labels)}, nil
	}
	for _, l := range labels {
		if l.Label == nil {
			return oip.FeedbackResult{}, fmt.Errorf("label for id %q: no label value", l.ID)
		}
	}
	ps := b.a.mon.store(name, false)
	if ps == nil {
		return oip.FeedbackResult{Unknown: len(labels)}, nil
	}
	return ps.label(labels, b.a.opts.Clock()), nil
}
