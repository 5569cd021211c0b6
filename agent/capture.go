package agent

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Field data capture (issue 13). The policy of each model arrives in the
// signed desired state (ModelAssignment.capture). A sampled inference becomes
// one CaptureRow per input row, built on the request's goroutine and kept in
// a small memory buffer; the capture loop writes the buffer to the agent's
// badger under its own namespace ("capture") and byte budget, groups rows
// into batches, uploads each batch on the device's capture topic and deletes
// it only when the control plane acknowledges it on the capture-ack topic.
//
// What survives what:
//   - A row is durable once the loop wrote it (every CaptureOptions.FlushInterval);
//     a kill -9 loses at most the rows of the memory buffer, never a row on disk.
//   - A batch is recorded (synced, with the next batch number) before it is
//     first sent, so after a restart it is sent again with the same name
//     (device, stream, batch) and the same rows: the control plane, which
//     stores a name once, keeps no duplicate.
//   - Rows are deleted only after the acknowledgement, so a broker outage or
//     a lost ack only delays them.
//
// Limits: a model's rows and bytes per clock hour (policy, else the
// defaults below); the queue on disk (rows and bytes); a row larger than
// maxCaptureRowBytes. Whatever a limit refuses is dropped, newest first,
// and counted (persisted; sent in CaptureBatch.rows_dropped). The hourly
// budget is kept in memory: after a restart a new hour's budget begins.

// Capture defaults (CaptureOptions' zero values).
const (
	DefaultCaptureMaxRows       = 20_000
	DefaultCaptureMaxBytes      = 16 << 20
	DefaultCaptureRowsPerHour   = 3_600
	DefaultCaptureBytesPerHour  = 8 << 20
	DefaultCaptureFlushInterval = 250 * time.Millisecond
	DefaultCaptureAckTimeout    = 10 * time.Second
	DefaultCaptureBatchRows     = 512
)

const (
	// maxCaptureRowBytes bounds one encoded row: a batch must stay under
	// what the control plane decodes from a device (256 KiB).
	maxCaptureRowBytes = 64 << 10
	// captureBatchBytes bounds the rows of one batch.
	captureBatchBytes = 192 << 10
	// captureBufferRows bounds the memory buffer between two flushes.
	captureBufferRows = 4096
	// captureWaitRows bounds the labelled-only rows waiting for a label.
	captureWaitRows = 4096
)

// CaptureOptions bound field data capture on the agent. Zero values take
// the defaults above.
type CaptureOptions struct {
	// MaxRows and MaxBytes bound the rows kept on disk until the control
	// plane acknowledges them; new rows beyond are dropped and counted.
	// The budget is the capture queue's own: telemetry and model files are
	// bounded separately.
	MaxRows  int
	MaxBytes int64
	// RowsPerHour and BytesPerHour are a model's hourly budget when its
	// policy sets none.
	RowsPerHour  int
	BytesPerHour int64
	// FlushInterval is how often captured rows are written to disk; a
	// crash loses at most the rows of one interval.
	FlushInterval time.Duration
	// AckTimeout is how long a sent batch waits for its acknowledgement
	// before it is sent again.
	AckTimeout time.Duration
	// BatchRows bounds the rows (and labels) of one batch; default
	// DefaultCaptureBatchRows. A batch also stays under 192 KiB.
	BatchRows int
}

func (o *CaptureOptions) setDefaults() {
	if o.MaxRows <= 0 {
		o.MaxRows = DefaultCaptureMaxRows
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultCaptureMaxBytes
	}
	if o.RowsPerHour <= 0 {
		o.RowsPerHour = DefaultCaptureRowsPerHour
	}
	if o.BytesPerHour <= 0 {
		o.BytesPerHour = DefaultCaptureBytesPerHour
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultCaptureFlushInterval
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultCaptureAckTimeout
	}
	if o.BatchRows <= 0 {
		o.BatchRows = DefaultCaptureBatchRows
	}
}

