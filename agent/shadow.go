package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/topics"
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
	badChunks    int

	run     *shadowRun // set once loaded
	failure string     // why it will not score ("" while on its way)
}

func (sh *shadow) closeDownload() {
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
	st.start, st.rows, st.agree, st.scoreDiff, st.skipped, st.errors = now, 0, 0, 0, 0, 0
	st.labelled, st.champ, st.chall = 0, 0, 0
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
	res, err := r.model.sess.Run(j.in)
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

// publishLive makes the loaded challengers visible to requests.
func (a *Agent) publishLive() {
	m := map[string]*shadowRun{}
	for name, sh := range a.shadow.byName {
		if sh.run != nil {
			m[name] = sh.run
		}
	}
	a.shadow.live.Store(&m)
}

func (a *Agent) shadowDir(name string) string {
	return filepath.Join(a.opts.DataDir, "shadow", name)
}

// dropShadows ends the challengers the desired state ds no longer names
// (or names as the served version). It runs before the served assignments
// are applied, so their subscriptions never collide with a challenger's: a
// challenger promoted to champion hands its checked file to the model's
// directory, and the champion's update stages it without a download.
func (a *Agent) dropShadows(ctx context.Context, ds *efpb.DesiredState) {
	served := map[string]string{}
	for _, as := range ds.GetModels() {
		served[as.GetName()] = hex.EncodeToString(as.GetSha256())
	}
	for name, sh := range a.shadow.byName {
		champ, assigned := served[name]
		if w := wantedShadow(ds, name); w != nil && assigned && champ != sh.sha &&
			w.GetVersion() == sh.version && hex.EncodeToString(w.GetSha256()) == sh.sha {
			continue // still wanted
		}
		if served[name] == sh.sha && sh.run != nil {
			a.handOver(sh)
		}
		a.endShadow(ctx, sh)
	}
}

// handOver moves a loaded challenger's checked file to where the champion's
// update looks for it (update.go: openDownload stages a file it finds).
func (a *Agent) handOver(sh *shadow) {
	src := filepath.Join(a.shadowDir(sh.name), sh.sha+".onnx")
	if err := os.MkdirAll(a.modelDir(sh.name), 0o750); err != nil {
		return
	}
	dst := a.modelPath(sh.name, sh.sha)
	if fileExists(dst) {
		return
	}
	if err := os.Rename(src, dst); err == nil {
		_ = syncDir(a.modelDir(sh.name))
		a.log.Info("challenger promoted: its checked file is staged without a download", "model", sh.name, "version", sh.version)
	}
}

func wantedShadow(ds *efpb.DesiredState, name string) *efpb.ShadowAssignment {
	for _, s := range ds.GetShadows() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// endShadow stops a challenger and removes its files.
func (a *Agent) endShadow(ctx context.Context, sh *shadow) {
	delete(a.shadow.byName, sh.name)
	a.publishLive()
	if sh.run != nil {
		sh.run.model.close() // waits for a run in progress
	}
	sh.closeDownload()
	a.unsub(ctx, a.topics.Manifest(sh.name, sh.version))
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	_ = os.RemoveAll(a.shadowDir(sh.name))
	a.log.Info("shadow ended", "model", sh.name, "version", sh.version)
}

// startShadows begins the challengers ds names that are not running yet.
// A challenger naming the served version, or a model the device is not
// assigned, is ignored.
func (a *Agent) startShadows(ctx context.Context, ds *efpb.DesiredState) {
	served := map[string]string{}
	for _, as := range ds.GetModels() {
		served[as.GetName()] = hex.EncodeToString(as.GetSha256())
	}
	for _, w := range ds.GetShadows() {
		name, sha := w.GetName(), hex.EncodeToString(w.GetSha256())
		if a.shadow.byName[name] != nil {
			continue
		}
		if topics.ValidModelName(name) != nil || topics.ValidModelVersion(w.GetVersion()) != nil || len(w.GetSha256()) != sha256.Size {
			a.log.Warn("shadow assignment ignored: invalid", "model", name, "version", w.GetVersion())
			continue
		}
		if s, ok := served[name]; !ok || s == sha {
			continue
		}
		sh := &shadow{name: name, version: w.GetVersion(), sha: sha, stats: &shadowStats{start: a.opts.Clock()}}
		a.shadow.byName[name] = sh
		a.log.Info("shadow assigned", "model", name, "version", sh.version)
		if a.loadShadowFromDisk(sh) {
			continue
		}
		a.ensureSub(ctx, a.topics.Manifest(name, sh.version), evShadowManifest)
	}
}

// loadShadowFromDisk loads a challenger checked before a restart.
func (a *Agent) loadShadowFromDisk(sh *shadow) bool {
	env, err := os.ReadFile(filepath.Join(a.shadowDir(sh.name), sh.sha+".manifest"))
	if err != nil || !fileExists(filepath.Join(a.shadowDir(sh.name), sh.sha+".onnx")) {
		return false
	}
	m, err := manifestOf(env)
	if err != nil || m.GetVersion() != sh.version || hex.EncodeToString(m.GetSha256()) != sh.sha {
		return false
	}
	sh.manifestEnv, sh.manifest = env, m
	if a.loadShadow(sh, nil) {
		return true
	}
	// Fetched and checked again: the file may be what broke.
	a.log.Warn("stored challenger does not load; fetching it again", "model", sh.name, "version", sh.version, "err", sh.failure)
	sh.failure, sh.manifestEnv, sh.manifest = "", nil, nil
	_ = os.RemoveAll(a.shadowDir(sh.name))
	return false
}

// restoreShadows starts the challengers of the accepted desired state
// after a restart.
func (a *Agent) restoreShadows(ctx context.Context) {
	if a.u.desired == nil {
		return
	}
	env, err := decodeEnvelope(a.u.desired)
	if err != nil {
		return
	}
	ds := &efpb.DesiredState{}
	if err := proto.Unmarshal(env.GetPayload(), ds); err != nil {
		return
	}
	a.startShadows(ctx, ds)
}

// shadowsConnected subscribes again what the challengers wait for.
func (a *Agent) shadowsConnected(ctx context.Context) {
	for _, sh := range a.shadow.byName {
		switch {
		case sh.run != nil || sh.failure != "":
		case sh.asm != nil:
			a.ensureSub(ctx, a.topics.Chunks(sh.name, sh.version), evShadowChunk)
			a.requestShadowChunks(ctx, sh, true)
		default:
			a.ensureSub(ctx, a.topics.Manifest(sh.name, sh.version), evShadowManifest)
		}
	}
}

func (a *Agent) failShadow(ctx context.Context, sh *shadow, reason string) {
	a.refused.Add(1)
	a.logLimited(slog.LevelWarn, logKindRefused, "challenger refused; it will not be scored", "model", sh.name, "version", sh.version, "reason", reason)
	sh.failure = reason
	sh.closeDownload()
	a.unsub(ctx, a.topics.Manifest(sh.name, sh.version))
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	_ = os.RemoveAll(a.shadowDir(sh.name))
}

func (a *Agent) handleShadowManifest(ctx context.Context, topic string, payload []byte) {
	tp, err := a.topics.Parse(topic)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	sh := a.shadow.byName[tp.Model]
	if sh == nil || sh.version != tp.Version || sh.manifest != nil || sh.failure != "" {
		return
	}
	env, err := decodeEnvelope(payload)
	if err != nil {
		a.drop("manifest", err)
		return
	}
	// The same checks as a served version's manifest.
	m, err := a.checkManifest(env, sh.name, &target{modelRef: modelRef{Version: sh.version, SHA256: sh.sha}})
	if err != nil {
		a.failShadow(ctx, sh, err.Error())
		return
	}
	a.unsub(ctx, topic)
	sh.manifestEnv, sh.manifest = payload, m
	dir := a.shadowDir(sh.name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("shadow dir: %v", err))
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, sh.sha+".part"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("open download: %v", err))
		return
	}
	asm, err := transfer.NewAssembler(m, f)
	if err != nil {
		_ = f.Close()
		a.failShadow(ctx, sh, fmt.Sprintf("open download: %v", err))
		return
	}
	sh.file, sh.asm, sh.lastProgress = f, asm, time.Now()
	if asm.Complete() {
		a.finishShadow(ctx, sh)
		return
	}
	a.ensureSub(ctx, a.topics.Chunks(sh.name, sh.version), evShadowChunk)
	a.requestShadowChunks(ctx, sh, true)
}

