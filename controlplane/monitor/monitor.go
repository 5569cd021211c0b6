// Package monitor is the control plane's model monitoring: a store that
// ingests the agents' reports (deduplicated by device and sequence number),
// aggregates them per version × site × cohort × device in time buckets,
// answers metric queries (accuracy, PSI/KS, prediction drift, latency), and
// a Service that evaluates alert rules, calls a signed retrain webhook and
// keeps Prometheus gauges. Imported by controlplane, controlplane/cli,
// controlplane/console (charts) and fleet-sim/... (configuration and
// figures).
package monitor

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of zero Options fields.
const (
	DefaultRawBucket       = time.Minute
	DefaultRawRetention    = 24 * time.Hour
	DefaultRollupRetention = 30 * 24 * time.Hour
	DefaultGateWindow      = time.Hour
	rollupBucket           = time.Hour
	// maxFeatures and maxBins bound what one report may carry.
	maxFeatures = 256
	maxBins     = 1024
)

// ErrInvalidReport is wrapped by Ingest errors about a malformed report.
var ErrInvalidReport = errors.New("monitor: invalid report")

// Options configure an Aggregator. Zero values take the defaults above.
type Options struct {
	// KV is the aggregator's own store namespace. Required.
	KV *store.KV
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
	// RawBucket is the width of a raw bucket; default one minute.
	RawBucket time.Duration
	// RawRetention is how long raw buckets are kept before Sweep rolls them
	// up into hourly buckets; default 24h.
	RawRetention time.Duration
	// RollupRetention is how long hourly buckets are kept; default 30 days.
	RollupRetention time.Duration
	// GateWindow is the time range VersionMetrics looks back; default 1h.
	GateWindow time.Duration
	// FlushEvery and FlushInterval batch ingest writes: reports are merged
	// in memory and written in one transaction once FlushEvery telemetry
	// messages are pending or FlushInterval passed since the last write
	// (checked at ingest; the owner also calls Flush periodically and at
	// shutdown). Defaults 256 and one second; FlushEvery 1 writes each
	// message at once.
	FlushEvery    int
	FlushInterval time.Duration
	// Reference returns the reference feature statistics of a model
	// version (from its manifest); nil or false means none (no input drift).
	Reference func(model, version string) ([]*efpb.FeatureStats, bool)
	// Site returns the site label of a device ("" if none).
	Site func(device string) string
	// Labels returns a device's labels now, for queries grouped by label.
	Labels func(device string) map[string]string
	// Acker, if set, is told the (device, seq) of every telemetry message
	// once the write that holds it (or, for a duplicate, a later write)
	// committed: the control plane acknowledges those to the device.
	Acker Acker
}

// Acker is told which reports are persisted (the control plane's
// controlplane/acks). Ack must not block.
type Acker interface {
	Ack(device string, seqs ...uint64)
}

// Aggregator ingests and answers monitoring data. Safe for concurrent use.
type Aggregator struct {
	opts Options
	log  *slog.Logger

	// mu serialises ingest and sweep read-modify-writes of buckets and
	// guards seqs and the counters.
	mu       sync.Mutex
	seqs     map[string]*seqWindow // device → telemetry seqs ingested
	pending  map[string]*cell      // cell key → counts not yet written
	pendSeq  map[string]bool       // devices whose window to write with pending
	pendN    int                   // telemetry messages in pending (duplicates too)
	pendAck  map[string][]uint64   // device → seqs to acknowledge once written
	flushed  time.Time             // last write
	ingested uint64
	dups     uint64
	dropped  map[string]uint64 // device → reports its outbox dropped (cumulative)
	// written holds raw cells of recent buckets as the last flush wrote
	// them, so that the next flush of the same cell (a device reports
	// several times per bucket) merges into it without reading and
	// decoding it back. Only the aggregator writes raw cells; Sweep, which
	// deletes them, and a failed write clear it. At most maxWrittenCells;
	// cells of buckets before the previous one are evicted.
	written   map[string]writtenCell
	evictedAt time.Time // last eviction pass
}

// writtenCell is a raw cell as stored, and its bucket.
type writtenCell struct {
	c      *cell
	bucket time.Time
}

// maxWrittenCells bounds Aggregator.written (≈ 1–2 KiB per fraud-sized
// cell): cells past it are read back from the store as before.
const maxWrittenCells = 1 << 14