// Record tags of the values under captureRowPrefix.
const (
	tagRow   byte = 'r'
	tagLabel byte = 'l'
)

const (
	captureRowPrefix   = "r/"
	captureBatchPrefix = "b/"
	captureStreamKey   = "meta/stream"
	captureNextKey     = "meta/next-batch"
	captureDroppedKey  = "meta/dropped"
)

func captureRowKey(seq uint64) string   { return fmt.Sprintf("%s%016x", captureRowPrefix, seq) }
func captureBatchKey(id uint64) string  { return fmt.Sprintf("%s%016x", captureBatchPrefix, id) }
func putUint64(v uint64) []byte         { return binary.BigEndian.AppendUint64(nil, v) }
func getUint64(b []byte) (uint64, bool) { return binary.BigEndian.Uint64(b), len(b) == 8 }

// captureBatch is a batch recorded on disk: its rows are the queue's keys
// first..last (inclusive).
type captureBatch struct {
	id          uint64
	first, last uint64
}

// captureKey names a row waiting for its label.
type captureKey struct {
	model, id string
	row       uint32
}

type waitingRow struct {
	row *efpb.CaptureRow
	at  time.Time
}

// hourBudget is what one model captured in the current clock hour.
type hourBudget struct {
	hour  int64
	rows  int
	bytes int64
}

// capturer is the agent's capture queue.
type capturer struct {
	kv     *store.KV
	opts   CaptureOptions
	dev    string
	clock  func() time.Time
	ttl    time.Duration // how long a labelled-only row waits for its label
	log    *slog.Logger
	stream uint64
	// crash is the agent's crashPoint: tests kill the process at
	// "capture-recorded" (a new batch is recorded, not yet sent) and
	// "capture-acked" (an acknowledgement arrived, the batch is not yet
	// deleted).
	crash func(point string)

	policies atomic.Pointer[map[string]*efpb.CapturePolicy]
	idSeq    atomic.Uint64 // ids for inferences that came without one

	wake chan struct{}         // cap 1: rows were buffered
	acks chan *efpb.CaptureAck // from the MQTT handler; dropped when full

	// mu guards everything below. Lock order: mu is a leaf.
	mu       sync.Mutex
	buffer   [][]byte // tagged records not yet on disk
	flushing int      // records taken from buffer by a flush in progress
	hours    map[string]*hourBudget
	waiting  map[captureKey]waitingRow
	waitList []captureKey // insertion order of waiting, for eviction
	dropped  uint64       // cumulative, persisted at each flush
	// On disk: rows (count and bytes), the next row seq, the batches
	// recorded and not yet acknowledged (oldest first), the first row no
	// batch holds, the next batch number.
	rows      int
	bytes     int64
	sizes     map[uint64]int64 // seq → record size, for the byte count
	nextSeq   uint64
	batches   []captureBatch
	unbatched uint64
	nextBatch uint64
	uploaded  uint64 // rows acknowledged in this process
}

