// Package mqttc is a small MQTT 3.1.1 client over eclipse/paho that makes
// paho's sharp edges safe: handlers never block paho, subscriptions are
// re-made on every reconnect, publishes are checked (size, topic, local ACL)
// before a broker can refuse them, and nothing is queued silently while
// disconnected. Imported by agent, controlplane and controlplane/bus (an
// external broker).
package mqttc

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// Defaults for zero Options fields.
const (
	DefaultMaxPayload           = 1 << 20
	DefaultQueueSize            = 256
	DefaultConnectTimeout       = 10 * time.Second
	DefaultKeepAlive            = 30 * time.Second
	DefaultMaxReconnectInterval = 30 * time.Second
	// disconnectQuiesce is how long Close lets paho finish in-flight work.
	disconnectQuiesce = 250 // ms
)

// Sentinel errors; returned errors wrap one of these (or a ctx error, or
// topics.ErrInvalidTopic for malformed topics).
var (
	// ErrRefused: the broker refused the connection (bad credentials, client
	// id rejected, not authorised, protocol version). Retrying will not help.
	ErrRefused = errors.New("connection refused by broker")
	// ErrNotConnected: the client is not connected right now (or the
	// connection was lost before a QoS 1 publish was acknowledged, in which
	// case the message may or may not have arrived).
	ErrNotConnected = errors.New("not connected to broker")
	// ErrTooLarge: the payload exceeds Options.MaxPayload.
	ErrTooLarge = errors.New("payload too large")
	// ErrDenied: Options.MayPublish refused the topic.
	ErrDenied = errors.New("publish denied by local ACL")
	// ErrSubscribeRefused: the broker answered the SUBSCRIBE with a failure code (0x80).
	ErrSubscribeRefused = errors.New("subscription refused by broker")
	// ErrClosed: Close was called.
	ErrClosed = errors.New("client closed")
)

// Message is an MQTT application message.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
}

// Options configures Connect. Zero values take the documented defaults.
type Options struct {
	// BrokerURL is tcp://host:port, or tls:// (ssl://, mqtts://) for TLS.
	// A comma-separated list names the nodes of one clustered broker
	// (NATS): the client connects to one of them and, when that node
	// dies, reconnects to another (see BrokerURLs for the order).
	BrokerURL string
	// ClientID is required; with edgefleet brokers it equals Username (the device id).
	ClientID string
	Username string
	Password string
	TLS      *tls.Config
	// Dial, if set, opens the connection instead of dialling BrokerURL
	// (which is then only a name in logs; "" means "tcp://in-process").
	// fleet-sim connects agents to the embedded broker in memory with it.
	Dial func(ctx context.Context) (net.Conn, error)
	// Will is the last will published by the broker if the connection dies;
	// it is checked like a publish (size, topic, MayPublish).
	Will *Message
	// OnConnect runs in its own goroutine after every (re)connect, once the
	// recorded subscriptions are re-made. ctx ends when that connection is
	// lost or the client closes; OnConnect must return then (Close waits).
	OnConnect func(ctx context.Context, c *Client)
	// MaxPayload bounds published payloads (ErrTooLarge); default DefaultMaxPayload.
	MaxPayload int
	// MayPublish is the local ACL (e.g. topics.Scheme.DeviceMayPublish for
	// this device); false → ErrDenied. nil allows everything.
	MayPublish func(topic string, retained bool) bool
	// QueueSize bounds the inbound queue between paho and the handlers;
	// default DefaultQueueSize. When full, messages are dropped and counted.
	QueueSize int
	// Logger receives client logs; nil discards them.
	Logger *slog.Logger
	// ConnectTimeout bounds one connection attempt and one paho write;
	// default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keepalive; default DefaultKeepAlive.
	KeepAlive time.Duration
	// MaxReconnectInterval caps the reconnect backoff; default DefaultMaxReconnectInterval.
	MaxReconnectInterval time.Duration
	// PersistentSession asks the broker to keep the session while the
	// client is away (clean session off): its subscriptions stay, and QoS 1
	// messages published meanwhile are delivered when it is back. On a
	// NATS cluster the session lives in replicated JetStream streams, so a
	// client whose node died resumes it on another node and loses nothing.
	// The client id must be one no other client uses. Default: clean
	// sessions (subscriptions are re-made on every connect either way).
	PersistentSession bool
	// QoS0Subscriptions subscribes at QoS 0 whatever Subscribe is asked.
	// On NATS each QoS 1 subscription of a clean session is a JetStream
	// consumer made at every connect (a replicated group per subscription
	// and device), which costs the cluster dearly for a large fleet and
	// was seen to stop delivering after a node was killed; QoS 0 is plain
	// NATS routing. For a client whose topics are retained or asked for
	// again (an agent) nothing is lost.
	QoS0Subscriptions bool
}

