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

	// reconnects is closed-over state for OnConnect: mu guards first.
	mu    sync.Mutex
	first bool
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

func (e *externalBus) Close() error {
	e.c.Close()
	return nil
}