// openCapture recovers the queue kept in kv.
func openCapture(kv *store.KV, opts CaptureOptions, dev string, clock func() time.Time, ttl time.Duration, log *slog.Logger, crash func(string)) (*capturer, error) {
	opts.setDefaults()
	c := &capturer{kv: kv, opts: opts, dev: dev, clock: clock, ttl: ttl, log: log.With("part", "capture"), crash: crash,
		wake: make(chan struct{}, 1), acks: make(chan *efpb.CaptureAck, 16),
		hours: map[string]*hourBudget{}, waiting: map[captureKey]waitingRow{}, sizes: map[uint64]int64{}}
	switch b, err := kv.Get(captureStreamKey); {
	case err == nil && len(b) == 8:
		c.stream, _ = getUint64(b)
	case err == nil || errors.Is(err, store.ErrNotFound):
		// A new queue: a random stream id, so batch numbers of a data
		// directory wiped and made again never repeat a name the control
		// plane already stored.
		var r [8]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, fmt.Errorf("capture: stream id: %w", err)
		}
		c.stream = binary.BigEndian.Uint64(r[:])
		if err := kv.SetSync(captureStreamKey, r[:]); err != nil {
			return nil, fmt.Errorf("capture: open: %w", err)
		}
	default:
		return nil, fmt.Errorf("capture: open: %w", err)
	}
	if b, err := kv.Get(captureNextKey); err == nil {
		c.nextBatch, _ = getUint64(b)
	}
	if c.nextBatch == 0 {
		c.nextBatch = 1
	}
	if b, err := kv.Get(captureDroppedKey); err == nil {
		c.dropped, _ = getUint64(b)
	}
	first := true
	err := kv.Scan(captureRowPrefix, func(key string, val []byte) error {
		seq, err := strconv.ParseUint(key[len(captureRowPrefix):], 16, 64)
		if err != nil {
			return fmt.Errorf("bad capture key %q", key)
		}
		if first {
			c.unbatched, first = seq, false
		}
		c.rows++
		c.bytes += int64(len(val))
		c.sizes[seq] = int64(len(val))
		c.nextSeq = seq + 1
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture: open: %w", err)
	}
	err = kv.Scan(captureBatchPrefix, func(key string, val []byte) error {
		id, err := strconv.ParseUint(key[len(captureBatchPrefix):], 16, 64)
		if err != nil || len(val) != 16 {
			return fmt.Errorf("bad capture batch %q", key)
		}
		b := captureBatch{id: id, first: binary.BigEndian.Uint64(val), last: binary.BigEndian.Uint64(val[8:])}
		c.batches = append(c.batches, b)
		c.unbatched = max(c.unbatched, b.last+1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture: open: %w", err)
	}
	return c, nil
}

// setPolicies takes the capture policies of an accepted desired state.
func (c *capturer) setPolicies(ds *efpb.DesiredState) {
	if c == nil {
		return
	}
	m := map[string]*efpb.CapturePolicy{}
	for _, as := range ds.GetModels() {
		if p := as.GetCapture(); p.GetSampleRate() > 0 {
			m[as.GetName()] = p
		}
	}
	c.policies.Store(&m)
}

func (c *capturer) policy(model string) *efpb.CapturePolicy {
	if c == nil {
		return nil // an agent assembled without Run (benchmarks)
	}
	if m := c.policies.Load(); m != nil {
		return (*m)[model]
	}
	return nil
}

// sampled picks a request by a hash of its inference id, so the choice is
// the same for its label later.
func sampled(id string, rate float64) bool {
	if rate >= 1 {
		return true
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	x := h.Sum64() // FNV's high bits barely move for ids that differ at the end: mix (splitmix64's finalizer)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11)/(1<<53) < rate
}

// record captures the rows of one successful inference of model, if its
// policy samples it. It runs on the request's goroutine: it encodes the
// rows and buffers them, and never touches the disk.
func (c *capturer) record(ctx context.Context, model, version string, in, out []oip.Tensor) {
	p := c.policy(model)
	if p == nil {
		return
	}
	id := oip.InferenceID(ctx)
	if id == "" {
		id = fmt.Sprintf("cap-%016x-%d", c.stream, c.idSeq.Add(1))
	}
	if !sampled(id, p.GetSampleRate()) {
		return
	}
	rows := 0
	if len(in) > 0 && len(in[0].Shape) > 0 {
		rows = int(in[0].Shape[0])
	}
	if rows <= 0 {
		return
	}
	ins, outs := captureTensors(in, rows, p), captureTensors(out, rows, nil)
	now := c.clock()
	for r := range rows {
		row := &efpb.CaptureRow{ModelName: model, ModelVersion: version, InferenceId: id, Row: uint32(r), TimeUnixMs: now.UnixMilli()}
		for _, t := range ins {
			row.Inputs = append(row.Inputs, rowOf(t, r, rows))
		}
		for _, t := range outs {
			row.Outputs = append(row.Outputs, rowOf(t, r, rows))
		}
		if p.GetLabelledOnly() {
			c.wait(row, now)
			continue
		}
		c.push(model, p, tagRow, row, now)
	}
}

// label takes ground truth for sampled inferences: a labelled-only row
// waiting for it is queued with it; otherwise the label is queued on its
// own and the control plane joins it to the row.
func (c *capturer) label(model string, labels []oip.Label) {
	p := c.policy(model)
	if p == nil {
		return
	}
	now := c.clock()
	for _, l := range labels {
		if l.Label == nil || l.Row < 0 || l.Row > math.MaxUint32 || !sampled(l.ID, p.GetSampleRate()) {
			continue
		}
		k := captureKey{model: model, id: l.ID, row: uint32(l.Row)}
		c.mu.Lock()
		w, ok := c.waiting[k]
		if ok {
			delete(c.waiting, k)
		}
		c.mu.Unlock()
		switch {
		case ok:
			w.row.Labelled, w.row.Label = true, *l.Label
			c.push(model, p, tagRow, w.row, now)
		case !p.GetLabelledOnly():
			c.push(model, p, tagLabel, &efpb.CaptureLabel{ModelName: model, InferenceId: l.ID, Row: uint32(l.Row),
				Label: *l.Label, TimeUnixMs: now.UnixMilli()}, now)
		}
	}
}

// wait keeps a labelled-only row in memory until its label arrives (or it
// is evicted: the oldest first beyond captureWaitRows, or after ttl).
func (c *capturer) wait(row *efpb.CaptureRow, now time.Time) {
	k := captureKey{model: row.ModelName, id: row.InferenceId, row: row.Row}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.waitList) > 0 {
		old := c.waitList[0]
		w, ok := c.waiting[old]
		if ok && len(c.waiting) < captureWaitRows && now.Sub(w.at) <= c.ttl {
			break
		}
		c.waitList = c.waitList[1:]
		delete(c.waiting, old)
	}
	c.waiting[k] = waitingRow{row: row, at: now}
	c.waitList = append(c.waitList, k)
}

// push encodes a record and buffers it within the model's hourly budget.
func (c *capturer) push(model string, p *efpb.CapturePolicy, tag byte, m proto.Message, now time.Time) {
	b, err := proto.Marshal(m)
	if err != nil || len(b)+1 > maxCaptureRowBytes {
		c.countDropped(1)
		return
	}
	rec := append([]byte{tag}, b...)
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hours[model]
	if hr := now.Unix() / 3600; h == nil || h.hour != hr {
		h = &hourBudget{hour: hr}
		c.hours[model] = h
	}
	maxRows, maxBytes := int(p.GetMaxRowsPerHour()), int64(p.GetMaxBytesPerHour())
	if maxRows == 0 {
		maxRows = c.opts.RowsPerHour
	}
	if maxBytes == 0 {
		maxBytes = c.opts.BytesPerHour
	}
	if tag == tagRow && (h.rows >= maxRows || h.bytes+int64(len(rec)) > maxBytes) || len(c.buffer) >= captureBufferRows {
		c.dropped++
		return
	}
	if tag == tagRow {
		h.rows++
	}
	h.bytes += int64(len(rec))
	c.buffer = append(c.buffer, rec)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *capturer) countDropped(n uint64) {
	c.mu.Lock()
	c.dropped += n
	c.mu.Unlock()
}

// Bounds of one transaction of flush: the device profile's badger takes
// about 150 KB per transaction (15 % of its 1 MiB memtable).
const (
	flushChunkBytes   = 64 << 10
	flushChunkRecords = 256
)

// flush writes the buffered records to disk, within the queue's budget
// (the newest beyond it are dropped and counted), in transactions of at
// most flushChunkBytes. The buffer is taken under mu and written without
// it, so requests never wait for the disk. Only the capture goroutine
// calls flush, nextToSend and acked: the disk counters change nowhere else.
func (c *capturer) flush() error {
	type put struct {
		seq uint64
		rec []byte
	}
	c.mu.Lock()
	buf := c.buffer
	c.buffer = nil
	c.flushing = len(buf)
	rows, bytes, seq, dropped := c.rows, c.bytes, c.nextSeq, c.dropped
	c.mu.Unlock()
	for len(buf) > 0 {
		var puts []put
		n, size, drops := 0, 0, uint64(0)
		for n < len(buf) && len(puts) < flushChunkRecords && size < flushChunkBytes {
			rec := buf[n]
			n++
			if rows+1 > c.opts.MaxRows || bytes+int64(len(rec)) > c.opts.MaxBytes {
				drops++
				continue
			}
			puts = append(puts, put{seq, rec})
			rows, bytes, seq, size = rows+1, bytes+int64(len(rec)), seq+1, size+len(rec)
		}
		err := c.kv.Update(func(tx *store.Tx) error {
			for _, p := range puts {
				if err := tx.Set(captureRowKey(p.seq), p.rec); err != nil {
					return err
				}
			}
			return tx.Set(captureDroppedKey, putUint64(dropped+drops))
		}, false)
		if err != nil {
			// Back in front of what arrived meanwhile; tried again at the
			// next flush.
			c.mu.Lock()
			c.buffer = append(buf, c.buffer...)
			c.flushing = 0
			c.mu.Unlock()
			return fmt.Errorf("capture: write rows: %w", err)
		}
		c.mu.Lock()
		for _, p := range puts {
			c.sizes[p.seq] = int64(len(p.rec))
		}
		c.rows, c.bytes, c.nextSeq = rows, bytes, seq
		c.dropped += drops
		dropped = c.dropped
		c.flushing -= n
		c.mu.Unlock()
		buf = buf[n:]
	}
	return nil
}

// nextToSend returns the oldest recorded batch, recording a new one from
// the rows no batch holds when there is none.
func (c *capturer) nextToSend() (captureBatch, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.batches) > 0 {
		return c.batches[0], true, nil
	}
	if c.unbatched >= c.nextSeq {
		return captureBatch{}, false, nil
	}
	b := captureBatch{id: c.nextBatch, first: c.unbatched}
	n, size := 0, int64(0)
	for s := c.unbatched; s < c.nextSeq && n < c.opts.BatchRows; s++ {
		sz, ok := c.sizes[s]
		if !ok {
			continue
		}
		if n > 0 && size+sz > captureBatchBytes {
			break
		}
		b.last, n, size = s, n+1, size+sz
	}
	if n == 0 {
		c.unbatched = c.nextSeq
		return captureBatch{}, false, nil
	}
	// Recorded and synced before it is first sent: its name never
	// changes content, even across a power loss.
	err := c.kv.Update(func(tx *store.Tx) error {
		if err := tx.Set(captureBatchKey(b.id), append(putUint64(b.first), putUint64(b.last)...)); err != nil {
			return err
		}
		return tx.Set(captureNextKey, putUint64(b.id+1))
	}, true)
	if err != nil {
		return captureBatch{}, false, fmt.Errorf("capture: record batch %d: %w", b.id, err)
	}
	c.batches = append(c.batches, b)
	c.unbatched, c.nextBatch = b.last+1, b.id+1
	return b, true, nil
}

// encode reads a recorded batch's rows into its upload message.
func (c *capturer) encode(b captureBatch) ([]byte, error) {
	msg := &efpb.CaptureBatch{ProtocolVersion: efpb.ProtocolVersion1, DeviceId: c.dev, Stream: c.stream, Batch: b.id,
		TimeUnixMs: c.clock().UnixMilli()}
	c.mu.Lock()
	msg.RowsDropped = c.dropped
	var seqs []uint64
	for s := b.first; s <= b.last; s++ {
		if _, ok := c.sizes[s]; ok {
			seqs = append(seqs, s)
		}
	}
	c.mu.Unlock()
	for _, seq := range seqs {
		val, err := c.kv.Get(captureRowKey(seq))
		if err != nil || len(val) == 0 {
			return nil, fmt.Errorf("capture: read batch %d row %d: %w", b.id, seq, err)
		}
		switch val[0] {
		case tagRow:
			r := &efpb.CaptureRow{}
			if err := proto.Unmarshal(val[1:], r); err != nil {
				return nil, fmt.Errorf("capture: read batch %d row %d: %w", b.id, seq, err)
			}
			msg.Rows = append(msg.Rows, r)
		case tagLabel:
			l := &efpb.CaptureLabel{}
			if err := proto.Unmarshal(val[1:], l); err != nil {
				return nil, fmt.Errorf("capture: read batch %d label %d: %w", b.id, seq, err)
			}
			msg.Labels = append(msg.Labels, l)
		}
	}
	return proto.Marshal(msg)
}

// acked deletes an acknowledged batch and its rows.
func (c *capturer) acked(id uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.batches, func(b captureBatch) bool { return b.id == id })
	if i < 0 {
		return nil // acknowledged before, or not ours
	}
	b := c.batches[i]
	var seqs []uint64
	for s := b.first; s <= b.last; s++ {
		if _, ok := c.sizes[s]; ok {
			seqs = append(seqs, s)
		}
	}
	err := c.kv.Update(func(tx *store.Tx) error {
		for _, s := range seqs {
			if err := tx.Delete(captureRowKey(s)); err != nil {
				return err
			}
		}
		return tx.Delete(captureBatchKey(b.id))
	}, false)
	if err != nil {
		return fmt.Errorf("capture: delete batch %d: %w", b.id, err)
	}
	for _, s := range seqs {
		c.bytes -= c.sizes[s]
		delete(c.sizes, s)
	}
	c.rows -= len(seqs)
	c.uploaded += uint64(len(seqs))
	c.batches = slices.Delete(c.batches, i, i+1)
	return nil
}

