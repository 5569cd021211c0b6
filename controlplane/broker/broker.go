// Package broker runs the control plane's embedded MQTT broker (mochi-mqtt):
// devices authenticate as themselves (username = client id = device id) and
// are held to the deny-by-default ACL of internal/topics; the control plane
// publishes and subscribes in process through the inline client. Imported by
// controlplane, controlplane/bus, controlplane/cli (broker files) and
// fleet-sim/bench (its raw baseline).
package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgefleet/edgefleet/internal/memnet"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Defaults for zero Options fields.
const (
	DefaultAddr                   = "127.0.0.1:1883"
	DefaultMaxPacketSize          = 2 << 20
	DefaultSessionExpiry          = time.Hour
	DefaultMaxClientWritesPending = 256
	// DefaultWriteStall is Options.WriteStall: twice the TCP retransmission
	// back-offs a live link recovers from, well under a client's keep-alive.
	DefaultWriteStall = 20 * time.Second
	// DefaultSubscriptionQueue holds a few seconds of a large fleet's
	// reports (at 2,500 reports/s a 1,024 queue overflowed on a half-second
	// stall of the control plane's ingest); 56 bytes a slot up front.
	DefaultSubscriptionQueue = 8192
)

// Sentinel errors.
var (
	ErrClosed     = errors.New("broker closed")
	ErrNotStarted = errors.New("broker not started")
	ErrStarted    = errors.New("broker already started")
	ErrTooLarge   = errors.New("message larger than the broker's maximum packet size")
)

// Authenticator checks a device's credentials. The control plane's device
// registry implements it (secrets stored hashed). It is called on the
// broker's connection goroutines and must be safe for concurrent use.
type Authenticator interface {
	AuthenticateDevice(username string, password []byte) bool
}

// Options configures a Broker. Zero values take the documented defaults.
type Options struct {
	// Addr is the TCP listen address; default DefaultAddr. Tests use "127.0.0.1:0".
	Addr string
	// Scheme is the topic scheme the ACL enforces.
	Scheme topics.Scheme
	// Auth checks device credentials; required.
	Auth Authenticator
	// MaxPacketSize bounds every inbound MQTT packet (a larger one closes the
	// connection) and inline publishes; default DefaultMaxPacketSize.
	MaxPacketSize uint32
	// SessionExpiry bounds how long a disconnected persistent session is kept;
	// default DefaultSessionExpiry.
	SessionExpiry time.Duration
	// MaxClientWritesPending is the per-client outbound queue; when it is full
	// the broker drops messages to that client. Default DefaultMaxClientWritesPending.
	MaxClientWritesPending int
	// SubscriptionQueue bounds each inline subscription's delivery queue;
	// default DefaultSubscriptionQueue. When full, messages are dropped and
	// counted in Dropped.
	SubscriptionQueue int
	// TLS, if set, makes the listener speak TLS.
	TLS *tls.Config
	// InMemory adds a second listener inside the process (DialInMemory):
	// the same MQTT, authentication and ACL without sockets. fleet-sim uses
	// it to run more agents than the process may open descriptors.
	InMemory bool
	// WriteStall closes a client's connection when a write to it accepts
	// no byte for this long: a device that stops reading (a frozen
	// process, a link that died without closing) would otherwise hold
	// mochi's per-client lock, and every publisher that delivers to it
	// (the control plane's chunk rounds) waited with it until the keep-alive
	// ran out — for ever if its pings still arrive. A slow link makes
	// progress and is left alone. Default DefaultWriteStall; negative
	// disables it.
	WriteStall time.Duration
	// Logger receives broker logs; nil discards them.
	Logger *slog.Logger
	// WithholdRetained, if set, is asked for each filter a client
	// subscribes to; when it returns true the subscription is made but no
	// retained message is sent for it. It plays a node of a clustered
	// broker that has not replicated the retained messages yet (NATS keeps
	// them in a stream its nodes catch up on), for tests and simulations;
	// leave it nil in a real deployment.
	WithholdRetained func(clientID, filter string) bool
}