// Open returns the aggregator over opts.KV, recovering the last sequence
// number of every device.
func Open(opts Options) (*Aggregator, error) {
	if opts.KV == nil {
		return nil, errors.New("monitor: KV is required")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.RawBucket <= 0 {
		opts.RawBucket = DefaultRawBucket
	}
	if opts.RawRetention <= 0 {
		opts.RawRetention = DefaultRawRetention
	}
	if opts.RollupRetention <= 0 {
		opts.RollupRetention = DefaultRollupRetention
	}
	if opts.GateWindow <= 0 {
		opts.GateWindow = DefaultGateWindow
	}
	if opts.FlushEvery <= 0 {
		opts.FlushEvery = 256
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Site == nil {
		opts.Site = func(string) string { return "" }
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Aggregator{opts: opts, log: log.With("component", "monitor"), seqs: map[string]*seqWindow{}, dropped: map[string]uint64{},
		pending: map[string]*cell{}, pendSeq: map[string]bool{}, pendAck: map[string][]uint64{}, flushed: opts.Clock(),
		written: map[string]writtenCell{}}
	err := opts.KV.Scan(seqPrefix, func(key string, val []byte) error {
		if w, ok := unmarshalSeqWindow(val); ok {
			a.seqs[key[len(seqPrefix):]] = &w
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("monitor: open: %w", err)
	}
	return a, nil
}

// Key layout:
//
//	s/<device>                                     seqs ingested (seqWindow)
//	r/<model>/<version>/<bucket unix %016x>/<device>  raw cell (JSON)
//	h/<model>/<version>/<bucket unix %016x>/<device>  hourly cell (JSON)
//	a/active                                       alerts holding now (JSON)
const (
	seqPrefix       = "s/"
	rawPrefix       = "r/"
	hourlyPrefix    = "h/"
	keyActiveAlerts = "a/active"
)

func cellKey(prefix, model, version string, bucket time.Time, device string) string {
	return fmt.Sprintf("%s%s/%s/%016x/%s", prefix, model, version, bucket.Unix(), device)
}

// parseCellKey splits a cell key (without its r/ or h/ prefix).
func parseCellKey(rest string) (model, version string, bucket time.Time, device string, ok bool) {
	parts := strings.SplitN(rest, "/", 4)
	if len(parts) != 4 {
		return "", "", time.Time{}, "", false
	}
	sec, err := strconv.ParseInt(parts[2], 16, 64)
	if err != nil {
		return "", "", time.Time{}, "", false
	}
	return parts[0], parts[1], time.Unix(sec, 0).UTC(), parts[3], true
}

// cell is the sum of the reports of one device for one model version in
// one bucket. Counts only, so cells merge by addition.
type cell struct {
	Site    string `json:"site,omitempty"`
	Cohort  string `json:"cohort,omitempty"`
	Reports uint64 `json:"reports"`
	Counts
}

// Counts are mergeable monitoring counts.
type Counts struct {
	Rows      uint64              `json:"rows"`
	Errors    uint64              `json:"errors,omitempty"`
	Labelled  uint64              `json:"labelled,omitempty"`
	Correct   uint64              `json:"correct,omitempty"`
	Binary    bool                `json:"binary,omitempty"`
	TP        uint64              `json:"tp,omitempty"`
	FP        uint64              `json:"fp,omitempty"`
	FN        uint64              `json:"fn,omitempty"`
	TN        uint64              `json:"tn,omitempty"`
	Unknown   uint64              `json:"unknown_labels,omitempty"`
	Duplicate uint64              `json:"duplicate_labels,omitempty"`
	Features  map[string][]uint64 `json:"features,omitempty"`
	Pred      []uint64            `json:"pred,omitempty"`
	LatEdges  []float64           `json:"lat_edges,omitempty"`
	Lat       []uint64            `json:"lat,omitempty"`
	CalN      []uint64            `json:"cal_n,omitempty"`
	CalPos    []uint64            `json:"cal_pos,omitempty"`
	// Shadow: a challenger's shadow counts (shadow.go).
	Shadow *ShadowCounts `json:"shadow,omitempty"`
}

func addSlice(dst []uint64, src []uint64) []uint64 {
	if len(src) == 0 {
		return dst
	}
	if len(dst) == 0 {
		return append([]uint64(nil), src...)
	}
	if len(dst) != len(src) {
		return dst // bins changed: keep the first (cannot happen within a version)
	}
	for i, v := range src {
		dst[i] += v
	}
	return dst
}

// Add merges o into c.
func (c *Counts) Add(o *Counts) {
	c.Rows += o.Rows
	c.Errors += o.Errors
	c.Labelled += o.Labelled
	c.Correct += o.Correct
	c.Binary = c.Binary || o.Binary
	c.TP += o.TP
	c.FP += o.FP
	c.FN += o.FN
	c.TN += o.TN
	c.Unknown += o.Unknown
	c.Duplicate += o.Duplicate
	for name, v := range o.Features {
		if c.Features == nil {
			c.Features = map[string][]uint64{}
		}
		c.Features[name] = addSlice(c.Features[name], v)
	}
	c.Pred = addSlice(c.Pred, o.Pred)
	if len(c.LatEdges) == 0 {
		c.LatEdges = o.LatEdges
	}
	c.Lat = addSlice(c.Lat, o.Lat)
	c.CalN = addSlice(c.CalN, o.CalN)
	c.CalPos = addSlice(c.CalPos, o.CalPos)
	if o.Shadow != nil {
		if c.Shadow == nil {
			c.Shadow = &ShadowCounts{}
		}
		c.Shadow.Add(o.Shadow)
	}
}

// countsOf checks a report and converts it.
func countsOf(r *efpb.MonitorReport) (*Counts, error) {
	if len(r.Features) > maxFeatures {
		return nil, fmt.Errorf("%w: %d features, at most %d", ErrInvalidReport, len(r.Features), maxFeatures)
	}
	for _, s := range [][]uint64{r.PredictionCounts, r.LatencyCounts, r.CalibrationCounts, r.CalibrationPositives} {
		if len(s) > maxBins {
			return nil, fmt.Errorf("%w: %d bins, at most %d", ErrInvalidReport, len(s), maxBins)
		}
	}
	if len(r.LatencyCounts) != 0 && len(r.LatencyCounts) != len(r.LatencyEdgesUs)+1 {
		return nil, fmt.Errorf("%w: %d latency counts for %d edges", ErrInvalidReport, len(r.LatencyCounts), len(r.LatencyEdgesUs))
	}
	if r.Correct > r.Labelled {
		return nil, fmt.Errorf("%w: %d correct of %d labelled", ErrInvalidReport, r.Correct, r.Labelled)
	}
	c := &Counts{
		Rows: r.Rows, Errors: r.Errors, Labelled: r.Labelled, Correct: r.Correct, Binary: r.Binary,
		TP: r.Tp, FP: r.Fp, FN: r.Fn, TN: r.Tn, Unknown: r.UnknownLabels, Duplicate: r.DuplicateLabels,
		Pred: r.PredictionCounts, LatEdges: r.LatencyEdgesUs, Lat: r.LatencyCounts,
		CalN: r.CalibrationCounts, CalPos: r.CalibrationPositives,
	}
	for _, f := range r.Features {
		if len(f.Counts) > maxBins || f.Name == "" {
			return nil, fmt.Errorf("%w: feature %q with %d bins", ErrInvalidReport, f.Name, len(f.Counts))
		}
		if c.Features == nil {
			c.Features = map[string][]uint64{}
		}
		c.Features[f.Name] = f.Counts
	}
	return c, nil
}

// Ingest adds the monitoring reports of one telemetry message from device.
// A message whose seq is not above the device's last one is a duplicate
// (the agent resends what was not acknowledged): it is counted and
// ignored, and Ingest returns dup = true. cohort names the rollout cohort
// (stage) the device is in for a model version ("" none; a nil cohort
// means none for every version). Model names and versions become key
// parts: an invalid one refuses the message (ErrInvalidReport).
func (a *Aggregator) Ingest(device string, seq uint64, t *efpb.Telemetry, cohort func(model, version string) string) (dup bool, err error) {
	cells := map[string]*cell{}
	now := a.opts.Clock()
	for _, r := range t.GetMonitoring() {
		if err := topics.ValidModelName(r.ModelName); err != nil {
			return false, fmt.Errorf("%w: %v", ErrInvalidReport, err)
		}
		if err := topics.ValidModelVersion(r.ModelVersion); err != nil {
			return false, fmt.Errorf("%w: %v", ErrInvalidReport, err)
		}
		c, err := countsOf(r)
		if err != nil {
			return false, err
		}
		// The bucket is the window's end as the device saw it, but never in
		// the future nor older than raw retention (clock skew).
		at := time.UnixMilli(r.WindowEndUnixMs)
		if at.After(now) || at.Before(now.Add(-a.opts.RawRetention)) {
			at = now
		}
		key := cellKey(rawPrefix, r.ModelName, r.ModelVersion, at.Truncate(a.opts.RawBucket), device)
		ce := cells[key]
		if ce == nil {
			ce = &cell{Site: a.opts.Site(device)}
			if cohort != nil {
				ce.Cohort = cohort(r.ModelName, r.ModelVersion)
			}
			cells[key] = ce
		}
		ce.Reports++
		ce.Add(c)
	}
	for _, r := range t.GetShadow() {
		s, err := shadowCountsOf(r)
		if err != nil {
			return false, err
		}
		at := time.UnixMilli(r.WindowEndUnixMs)
		if at.After(now) || at.Before(now.Add(-a.opts.RawRetention)) {
			at = now
		}
		key := cellKey(rawPrefix, r.ModelName, r.ChallengerVersion, at.Truncate(a.opts.RawBucket), device)
		ce := cells[key]
		if ce == nil {
			ce = &cell{Site: a.opts.Site(device)}
			if cohort != nil {
				ce.Cohort = cohort(r.ModelName, r.ChallengerVersion)
			}
			cells[key] = ce
		}
		ce.Add(&Counts{Shadow: s})
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.seqs[device]
	if w == nil {
		w = &seqWindow{}
		a.seqs[device] = w
	}
	// Acknowledged after the next write, duplicates too: the device
	// resends what it was not told about, and the resent copy may be the
	// only one it will hear of.
	a.pendAck[device] = append(a.pendAck[device], seq)
	a.pendN++
	if !w.add(seq) {
		a.dups++
		return true, a.maybeFlushLocked(now)
	}
	a.dropped[device] = t.GetReportsDropped()
	for key, ce := range cells {
		if p := a.pending[key]; p != nil {
			p.Reports += ce.Reports
			p.Add(&ce.Counts)
		} else {
			a.pending[key] = ce
		}
	}
	a.pendSeq[device] = true
	a.ingested++
	return false, a.maybeFlushLocked(now)
}

// maybeFlushLocked writes what is pending when FlushEvery messages are or
// FlushInterval passed. a.mu is held.
func (a *Aggregator) maybeFlushLocked(now time.Time) error {
	if a.pendN >= a.opts.FlushEvery || now.Sub(a.flushed) >= a.opts.FlushInterval {
		return a.flushLocked(now)
	}
	return nil
}

// Flush writes the pending reports.
func (a *Aggregator) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.flushLocked(a.opts.Clock())
}

// flushLocked writes pending cells (merged into what is stored) and the
// devices' sequence numbers in one transaction; on failure they stay
// pending for the next attempt. a.mu is held.
func (a *Aggregator) flushLocked(now time.Time) error {
	a.flushed = now
	if a.pendN == 0 {
		return nil
	}
	if len(a.pendSeq) == 0 && len(a.pending) == 0 {
		a.ackLocked() // duplicates only: what they repeat was written before
		return nil
	}
	// stored is what this write puts in each cell; it becomes a.written
	// once committed (the function may run again on a conflict).
	var stored map[string]*cell
	err := a.opts.KV.Update(func(tx *store.Tx) error {
		stored = make(map[string]*cell, len(a.pending))
		for key, ce := range a.pending {
			if w, ok := a.written[key]; ok {
				merged := &cell{Site: w.c.Site, Cohort: w.c.Cohort, Reports: w.c.Reports + ce.Reports}
				merged.Add(&w.c.Counts)
				merged.Add(&ce.Counts)
				if err := tx.SetJSON(key, merged); err != nil {
					return err
				}
				stored[key] = merged
				continue
			}
			old := &cell{}
			err := tx.GetJSON(key, old)
			switch {
			case err == nil:
				old.Reports += ce.Reports
				old.Add(&ce.Counts)
				if err := tx.SetJSON(key, old); err != nil {
					return err
				}
				stored[key] = old
				continue
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			if err := tx.SetJSON(key, ce); err != nil {
				return err
			}
			stored[key] = ce
		}
		for dev := range a.pendSeq {
			if err := tx.Set(seqPrefix+dev, a.seqs[dev].marshal()); err != nil {
				return err
			}
		}
		return nil
	}, false)
	if err != nil {
		clear(a.written) // it may not match the store any more
		return fmt.Errorf("monitor: ingest: %w", err)
	}
	a.rememberLocked(stored, now)
	clear(a.pending)
	clear(a.pendSeq)
	a.ackLocked()
	return nil
}

// rememberLocked keeps the cells a flush wrote in a.written and, once a
// bucket, evicts the cells of buckets before the previous one. a.mu is
// held.
func (a *Aggregator) rememberLocked(stored map[string]*cell, now time.Time) {
	oldest := now.Truncate(a.opts.RawBucket).Add(-a.opts.RawBucket)
	if now.Sub(a.evictedAt) >= a.opts.RawBucket {
		a.evictedAt = now
		for k, w := range a.written {
			if w.bucket.Before(oldest) {
				delete(a.written, k)
			}
		}
	}
	for key, c := range stored {
		if w, ok := a.written[key]; ok {
			a.written[key] = writtenCell{c: c, bucket: w.bucket}
			continue
		}
		if len(a.written) >= maxWrittenCells {
			continue
		}
		_, _, bucket, _, ok := parseCellKey(key[len(rawPrefix):])
		if ok && !bucket.Before(oldest) {
			a.written[key] = writtenCell{c: c, bucket: bucket}
		}
	}
}

// ackLocked hands the written messages' seqs to the Acker. a.mu is held.
func (a *Aggregator) ackLocked() {
	if a.opts.Acker != nil {
		for dev, seqs := range a.pendAck {
			a.opts.Acker.Ack(dev, seqs...)
		}
	}
	clear(a.pendAck)
	a.pendN = 0
}

// Stats are ingest counters since start.
type Stats struct {
	Ingested   uint64 // telemetry messages aggregated
	Duplicates uint64 // dropped as already seen
}

// Stats returns the ingest counters.
func (a *Aggregator) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Stats{Ingested: a.ingested, Duplicates: a.dups}
}

// ReportsDropped is the number of reports device's outbox dropped because
// it was full, as it last said.
func (a *Aggregator) ReportsDropped(device string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dropped[device]
}

// Sweep rolls raw buckets older than RawRetention up into hourly buckets
// and deletes hourly buckets older than RollupRetention. The control plane
// calls it periodically; tests call it with an injected clock.
func (a *Aggregator) Sweep() error {
	if err := a.Flush(); err != nil {
		return err
	}
	now := a.opts.Clock()
	rawCut := now.Add(-a.opts.RawRetention)
	hourCut := now.Add(-a.opts.RollupRetention)
	type move struct {
		key, hourKey string
		c            cell
	}
	var moves []move
	err := a.opts.KV.Scan(rawPrefix, func(key string, val []byte) error {
		model, version, bucket, device, ok := parseCellKey(key[len(rawPrefix):])
		if !ok || !bucket.Before(rawCut) {
			return nil
		}
		var c cell
		if err := json.Unmarshal(val, &c); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		moves = append(moves, move{key: key, hourKey: cellKey(hourlyPrefix, model, version, bucket.Truncate(rollupBucket), device), c: c})
		return nil
	})
	if err != nil {
		return fmt.Errorf("monitor: sweep: %w", err)
	}
	var expired []string
	err = a.opts.KV.Scan(hourlyPrefix, func(key string, _ []byte) error {
		if _, _, bucket, _, ok := parseCellKey(key[len(hourlyPrefix):]); ok && bucket.Add(rollupBucket).Before(hourCut) {
			expired = append(expired, key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("monitor: sweep: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.written) // the cells below are deleted
	const batch = 200
	for len(moves) > 0 {
		n := min(batch, len(moves))
		part := moves[:n]
		moves = moves[n:]
		err := a.opts.KV.Update(func(tx *store.Tx) error {
			for _, m := range part {
				var h cell
				if err := tx.GetJSON(m.hourKey, &h); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				h.Site, h.Cohort = m.c.Site, m.c.Cohort
				h.Reports += m.c.Reports
				h.Add(&m.c.Counts)
				if err := tx.SetJSON(m.hourKey, &h); err != nil {
					return err
				}
				if err := tx.Delete(m.key); err != nil {
					return err
				}
			}
			return nil
		}, false)
		if err != nil {
			return fmt.Errorf("monitor: rollup: %w", err)
		}
	}
	for len(expired) > 0 {
		n := min(batch, len(expired))
		part := expired[:n]
		expired = expired[n:]
		err := a.opts.KV.Update(func(tx *store.Tx) error {
			for _, k := range part {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}, false)
		if err != nil {
			return fmt.Errorf("monitor: retention: %w", err)
		}
	}
	return nil
}