// requestShadowChunks is requestMissing for a challenger's download.
func (a *Agent) requestShadowChunks(ctx context.Context, sh *shadow, restart bool) {
	if sh.asm == nil || !a.u.subs[a.topics.Chunks(sh.name, sh.version)] {
		return
	}
	if restart || sh.inflight == nil {
		sh.inflight = map[uint32]bool{}
	} else if len(sh.inflight) > fetchWindow/2 {
		return
	}
	var missing []uint32
	for _, idx := range sh.asm.Missing(len(sh.inflight) + fetchWindow) {
		if !sh.inflight[idx] && len(sh.inflight) < fetchWindow {
			sh.inflight[idx] = true
			missing = append(missing, idx)
		}
	}
	if len(missing) == 0 {
		return
	}
	b, err := proto.Marshal(&efpb.FetchRequest{DeviceId: a.opts.DeviceID, Name: sh.name, Version: sh.version, Missing: missing})
	if err != nil {
		return
	}
	sh.lastProgress = time.Now()
	a.publish(ctx, a.topics.Fetch(a.opts.DeviceID), b)
}

func (a *Agent) handleShadowChunk(ctx context.Context, payload []byte) {
	c, err := efpb.DecodeChunkView(payload)
	if err != nil {
		a.drop("chunk", err)
		return
	}
	sh := a.shadow.byName[c.Name]
	if sh == nil || sh.asm == nil || sh.version != c.Version {
		return
	}
	added, err := sh.asm.Add(c.Index, c.Data)
	if err != nil {
		a.refused.Add(1)
		sh.badChunks++
		if limit := max(16, 2*sh.asm.Total()); sh.badChunks > limit {
			a.failShadow(ctx, sh, fmt.Sprintf("download refused: %d chunks did not match the signed manifest (last: %v)", sh.badChunks, err))
		}
		return
	}
	if !added {
		return
	}
	a.chunks.Add(1)
	sh.lastProgress = time.Now()
	delete(sh.inflight, c.Index)
	if sh.asm.Complete() {
		a.finishShadow(ctx, sh)
		return
	}
	a.requestShadowChunks(ctx, sh, false)
}

