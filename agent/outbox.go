package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// outbox is the store-and-forward queue of the agent's reports (telemetry
// and status events): every report is written to badger first, sent in
// sequence order when the broker is reachable, and deleted only when the
// control plane acknowledged it end to end (an efpb.Ack naming its seq on
// the device's ack topic, sent once the control plane's store holds it).
// The broker's PUBACK is not enough: a broker may drop a message it
// acknowledged (the embedded broker does when a control-plane subscription
// queue is full).
//
// A report the broker accepted but the control plane did not acknowledge
// is resent after AckTimeout, then with doubling back-off (at most
// resendMax apart, at most maxAttempts times; then it is dropped and
// counted). Once the control plane is known to acknowledge, at most
// maxInFlight reports wait for their acknowledgement, spanning fewer than
// maxSpan sequence numbers (the control plane drops duplicates with a
// window of 1,024 seqs per device: a resent report must still fall inside
// it, also after a restart made the seqs jump by up to 1,024). On every
// reconnect the reports waiting for an acknowledgement are resent at once.
//
// An older control plane never acknowledges. The outbox assumes so when
// the broker accepted a report probeWait ago (fallbackWait once this
// control plane acknowledged before), the connection stayed up since, and
// no acknowledgement at all came meanwhile: it then deletes reports on the
// broker's PUBACK, as agents before end-to-end acknowledgement did, until
// an acknowledgement arrives again.
//
// It is bounded by count and bytes; when full the oldest report is dropped
// and the loss is counted (persisted, and reported in
// Telemetry.reports_dropped). The control plane drops duplicates by
// (device, seq).
type outbox struct {
	kv       *store.KV
	maxN     int
	maxBytes int64
	log      *slog.Logger
	wake     chan struct{} // cap 1: something to send or to decide
	now      func() time.Time

	// Timing and bounds; tests shorten them.
	ackTimeout   time.Duration // first resend after a PUBACK without an Ack
	resendMax    time.Duration // longest wait between resends
	maxAttempts  int           // sends of one report before it is dropped
	maxInFlight  int           // reports sent and not yet acknowledged
	maxSpan      uint64        // seq span of those reports
	probeWait    time.Duration // no Ack for this long: the control plane does not acknowledge
	fallbackWait time.Duration // the same, once it did acknowledge before

	mu      sync.Mutex // guards below
	queue   []outboxItem
	bytes   int64
	dropped uint64
	// cpAcks: the control plane acknowledged reports before (persisted).
	// legacy: it was found not to, for now: delete on PUBACK.
	cpAcks  bool
	legacy  bool
	lastAck time.Time // last Ack received (zero: none since start)
	epoch   uint64    // connection number, counted by connected
}

// reportKind says which topic a queued report goes to.
type reportKind byte

const (
	kindTelemetry reportKind = iota
	kindStatus
)

type outboxItem struct {
	seq      uint64
	kind     reportKind
	size     int64
	sentAt   time.Time // the broker's PUBACK of the last send; zero: not sent
	epoch    uint64    // connection of that send
	attempts int
}

const (
	outboxMsgPrefix    = "m/" // telemetry (the key of agents before status events were queued)
	outboxStatusPrefix = "s/"
	outboxDroppedKey   = "dropped"
	outboxAcksKey      = "acks" // the control plane acknowledges: 1 byte, 1 or 0

	defaultAckTimeout = 30 * time.Second
	resendMax         = 10 * time.Minute
	maxAttempts       = 10
	maxInFlight       = 256
	maxSpan           = 512
	probeWait         = 30 * time.Second
	fallbackWait      = time.Hour
)

func (k reportKind) prefix() string {
	if k == kindStatus {
		return outboxStatusPrefix
	}
	return outboxMsgPrefix
}

func outboxKey(k reportKind, seq uint64) string { return fmt.Sprintf("%s%016x", k.prefix(), seq) }