// onAck is the capture-ack topic's handler; it never blocks (an ack
// dropped here only makes the batch go again).
func (c *capturer) onAck(m mqttc.Message) {
	ack := &efpb.CaptureAck{}
	if proto.Unmarshal(m.Payload, ack) != nil || ack.GetDeviceId() != c.dev || ack.GetStream() != c.stream {
		return
	}
	select {
	case c.acks <- ack:
	default:
	}
}

// busy reports whether anything waits to be written or acknowledged.
func (c *capturer) busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buffer) > 0 || c.rows > 0
}

// run writes buffered rows, and sends batches one at a time until each is
// acknowledged, until ctx ends. Before it returns it writes the buffer a
// last time (a clean stop loses nothing). With nothing to do it waits
// without a timer (fleet-sim runs thousands of agents, most never capture).
func (c *capturer) run(ctx context.Context, client func() *mqttc.Client, topic, ackTopic string) {
	timer := time.NewTimer(c.opts.FlushInterval)
	defer timer.Stop()
	defer func() {
		if err := c.flush(); err != nil {
			c.log.Error("capture flush at stop failed", "err", err)
		}
	}()
	var subscribed *mqttc.Client
	var inflight *captureBatch
	var sentAt time.Time
	for {
		if err := c.flush(); err != nil {
			c.log.Error("capture flush failed", "err", err)
		}
		busy := inflight != nil || c.busy()
		cl := client()
		if busy && cl != nil && subscribed != cl {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := cl.Subscribe(sctx, ackTopic, 1, c.onAck) // re-made by mqttc on every reconnect
			cancel()
			if err == nil {
				subscribed = cl
			} else if ctx.Err() == nil {
				c.log.Debug("capture ack subscribe failed", "err", err)
			}
		}
		if busy && inflight == nil && subscribed != nil {
			b, ok, err := c.nextToSend()
			if err != nil {
				c.log.Error("capture batch not recorded", "err", err)
			} else if ok {
				inflight = &b
				c.crash("capture-recorded")
			}
		}
		if inflight != nil && subscribed != nil && cl.IsConnected() && time.Since(sentAt) >= c.opts.AckTimeout {
			if err := c.send(ctx, cl, topic, *inflight); err != nil {
				c.log.Debug("capture batch not sent; will retry", "batch", inflight.id, "err", err)
			} else {
				sentAt = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case ack := <-c.acks:
			if inflight != nil && slices.Contains(ack.GetBatches(), inflight.id) {
				c.crash("capture-acked")
				if err := c.acked(inflight.id); err != nil {
					c.log.Error("capture ack not recorded", "err", err)
					continue
				}
				inflight, sentAt = nil, time.Time{}
			}
		case <-c.wake:
		case <-timer.C:
		}
		// Re-armed only while busy (Go 1.23 timers: Reset and Stop leave
		// no stale tick behind).
		if busy || c.busy() {
			timer.Reset(c.opts.FlushInterval)
		} else {
			timer.Stop()
		}
	}
}

func (c *capturer) send(ctx context.Context, cl *mqttc.Client, topic string, b captureBatch) error {
	payload, err := c.encode(b)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return cl.Publish(pctx, topic, 1, false, payload)
}

// CaptureStats are the counts of an agent's capture queue.
type CaptureStats struct {
	// Queued rows (and labels) are on disk, waiting for acknowledgement;
	// Buffered are in memory, not yet written.
	Queued, Buffered int
	QueuedBytes      int64
	// Waiting are labelled-only rows in memory waiting for their label.
	Waiting int
	// Uploaded rows were acknowledged since the agent started; Dropped
	// were refused by a limit (cumulative across restarts).
	Uploaded, Dropped uint64
	// Stream is the queue's id; NextBatch the number of its next batch.
	Stream, NextBatch uint64
}

func (c *capturer) stats() CaptureStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CaptureStats{Queued: c.rows, Buffered: len(c.buffer) + c.flushing, QueuedBytes: c.bytes, Waiting: len(c.waiting),
		Uploaded: c.uploaded, Dropped: c.dropped, Stream: c.stream, NextBatch: c.nextBatch}
}