// retryShadows asks again for chunks of stalled challenger downloads.
func (a *Agent) retryShadows(ctx context.Context) {
	for _, sh := range a.shadow.byName {
		if sh.asm != nil && !sh.asm.Complete() && time.Since(sh.lastProgress) >= a.opts.FetchRetryInterval {
			a.ensureSub(ctx, a.topics.Chunks(sh.name, sh.version), evShadowChunk)
			a.requestShadowChunks(ctx, sh, true)
		}
	}
}

// finishShadow checks the whole file, keeps it with its manifest, and
// loads it.
func (a *Agent) finishShadow(ctx context.Context, sh *shadow) {
	a.unsub(ctx, a.topics.Chunks(sh.name, sh.version))
	verified, err := sh.asm.ReadVerified()
	dir := a.shadowDir(sh.name)
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("model bytes do not match the manifest: %v", err))
		return
	}
	err = sh.file.Sync()
	sh.closeDownload()
	if err == nil {
		err = os.Rename(filepath.Join(dir, sh.sha+".part"), filepath.Join(dir, sh.sha+".onnx"))
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, sh.sha+".manifest"), sh.manifestEnv, 0o640)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		a.failShadow(ctx, sh, fmt.Sprintf("store model: %v", err))
		return
	}
	if !a.loadShadow(sh, verified) {
		a.failShadow(ctx, sh, sh.failure)
	}
}

// loadShadow loads a checked challenger (test vectors, warm-up, as a
// served version) and starts scoring with it.
func (a *Agent) loadShadow(sh *shadow, verified []byte) bool {
	ref := &modelRef{Version: sh.version, SHA256: sh.sha, Manifest: sh.manifestEnv}
	var (
		m   *servedModel
		err error
	)
	if verified != nil {
		m, err = a.loadModelBytes(sh.name, ref, verified)
	} else {
		m, err = a.loadShadowFile(sh.name, ref)
	}
	if err != nil {
		sh.failure = err.Error()
		return false
	}
	sh.run = &shadowRun{name: sh.name, model: m, preds: newPredictor(m.manifest), stats: sh.stats,
		ring: newShadowRing(a.opts.LabelCapacity, a.opts.LabelTTL), champ: map[string]*predictor{}}
	a.publishLive()
	a.log.Info("challenger scoring in shadow", "model", sh.name, "version", sh.version)
	return true
}

// loadShadowFile is loadModel for a file in the shadow directory.
func (a *Agent) loadShadowFile(name string, ref *modelRef) (*servedModel, error) {
	b, err := os.ReadFile(filepath.Join(a.shadowDir(name), ref.SHA256+".onnx"))
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != ref.SHA256 {
		return nil, errors.New("shadow model file is corrupt: sha256 differs from the manifest")
	}
	return a.loadModelBytes(name, ref, b)
}

// collectShadows returns a report per challenger and starts new windows.
func (a *Agent) collectShadows(now time.Time) []*efpb.ShadowReport {
	var out []*efpb.ShadowReport
	for _, sh := range a.shadow.byName {
		r := sh.stats.report(sh.name, sh.version, now)
		r.Ready = sh.run != nil
		r.Failure = sh.failure
		if r.ChampionVersion == "" {
			if s := a.slot(sh.name); s != nil {
				if m := s.serving.Load(); m != nil {
					r.ChampionVersion = m.version
				}
			}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y *efpb.ShadowReport) int { return cmpString(x.ModelName, y.ModelName) })
	return out
}

// closeShadows releases every challenger's session (the agent stops).
func (a *Agent) closeShadows() {
	for _, sh := range a.shadow.byName {
		if sh.run != nil {
			sh.run.model.close()
		}
		sh.closeDownload()
	}
}
