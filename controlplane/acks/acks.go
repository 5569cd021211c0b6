// Package acks tells each device which of its reports (status events and
// telemetry, by sequence number) the control plane has made durable: the
// components that persist reports hand over (device, seq) once their write
// committed, and the Acker syncs the store and publishes one efpb.Ack per
// device on its ack topic, in batches. Imported by controlplane.
package acks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of zero Options fields.
const (
	// DefaultInterval is how long acknowledgements are collected before
	// they are published: one store sync and one message per device per
	// interval, whatever the report rate: at 200 ms a rollout cost ~4.8 of
	// them per device (one per status event, nearly), at 1 s ~3.9, and a
	// device reporting 10 times a second gets one per 10 reports instead of
	// one per 2. Agents resend what is not acknowledged after 30 s.
	DefaultInterval = time.Second
	// DefaultMaxPending bounds the sequence numbers waiting for the next
	// batch (all devices); past it the batch goes out at once.
	DefaultMaxPending = 1 << 16
	// publishers is how many acknowledgements are published at once (an
	// external broker answers each QoS 1 publish after a round trip).
	publishers = 8
)

// Publisher publishes a QoS 1 message (the control plane's bus).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
}

// atMostOncePublisher is bus.AtMostOncePublisher. Acknowledgements go out
// at QoS 0 where the bus can: one that does not arrive costs a resent
// report (deduplicated here and acknowledged again), while QoS 1 costs
// every device a PUBACK for every acknowledgement, and in-flight tracking
// in the broker.
type atMostOncePublisher interface {
	PublishAtMostOnce(ctx context.Context, topic string, payload []byte) error
}

// Options configure an Acker. Bus is required.
type Options struct {
	Bus    Publisher
	Scheme topics.Scheme
	// Sync makes every committed store write durable before the writes are
	// acknowledged (badger's DB.Sync); nil acknowledges what is committed.
	Sync func() error
	// Interval between batches; default DefaultInterval.
	Interval time.Duration
	// MaxPending; default DefaultMaxPending.
	MaxPending int
	// Clock stamps the messages; default time.Now.
	Clock      func() time.Time
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Acker collects what to acknowledge and publishes it. Ack is safe for
// concurrent use and never blocks on the network; Run publishes.
type Acker struct {
	opts Options
	log  *slog.Logger
	wake chan struct{} // cap 1: MaxPending reached

	published prometheus.Counter
	failed    prometheus.Counter

	mu      sync.Mutex          // guards pending and n; a leaf lock
	pending map[string][]uint64 // device → seqs to acknowledge
	n       int                 // seqs in pending
}

// New returns an Acker; Run publishes what Ack collects.
func New(o Options) (*Acker, error) {
	if o.Bus == nil {
		return nil, errors.New("acks: Options.Bus is required")
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Acker{
		opts: o, log: log.With("component", "acks"), wake: make(chan struct{}, 1), pending: map[string][]uint64{},
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_report_acks_published_total",
			Help: "Acknowledgement messages published to devices (each names the reports the control plane persisted).",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_report_acks_failed_total",
			Help: "Acknowledgement messages that could not be published, or batches not published because the store sync failed (the devices resend).",
		}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(a.published, a.failed)
	}
	return a, nil
}

// Ack records that device's reports seqs are persisted (or refused for
// good): the next batch tells the device. Call it after the write that
// persisted them committed. Seq 0 (no sequence number) is ignored.
func (a *Acker) Ack(device string, seqs ...uint64) {
	a.mu.Lock()
	for _, s := range seqs {
		if s != 0 {
			a.pending[device] = append(a.pending[device], s)
			a.n++
		}
	}
	full := a.n >= a.opts.MaxPending
	a.mu.Unlock()
	if full {
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
}

// Run publishes a batch every Interval (sooner when MaxPending is
// reached) until ctx ends. What is pending then is not published: the
// devices resend those reports, and the control plane acknowledges the
// duplicates.
func (a *Acker) Run(ctx context.Context) {
	t := time.NewTicker(a.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.wake:
		}
		if err := a.Flush(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("acknowledgements not published; devices will resend", "err", err)
		}
	}
}

// Flush syncs the store and publishes what is pending now.
func (a *Acker) Flush(ctx context.Context) error {
	a.mu.Lock()
	if len(a.pending) == 0 {
		a.mu.Unlock()
		return nil
	}
	batch := a.pending
	a.pending, a.n = map[string][]uint64{}, 0
	a.mu.Unlock()
	if a.opts.Sync != nil {
		if err := a.opts.Sync(); err != nil {
			a.failed.Inc()
			return fmt.Errorf("acks: sync the store: %w", err)
		}
	}
	type msg struct {
		topic   string
		payload []byte
	}
	publish := func(topic string, payload []byte) error { return a.opts.Bus.Publish(ctx, topic, payload, false) }
	if p, ok := a.opts.Bus.(atMostOncePublisher); ok {
		publish = func(topic string, payload []byte) error { return p.PublishAtMostOnce(ctx, topic, payload) }
	}
	work := make(chan msg)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for range min(publishers, len(batch)) {
		wg.Go(func() {
			for m := range work {
				if err := publish(m.topic, m.payload); err != nil {
					a.failed.Inc()
					errMu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("acks: publish %s: %w", m.topic, err)
					}
					errMu.Unlock()
					continue
				}
				a.published.Inc()
			}
		})
	}
	now := a.opts.Clock().UnixMilli()
	for dev, seqs := range batch {
		for _, ranges := range efpb.AckRanges(seqs) {
			b, err := proto.Marshal(&efpb.Ack{ProtocolVersion: efpb.ProtocolVersion1, DeviceId: dev, Ranges: ranges, TimeUnixMs: now})
			if err != nil {
				continue // cannot happen: plain scalars
			}
			select {
			case work <- msg{a.opts.Scheme.Ack(dev), b}:
			case <-ctx.Done():
			}
		}
	}
	close(work)
	wg.Wait()
	return firstErr
}
