package controlplane

import (
	"context"
	"fmt"
	"sync"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/mqttc"
)

// bus is how the control plane talks MQTT: the embedded broker's inline
// client or a client of an external broker. Messages are published with
// QoS 1. Handlers run on the bus's delivery goroutine(s), one message at a
// time per subscription; they must not block for long.
type bus interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
	Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error
	// URL is the broker URL the control plane itself uses.
	URL() string
	// Close stops every subscription and waits for running handlers.
	Close() error
}

// embeddedBus publishes and subscribes in-process on the embedded broker,
// which it owns.
type embeddedBus struct {
	b *broker.Broker
}

func (e *embeddedBus) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	return e.b.Publish(topic, payload, retain, 1)
}

func (e *embeddedBus) Subscribe(_ context.Context, filter string, h func(topic string, payload []byte)) error {
	// Unsubscribing is left to Close, which stops every subscription.
	_, err := e.b.Subscribe(filter, func(topic string, payload []byte, _ string) { h(topic, payload) })
	return err
}

func (e *embeddedBus) URL() string  { return e.b.URL() }
func (e *embeddedBus) Close() error { return e.b.Close() }

// externalBus is a client of an external broker (mosquitto, EMQX). The
// broker must give the control plane's user read/write access to the whole
// topic prefix (topics.MosquittoACL writes such an ACL).
type externalBus struct {
	url string
	c   *mqttc.Client

	// mu guards first (closed-over state for OnConnect) and ingest.
	mu     sync.Mutex
	first  bool
	ingest []*mqttc.Client // shared-subscription ingest connections
}

// dialExternal connects to url. onReconnect runs after every reconnect but
// not after the first connect, in mqttc's OnConnect goroutine (its ctx ends
// when that connection is lost or the bus closes).
func dialExternal(ctx context.Context, o mqttc.Options, onReconnect func(ctx context.Context)) (*externalBus, error) {
	e := &externalBus{url: o.BrokerURL, first: true}
	o.OnConnect = func(ctx context.Context, _ *mqttc.Client) {
		e.mu.Lock()
		first := e.first
		e.first = false
		e.mu.Unlock()
		if !first && onReconnect != nil {
			onReconnect(ctx)
		}
	}
	c, err := mqttc.Connect(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("connect to broker %s: %w", o.BrokerURL, err)
	}
	e.c = c
	return e, nil
}

func (e *externalBus) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	return e.c.Publish(ctx, topic, 1, retain, payload)
}

func (e *externalBus) Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error {
	return e.c.Subscribe(ctx, filter, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) })
}

func (e *externalBus) URL() string { return e.url }

// ingestGroup names the shared subscription the ingest connections split;
// maxIngestConnections bounds how many there may be.
const (
	ingestGroup          = "edgefleet-ingest"
	maxIngestConnections = 64
)

// addIngest opens n more connections that share one subscription of
// filter ("$share/edgefleet-ingest/<filter>"): the broker hands each
// message to one of them, so ingest runs on n connections and n handler
// goroutines instead of one. The broker must support MQTT shared
// subscriptions (mosquitto 2, EMQX).
func (e *externalBus) addIngest(ctx context.Context, o mqttc.Options, n int, filter string, h func(topic string, payload []byte)) error {
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
		shared := "$share/" + ingestGroup + "/" + filter
		if err := c.Subscribe(ctx, shared, 1, func(m mqttc.Message) { h(m.Topic, m.Payload) }); err != nil {
			return fmt.Errorf("ingest connection %d: subscribe %s: %w", i, shared, err)
		}
	}
	return nil
}

func (e *externalBus) Close() error {
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