// BrokerURLs splits a BrokerURL list and checks every URL. The order is
// the list's rotated by a hash of clientID, so that the clients of a
// cluster spread over its nodes, and each client tries the same node
// first after every reconnect (paho tries the list in order).
func BrokerURLs(list, clientID string) ([]string, error) {
	var urls []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("broker url %q: %w", s, err)
		}
		switch u.Scheme {
		case "tcp", "mqtt", "tls", "ssl", "mqtts", "tcps", "ws", "wss":
		default:
			return nil, fmt.Errorf("broker url %q: scheme %q, want tcp:// or tls://", s, u.Scheme)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("broker url %q: no host", s)
		}
		if slices.Contains(urls, s) {
			return nil, fmt.Errorf("broker url %q: listed twice", s)
		}
		urls = append(urls, s)
	}
	if len(urls) > 1 {
		h := fnv.New32a()
		h.Write([]byte(clientID))
		k := int(h.Sum32() % uint32(len(urls)))
		urls = append(urls[k:], urls[:k]...)
	}
	return urls, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.Dial != nil && o.BrokerURL == "" {
		o.BrokerURL = "tcp://in-process"
	}
	if _, err := BrokerURLs(o.BrokerURL, o.ClientID); err != nil {
		return o, err
	}
	if o.ClientID == "" || len(o.ClientID) > 65535 || strings.ContainsRune(o.ClientID, 0) {
		return o, fmt.Errorf("client id %q: want 1..65535 bytes without NUL", o.ClientID)
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.MaxReconnectInterval == 0 {
		o.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	switch {
	case o.MaxPayload < 0, o.QueueSize < 0, o.ConnectTimeout < 0, o.KeepAlive < time.Second, o.MaxReconnectInterval < 0:
		return o, fmt.Errorf("negative size or duration, or keepalive under 1s, in options")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Client is a connected MQTT client. Methods are safe for concurrent use.
type Client struct {
	opts    Options
	log     *slog.Logger
	pc      paho.Client
	ctx     context.Context    // canceled by Close
	cancel  context.CancelFunc // cancels ctx
	wg      sync.WaitGroup     // manage, dispatch and OnConnect goroutines
	events  chan connEvent     // paho connection callbacks → manage
	inbound chan *delivery     // paho message callback → dispatch (pointers: an idle queue costs 8 bytes a slot)
	dropped atomic.Uint64      // inbound messages dropped on a full queue
	closing sync.Once

	mu         sync.Mutex               // guards subs, subOrder, lost, lostClosed
	subs       map[string]*subscription // by filter; re-made on every connect, in order
	subOrder   uint64                   // order of the newest filter subscribed
	lost       chan struct{}            // closed when the current connection ends; nil before the first
	lostClosed bool
}

type subscription struct {
	filter string
	qos    byte
	h      func(Message)
	// order is when the filter was first subscribed: subscriptions are
	// re-made in that order, so retained messages arrive after a reconnect
	// in the order they did at the first connect (the agent needs the
	// trust bundle before the desired state it verifies).
	order uint64
}

type delivery struct {
	sub *subscription
	msg Message
}

type connEvent struct {
	up  bool
	err error // why the connection was lost
}

// Connect connects and returns once the first connection is up. Network
// errors are retried with backoff until ctx ends; a refusal by the broker
// returns an error wrapping ErrRefused at once. Afterwards the client
// reconnects by itself (a clean session unless PersistentSession;
// subscriptions are re-made either way).
// Abandoning an attempt in progress when ctx ends can take up to
// ConnectTimeout.
func Connect(ctx context.Context, opts Options) (*Client, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("mqttc: connect: %w", err)
	}
	if w := opts.Will; w != nil {
		if err := checkPublish(opts, w.Topic, w.QoS, w.Retained, w.Payload); err != nil {
			return nil, fmt.Errorf("mqttc: connect: will: %w", err)
		}
	}
	c := &Client{
		opts:    opts,
		log:     opts.Logger.With("component", "mqttc", "client", opts.ClientID),
		events:  make(chan connEvent, 4),
		inbound: make(chan *delivery, opts.QueueSize),
		subs:    make(map[string]*subscription),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())

	po := paho.NewClientOptions()
	urls, _ := BrokerURLs(opts.BrokerURL, opts.ClientID) // checked by withDefaults
	for _, u := range urls {
		po.AddBroker(u)
	}
	po.SetClientID(opts.ClientID).
		SetUsername(opts.Username).
		SetPassword(opts.Password).
		SetTLSConfig(opts.TLS).
		SetProtocolVersion(4).
		SetCleanSession(!opts.PersistentSession).
		SetResumeSubs(false).
		SetStore(newCopyStore()). // see store.go: avoids a paho data race on reconnect
		// Our paho callbacks only do a non-blocking enqueue, so ordered
		// delivery cannot stall paho; with OrderMatters(false) paho would
		// spawn an unowned goroutine per message and lose ordering.
		SetOrderMatters(true).
		SetAutoReconnect(true).
		SetConnectRetry(false).
		SetConnectTimeout(opts.ConnectTimeout).
		SetWriteTimeout(opts.ConnectTimeout).
		SetKeepAlive(opts.KeepAlive).
		SetMaxReconnectInterval(opts.MaxReconnectInterval).
		SetDefaultPublishHandler(c.onMessage).
		SetOnConnectHandler(func(paho.Client) { c.event(connEvent{up: true}) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.event(connEvent{err: err}) }).
		SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) { c.log.Debug("reconnecting") })
	if w := opts.Will; w != nil {
		po.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retained)
	}
	if dial := opts.Dial; dial != nil {
		po.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(c.ctx, opts.ConnectTimeout)
			defer cancel()
			return dial(dctx)
		})
	}
	c.pc = paho.NewClient(po)

	c.wg.Add(2)
	go c.manage()
	go c.dispatch()
	if err := c.connectFirst(ctx); err != nil {
		c.cancel()
		c.wg.Wait()
		return nil, err
	}
	return c, nil
}