// openOutbox recovers the queue kept in kv. ackTimeout <= 0 means
// defaultAckTimeout.
func openOutbox(kv *store.KV, maxN int, maxBytes int64, ackTimeout time.Duration, log *slog.Logger) (*outbox, error) {
	if maxN <= 0 {
		maxN = DefaultOutboxMaxReports
	}
	if maxBytes <= 0 {
		maxBytes = DefaultOutboxMaxBytes
	}
	if ackTimeout <= 0 {
		ackTimeout = defaultAckTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &outbox{kv: kv, maxN: maxN, maxBytes: maxBytes, log: log, wake: make(chan struct{}, 1), now: time.Now,
		ackTimeout: ackTimeout, resendMax: max(resendMax, ackTimeout), maxAttempts: maxAttempts,
		maxInFlight: maxInFlight, maxSpan: maxSpan, probeWait: probeWait, fallbackWait: fallbackWait}
	for _, k := range []reportKind{kindTelemetry, kindStatus} {
		prefix := k.prefix()
		err := kv.Scan(prefix, func(key string, val []byte) error {
			seq, err := strconv.ParseUint(key[len(prefix):], 16, 64)
			if err != nil {
				return fmt.Errorf("bad outbox key %q", key)
			}
			o.queue = append(o.queue, outboxItem{seq: seq, kind: k, size: int64(len(val))})
			o.bytes += int64(len(val))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("outbox: open: %w", err)
		}
	}
	sort.Slice(o.queue, func(i, j int) bool { return o.queue[i].seq < o.queue[j].seq })
	if b, err := kv.Get(outboxDroppedKey); err == nil && len(b) == 8 {
		o.dropped = binary.BigEndian.Uint64(b)
	}
	if b, err := kv.Get(outboxAcksKey); err == nil && len(b) == 1 {
		o.cpAcks = b[0] == 1
	}
	return o, nil
}

// Dropped is the number of reports dropped because the outbox was full or
// the control plane never acknowledged them.
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

// LenUpTo is the number of queued reports whose sequence number is at
// most seq.
func (o *outbox) LenUpTo(seq uint64) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return sort.Search(len(o.queue), func(i int) bool { return o.queue[i].seq > seq })
}

func (o *outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// push queues a report under its sequence number and drops the oldest ones
// while the bounds are exceeded.
func (o *outbox) push(seq uint64, kind reportKind, payload []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.kv.SetSync(outboxKey(kind, seq), payload); err != nil {
		return fmt.Errorf("outbox: push: %w", err)
	}
	it := outboxItem{seq: seq, kind: kind, size: int64(len(payload))}
	i := sort.Search(len(o.queue), func(i int) bool { return o.queue[i].seq >= seq })
	o.queue = append(o.queue, outboxItem{})
	copy(o.queue[i+1:], o.queue[i:])
	o.queue[i] = it
	o.bytes += it.size
	dropped := 0
	for len(o.queue) > 1 && (len(o.queue) > o.maxN || o.bytes > o.maxBytes) {
		if err := o.removeLocked(0); err != nil {
			return fmt.Errorf("outbox: drop oldest: %w", err)
		}
		dropped++
	}
	if err := o.countDroppedLocked(dropped); err != nil {
		return err
	}
	o.poke()
	return nil
}

// removeLocked deletes queue[i].
func (o *outbox) removeLocked(i int) error {
	it := o.queue[i]
	if err := o.kv.Delete(outboxKey(it.kind, it.seq)); err != nil {
		return err
	}
	o.queue = append(o.queue[:i], o.queue[i+1:]...)
	o.bytes -= it.size
	return nil
}

func (o *outbox) countDroppedLocked(n int) error {
	if n == 0 {
		return nil
	}
	o.dropped += uint64(n)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], o.dropped)
	if err := o.kv.SetSync(outboxDroppedKey, b[:]); err != nil {
		return fmt.Errorf("outbox: count dropped: %w", err)
	}
	return nil
}

// setCPAcksLocked records whether the control plane acknowledges.
func (o *outbox) setCPAcksLocked(v bool) {
	if o.cpAcks == v {
		return
	}
	o.cpAcks = v
	b := []byte{0}
	if v {
		b[0] = 1
	}
	if err := o.kv.SetSync(outboxAcksKey, b); err != nil {
		o.log.Warn("outbox: record whether the control plane acknowledges", "err", err)
	}
}

// connected is called on every (re)connect: reports sent on an earlier
// connection are resent now.
func (o *outbox) connected() {
	o.mu.Lock()
	o.epoch++
	o.mu.Unlock()
	o.poke()
}

