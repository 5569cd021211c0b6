package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/store"
)

// outbox is the store-and-forward queue of telemetry reports: every report
// is written to badger first and sent in sequence order when the broker is
// reachable, then deleted once the broker acknowledged it (QoS 1). It is
// bounded by count and bytes; when full the oldest report is dropped and
// the loss is counted (persisted, and reported in Telemetry.reports_dropped).
// A report may arrive twice (acknowledged but not yet deleted at a crash):
// the control plane drops duplicates by (device, seq).
type outbox struct {
	kv       *store.KV
	maxN     int
	maxBytes int64
	log      *slog.Logger
	wake     chan struct{} // cap 1: something was queued

	mu      sync.Mutex // guards below
	queue   []outboxItem
	bytes   int64
	dropped uint64
}

type outboxItem struct {
	seq  uint64
	size int64
}

const (
	outboxMsgPrefix  = "m/"
	outboxDroppedKey = "dropped"
)

func outboxKey(seq uint64) string { return fmt.Sprintf("%s%016x", outboxMsgPrefix, seq) }

// openOutbox recovers the queue kept in kv.
func openOutbox(kv *store.KV, maxN int, maxBytes int64, log *slog.Logger) (*outbox, error) {
	if maxN <= 0 {
		maxN = DefaultOutboxMaxReports
	}
	if maxBytes <= 0 {
		maxBytes = DefaultOutboxMaxBytes
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &outbox{kv: kv, maxN: maxN, maxBytes: maxBytes, log: log, wake: make(chan struct{}, 1)}
	err := kv.Scan(outboxMsgPrefix, func(key string, val []byte) error {
		seq, err := strconv.ParseUint(key[len(outboxMsgPrefix):], 16, 64)
		if err != nil {
			return fmt.Errorf("bad outbox key %q", key)
		}
		o.queue = append(o.queue, outboxItem{seq: seq, size: int64(len(val))})
		o.bytes += int64(len(val))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: open: %w", err)
	}
	if b, err := kv.Get(outboxDroppedKey); err == nil && len(b) == 8 {
		o.dropped = binary.BigEndian.Uint64(b)
	}
	return o, nil
}

// Dropped is the number of reports dropped because the outbox was full.
func (o *outbox) Dropped() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.dropped
}

// Len is the number of queued reports.
func (o *outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queue)
}

// push queues a report under its sequence number (which must increase)
// and drops the oldest ones while the bounds are exceeded.
func (o *outbox) push(seq uint64, payload []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.kv.SetSync(outboxKey(seq), payload); err != nil {
		return fmt.Errorf("outbox: push: %w", err)
	}
	o.queue = append(o.queue, outboxItem{seq: seq, size: int64(len(payload))})
	o.bytes += int64(len(payload))
	dropped := false
	for len(o.queue) > 1 && (len(o.queue) > o.maxN || o.bytes > o.maxBytes) {
		old := o.queue[0]
		if err := o.kv.Delete(outboxKey(old.seq)); err != nil {
			return fmt.Errorf("outbox: drop oldest: %w", err)
		}
		o.queue = o.queue[1:]
		o.bytes -= old.size
		o.dropped++
		dropped = true
	}
	if dropped {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], o.dropped)
		if err := o.kv.SetSync(outboxDroppedKey, b[:]); err != nil {
			return fmt.Errorf("outbox: count dropped: %w", err)
		}
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// head returns the oldest queued report.
func (o *outbox) head() (outboxItem, []byte, bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.queue) == 0 {
		return outboxItem{}, nil, false, nil
	}
	it := o.queue[0]
	b, err := o.kv.Get(outboxKey(it.seq))
	return it, b, true, err
}

// ack removes a sent report (unless push already dropped it).
func (o *outbox) ack(it outboxItem) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.queue) == 0 || o.queue[0].seq != it.seq {
		return nil
	}
	if err := o.kv.Delete(outboxKey(it.seq)); err != nil {
		return fmt.Errorf("outbox: ack: %w", err)
	}
	o.queue = o.queue[1:]
	o.bytes -= it.size
	return nil
}

// run sends queued reports in order with send until ctx ends. send returns
// an error when the report was not acknowledged; run then waits for the
// next wake-up or retry tick and starts again from the same report.
func (o *outbox) run(ctx context.Context, retry time.Duration, send func(ctx context.Context, payload []byte) error) {
	t := time.NewTicker(retry)
	defer t.Stop()
	for {
		o.flush(ctx, send)
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-t.C:
		}
	}
}

func (o *outbox) flush(ctx context.Context, send func(ctx context.Context, payload []byte) error) {
	for ctx.Err() == nil {
		it, b, ok, err := o.head()
		if err != nil {
			o.log.Error("outbox read failed", "seq", it.seq, "err", err)
			_ = o.ack(it) // unreadable: skip it rather than block the queue
			continue
		}
		if !ok {
			return
		}
		if err := send(ctx, b); err != nil {
			o.log.Debug("outbox send failed; will retry", "seq", it.seq, "err", err)
			return
		}
		if err := o.ack(it); err != nil {
			o.log.Error("outbox ack failed", "seq", it.seq, "err", err)
			return
		}
	}
}

// sendQueued publishes one queued telemetry report and waits for the
// broker's acknowledgement.
func (a *Agent) sendQueued(ctx context.Context, payload []byte) error {
	c := a.mqtt()
	if c == nil || !c.IsConnected() {
		return errNotConnected
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Publish(pctx, a.topics.Telemetry(a.opts.DeviceID), 1, false, payload)
}

var errNotConnected = errors.New("not connected to the broker")

// QueuedReports is the number of telemetry reports waiting in the outbox
// for the broker (0 before Run opened it).
func (a *Agent) QueuedReports() int {
	if ob := a.outboxRef(); ob != nil {
		return ob.Len()
	}
	return 0
}

// ReportsDropped is the number of telemetry reports the outbox dropped,
// oldest first, because it was full.
func (a *Agent) ReportsDropped() uint64 {
	if ob := a.outboxRef(); ob != nil {
		return ob.Dropped()
	}
	return 0
}

// outboxRef returns the outbox once Run opened it: the close of ready
// orders the assignment before this read.
func (a *Agent) outboxRef() *outbox {
	select {
	case <-a.ready:
		return a.outbox
	default:
		return nil
	}
}