// connectWarnAfter and connectWarnEvery: failed connection attempts are
// logged at WARN from the connectWarnAfter-th on, at most once per
// connectWarnEvery.
const (
	connectWarnAfter = 3
	connectWarnEvery = time.Minute
)

// connectFirst makes connection attempts until one succeeds, the broker
// refuses, or ctx ends.
func (c *Client) connectFirst(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	var warned time.Time // when a failed attempt was last logged at WARN
	for attempt := 1; ; attempt++ {
		tok := c.pc.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			<-tok.Done() // paho cannot abort an attempt; it ends within ConnectTimeout
			if tok.Error() == nil {
				c.pc.Disconnect(0)
			}
			return fmt.Errorf("mqttc: connect %s: %w", c.opts.BrokerURL, ctx.Err())
		}
		err := tok.Error()
		if err == nil {
			c.log.Info("connected", "broker", c.opts.BrokerURL, "attempts", attempt)
			return nil
		}
		switch tok.(*paho.ConnectToken).ReturnCode() {
		case packets.ErrRefusedBadProtocolVersion, packets.ErrRefusedIDRejected,
			packets.ErrRefusedBadUsernameOrPassword, packets.ErrRefusedNotAuthorised:
			return fmt.Errorf("mqttc: connect %s as %q: broker says %q (check the device id and credentials): %w",
				c.opts.BrokerURL, c.opts.ClientID, err.Error(), ErrRefused)
		}
		// A broker that is briefly away is normal (debug); one that stays
		// unreachable (a wrong CA, a wrong host, a firewall) is what an
		// operator must see: WARN from the third attempt on, at most once
		// a minute, with the error.
		if attempt >= connectWarnAfter && time.Since(warned) >= connectWarnEvery {
			warned = time.Now()
			c.log.Warn("cannot connect to the broker; retrying", "broker", c.opts.BrokerURL, "attempts", attempt, "error", err)
		} else {
			c.log.Debug("connect attempt failed", "broker", c.opts.BrokerURL, "attempt", attempt, "error", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("mqttc: connect %s: %w (last attempt: %v)", c.opts.BrokerURL, ctx.Err(), err)
		}
		backoff = min(2*backoff, c.opts.MaxReconnectInterval)
	}
}

