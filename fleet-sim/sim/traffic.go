package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// TrafficOptions describe synthetic inference traffic: every device scores
// Rate fraud-like transactions per second on model Model through its
// agent's in-process inference path.
type TrafficOptions struct {
	Model string
	// Rate is inferences per second per device, > 0 and ≤ 100, in real
	// time (inference takes real time): Rate/Speed per simulated second.
	Rate float64
	// Seed seeds the transaction generators.
	Seed uint64
	// Params shape the transactions; SiteParams override them per site
	// label.
	Params     fraud.Params
	SiteParams map[string]fraud.Params
	// Workers is how many goroutines share the devices; default 4.
	Workers int
	// LabelFraction of the inferences get their true label fed back
	// (POST /v2/models/{name}/feedback, in process) LabelDelay later, as
	// ground truth arrives in the field; 0 sends none. LabelDelay passes on
	// the fleet's clock (Options.Clock): it is simulated time.
	LabelFraction float64
	LabelDelay    time.Duration
	// Served, if set, is called after every successful inference with the
	// device and the version that answered (the soak checks each against
	// the versions the device was assigned). It runs on a traffic worker:
	// it must be quick.
	Served func(device, version string)
	// CSV, when set, replaces the fraud transactions: every device replays
	// its rows (one tensor per model input, of its datatype) in order,
	// looped, from its own offset (seeded by Seed), and
	// labels come from its label column (none without one). Params and
	// SiteParams are then unused, and any answer of the model counts as
	// OK (the fraud traffic wants one probability).
	CSV *CSVData
}

// pendingLabel is a ground-truth label waiting for its delay to pass.
type pendingLabel struct {
	m     *Member
	id    string
	label int64
	due   time.Time // on the fleet's clock
}

// TrafficStats count inference outcomes.
type TrafficStats struct {
	OK uint64 `json:"ok"`
	// NotServing counts requests made while the device had no active
	// model (before its first deployment); they are not failures.
	NotServing uint64 `json:"not_serving"`
	// Failed counts every other error: these are the failures the
	// scenario assertions care about.
	Failed    uint64            `json:"failed"`
	ByVersion map[string]uint64 `json:"by_version"`
	// Labelled counts ground-truth labels the agents accepted.
	Labelled uint64 `json:"labelled"`
	// FirstFailure describes the first failed inference.
	FirstFailure string `json:"first_failure,omitempty"`
}

