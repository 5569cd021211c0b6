package agent

import (
	"context"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/peers"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Shadow evaluation (champion/challenger): a desired state may name, per
// model, a challenger version to score in shadow (efpb.ShadowAssignment).
// The agent fetches and checks it like any version (signed manifest,
// sha256 of every chunk and of the file, test vectors, warm-up) into
// DataDir/shadow/<model>, loads it beside the served version and, for each
// request the champion answered, queues the request for the challenger.
// One worker scores the queue off the request path; when the queue is full
// (ShadowQueue jobs or ShadowQueueBytes of inputs) the request is not
// shadowed and is counted as skipped, so the served answer waits at most
// for a copy of its inputs and a non-blocking send. Each telemetry message
// carries a ShadowReport per challenger: rows scored by both, class
// agreement, summed score difference, skipped and failed shadow runs, and,
// from the feedback labels, both versions' correct counts over the same
// rows.
//
// The shadow is not part of the persisted update state machine: it is
// derived from the accepted desired state (persisted), and its checked
// file and manifest are kept on disk, so after a restart it loads again
// without the broker. A failure of the challenger is reported in
// telemetry and never touches the served version.
//
// Ownership: shadowSet.byName and every shadow's download fields belong to
// the update loop; shadowSet.live (read by requests) is copy-on-write;
// shadowStats and shadowRing have their own locks (leaves).

// Defaults of the shadow Options.
const (
	DefaultShadowQueue      = 64
	DefaultShadowQueueBytes = 8 << 20
)

type shadowSet struct {
	queue    chan shadowJob
	maxBytes int64
	queued   atomic.Int64 // input bytes of queued jobs

	byName map[string]*shadow                    // update loop only
	live   atomic.Pointer[map[string]*shadowRun] // requests read it
}

func newShadowSet(o *Options) *shadowSet {
	if o.ShadowQueue <= 0 {
		o.ShadowQueue = DefaultShadowQueue
	}
	if o.ShadowQueueBytes <= 0 {
		o.ShadowQueueBytes = DefaultShadowQueueBytes
	}
	return &shadowSet{queue: make(chan shadowJob, o.ShadowQueue), maxBytes: o.ShadowQueueBytes, byName: map[string]*shadow{}}
}

// shadow is one challenger on its way to scoring, or scoring.
type shadow struct {
	name    string
	version string
	sha     string // hex
	stats   *shadowStats

	// Download state, as a slot's (update.go) but not persisted.
	manifestEnv  []byte
	manifest     *efpb.Manifest
	asm          *transfer.Assembler
	file         *os.File
	inflight     map[uint32]bool
	lastProgress time.Time
	pace         chunkPace // as slot.pace
	badChunks    int
	// dl shares the download with the site (peers.go); nil: broker only.
	dl *peers.Download

	run     *shadowRun // set once loaded
	failure string     // why it will not score ("" while on its way)
}

func (sh *shadow) closeDownload() {
	if sh.dl != nil {
		sh.dl.Close()
		sh.dl = nil
	}
	if sh.file != nil {
		_ = sh.file.Close()
		sh.file = nil
	}
	sh.asm = nil
	sh.inflight = nil
}

// shadowRun is a loaded challenger, as requests see it.
type shadowRun struct {
	name  string
	model *servedModel
	preds predictor
	stats *shadowStats
	ring  *shadowRing

	champMu sync.Mutex // guards champ
	champ   map[string]*predictor
}

// champion returns the predictor of the champion version man describes.
func (r *shadowRun) champion(man *efpb.Manifest) *predictor {
	r.champMu.Lock()
	defer r.champMu.Unlock()
	p := r.champ[man.GetVersion()]
	if p == nil {
		np := newPredictor(man)
		p = &np
		if len(r.champ) > 4 {
			clear(r.champ)
		}
		r.champ[man.GetVersion()] = p
	}
	return p
}

// shadowStats is one window of a challenger's comparison counts.
type shadowStats struct {
	mu                     sync.Mutex // guards below
	start                  time.Time
	champion               string
	rows, agree            uint64
	scoreDiff              float64
	skipped, errors        uint64
	labelled, champ, chall uint64
	// lat counts the challenger's inference time per request in the
	// buckets of latEdges (microseconds), made with the first one.
	latEdges []float64
	lat      []uint64
}

// took counts one challenger inference's time; st.mu is held.
func (st *shadowStats) took(d time.Duration) {
	if st.latEdges == nil {
		st.latEdges = drift.LatencyEdgesMicros()
	}
	if st.lat == nil {
		st.lat = make([]uint64, len(st.latEdges)+1)
	}
	st.lat[drift.Bin(st.latEdges, float64(d.Microseconds()))]++
}

func (st *shadowStats) add(f func(st *shadowStats)) {
	st.mu.Lock()
	f(st)
	st.mu.Unlock()
}

// report returns the window's counts and starts a new window.
func (st *shadowStats) report(name, version string, now time.Time) *efpb.ShadowReport {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := &efpb.ShadowReport{ModelName: name, ChampionVersion: st.champion, ChallengerVersion: version,
		WindowStartUnixMs: st.start.UnixMilli(), WindowEndUnixMs: now.UnixMilli(),
		Rows: st.rows, Agree: st.agree, ScoreAbsDiff: st.scoreDiff, Skipped: st.skipped, Errors: st.errors,
		Labelled: st.labelled, ChampionCorrect: st.champ, ChallengerCorrect: st.chall}
	if st.lat != nil {
		r.LatencyEdgesUs, r.ChallengerLatencyCounts = st.latEdges, st.lat
	}
	st.start, st.rows, st.agree, st.scoreDiff, st.skipped, st.errors = now, 0, 0, 0, 0, 0
	st.labelled, st.champ, st.chall, st.lat = 0, 0, 0, nil
	return r
}

// shadowJob is one request to score with the challenger.
type shadowJob struct {
	run   *shadowRun
	champ *efpb.Manifest // the champion that answered
	in    []oip.Tensor   // a copy: the caller may reuse its buffers
	out   []oip.Tensor   // the champion's outputs (never modified)
	entry *shadowEntry   // nil without an inference id
	bytes int64
}

// shadowOffer queues a request the champion m answered for the challenger
// of name, if there is one. It never blocks: a full queue skips the
// request (counted).
func (a *Agent) shadowOffer(ctx context.Context, name string, m *servedModel, in, out []oip.Tensor) {
	runs := a.shadow.live.Load()
	if runs == nil {
		return
	}
	r := (*runs)[name]
	if r == nil || r.model.version == m.version {
		return
	}
	n := tensorsBytes(in)
	if a.shadow.queued.Add(n) > a.shadow.maxBytes {
		a.shadow.queued.Add(-n)
		r.stats.add(func(st *shadowStats) { st.skipped++ })
		return
	}
	job := shadowJob{run: r, champ: m.manifest, in: cloneTensors(in), out: out, bytes: n}
	if id := oip.InferenceID(ctx); id != "" && len(in) > 0 {
		job.entry = r.ring.put(id, rowCount(&in[0]), a.opts.Clock().UnixNano())
	}
	select {
	case a.shadow.queue <- job:
	default:
		a.shadow.queued.Add(-n)
		r.ring.skip(job.entry)
		r.stats.add(func(st *shadowStats) { st.skipped++ })
	}
}

// shadowWorker scores queued requests with their challenger until ctx ends.
func (a *Agent) shadowWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-a.shadow.queue:
			a.shadow.queued.Add(-j.bytes)
			a.scoreShadow(j)
		}
	}
}