// event hands a paho connection callback to manage. paho runs these
// callbacks on their own goroutines, so waiting for manage is fine.
func (c *Client) event(ev connEvent) {
	select {
	case c.events <- ev:
	case <-c.ctx.Done():
	}
}

// manage owns the per-connection state: on every connect it re-makes the
// subscriptions and starts OnConnect; on loss it ends that connection's ctx.
// paho delivers the callbacks on separate goroutines, so they can arrive out
// of order; each is checked against the live connection state.
func (c *Client) manage() {
	defer c.wg.Done()
	var connCancel context.CancelFunc
	endConn := func() {
		if connCancel != nil {
			connCancel()
			connCancel = nil
		}
		c.mu.Lock()
		if c.lost != nil && !c.lostClosed {
			close(c.lost)
			c.lostClosed = true
		}
		c.mu.Unlock()
	}
	defer endConn()
	for {
		select {
		case <-c.ctx.Done():
			return
		case ev := <-c.events:
			if ev.up != c.pc.IsConnectionOpen() {
				continue // stale: a later event supersedes it
			}
			endConn()
			if !ev.up {
				c.log.Warn("connection lost", "error", ev.err)
				continue
			}
			connCtx, cancel := context.WithCancel(c.ctx)
			connCancel = cancel
			c.mu.Lock()
			c.lost, c.lostClosed = make(chan struct{}), false
			c.mu.Unlock()
			c.resubscribe(connCtx)
			if c.opts.OnConnect != nil {
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					c.opts.OnConnect(connCtx, c)
				}()
			}
		}
	}
}

// resubscribe re-makes every recorded subscription, in the order the
// filters were first subscribed (one SUBSCRIBE at a time: a broker sends a
// filter's retained messages before it answers the next).
func (c *Client) resubscribe(ctx context.Context) {
	c.mu.Lock()
	subs := make([]*subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	slices.SortFunc(subs, func(a, b *subscription) int { return cmp.Compare(a.order, b.order) })
	for _, s := range subs {
		code, err := c.subscribe(ctx, s.filter, s.qos)
		switch {
		case err != nil:
			c.log.Warn("resubscribe failed", "filter", s.filter, "error", err)
			return
		case code >= 0x80:
			c.log.Warn("resubscribe refused by broker", "filter", s.filter, "code", code)
		}
	}
	if len(subs) > 0 {
		c.log.Debug("resubscribed", "filters", len(subs))
	}
}

// codeIDInUse is the SUBACK code mochi-mqtt returns when the SUBSCRIBE's
// packet id equals one of its own unacknowledged deliveries to this client
// (it shares one packet-id space for both directions). Such a refusal is
// transient: a retry carries a new packet id.
const codeIDInUse = 0x91

// subscribe sends one SUBSCRIBE and returns the SUBACK code, retrying
// transient packet-id collisions.
func (c *Client) subscribe(ctx context.Context, filter string, qos byte) (byte, error) {
	if c.opts.QoS0Subscriptions {
		qos = 0
	}
	for attempt := 1; ; attempt++ {
		tok := c.pc.Subscribe(filter, qos, nil)
		if err := c.wait(ctx, tok); err != nil {
			return 0, err
		}
		var code byte = 0x80
		for _, rc := range tok.(*paho.SubscribeToken).Result() { // one filter, one code
			code = rc
		}
		if code != codeIDInUse || attempt == 10 {
			return code, nil
		}
		c.log.Debug("SUBACK packet id in use, retrying", "filter", filter, "attempt", attempt)
	}
}

// onMessage is paho's handler for every inbound message. It must not block:
// it matches the message against the recorded subscriptions and enqueues.
func (c *Client) onMessage(_ paho.Client, m paho.Message) {
	msg := Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained()}
	c.mu.Lock()
	var matched []*subscription
	for f, s := range c.subs {
		if topics.Match(stripShare(f), msg.Topic) {
			matched = append(matched, s)
		}
	}
	c.mu.Unlock()
	for _, s := range matched {
		select {
		case c.inbound <- &delivery{sub: s, msg: msg}:
		default:
			n := c.dropped.Add(1)
			if n&(n-1) == 0 { // log at powers of two
				c.log.Warn("inbound queue full, message dropped", "topic", msg.Topic, "dropped_total", n)
			}
		}
	}
}