// CaptureStats reports the capture queue (zero before Run opened it).
func (a *Agent) CaptureStats() CaptureStats {
	select {
	case <-a.ready:
		return a.capture.stats()
	default:
		return CaptureStats{}
	}
}

// captureTensors converts what a policy keeps of ts (all of it when p is
// nil) for row slicing: dropped inputs are left out, hashed ones replaced.
func captureTensors(ts []oip.Tensor, rows int, p *efpb.CapturePolicy) []*efpb.Tensor {
	var out []*efpb.Tensor
	for i := range ts {
		t := &ts[i]
		if p != nil && slices.Contains(p.GetDropInputs(), t.Name) {
			continue
		}
		if len(t.Shape) == 0 || t.Shape[0] != int64(rows) {
			continue // not batched by row: nothing to slice
		}
		pt, err := tensor.ToProto(t)
		if err != nil {
			continue
		}
		if p != nil && slices.Contains(p.GetHashInputs(), t.Name) {
			pt = hashTensor(pt, p.GetHashSalt())
		}
		out = append(out, pt)
	}
	return out
}

// hashTensor replaces every element by the hex of the first 16 bytes of
// HMAC-SHA256(salt, element), as a BYTES tensor of the same shape: equal
// values stay equal (joins and counts still work), the values are gone.
func hashTensor(t *efpb.Tensor, salt []byte) *efpb.Tensor {
	var elems []string
	switch {
	case len(t.BytesData) > 0:
		for _, b := range t.BytesData {
			elems = append(elems, string(b))
		}
	case len(t.Data) > 0:
		for _, v := range t.Data {
			elems = append(elems, strconv.FormatFloat(float64(v), 'g', -1, 32))
		}
	case len(t.DoubleData) > 0:
		for _, v := range t.DoubleData {
			elems = append(elems, strconv.FormatFloat(v, 'g', -1, 64))
		}
	case len(t.IntData) > 0:
		for _, v := range t.IntData {
			elems = append(elems, strconv.FormatInt(v, 10))
		}
	case len(t.UintData) > 0:
		for _, v := range t.UintData {
			elems = append(elems, strconv.FormatUint(v, 10))
		}
	case len(t.BoolData) > 0:
		for _, v := range t.BoolData {
			elems = append(elems, strconv.FormatBool(v))
		}
	}
	out := &efpb.Tensor{Name: t.Name, Shape: t.Shape, Datatype: string(tensor.Bytes)}
	mac := hmac.New(sha256.New, salt)
	for _, e := range elems {
		mac.Reset()
		_, _ = mac.Write([]byte(e))
		out.BytesData = append(out.BytesData, []byte(hex.EncodeToString(mac.Sum(nil)[:16])))
	}
	return out
}