func (a *Agent) scoreShadow(j shadowJob) {
	r := j.run
	r.model.mu.RLock()
	if r.model.closed {
		r.model.mu.RUnlock()
		r.ring.skip(j.entry)
		return
	}
	start := time.Now() // as the champion's serving time is measured (serve.go)
	res, err := r.model.sess.Run(j.in)
	took := time.Since(start)
	r.model.mu.RUnlock()
	if err != nil {
		r.ring.skip(j.entry)
		r.stats.add(func(st *shadowStats) { st.errors++; st.champion = j.champ.GetVersion() })
		return
	}
	rows := 0
	if len(j.in) > 0 {
		rows = rowCount(&j.in[0])
	}
	cs, cok := r.champion(j.champ).sourceOf(j.out, rows)
	ns, nok := r.preds.sourceOf(res, rows)
	if !cok || !nok {
		r.ring.skip(j.entry)
		r.stats.add(func(st *shadowStats) { st.errors++; st.champion = j.champ.GetVersion() })
		return
	}
	champ, chall := make([]int32, rows), make([]int32, rows)
	agree, diff := uint64(0), 0.0
	for i := range rows {
		c1, s1 := cs.row(i)
		c2, s2 := ns.row(i)
		champ[i], chall[i] = c1, c2
		if c1 == c2 {
			agree++
		}
		if d := math.Abs(float64(s1) - float64(s2)); !math.IsNaN(d) {
			diff += d
		}
	}
	lab, cc, nc := r.ring.done(j.entry, champ, chall)
	r.stats.add(func(st *shadowStats) {
		st.champion = j.champ.GetVersion()
		st.took(took)
		st.rows += uint64(rows)
		st.agree += agree
		st.scoreDiff += diff
		st.labelled += lab
		st.champ += cc
		st.chall += nc
	})
}

// shadowLabels joins feedback labels to shadowed requests of model name;
// called with every feedback request, beside the champion's own join.
func (a *Agent) shadowLabels(name string, labels []oip.Label) {
	runs := a.shadow.live.Load()
	if runs == nil {
		return
	}
	r := (*runs)[name]
	if r == nil {
		return
	}
	lab, cc, nc := r.ring.label(labels, a.opts.Clock().UnixNano())
	if lab > 0 {
		r.stats.add(func(st *shadowStats) { st.labelled += lab; st.champ += cc; st.chall += nc })
	}
}