// stripShare turns "$share/<group>/<filter>" into "<filter>".
func stripShare(filter string) string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			return f
		}
	}
	return filter
}

// dispatch is the one goroutine that calls handlers, in arrival order.
func (c *Client) dispatch() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case d := <-c.inbound:
			c.mu.Lock()
			live := c.subs[d.sub.filter] == d.sub
			c.mu.Unlock()
			if live {
				d.sub.h(d.msg)
			}
		}
	}
}

// wait waits for a paho token, ctx, or Close.
func (c *Client) wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

func (c *Client) isClosed() bool { return c.ctx.Err() != nil }

// Subscribe subscribes to filter and waits for the SUBACK. The subscription
// is recorded and re-made after every reconnect. Messages go through a
// bounded queue to one goroutine that calls handlers in arrival order; h
// must not block for long (it delays every other handler) and must not keep
// Payload past its return if it also shares it. Subscribing again to the
// same filter replaces the handler. A refusal wraps ErrSubscribeRefused.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h func(Message)) error {
	switch {
	case c.isClosed():
		return fmt.Errorf("mqttc: subscribe %q: %w", filter, ErrClosed)
	case h == nil:
		return fmt.Errorf("mqttc: subscribe %q: nil handler", filter)
	case qos > 2:
		return fmt.Errorf("mqttc: subscribe %q: qos %d, want 0..2", filter, qos)
	}
	if err := topics.ValidFilter(filter); err != nil {
		return fmt.Errorf("mqttc: subscribe: %w", err)
	}
	s := &subscription{filter: filter, qos: qos, h: h}
	c.mu.Lock()
	prev := c.subs[filter]
	if prev != nil {
		s.order = prev.order // a new handler keeps the filter's place
	} else {
		c.subOrder++
		s.order = c.subOrder
	}
	c.subs[filter] = s
	c.mu.Unlock()
	undo := func() {
		c.mu.Lock()
		if c.subs[filter] == s {
			if prev != nil {
				c.subs[filter] = prev
			} else {
				delete(c.subs, filter)
			}
		}
		c.mu.Unlock()
	}
	if !c.pc.IsConnectionOpen() {
		undo()
		return fmt.Errorf("mqttc: subscribe %q: %w", filter, ErrNotConnected)
	}
	code, err := c.subscribe(ctx, filter, qos)
	if err != nil {
		undo()
		return fmt.Errorf("mqttc: subscribe %q: %w", filter, err)
	}
	if code >= 0x80 {
		undo()
		return fmt.Errorf("mqttc: subscribe %q: SUBACK code %#x: %w", filter, code, ErrSubscribeRefused)
	}
	return nil
}

// Unsubscribe stops delivery for filter at once (queued messages for it are
// discarded) and, if connected, unsubscribes at the broker.
func (c *Client) Unsubscribe(ctx context.Context, filter string) error {
	if c.isClosed() {
		return fmt.Errorf("mqttc: unsubscribe %q: %w", filter, ErrClosed)
	}
	c.mu.Lock()
	_, ok := c.subs[filter]
	delete(c.subs, filter)
	c.mu.Unlock()
	if !ok || !c.pc.IsConnectionOpen() {
		return nil // nothing at the broker, or gone with the clean session
	}
	if err := c.wait(ctx, c.pc.Unsubscribe(filter)); err != nil {
		return fmt.Errorf("mqttc: unsubscribe %q: %w", filter, err)
	}
	return nil
}