// rowOf is row r of a [rows, ...] tensor, with first dimension 1.
func rowOf(t *efpb.Tensor, r, rows int) *efpb.Tensor {
	out := &efpb.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: append([]int64{1}, t.Shape[1:]...)}
	out.Data = sliceRow(t.Data, r, rows)
	out.DoubleData = sliceRow(t.DoubleData, r, rows)
	out.IntData = sliceRow(t.IntData, r, rows)
	out.UintData = sliceRow(t.UintData, r, rows)
	out.BoolData = sliceRow(t.BoolData, r, rows)
	out.BytesData = sliceRow(t.BytesData, r, rows)
	return out
}

func sliceRow[T any](s []T, r, rows int) []T {
	if len(s) == 0 || rows == 0 || len(s)%rows != 0 {
		return nil
	}
	per := len(s) / rows
	return slices.Clone(s[r*per : (r+1)*per])
}

// desiredOf decodes an accepted desired state's envelope (restored from
// disk, so already verified); nil if there is none.
func desiredOf(env []byte) *efpb.DesiredState {
	if len(env) == 0 {
		return nil
	}
	e, err := decodeEnvelope(env)
	if err != nil {
		return nil
	}
	ds := &efpb.DesiredState{}
	if proto.Unmarshal(e.GetPayload(), ds) != nil {
		return nil
	}
	return ds
}

var (
	descCaptureQueued = metricDesc{"edgefleet_agent_capture_queued_rows",
		"Captured rows and labels not yet acknowledged by the control plane (on disk and in the memory buffer).", "gauge", nil}
	descCaptureBytes = metricDesc{"edgefleet_agent_capture_queued_bytes",
		"Bytes of captured rows on disk waiting for acknowledgement.", "gauge", nil}
	descCaptureUploaded = metricDesc{"edgefleet_agent_capture_uploaded_total",
		"Captured rows and labels the control plane acknowledged since the agent started.", "counter", nil}
	descCaptureDropped = metricDesc{"edgefleet_agent_capture_dropped_total",
		"Captured rows dropped by a limit (hourly budget, queue full, row too large).", "counter", nil}
)

// captureMetrics reads the capture queue at scrape time.
func (a *Agent) captureMetrics(add func(d *metricDesc, v float64, values ...string)) {
	st := a.CaptureStats()
	add(&descCaptureQueued, float64(st.Queued+st.Buffered))
	add(&descCaptureBytes, float64(st.QueuedBytes))
	add(&descCaptureUploaded, float64(st.Uploaded))
	add(&descCaptureDropped, float64(st.Dropped))
}