// acked deletes the reports the control plane acknowledged.
func (o *outbox) acked(ranges []*efpb.SeqRange) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastAck = o.now()
	if o.legacy {
		o.log.Info("the control plane acknowledges reports again")
	}
	o.legacy = false
	o.setCPAcksLocked(true)
	for i := 0; i < len(o.queue); {
		if covered(ranges, o.queue[i].seq) {
			if err := o.removeLocked(i); err != nil {
				o.log.Error("outbox: delete an acknowledged report", "seq", o.queue[i].seq, "err", err)
				i++
			}
			continue
		}
		i++
	}
	o.poke()
}

func covered(ranges []*efpb.SeqRange, seq uint64) bool {
	for _, r := range ranges {
		if r.GetFirst() <= seq && seq <= r.GetLast() {
			return true
		}
	}
	return false
}

// next returns the oldest report due to be sent now, with its payload.
// connected says whether the connection is up (for the fallback decision).
func (o *outbox) next(connected bool) (outboxItem, []byte, bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	o.checkFallbackLocked(now, connected)
	inflight, oldest := 0, uint64(0)
	for _, it := range o.queue {
		if !it.sentAt.IsZero() {
			if inflight == 0 {
				oldest = it.seq
			}
			inflight++
		}
	}
	for i := 0; i < len(o.queue); i++ {
		it := o.queue[i]
		if it.sentAt.IsZero() {
			if o.cpAcks && !o.legacy && (inflight >= o.maxInFlight || (inflight > 0 && it.seq-oldest >= o.maxSpan)) {
				continue // wait for acknowledgements
			}
		} else if it.epoch == o.epoch && (!o.cpAcks || now.Sub(it.sentAt) < o.backoff(it.attempts)) {
			continue // waiting for its acknowledgement
		} else if it.attempts >= o.maxAttempts {
			o.log.Warn("report never acknowledged by the control plane; dropped", "seq", it.seq, "attempts", it.attempts)
			if err := o.removeLocked(i); err != nil {
				return it, nil, false, fmt.Errorf("outbox: drop unacknowledged: %w", err)
			}
			if err := o.countDroppedLocked(1); err != nil {
				return it, nil, false, err
			}
			i--
			continue
		}
		b, err := o.kv.Get(outboxKey(it.kind, it.seq))
		return it, b, true, err
	}
	return outboxItem{}, nil, false, nil
}

// backoff is how long a report sent attempts times waits for its
// acknowledgement before it is sent again.
func (o *outbox) backoff(attempts int) time.Duration {
	d := o.ackTimeout
	for i := 1; i < attempts && d < o.resendMax; i++ {
		d *= 2
	}
	return min(d, o.resendMax)
}

// checkFallbackLocked decides that the control plane does not acknowledge
// (see outbox): then the reports the broker accepted are deleted, and the
// next ones once the broker accepts them.
func (o *outbox) checkFallbackLocked(now time.Time, connected bool) {
	if o.legacy || !connected {
		return
	}
	wait := o.probeWait
	if o.cpAcks {
		wait = o.fallbackWait
	}
	var first time.Time // the earliest PUBACK on this connection
	for _, it := range o.queue {
		if !it.sentAt.IsZero() && it.epoch == o.epoch && (first.IsZero() || it.sentAt.Before(first)) {
			first = it.sentAt
		}
	}
	if first.IsZero() || o.lastAck.After(first) || now.Sub(first) < wait {
		return
	}
	o.log.Warn("the control plane does not acknowledge reports (older than this agent?): deleting them once the broker accepts them",
		"waited", wait)
	o.legacy = true
	o.setCPAcksLocked(false)
	for i := 0; i < len(o.queue); {
		if !o.queue[i].sentAt.IsZero() {
			if err := o.removeLocked(i); err != nil {
				o.log.Error("outbox: delete a sent report", "seq", o.queue[i].seq, "err", err)
				i++
			}
			continue
		}
		i++
	}
}

// sent records that the broker acknowledged it (PUBACK).
func (o *outbox) sent(it outboxItem) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	i := sort.Search(len(o.queue), func(i int) bool { return o.queue[i].seq >= it.seq })
	if i == len(o.queue) || o.queue[i].seq != it.seq {
		return nil // acknowledged or dropped meanwhile
	}
	if o.legacy {
		if err := o.removeLocked(i); err != nil {
			return fmt.Errorf("outbox: delete a sent report: %w", err)
		}
		return nil
	}
	q := &o.queue[i]
	q.sentAt, q.epoch = o.now(), o.epoch
	q.attempts++
	return nil
}