func checkPublish(o Options, topic string, qos byte, retained bool, payload []byte) error {
	if err := topics.ValidTopicName(topic); err != nil {
		return err
	}
	if qos > 2 {
		return fmt.Errorf("topic %q: qos %d, want 0..2", topic, qos)
	}
	if len(payload) > o.MaxPayload {
		return fmt.Errorf("topic %q: payload %d bytes, max %d: %w", topic, len(payload), o.MaxPayload, ErrTooLarge)
	}
	if o.MayPublish != nil && !o.MayPublish(topic, retained) {
		return fmt.Errorf("topic %q (retained=%v): %w", topic, retained, ErrDenied)
	}
	return nil
}

// Publish checks the topic, size and MayPublish locally (a broker that
// refuses a QoS 1 publish disconnects the client, and paho would resend it
// forever), then publishes and waits until paho has sent it (QoS 0) or the
// broker acknowledged it (QoS 1/2), or ctx ends. When not connected it fails
// fast with ErrNotConnected instead of queueing; if the connection is lost
// while waiting for the acknowledgement it returns ErrNotConnected too (the
// message may still arrive: delivery is at least once).
func (c *Client) Publish(ctx context.Context, topic string, qos byte, retained bool, payload []byte) error {
	if c.isClosed() {
		return fmt.Errorf("mqttc: publish %q: %w", topic, ErrClosed)
	}
	if err := checkPublish(c.opts, topic, qos, retained, payload); err != nil {
		return fmt.Errorf("mqttc: publish: %w", err)
	}
	if !c.pc.IsConnectionOpen() {
		return fmt.Errorf("mqttc: publish %q: %w", topic, ErrNotConnected)
	}
	c.mu.Lock()
	lost := c.lost
	if c.lostClosed {
		lost = nil // connected again but manage has not caught up: rely on ctx
	}
	c.mu.Unlock()

	tok := c.pc.Publish(topic, qos, retained, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if errors.Is(err, paho.ErrNotConnected) {
				err = ErrNotConnected
			}
			return fmt.Errorf("mqttc: publish %q: %w", topic, err)
		}
		return nil
	case <-lost:
		return fmt.Errorf("mqttc: publish %q: connection lost before acknowledgement: %w", topic, ErrNotConnected)
	case <-ctx.Done():
		return fmt.Errorf("mqttc: publish %q: %w", topic, ctx.Err())
	case <-c.ctx.Done():
		return fmt.Errorf("mqttc: publish %q: %w", topic, ErrClosed)
	}
}

// PublishNoWait is Publish without the wait: it checks the message the
// same way, hands it to paho and returns. paho sends it, and at QoS 1
// resends it after a reconnect, on its own; nobody learns whether the
// broker took it. It is for messages a caller repeats when nothing comes
// of them (an agent's fetch requests), sent from a loop that must not
// stop: a QoS 1 acknowledgement travels from the broker behind everything
// queued for this client before it, on a slow link the very chunks a
// fetch request asks for, so waiting for it stops the loop that takes
// them for as long as the link needs to carry them.
func (c *Client) PublishNoWait(topic string, qos byte, retained bool, payload []byte) error {
	if c.isClosed() {
		return fmt.Errorf("mqttc: publish %q: %w", topic, ErrClosed)
	}
	if err := checkPublish(c.opts, topic, qos, retained, payload); err != nil {
		return fmt.Errorf("mqttc: publish: %w", err)
	}
	if !c.pc.IsConnectionOpen() {
		return fmt.Errorf("mqttc: publish %q: %w", topic, ErrNotConnected)
	}
	c.pc.Publish(topic, qos, retained, payload)
	return nil
}

// IsConnected reports whether the connection is up right now.
func (c *Client) IsConnected() bool { return c.pc.IsConnectionOpen() }

// Dropped counts inbound messages dropped because the queue was full.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// Close disconnects (letting in-flight work finish for up to 250ms), stops
// the client's goroutines and waits for them, including running OnConnect
// callbacks. It is idempotent. Closed while paho is between reconnect
// attempts, paho's own goroutines may finish shortly after Close returns.
func (c *Client) Close() {
	c.closing.Do(func() {
		c.pc.Disconnect(disconnectQuiesce)
		c.cancel()
		c.wg.Wait()
		c.log.Debug("closed")
	})
}