// Broker is the embedded MQTT broker. Create it with New, then Start.
//
// mochi-mqtt v2.7.9 behaviours clients see (asserted here and in mqttc): a
// refused QoS 0 publish is dropped silently; a refused QoS 1 publish, a
// retained publish and an oversized packet close the connection; a refused
// subscription gets SUBACK 0x80; a SUBSCRIBE whose packet id equals one of
// the broker's unacknowledged deliveries to that client gets 0x91 (mochi
// shares one packet-id space for both directions; mqttc retries it); when a
// client's outbound queue is full, messages to it are dropped (ClientDropped).
type Broker struct {
	opts           Options
	log            *slog.Logger
	srv            *mqtt.Server
	subWG          sync.WaitGroup // inline subscription delivery goroutines
	dropQ          atomic.Uint64  // messages dropped by full subscription queues
	logsSuppressed atomic.Uint64  // mochi log lines over the per-client limit
	stalled        atomic.Uint64  // connections closed by Options.WriteStall
	received       atomic.Uint64  // packets read from network clients (hook.OnPacketRead)
	closed         chan struct{}  // closed by Close

	mem *memnet.Listener // Options.InMemory, else nil

	mu      sync.Mutex // guards the fields below
	state   state
	addr    string
	nextSub int
	subs    map[int]*subscription
}

type state int

const (
	stateNew state = iota
	stateStarted
	stateClosed
)

// New validates opts and builds a broker; it does not listen yet.
func New(opts Options) (*Broker, error) {
	if opts.Auth == nil {
		return nil, errors.New("broker: new: Options.Auth is required (devices could not connect)")
	}
	if err := opts.Scheme.Validate(); err != nil {
		return nil, fmt.Errorf("broker: new: %w", err)
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.MaxPacketSize == 0 {
		opts.MaxPacketSize = DefaultMaxPacketSize
	}
	if opts.MaxPacketSize < 1024 {
		return nil, fmt.Errorf("broker: new: MaxPacketSize %d is below 1024 bytes", opts.MaxPacketSize)
	}
	if opts.SessionExpiry == 0 {
		opts.SessionExpiry = DefaultSessionExpiry
	}
	if opts.SessionExpiry < time.Second || opts.SessionExpiry.Seconds() > math.MaxUint32 {
		return nil, fmt.Errorf("broker: new: SessionExpiry %v out of range (1s..%ds)", opts.SessionExpiry, uint32(math.MaxUint32))
	}
	if opts.MaxClientWritesPending == 0 {
		opts.MaxClientWritesPending = DefaultMaxClientWritesPending
	}
	if opts.MaxClientWritesPending < 0 || opts.MaxClientWritesPending > math.MaxInt32 {
		return nil, fmt.Errorf("broker: new: MaxClientWritesPending %d out of range", opts.MaxClientWritesPending)
	}
	if opts.WriteStall == 0 {
		opts.WriteStall = DefaultWriteStall
	}
	if opts.SubscriptionQueue == 0 {
		opts.SubscriptionQueue = DefaultSubscriptionQueue
	}
	if opts.SubscriptionQueue < 0 {
		return nil, fmt.Errorf("broker: new: SubscriptionQueue %d is negative", opts.SubscriptionQueue)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "broker")

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.MaxPacketSize
	caps.MaximumSessionExpiryInterval = uint32(opts.SessionExpiry / time.Second)
	caps.MaximumClientWritesPending = int32(opts.MaxClientWritesPending)
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1 and 5 only

	b := &Broker{
		opts:   opts,
		log:    log,
		closed: make(chan struct{}),
		subs:   make(map[int]*subscription),
	}
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		Logger:       slog.New(newMochiHandler(log.Handler(), &b.logsSuppressed)).With("mochi", true),
	})
	if err := b.srv.AddHook(&hook{scheme: opts.Scheme, auth: opts.Auth, log: log, srv: b.srv, closed: b.closed, withhold: opts.WithholdRetained, received: &b.received}, nil); err != nil {
		return nil, fmt.Errorf("broker: new: add hook: %w", err)
	}
	return b, nil
}

// Start binds the listener and serves; it is listening when Start returns.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateStarted:
		return fmt.Errorf("broker: start: %w", ErrStarted)
	case stateClosed:
		return fmt.Errorf("broker: start: %w", ErrClosed)
	}
	l := newConnListener("tcp", tcpListen(b.opts.Addr, b.opts.TLS, b.watchStalls))
	if err := b.srv.AddListener(l); err != nil {
		return fmt.Errorf("broker: start: listen %s: %w", b.opts.Addr, err)
	}
	if b.opts.InMemory {
		b.mem = memnet.Listen("embedded-broker")
		if err := b.srv.AddListener(newConnListener("memory", func() (net.Listener, error) { return b.watchStalls(b.mem), nil })); err != nil {
			return fmt.Errorf("broker: start: in-memory listener: %w", err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: start: %w", err)
	}
	b.addr = l.Address()
	b.state = stateStarted
	b.log.Info("broker listening", "addr", b.addr, "tls", b.opts.TLS != nil)
	return nil
}

// Addr is the bound listen address with the real port ("" before Start).
func (b *Broker) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr
}