// Traffic drives synthetic inference through a fleet's agents.
type Traffic struct {
	f    *Fleet
	opts TrafficOptions

	ok, notServing, failed, labelled atomic.Uint64
	// mu guards byVersion, firstFailure, params and csv.
	mu           sync.Mutex
	byVersion    map[string]uint64
	firstFailure string
	params       map[string]fraud.Params // device → params override (ShiftParams)
	csv          map[string]*CSVData     // device → rows override (ShiftCSV)
	// paramsGen counts the changes of params and csv.
	paramsGen atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// StartTraffic starts the traffic; Stop ends it.
func (f *Fleet) StartTraffic(opts TrafficOptions) (*Traffic, error) {
	if opts.Model == "" {
		return nil, errors.New("sim: traffic: model is required")
	}
	if !(opts.Rate > 0 && opts.Rate <= 100) {
		return nil, fmt.Errorf("sim: traffic: rate %v per device per second is outside (0, 100]", opts.Rate)
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.LabelFraction < 0 || opts.LabelFraction > 1 || opts.LabelDelay < 0 {
		return nil, fmt.Errorf("sim: traffic: label fraction %v must be in [0, 1] and label delay %v not negative", opts.LabelFraction, opts.LabelDelay)
	}
	if _, err := fraud.NewGenerator(opts.Seed, opts.Params); err != nil {
		return nil, fmt.Errorf("sim: traffic: %w", err)
	}
	for site, p := range opts.SiteParams {
		if _, err := fraud.NewGenerator(opts.Seed, p); err != nil {
			return nil, fmt.Errorf("sim: traffic: site %s: %w", site, err)
		}
	}
	if opts.CSV != nil {
		if err := opts.CSV.check(); err != nil {
			return nil, fmt.Errorf("sim: traffic: %w", err)
		}
	}
	t := &Traffic{f: f, opts: opts, byVersion: map[string]uint64{}, params: map[string]fraud.Params{}, csv: map[string]*CSVData{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	workers := min(opts.Workers, len(f.members))
	for w := range workers {
		var mine []*Member
		for i := w; i < len(f.members); i += workers {
			mine = append(mine, f.members[i])
		}
		t.wg.Go(func() { t.run(ctx, uint64(w), mine) })
	}
	return t, nil
}

// ShiftParams changes the transaction distribution of the given devices
// from now on (injected drift).
func (t *Traffic) ShiftParams(devices []string, p fraud.Params) error {
	if _, err := fraud.NewGenerator(0, p); err != nil {
		return fmt.Errorf("sim: shift traffic: %w", err)
	}
	if t.opts.CSV != nil {
		return errors.New("sim: shift traffic: the traffic replays a csv: shift it to another csv (ShiftCSV), not to fraud parameters")
	}
	t.mu.Lock()
	for _, d := range devices {
		t.params[d] = p
	}
	t.mu.Unlock()
	t.paramsGen.Add(1)
	return nil
}

// Stop ends the traffic and waits for it. It is idempotent.
func (t *Traffic) Stop() {
	t.once.Do(func() {
		t.cancel()
		t.wg.Wait()
	})
}

// Stats returns the counts so far.
func (t *Traffic) Stats() TrafficStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := TrafficStats{
		OK: t.ok.Load(), NotServing: t.notServing.Load(), Failed: t.failed.Load(), Labelled: t.labelled.Load(),
		ByVersion: make(map[string]uint64, len(t.byVersion)), FirstFailure: t.firstFailure,
	}
	for k, v := range t.byVersion {
		s.ByVersion[k] = v
	}
	return s
}

// paramsFor returns the device's current transaction parameters.
func (t *Traffic) paramsFor(m *Member) fraud.Params {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.params[m.Device.ID]; ok {
		return p
	}
	if p, ok := t.opts.SiteParams[m.Device.Labels["site"]]; ok {
		return p
	}
	return t.opts.Params
}

// source yields the requests of one worker's devices; only that worker
// uses it.
type source interface {
	// refresh takes up the devices' current data (ShiftParams, ShiftCSV).
	refresh()
	// next returns the next request of the worker's device i, and its true
	// label if it has one.
	next(i int) (in []oip.Tensor, label int64, labelled bool)
}

// fraudSource generates fraud transactions. Devices with the same
// parameters share one generator per worker: a generator calibrates itself
// on thousands of rows when created, too slow to do per device in a large
// fleet.
type fraudSource struct {
	t    *Traffic
	w    uint64
	mine []*Member
	gens []*fraud.Generator
	// byParams keeps every generator across shifts: a stream goes on
	// where it was, and a new one gets a seed no other had. (Made anew
	// from the same seeds at each shift, the streams started over — the
	// parameters change the labels, not the draws — and every device sent
	// the inputs it had sent since the start again: a site's retrain
	// dataset failed its duplicates check, 125 of 592 rows.)
	byParams map[fraud.Params]*fraud.Generator
}

func (s *fraudSource) refresh() {
	if s.gens == nil {
		s.gens = make([]*fraud.Generator, len(s.mine))
		s.byParams = map[fraud.Params]*fraud.Generator{}
	}
	for i, m := range s.mine {
		p := s.t.paramsFor(m)
		if s.byParams[p] == nil {
			// Params were checked when they were set.
			s.byParams[p], _ = fraud.NewGenerator(s.t.opts.Seed*1_000_003+s.w*10_007+uint64(len(s.byParams)), p)
		}
		s.gens[i] = s.byParams[p]
	}
}

func (s *fraudSource) next(i int) ([]oip.Tensor, int64, bool) {
	row, isFraud := s.gens[i].Next()
	label := int64(0)
	if isFraud {
		label = 1
	}
	return []oip.Tensor{{Name: fraud.InputName, Shape: []int64{1, fraud.NumFeatures}, Data: row[:]}}, label, true
}

// run drives the worker's devices.
func (t *Traffic) run(ctx context.Context, w uint64, mine []*Member) {
	var src source = &fraudSource{t: t, w: w, mine: mine}
	if t.opts.CSV != nil {
		src = &csvSource{t: t, mine: mine}
	}
	var seenGen uint64 = ^uint64(0)
	var labels []pendingLabel // in due order: one delay for all
	var seq uint64
	pick := rand.New(rand.NewPCG(t.opts.Seed, w))
	period := time.Duration(float64(time.Second) / t.opts.Rate)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if g := t.paramsGen.Load(); g != seenGen {
			seenGen = g
			src.refresh()
		}
		now := t.f.opts.Clock.Now()
		for i, m := range mine {
			if ctx.Err() != nil {
				return
			}
			in, label, labelled := src.next(i)
			seq++
			id := fmt.Sprintf("%s-%d-%d", m.Device.ID, w, seq)
			if t.infer(oip.WithInferenceID(ctx, id), m, in) && labelled && t.opts.LabelFraction > 0 && pick.Float64() < t.opts.LabelFraction {
				labels = append(labels, pendingLabel{m: m, id: id, label: label, due: now.Add(t.opts.LabelDelay)})
			}
		}
		labels = t.sendDueLabels(ctx, labels, now)
	}
}

// sendDueLabels feeds back the labels whose delay has passed, one batch per
// device, and returns the rest.
func (t *Traffic) sendDueLabels(ctx context.Context, labels []pendingLabel, now time.Time) []pendingLabel {
	n := 0
	for n < len(labels) && !labels[n].due.After(now) {
		n++
	}
	if n == 0 {
		return labels
	}
	byMember := map[*Member][]oip.Label{}
	for _, l := range labels[:n] {
		v := l.label
		byMember[l.m] = append(byMember[l.m], oip.Label{ID: l.id, Label: &v})
	}
	for m, ls := range byMember {
		a := m.Agent()
		if a == nil {
			continue
		}
		res, err := a.Feedback(ctx, t.opts.Model, ls)
		if err == nil {
			t.labelled.Add(uint64(res.Accepted))
		}
	}
	return labels[n:]
}

func (t *Traffic) infer(ctx context.Context, m *Member, in []oip.Tensor) (ok bool) {
	a := m.Agent()
	if a == nil {
		return false
	}
	version, outs, err := a.Infer(ctx, t.opts.Model, in)
	switch {
	case err != nil && strings.Contains(err.Error(), "no active model"):
		t.notServing.Add(1)
	case err != nil:
		if ctx.Err() != nil {
			return
		}
		t.failed.Add(1)
		t.mu.Lock()
		if t.firstFailure == "" {
			t.firstFailure = fmt.Sprintf("%s: %v", m.Device.ID, err)
		}
		t.mu.Unlock()
	case t.opts.CSV == nil && !isProbability(outs),
		t.opts.CSV != nil && len(outs) == 0:
		t.failed.Add(1)
		t.mu.Lock()
		if t.firstFailure == "" {
			t.firstFailure = fmt.Sprintf("%s: version %s answered %v, want %s", m.Device.ID, version, outs, t.wantOutput())
		}
		t.mu.Unlock()
	default:
		t.ok.Add(1)
		if t.opts.Served != nil {
			t.opts.Served(m.Device.ID, version)
		}
		t.mu.Lock()
		t.byVersion[version]++
		t.mu.Unlock()
		return true
	}
	return false
}

// wantOutput says what infer accepts as an answer.
func (t *Traffic) wantOutput() string {
	if t.opts.CSV != nil {
		return "an output"
	}
	return "one probability"
}

// isProbability reports outputs holding one FP32 value in [0, 1]: the
// fraud model's answer for one row.
func isProbability(outs []oip.Tensor) bool {
	if len(outs) != 1 {
		return false
	}
	p, ok := outs[0].Data.([]float32)
	return ok && len(p) == 1 && p[0] >= 0 && p[0] <= 1
}
