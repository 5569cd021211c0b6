// Package bus is how the control plane talks MQTT: in process on the
// embedded broker, or as a client of an external one (mosquitto, EMQX,
// NATS), optionally with extra ingest connections sharing one subscription.
// Imported by controlplane (which wires it) and controlplane/fleet (which
// disconnects revoked devices through it).
package bus

import (
	"context"
	"fmt"
	"sync"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/mqttc"
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

// External is a client of an external broker. The broker must give the
// control plane's user read/write access to the whole topic prefix
// (topics.MosquittoACL writes such an ACL).
type External struct {
	url         string
	c           *mqttc.Client
	reconnected chan struct{} // capacity 1: "the connection came back"

	// mu guards first and ingest.
	mu     sync.Mutex
	first  bool
	ingest []*mqttc.Client // shared-subscription ingest connections
}

// Dial connects to the broker o names.
func Dial(ctx context.Context, o mqttc.Options) (*External, error) {
	e := &External{url: o.BrokerURL, first: true, reconnected: make(chan struct{}, 1)}
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

// AddIngest opens n more connections that share one subscription of
// filter ("$share/edgefleet-ingest/<filter>"): the broker hands each
// message to one of them, so ingest runs on n connections and n handler
// goroutines instead of one. The broker must support MQTT shared
// subscriptions (mosquitto 2, EMQX).
func (e *External) AddIngest(ctx context.Context, o mqttc.Options, n int, filter string, h func(topic string, payload []byte)) error {
	base := o.ClientID
	for i := range n {
		o.ClientID = fmt.Sprintf("%s-ingest-%d", base, i)
		o.OnConnect = nil
		c, err := mqttc.Connect(ctx, o)
		if err != nil {
			return fmt.Errorf("ingest connection %d to %s: %w", i, o.BrokerURL, err)
		}
		e.mu.Lock()
		e.ingest = append(e.ingest, c)
		e.mu.Unlock()
		shared := "$share/" + IngestGroup + "/" + filter
		if err := c.Subscribe(ctx, shared, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) }); err != nil {
			return fmt.Errorf("ingest connection %d: subscribe %s: %w", i, shared, err)
		}
	}
	return nil
}

// Close implements Bus.
func (e *External) Close() error {
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