// DialInMemory connects to the in-memory listener (Options.InMemory); the
// connection then speaks MQTT like a TCP one, starting with CONNECT.
func (b *Broker) DialInMemory(ctx context.Context) (net.Conn, error) {
	b.mu.Lock()
	m, st := b.mem, b.state
	b.mu.Unlock()
	switch {
	case st == stateClosed:
		return nil, fmt.Errorf("broker: dial in memory: %w", ErrClosed)
	case m == nil:
		return nil, errors.New("broker: dial in memory: not started with Options.InMemory")
	}
	c, err := m.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("broker: dial in memory: %w", err)
	}
	return c, nil
}

// InMemoryConns is the number of in-memory connection ends still open (two
// per live connection; 0 without Options.InMemory).
func (b *Broker) InMemoryConns() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return 0
	}
	return b.mem.Open()
}

// URL is the broker URL for MQTT clients: tcp://addr, or tls://addr with TLS
// ("tcp://" before Start).
func (b *Broker) URL() string {
	scheme := "tcp://"
	if b.opts.TLS != nil {
		scheme = "tls://"
	}
	return scheme + b.Addr()
}

// Close disconnects every client, stops the listener and the subscription
// goroutines, and waits for them: each first delivers what its queue still
// holds (it was acknowledged to the publisher). It is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.state == stateClosed {
		b.mu.Unlock()
		return nil
	}
	b.state = stateClosed
	subs := b.subs
	b.subs = map[int]*subscription{}
	b.mu.Unlock()

	close(b.closed)
	// mochi's Close disconnects clients and closes the listener, which
	// (tcpListener) closes connections still before CONNECT and waits for
	// every connection goroutine.
	err := b.srv.Close()
	for _, s := range subs {
		s.stop()
	}
	b.subWG.Wait()
	if err != nil {
		return fmt.Errorf("broker: close: %w", err)
	}
	return nil
}

func (b *Broker) isClosed() bool {
	select {
	case <-b.closed:
		return true
	default:
		return false
	}
}

// Publish publishes through the inline client (no network, no ACL). It may
// be called before Start to seed retained messages. qos is the maximum QoS
// delivered to subscribers.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if b.isClosed() {
		return fmt.Errorf("broker: publish %q: %w", topic, ErrClosed)
	}
	if err := topics.ValidTopicName(topic); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	if qos > 2 {
		return fmt.Errorf("broker: publish %q: qos %d, want 0..2", topic, qos)
	}
	// Fixed header (≤5) + topic length and bytes + packet id.
	if size := 5 + 2 + len(topic) + 2 + len(payload); size > int(b.opts.MaxPacketSize) {
		return fmt.Errorf("broker: publish %q: %d bytes, max %d: %w", topic, size, b.opts.MaxPacketSize, ErrTooLarge)
	}
	if err := b.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("broker: publish %q: %w", topic, err)
	}
	return nil
}

// Handler receives a message from an inline subscription. clientID is the
// sender's MQTT client id (the device id for devices, "inline" for the
// control plane's own publishes). payload is the handler's own copy.
type Handler func(topic string, payload []byte, clientID string)

type message struct {
	topic, origin string
	payload       []byte
}

// subscription is one inline subscription: the broker's handler enqueues,
// one goroutine drains into the user's handler.
type subscription struct {
	filter   string
	queue    chan message
	done     chan struct{}
	stopOnce sync.Once
}

func (s *subscription) stop() { s.stopOnce.Do(func() { close(s.done) }) }

// drain hands h what is still queued. Close calls it through the
// delivery goroutine once no client can publish any more: a queued
// message was acknowledged to its publisher (a device deletes a QoS 1
// report on its PUBACK), so dropping it at a restart would lose it.
func (s *subscription) drain(h Handler) {
	for {
		select {
		case m := <-s.queue:
			h(m.topic, m.payload, m.origin)
		default:
			return
		}
	}
}