// shadowEntry is one shadowed request, kept for its labels.
type shadowEntry struct {
	id    string
	at    int64
	rows  int
	state int8 // 0 queued, 1 scored, -1 not scored
	// champ and chall are the rows' predicted classes once scored;
	// labels holds labels that arrived while queued (has marks them).
	champ, chall []int32
	labels       []int64
	has, seen    []bool
}

const (
	entryQueued int8 = 0
	entryScored int8 = 1
	entryLost   int8 = -1
)

// shadowRing keeps the latest shadowed requests by inference id (bounded by
// count, like the champion's predictions, and by age).
type shadowRing struct {
	capacity int
	ttl      int64

	mu   sync.Mutex // guards below
	ring []*shadowEntry
	next int
	byID map[string]*shadowEntry
}

func newShadowRing(capacity int, ttl time.Duration) *shadowRing {
	return &shadowRing{capacity: capacity, ttl: int64(ttl), byID: map[string]*shadowEntry{}}
}

func (sr *shadowRing) put(id string, rows int, now int64) *shadowEntry {
	if rows <= 0 || rows > 1<<20 {
		return nil
	}
	e := &shadowEntry{id: id, at: now, rows: rows, seen: make([]bool, rows)}
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if len(sr.ring) < sr.capacity {
		sr.ring = append(sr.ring, e)
	} else {
		if old := sr.ring[sr.next]; sr.byID[old.id] == old {
			delete(sr.byID, old.id)
		}
		sr.ring[sr.next] = e
		sr.next = (sr.next + 1) % sr.capacity
	}
	sr.byID[id] = e
	return e
}

func (sr *shadowRing) skip(e *shadowEntry) {
	if e == nil {
		return
	}
	sr.mu.Lock()
	e.state, e.labels, e.has = entryLost, nil, nil
	sr.mu.Unlock()
}

// done records the scored classes of e and returns what labels that
// arrived while it was queued add up to.
func (sr *shadowRing) done(e *shadowEntry, champ, chall []int32) (labelled, champCorrect, challCorrect uint64) {
	if e == nil {
		return 0, 0, 0
	}
	sr.mu.Lock()
	defer sr.mu.Unlock()
	e.state, e.champ, e.chall = entryScored, champ, chall
	for r, ok := range e.has {
		if ok && r < len(champ) {
			labelled++
			champCorrect += b2u(int64(champ[r]) == e.labels[r])
			challCorrect += b2u(int64(chall[r]) == e.labels[r])
		}
	}
	e.labels, e.has = nil, nil
	return labelled, champCorrect, challCorrect
}

// label joins labels to scored entries (and keeps them on queued ones).
func (sr *shadowRing) label(labels []oip.Label, now int64) (labelled, champCorrect, challCorrect uint64) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	for _, l := range labels {
		e := sr.byID[l.ID]
		if e == nil || l.Label == nil || l.Row < 0 || l.Row >= e.rows || e.seen[l.Row] || now-e.at > sr.ttl {
			continue
		}
		e.seen[l.Row] = true
		switch e.state {
		case entryScored:
			labelled++
			champCorrect += b2u(int64(e.champ[l.Row]) == *l.Label)
			challCorrect += b2u(int64(e.chall[l.Row]) == *l.Label)
		case entryQueued:
			if e.has == nil {
				e.has, e.labels = make([]bool, e.rows), make([]int64, e.rows)
			}
			e.has[l.Row], e.labels[l.Row] = true, *l.Label
		}
	}
	return labelled, champCorrect, challCorrect
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// tensorsBytes approximates the memory of ts's elements.
func tensorsBytes(ts []oip.Tensor) int64 {
	var n int64
	for i := range ts {
		switch d := ts[i].Data.(type) {
		case []string:
			for _, s := range d {
				n += int64(len(s)) + 16
			}
		default:
			n += int64(ts[i].Len()) * int64(max(1, ts[i].DT().Size()))
		}
	}
	return n
}

// cloneTensors copies ts and their elements.
func cloneTensors(ts []oip.Tensor) []oip.Tensor {
	out := make([]oip.Tensor, len(ts))
	for i, t := range ts {
		c := t
		c.Shape = slices.Clone(t.Shape)
		switch d := t.Data.(type) {
		case []bool:
			c.Data = slices.Clone(d)
		case []uint8:
			c.Data = slices.Clone(d)
		case []uint16:
			c.Data = slices.Clone(d)
		case []uint32:
			c.Data = slices.Clone(d)
		case []uint64:
			c.Data = slices.Clone(d)
		case []int8:
			c.Data = slices.Clone(d)
		case []int16:
			c.Data = slices.Clone(d)
		case []int32:
			c.Data = slices.Clone(d)
		case []int64:
			c.Data = slices.Clone(d)
		case []float32:
			c.Data = slices.Clone(d)
		case []float64:
			c.Data = slices.Clone(d)
		case []string:
			c.Data = slices.Clone(d)
		}
		out[i] = c
	}
	return out
}