// skip drops a report that cannot be read.
func (o *outbox) skip(it outboxItem) {
	o.mu.Lock()
	defer o.mu.Unlock()
	i := sort.Search(len(o.queue), func(i int) bool { return o.queue[i].seq >= it.seq })
	if i < len(o.queue) && o.queue[i].seq == it.seq {
		_ = o.removeLocked(i)
		_ = o.countDroppedLocked(1)
	}
}

// run sends queued reports in order with send until ctx ends. send returns
// an error when the report was not accepted by the broker; run then waits
// for the next wake-up or tick and starts again from the same report.
// connected reports whether the broker connection is up. While reports are
// queued it also wakes on a tick (resends, the fallback decision); an empty
// outbox sleeps until a push wakes it, so an idle device does not wake for
// it (at 10,000 simulated agents those empty ticks were 10,000 a second).
func (o *outbox) run(ctx context.Context, send func(ctx context.Context, kind reportKind, payload []byte) error, connected func() bool) {
	tick := min(time.Second, max(o.ackTimeout/2, 10*time.Millisecond))
	t := time.NewTimer(tick)
	defer t.Stop()
	for {
		o.flush(ctx, send, connected)
		var due <-chan time.Time // nil: no tick while the outbox is empty
		if o.Len() > 0 {
			t.Reset(tick)
			due = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-due:
		}
	}
}

func (o *outbox) flush(ctx context.Context, send func(ctx context.Context, kind reportKind, payload []byte) error, connected func() bool) {
	for ctx.Err() == nil {
		it, b, ok, err := o.next(connected())
		if err != nil {
			o.log.Error("outbox read failed; report dropped", "seq", it.seq, "err", err)
			o.skip(it) // unreadable: skip it rather than block the queue
			continue
		}
		if !ok {
			return
		}
		if err := send(ctx, it.kind, b); err != nil {
			o.log.Debug("outbox send failed; will retry", "seq", it.seq, "err", err)
			return
		}
		if err := o.sent(it); err != nil {
			o.log.Error("outbox: record a send", "seq", it.seq, "err", err)
			return
		}
	}
}

// sendQueued publishes one queued report and waits for the broker's
// acknowledgement.
func (a *Agent) sendQueued(ctx context.Context, kind reportKind, payload []byte) error {
	c := a.mqtt()
	if c == nil || !c.IsConnected() {
		return errNotConnected
	}
	topic := a.topics.Telemetry(a.opts.DeviceID)
	if kind == kindStatus {
		topic = a.topics.Status(a.opts.DeviceID)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Publish(pctx, topic, 1, false, payload)
}

// connected reports whether the broker connection is up.
func (a *Agent) connected() bool {
	c := a.mqtt()
	return c != nil && c.IsConnected()
}

// onAck handles a message on the device's ack topic: the control plane
// persisted these reports.
func (a *Agent) onAck(payload []byte) {
	ack, err := efpb.DecodeAck(payload)
	if err == nil && ack.DeviceId != a.opts.DeviceID {
		err = fmt.Errorf("ack names device %q", ack.DeviceId)
	}
	if err != nil {
		a.drop("ack", err)
		return
	}
	a.outbox.acked(ack.Ranges)
}

var errNotConnected = errors.New("not connected to the broker")

// QueuedReports is the number of reports (telemetry and status events)
// waiting in the outbox for the control plane's acknowledgement (0 before
// Run opened it).
func (a *Agent) QueuedReports() int {
	if ob := a.outboxRef(); ob != nil {
		return ob.Len()
	}
	return 0
}

// QueuedReportsUpTo is the number of reports numbered at most seq (see
// ReportSeq) that are still waiting to be delivered and acknowledged.
func (a *Agent) QueuedReportsUpTo(seq uint64) int {
	if ob := a.outboxRef(); ob != nil {
		return ob.LenUpTo(seq)
	}
	return 0
}

// ReportsDropped is the number of reports the outbox dropped, oldest
// first, because it was full, or because the control plane never
// acknowledged them.
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