// Subscribe registers an in-process subscription on filter (wildcards
// allowed; retained messages matching it are delivered first). The broker
// never waits for h: messages go through a queue of Options.SubscriptionQueue
// entries drained by one goroutine per subscription, so h sees messages in
// order; when the queue is full, messages are dropped and counted in Dropped.
// Close delivers what is queued before it returns; unsubscribe stops delivery (a handler call in progress may finish; Close
// waits for it) and may be called more than once, including from h.
func (b *Broker) Subscribe(filter string, h Handler) (unsubscribe func(), err error) {
	if err := topics.ValidFilter(filter); err != nil {
		return nil, fmt.Errorf("broker: subscribe: %w", err)
	}
	if h == nil {
		return nil, fmt.Errorf("broker: subscribe %q: nil handler", filter)
	}
	s := &subscription{
		filter: filter,
		queue:  make(chan message, b.opts.SubscriptionQueue),
		done:   make(chan struct{}),
	}
	b.mu.Lock()
	if b.state == stateClosed {
		b.mu.Unlock()
		return nil, fmt.Errorf("broker: subscribe %q: %w", filter, ErrClosed)
	}
	b.nextSub++
	id := b.nextSub
	b.subs[id] = s
	b.subWG.Add(1)
	b.mu.Unlock()

	go func() {
		defer b.subWG.Done()
		for {
			select {
			case <-s.done:
				if b.isClosed() {
					s.drain(h)
				}
				return
			case m := <-s.queue:
				select {
				case <-s.done: // unsubscribed or closed while queued
					if b.isClosed() {
						h(m.topic, m.payload, m.origin)
						s.drain(h)
					}
					return
				default:
				}
				h(m.topic, m.payload, m.origin)
			}
		}
	}()

	inline := func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		m := message{topic: pk.TopicName, origin: pk.Origin, payload: bytes.Clone(pk.Payload)}
		select {
		case <-s.done:
		case s.queue <- m:
		default:
			n := b.dropQ.Add(1)
			if n&(n-1) == 0 { // log at powers of two: 1, 2, 4, ...
				b.log.Warn("subscription queue full, message dropped", "filter", filter, "topic", pk.TopicName, "dropped_total", n)
			}
		}
	}
	unsubscribe = func() {
		b.mu.Lock()
		_, live := b.subs[id]
		delete(b.subs, id)
		closed := b.state == stateClosed
		b.mu.Unlock()
		if live && !closed {
			_ = b.srv.Unsubscribe(filter, id)
		}
		s.stop()
	}
	if err := b.srv.Subscribe(filter, id, inline); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("broker: subscribe %q: %w", filter, err)
	}
	return unsubscribe, nil
}

// Dropped counts messages dropped because an inline subscription's queue was full.
func (b *Broker) Dropped() uint64 { return b.dropQ.Load() }

// ClientDropped counts messages the broker dropped instead of sending to a
// network client because that client's outbound queue
// (Options.MaxClientWritesPending) was full. Publishers sending bursts
// (chunks) must pace themselves or accept re-fetches.
func (b *Broker) ClientDropped() uint64 {
	return uint64(atomic.LoadInt64(&b.srv.Info.MessagesDropped))
}

// Stalled counts client connections the broker closed because a write to
// them made no progress for Options.WriteStall.
func (b *Broker) Stalled() uint64 { return b.stalled.Load() }

// watchStalls wraps ln so that its connections close on a write stall
// (Options.WriteStall); ln itself when that is disabled.
func (b *Broker) watchStalls(ln net.Listener) net.Listener {
	if b.opts.WriteStall < 0 {
		return ln
	}
	return &stallListener{Listener: ln, stall: b.opts.WriteStall, stalled: func(c net.Conn) {
		b.stalled.Add(1)
		b.log.Warn("closed a client connection that took no data for the write-stall time", "remote", c.RemoteAddr().String(), "write_stall", b.opts.WriteStall)
	}}
}

// Packets counts the MQTT packets of any type the broker received from
// network clients (counted by its hook: mochi's own count includes the
// control plane's publishes) and sent to them (mochi's $SYS counter).
func (b *Broker) Packets() (received, sent uint64) {
	return b.received.Load(), uint64(atomic.LoadInt64(&b.srv.Info.PacketsSent))
}

// Clients is the number of connected network clients.
func (b *Broker) Clients() int {
	return int(atomic.LoadInt64(&b.srv.Info.ClientsConnected))
}

// Unacknowledged is the number of QoS 1 messages the broker holds for its
// clients until their PUBACK, sent or still queued. Each holds a copy of
// its payload: mochi copies a publish for every subscriber.
func (b *Broker) Unacknowledged() int {
	return int(atomic.LoadInt64(&b.srv.Info.Inflight))
}

// Disconnect closes the connection of clientID (a device id), e.g. after its
// credentials were revoked; the Authenticator must already refuse it, or it
// will reconnect. It reports whether a connected client was found.
func (b *Broker) Disconnect(clientID string) bool {
	if clientID == mqtt.InlineClientId || b.isClosed() {
		return false
	}
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok || cl.Net.Inline || cl.Closed() {
		return false
	}
	_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) // returns the code as an error
	b.log.Info("client disconnected by control plane", "client", clientID)
	return true
}

// LogsSuppressed counts the broker's log lines about clients that were
// over their limit (a few a minute per client) and not written.
func (b *Broker) LogsSuppressed() uint64 { return b.logsSuppressed.Load() }
