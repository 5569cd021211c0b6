// Package bus is how the control plane talks MQTT: in process on the
// embedded broker, or as a client of an external one (mosquitto, EMQX,
// NATS), optionally with extra ingest connections sharing one subscription.
// Imported by controlplane (which wires it) and controlplane/fleet (which
// disconnects revoked devices through it).
package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Bus publishes (QoS 1) and subscribes. Handlers run on the bus's delivery
// goroutine(s), one message at a time per subscription; they must not
// block for long.
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
	Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error
	// URL is the broker URL the control plane itself uses.
	URL() string
	// Close stops every subscription and waits for running handlers.
	Close() error
}

// AtMostOncePublisher is the optional ability to publish at QoS 0, for
// messages the receiver asks for again when they do not come (model
// chunks). Both buses have it.
type AtMostOncePublisher interface {
	PublishAtMostOnce(ctx context.Context, topic string, payload []byte) error
}

// Disconnecter is the optional ability to close a device's session (only
// the embedded broker has it; an external broker's own tools do that).
type Disconnecter interface {
	Disconnect(device string) bool
}

// Embedded publishes and subscribes in process on the embedded broker,
// which it owns (Close closes it).
type Embedded struct {
	b *broker.Broker
}

// NewEmbedded returns the bus of broker b.
func NewEmbedded(b *broker.Broker) *Embedded { return &Embedded{b: b} }

// Publish implements Bus.
func (e *Embedded) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	return e.b.Publish(topic, payload, retain, 1)
}

// PublishAtMostOnce implements AtMostOncePublisher. It never waits for a
// subscriber: a QoS 1 publish takes each subscriber's session lock for a
// packet id, which that subscriber's writer holds while its connection
// is full — a device behind a slow link held every publish up for as long
// as its link needed to take one packet (docs/architecture.md).
func (e *Embedded) PublishAtMostOnce(_ context.Context, topic string, payload []byte) error {
	return e.b.Publish(topic, payload, false, 0)
}

// Subscribe implements Bus. Unsubscribing is left to Close, which stops
// every subscription.
func (e *Embedded) Subscribe(_ context.Context, filter string, h func(topic string, payload []byte)) error {
	_, err := e.b.Subscribe(filter, func(topic string, payload []byte, _ string) { h(topic, payload) })
	return err
}

// URL implements Bus.
func (e *Embedded) URL() string { return e.b.URL() }

// Close implements Bus.
func (e *Embedded) Close() error { return e.b.Close() }

// Disconnect implements Disconnecter.
func (e *Embedded) Disconnect(device string) bool { return e.b.Disconnect(device) }

// Backlog is what the broker holds for its clients: QoS 1 messages not
// yet acknowledged (broker.Broker.Unacknowledged), and the clients
// connected.
func (e *Embedded) Backlog() (unacknowledged, clients int) {
	return e.b.Unacknowledged(), e.b.Clients()
}

// External is a client of an external broker. The broker must give the
// control plane's user read/write access to the whole topic prefix
// (topics.MosquittoACL writes such an ACL).
type External struct {
	url         string
	c           *mqttc.Client
	reconnected chan struct{} // capacity 1: "the connection came back"

	// ctx ends at Close; bg runs the ingest connector.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup

	// mu guards first, ingest and handedOver.
	mu         sync.Mutex
	first      bool
	ingest     []*mqttc.Client // shared-subscription ingest connections
	handedOver bool            // the main connection stopped receiving telemetry
}

// Dial connects to the broker o names.
func Dial(ctx context.Context, o mqttc.Options) (*External, error) {
	e := &External{url: o.BrokerURL, first: true, reconnected: make(chan struct{}, 1)}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	o.OnConnect = func(context.Context, *mqttc.Client) {
		e.mu.Lock()
		first := e.first
		e.first = false
		e.mu.Unlock()
		if !first {
			select {
			case e.reconnected <- struct{}{}:
			default:
			}
		}
	}
	c, err := mqttc.Connect(ctx, o)
	if err != nil {
		e.cancel()
		return nil, fmt.Errorf("connect to broker %s: %w", o.BrokerURL, err)
	}
	e.c = c
	return e, nil
}

// Reconnected receives after the connection to the broker came back (not
// after the first connect): an external broker may have lost the retained
// state, which the control plane then publishes again.
func (e *External) Reconnected() <-chan struct{} { return e.reconnected }

// Publish implements Bus.
func (e *External) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	return e.c.Publish(ctx, topic, 1, retain, payload)
}

// PublishAtMostOnce implements AtMostOncePublisher.
func (e *External) PublishAtMostOnce(ctx context.Context, topic string, payload []byte) error {
	return e.c.Publish(ctx, topic, 0, false, payload)
}

// Subscribe implements Bus.
func (e *External) Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error {
	return e.c.Subscribe(ctx, filter, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) })
}

// URL implements Bus.
func (e *External) URL() string { return e.url }

// IngestGroup names the shared subscription the ingest connections split;
// MaxIngestConnections bounds how many there may be.
const (
	IngestGroup          = "edgefleet-ingest"
	MaxIngestConnections = 64
)

// AddIngest receives filter over n more connections that share one
// subscription ("$share/edgefleet-ingest/<filter>"): the broker hands each
// message to one of them, so ingest runs on n connections and n handler
// goroutines instead of one. The broker must support MQTT shared
// subscriptions (mosquitto 2, EMQX).
//
// The ingest connections are made in the background, retried until the
// broker lets them in: at the first start its password file may not know
// their logins yet (broker sync adds them once the control plane's API
// answers). Until all are up the main connection subscribes to filter
// itself, so nothing is lost; a report both receive meanwhile reaches h
// twice, which the monitor drops as a duplicate (same device and seq).
func (e *External) AddIngest(ctx context.Context, o mqttc.Options, n int, filter string, h func(topic string, payload []byte)) error {
	if err := e.c.Subscribe(ctx, filter, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) }); err != nil {
		return fmt.Errorf("subscribe %s until the ingest connections are up: %w", filter, err)
	}
	e.bg.Go(func() { e.connectIngest(o, n, filter, h) })
	return nil
}

// Pacing of ingest connection attempts, and of the warnings they log.
const (
	ingestRetryMin = 250 * time.Millisecond
	ingestRetryMax = 30 * time.Second
	ingestWarnGap  = time.Minute
)

// connectIngest makes the n ingest connections, then hands filter over to
// them. It stops when Close cancels e.ctx.
func (e *External) connectIngest(o mqttc.Options, n int, filter string, h func(topic string, payload []byte)) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	base, user := o.ClientID, o.Username
	shared := "$share/" + IngestGroup + "/" + filter
	o.OnConnect = nil
	o.PersistentSession = false
	for i := range n {
		// Each connection logs in under its own name (with the control
		// plane's password): a broker that takes the client id from the
		// username would otherwise make them push each other off. The
		// broker's ACL lets these names read telemetry only
		// (topics.MosquittoACL); broker sync puts them in its password file.
		o.ClientID = topics.IngestUsername(base, i)
		if user != "" {
			o.ClientID = topics.IngestUsername(user, i)
			o.Username = o.ClientID
		}
		retry, lastWarn := ingestRetryMin, time.Time{}
		for {
			c, err := mqttc.Connect(e.ctx, o)
			if err == nil {
				if err = c.Subscribe(e.ctx, shared, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) }); err == nil {
					e.mu.Lock()
					e.ingest = append(e.ingest, c)
					e.mu.Unlock()
					break
				}
				c.Close()
			}
			if e.ctx.Err() != nil {
				return
			}
			if time.Since(lastWarn) >= ingestWarnGap {
				log.Warn("ingest connection refused; the main connection receives telemetry meanwhile (broker sync adds the ingest logins, or see edgefleet broker acl --ingest-connections)",
					"connection", i, "login", o.Username, "broker", o.BrokerURL, "err", err)
				lastWarn = time.Now()
			}
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(retry):
			}
			retry = min(2*retry, ingestRetryMax)
		}
	}
	if err := e.c.Unsubscribe(e.ctx, filter); err != nil && e.ctx.Err() == nil {
		// Harmless: telemetry keeps arriving twice and is deduplicated.
		log.Warn("the main connection could not hand telemetry over to the ingest connections", "filter", filter, "err", err)
		return
	}
	e.mu.Lock()
	e.handedOver = true
	e.mu.Unlock()
	log.Info("ingest connections up", "connections", n, "subscription", shared)
}

// IngestReady reports whether every ingest connection is up and the main
// connection handed telemetry over to them.
func (e *External) IngestReady() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handedOver
}

// Close implements Bus.
func (e *External) Close() error {
	e.cancel()
	e.bg.Wait()
	e.mu.Lock()
	ingest := e.ingest
	e.ingest = nil
	e.mu.Unlock()
	for _, c := range ingest {
		c.Close()
	}
	e.c.Close()
	return nil
}
