package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

const waitFor = 10 * time.Second

var scheme topics.Scheme

type staticAuth map[string]string

func (a staticAuth) AuthenticateDevice(username string, password []byte) bool {
	want, ok := a[username]
	return ok && want == string(password)
}

var devices = staticAuth{"d1": "pw1", "d2": "pw2"}

// startBroker runs a real embedded broker on addr ("127.0.0.1:0" for a free
// port) and closes it at cleanup.
func startBroker(t *testing.T, addr string) *broker.Broker {
	t.Helper()
	b, err := broker.New(broker.Options{Addr: addr, Auth: devices})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	t.Cleanup(func() { assert.NoError(t, b.Close()) })
	return b
}

// deviceOptions are a device's options with the device ACL as MayPublish.
func deviceOptions(url, dev string) Options {
	return Options{
		BrokerURL:            url,
		ClientID:             dev,
		Username:             dev,
		Password:             devices[dev],
		MayPublish:           func(topic string, retained bool) bool { return scheme.DeviceMayPublish(dev, topic, retained) },
		ConnectTimeout:       2 * time.Second,
		MaxReconnectInterval: 200 * time.Millisecond,
	}
}

func connect(t *testing.T, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Connect(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// inbox collects messages from a Subscribe handler.
type inbox struct {
	mu   sync.Mutex
	msgs []Message
}

func (in *inbox) handle(m Message) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.msgs = append(in.msgs, m)
}

func (in *inbox) get() []Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]Message(nil), in.msgs...)
}

func (in *inbox) waitLen(t *testing.T, n int) []Message {
	t.Helper()
	require.Eventually(t, func() bool { return len(in.get()) >= n }, waitFor, 5*time.Millisecond, "want %d messages, have %d", n, len(in.get()))
	return in.get()
}

func TestRoundTrip(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	type fromDevice struct{ topic, payload, client string }
	got := make(chan fromDevice, 10)
	unsub, err := b.Subscribe(scheme.AllStatus(), func(topic string, payload []byte, clientID string) {
		got <- fromDevice{topic, string(payload), clientID}
	})
	require.NoError(t, err)
	defer unsub()

	c := connect(t, deviceOptions(b.URL(), "d1"))
	assert.True(t, c.IsConnected())
	ctx := context.Background()

	require.NoError(t, c.Publish(ctx, scheme.Status("d1"), 1, false, []byte("active")))
	select {
	case m := <-got:
		assert.Equal(t, fromDevice{scheme.Status("d1"), "active", "d1"}, m)
	case <-time.After(waitFor):
		t.Fatal("status not received by the control plane")
	}

	var in inbox
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, in.handle))
	require.NoError(t, b.Publish(scheme.Desired("d1"), []byte("gen-1"), false, 1))
	assert.Equal(t, []Message{{Topic: scheme.Desired("d1"), Payload: []byte("gen-1"), QoS: 1}}, in.waitLen(t, 1))
	assert.Zero(t, c.Dropped())
}

func TestRetainedDeliveredOnSubscribe(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	require.NoError(t, b.Publish(scheme.Desired("d1"), []byte("gen-9"), true, 1))
	c := connect(t, deviceOptions(b.URL(), "d1"))
	var in inbox
	require.NoError(t, c.Subscribe(context.Background(), scheme.Desired("d1"), 1, in.handle))
	m := in.waitLen(t, 1)[0]
	assert.Equal(t, "gen-9", string(m.Payload))
	assert.True(t, m.Retained)
}

func TestHandlerOrder(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	opts := deviceOptions(b.URL(), "d1")
	opts.QueueSize = 1000
	c := connect(t, opts)
	var in inbox
	require.NoError(t, c.Subscribe(context.Background(), scheme.Desired("d1"), 1, in.handle))
	// Below the broker's per-client outbound queue (256): a bigger burst
	// than that is dropped by the broker itself (see broker.ClientDropped).
	const n = 200
	for i := range n {
		require.NoError(t, b.Publish(scheme.Desired("d1"), []byte(strconv.Itoa(i)), false, 1))
	}
	got := in.waitLen(t, n)
	require.Len(t, got, n)
	for i, m := range got {
		require.Equal(t, strconv.Itoa(i), string(m.Payload), "message %d out of order", i)
	}
	assert.Zero(t, c.Dropped())
	assert.Zero(t, b.ClientDropped())
}

func TestQueueFullDropsAndCounts(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	opts := deviceOptions(b.URL(), "d1")
	opts.QueueSize = 2
	c := connect(t, opts)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	// Registered after connect, so it runs before the client's cleanup: a
	// failed check below must not leave Close waiting on a blocked handler.
	t.Cleanup(unblock)
	var handled atomic.Int64
	require.NoError(t, c.Subscribe(context.Background(), scheme.Desired("d1"), 1, func(Message) {
		<-release
		handled.Add(1)
	}))
	for i := range 20 {
		require.NoError(t, b.Publish(scheme.Desired("d1"), []byte(strconv.Itoa(i)), false, 1))
	}
	// The handler is stuck; paho keeps going and the excess is dropped.
	require.Eventually(t, func() bool { return c.Dropped() >= 17 }, waitFor, 5*time.Millisecond, "dropped %d", c.Dropped())
	unblock()
	require.Eventually(t, func() bool { return handled.Load()+int64(c.Dropped()) == 20 }, waitFor, 5*time.Millisecond)
	assert.True(t, c.IsConnected())
}

func TestResubscribeAfterBrokerRestart(t *testing.T) {
	b1, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Auth: devices})
	require.NoError(t, err)
	require.NoError(t, b1.Start())
	addr := b1.Addr()

	connects := make(chan struct{}, 10)
	opts := deviceOptions(b1.URL(), "d1")
	opts.OnConnect = func(context.Context, *Client) { connects <- struct{}{} }
	c := connect(t, opts)
	<-connects
	ctx := context.Background()
	var in inbox
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, in.handle))

	require.NoError(t, b1.Close())
	require.Eventually(t, func() bool { return !c.IsConnected() }, waitFor, 5*time.Millisecond)
	// While disconnected, publishes fail fast instead of being queued.
	start := time.Now()
	err = c.Publish(ctx, scheme.Status("d1"), 1, false, []byte("x"))
	assert.ErrorIs(t, err, ErrNotConnected)
	assert.Less(t, time.Since(start), time.Second)
	err = c.Subscribe(ctx, scheme.Trust(), 1, in.handle)
	assert.ErrorIs(t, err, ErrNotConnected)

	b2 := startBroker(t, addr) // same port: the client finds it again
	select {
	case <-connects:
	case <-time.After(waitFor):
		t.Fatal("no reconnect")
	}
	// OnConnect runs after the subscriptions are re-made.
	require.NoError(t, b2.Publish(scheme.Desired("d1"), []byte("after restart"), false, 1))
	got := in.waitLen(t, 1)
	assert.Equal(t, "after restart", string(got[0].Payload))
	require.NoError(t, c.Publish(ctx, scheme.Status("d1"), 1, false, []byte("ok")))
}

func TestOnConnectContextEndsWithConnection(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	started := make(chan int, 10)
	ended := make(chan int, 10)
	var n atomic.Int32
	opts := deviceOptions(b.URL(), "d1")
	opts.OnConnect = func(ctx context.Context, c *Client) {
		i := int(n.Add(1))
		started <- i
		<-ctx.Done() // blocks for the connection's lifetime; Close waits for it
		ended <- i
	}
	c := connect(t, opts)
	require.Equal(t, 1, <-started)
	require.Eventually(t, func() bool { return b.Clients() == 1 }, waitFor, 5*time.Millisecond)
	require.True(t, b.Disconnect("d1"))
	select {
	case i := <-ended:
		assert.Equal(t, 1, i)
	case <-time.After(waitFor):
		t.Fatal("OnConnect ctx not canceled on connection loss")
	}
	select {
	case i := <-started:
		assert.Equal(t, 2, i)
	case <-time.After(waitFor):
		t.Fatal("no reconnect")
	}
	c.Close()
	select {
	case i := <-ended:
		assert.Equal(t, 2, i, "Close waited for OnConnect")
	default:
		t.Fatal("Close returned before OnConnect did")
	}
}

func TestPublishLocalChecks(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	opts := deviceOptions(b.URL(), "d1")
	opts.MaxPayload = 1000
	c := connect(t, opts)
	ctx := context.Background()

	tests := []struct {
		name     string
		topic    string
		retained bool
		size     int
		want     error
	}{
		{"at the size limit", scheme.Status("d1"), false, 1000, nil},
		{"over the size limit", scheme.Status("d1"), false, 1001, ErrTooLarge},
		{"own desired", scheme.Desired("d1"), false, 1, ErrDenied},
		{"other device", scheme.Status("d2"), false, 1, ErrDenied},
		{"retained", scheme.Status("d1"), true, 1, ErrDenied},
		{"wildcard topic", "ef/v1/dev/+/status", false, 1, topics.ErrInvalidTopic},
		{"empty topic", "", false, 1, topics.ErrInvalidTopic},
		{"$SYS topic", "$SYS/x", false, 1, topics.ErrInvalidTopic},
	}
	for _, tt := range tests {
		err := c.Publish(ctx, tt.topic, 1, tt.retained, make([]byte, tt.size))
		errNoWait := c.PublishNoWait(tt.topic, 1, tt.retained, make([]byte, tt.size))
		if tt.want == nil {
			assert.NoError(t, err, tt.name)
			assert.NoError(t, errNoWait, tt.name+" (no wait)")
		} else {
			assert.ErrorIs(t, err, tt.want, tt.name)
			assert.ErrorIs(t, errNoWait, tt.want, tt.name+" (no wait)")
		}
	}
	assert.Error(t, c.Publish(ctx, scheme.Status("d1"), 3, false, nil), "qos 3")
	// None of the refused publishes reached the broker, so it did not disconnect us.
	assert.True(t, c.IsConnected())
	require.NoError(t, c.Publish(ctx, scheme.Telemetry("d1"), 0, false, []byte("t")))
}

func TestBadCredentialsRefusedQuickly(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	base := runtime.NumGoroutine()
	tests := []struct {
		name           string
		user, clientID string
		password       string
	}{
		{"wrong password", "d1", "d1", "wrong"},
		{"unknown device", "d9", "d9", "pw1"},
		{"client id differs from username", "d2", "d1", "pw2"},
	}
	for _, tt := range tests {
		opts := deviceOptions(b.URL(), "d1")
		opts.Username, opts.ClientID, opts.Password = tt.user, tt.clientID, tt.password
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		start := time.Now()
		c, err := Connect(ctx, opts)
		cancel()
		assert.Nil(t, c)
		assert.ErrorIs(t, err, ErrRefused, tt.name)
		assert.Less(t, time.Since(start), 2*time.Second, "%s: refusal must not be retried", tt.name)
	}
	waitGoroutines(t, base)
}

func TestConnectGivesUpWithContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = Connect(ctx, deviceOptions("tcp://"+addr, "d1"))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrRefused)
}

// TestFailoverToAnotherNode gives the client two brokers (the nodes of
// one cluster): when the node it is connected to dies, it connects to the
// other and re-makes its subscriptions there.
func TestFailoverToAnotherNode(t *testing.T) {
	b1, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Auth: devices})
	require.NoError(t, err)
	require.NoError(t, b1.Start())
	t.Cleanup(func() { _ = b1.Close() })
	b2 := startBroker(t, "127.0.0.1:0")
	// The order of the list is rotated by the client id: find the one
	// that puts b1 first for d1.
	list := b1.URL() + "," + b2.URL()
	if urls, err := BrokerURLs(list, "d1"); assert.NoError(t, err) && urls[0] != b1.URL() {
		list = b2.URL() + "," + b1.URL()
	}
	connects := make(chan struct{}, 10)
	opts := deviceOptions(list, "d1")
	opts.OnConnect = func(context.Context, *Client) { connects <- struct{}{} }
	c := connect(t, opts)
	<-connects
	ctx := context.Background()
	var in inbox
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, in.handle))
	require.NoError(t, b1.Publish(scheme.Desired("d1"), []byte("on b1"), false, 1))
	in.waitLen(t, 1)

	require.NoError(t, b1.Close())
	select {
	case <-connects:
	case <-time.After(waitFor):
		t.Fatal("no reconnect to the other node")
	}
	require.NoError(t, b2.Publish(scheme.Desired("d1"), []byte("on b2"), false, 1))
	got := in.waitLen(t, 2)
	assert.Equal(t, "on b2", string(got[1].Payload))
	require.NoError(t, c.Publish(ctx, scheme.Status("d1"), 1, false, []byte("ok")))
}

func TestBrokerURLsSpreadClients(t *testing.T) {
	list := "tcp://a:1883, tcp://b:1883,tcp://c:1883"
	first := map[string]int{}
	for i := range 300 {
		urls, err := BrokerURLs(list, fmt.Sprintf("dev-%d", i))
		require.NoError(t, err)
		require.Len(t, urls, 3)
		assert.ElementsMatch(t, []string{"tcp://a:1883", "tcp://b:1883", "tcp://c:1883"}, urls)
		again, _ := BrokerURLs(list, fmt.Sprintf("dev-%d", i))
		assert.Equal(t, urls, again, "the same client always tries the same node first")
		first[urls[0]]++
	}
	for u, n := range first {
		assert.Greater(t, n, 50, "%s is first for %d of 300 clients", u, n)
	}
}

func TestConnectValidatesOptions(t *testing.T) {
	ctx := context.Background()
	bad := map[string]Options{
		"no url":        {ClientID: "d1"},
		"bad scheme":    {BrokerURL: "http://x:1", ClientID: "d1"},
		"bad list":      {BrokerURL: "tcp://x:1,http://y:1", ClientID: "d1"},
		"empty in list": {BrokerURL: "tcp://x:1,", ClientID: "d1"},
		"twice":         {BrokerURL: "tcp://x:1,tcp://x:1", ClientID: "d1"},
		"no client id":  {BrokerURL: "tcp://127.0.0.1:1"},
		"short alive":   {BrokerURL: "tcp://127.0.0.1:1", ClientID: "d1", KeepAlive: time.Millisecond},
		"negative size": {BrokerURL: "tcp://127.0.0.1:1", ClientID: "d1", MaxPayload: -1},
	}
	for name, o := range bad {
		_, err := Connect(ctx, o)
		assert.Error(t, err, name)
	}
	o := deviceOptions("tcp://127.0.0.1:1", "d1")
	o.Will = &Message{Topic: scheme.Presence("d1"), Payload: []byte("offline"), QoS: 1, Retained: true}
	_, err := Connect(ctx, o)
	assert.ErrorIs(t, err, ErrDenied, "retained will")
	o.Will = &Message{Topic: scheme.Desired("d2"), QoS: 1}
	_, err = Connect(ctx, o)
	assert.ErrorIs(t, err, ErrDenied, "will on another device's topic")
}

func TestWillAccepted(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	o := deviceOptions(b.URL(), "d1")
	o.Will = &Message{Topic: scheme.Presence("d1"), Payload: []byte("offline"), QoS: 1}
	c := connect(t, o)
	assert.True(t, c.IsConnected())
}

func TestSubscribeRefused(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	c := connect(t, deviceOptions(b.URL(), "d1"))
	ctx := context.Background()
	var in inbox
	for _, f := range []string{scheme.Desired("d2"), "#", "ef/v1/dev/+/desired", "ef/v1/models/#"} {
		err := c.Subscribe(ctx, f, 1, in.handle)
		assert.ErrorIs(t, err, ErrSubscribeRefused, "Subscribe(%q)", f)
	}
	assert.ErrorIs(t, c.Subscribe(ctx, "a/#/b", 1, in.handle), topics.ErrInvalidTopic)
	assert.Error(t, c.Subscribe(ctx, "a", 1, nil))
	assert.True(t, c.IsConnected(), "a refused subscription keeps the connection")

	// Refused filters are not recorded: only granted ones are re-made.
	require.NoError(t, c.Subscribe(ctx, "ef/v1/models/+/+/manifest", 1, in.handle))
	c.mu.Lock()
	assert.Len(t, c.subs, 1)
	c.mu.Unlock()
}

func TestUnsubscribe(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	c := connect(t, deviceOptions(b.URL(), "d1"))
	ctx := context.Background()
	var desired, trust inbox
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, desired.handle))
	require.NoError(t, c.Subscribe(ctx, scheme.Trust(), 1, trust.handle))
	require.NoError(t, c.Unsubscribe(ctx, scheme.Desired("d1")))
	require.NoError(t, c.Unsubscribe(ctx, scheme.Desired("d1")), "idempotent")
	require.NoError(t, b.Publish(scheme.Desired("d1"), []byte("x"), false, 1))
	require.NoError(t, b.Publish(scheme.Trust(), []byte("y"), false, 1))
	trust.waitLen(t, 1)
	assert.Empty(t, desired.get())
}

func TestCloseWhileFlowingLeavesNoGoroutines(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	base := runtime.NumGoroutine()

	opts := deviceOptions(b.URL(), "d1")
	opts.OnConnect = func(ctx context.Context, c *Client) { <-ctx.Done() }
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Connect(ctx, opts)
	require.NoError(t, err)
	var received atomic.Int64
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, func(Message) { received.Add(1) }))

	stop := make(chan struct{})
	var flow sync.WaitGroup
	flow.Add(2)
	go func() { // control plane → device
		defer flow.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = b.Publish(scheme.Desired("d1"), []byte(fmt.Sprint(i)), false, 1)
		}
	}()
	go func() { // device → control plane
		defer flow.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := c.Publish(ctx, scheme.Telemetry("d1"), 1, false, []byte("t"))
			if errors.Is(err, ErrClosed) || errors.Is(err, ErrNotConnected) {
				return
			}
		}
	}()
	require.Eventually(t, func() bool { return received.Load() > 100 }, waitFor, 5*time.Millisecond)
	c.Close()
	c.Close() // idempotent
	close(stop)
	flow.Wait()

	assert.ErrorIs(t, c.Publish(ctx, scheme.Status("d1"), 1, false, nil), ErrClosed)
	assert.ErrorIs(t, c.Subscribe(ctx, scheme.Trust(), 1, func(Message) {}), ErrClosed)
	assert.False(t, c.IsConnected())
	waitGoroutines(t, base)
}

// waitGoroutines polls until the goroutine count is back to base. It polls
// on the test goroutine: require.Eventually runs its condition on a
// goroutine of its own, which would be counted.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		<-tick.C
	}
}

// mochi-mqtt shares packet ids between its deliveries and the client's
// SUBSCRIBEs and answers 0x91 on a collision; Subscribe retries those.
func TestSubscribeWhileReceiving(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	c := connect(t, deviceOptions(b.URL(), "d1"))
	ctx := context.Background()
	var received atomic.Int64
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, func(Message) { received.Add(1) }))
	for i := range 200 {
		// A burst of QoS 1 deliveries is in flight while the SUBSCRIBE goes out.
		for j := range 10 {
			require.NoError(t, b.Publish(scheme.Desired("d1"), []byte(strconv.Itoa(j)), false, 1))
		}
		f := scheme.Manifest("m", strconv.Itoa(i))
		require.NoError(t, c.Subscribe(ctx, f, 1, func(Message) {}), "subscribe %d", i)
	}
	require.Eventually(t, func() bool { return received.Load()+int64(c.Dropped()) == 2000 }, waitFor, 5*time.Millisecond)
}

func TestDialInMemoryAndReconnect(t *testing.T) {
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Auth: devices, InMemory: true})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	t.Cleanup(func() { assert.NoError(t, b.Close()) })

	var mu sync.Mutex
	var conns []net.Conn
	opts := deviceOptions("", "d1")
	opts.Dial = func(ctx context.Context) (net.Conn, error) {
		c, err := b.DialInMemory(ctx)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	c := connect(t, opts)
	ctx := context.Background()
	var in inbox
	require.NoError(t, c.Subscribe(ctx, scheme.Desired("d1"), 1, in.handle))
	require.NoError(t, b.Publish(scheme.Desired("d1"), []byte("gen-1"), false, 1))
	in.waitLen(t, 1)

	// The broker drops the connection: the client dials again and
	// re-subscribes. (Closing the client's own end would not do: paho takes
	// "use of closed network connection" for its own Disconnect.)
	require.True(t, b.Disconnect("d1"))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) == 2 && c.IsConnected()
	}, waitFor, 5*time.Millisecond, "reconnected through Dial")
	require.Eventually(t, func() bool {
		_ = b.Publish(scheme.Desired("d1"), []byte("gen-2"), false, 1)
		return len(in.get()) >= 2
	}, waitFor, 50*time.Millisecond, "the subscription was made again")
	assert.Equal(t, []byte("gen-2"), in.get()[1].Payload)
	c.Close()
	require.Eventually(t, func() bool { return b.InMemoryConns() == 0 }, waitFor, 5*time.Millisecond,
		"in-memory connections left: %d", b.InMemoryConns())
}

// TestUnreachableBrokerIsLoggedAtWarn: a broker whose certificate the
// client does not trust fails every attempt; after a few the failure,
// with its cause, is logged at WARN (not only at debug, where an operator
// never looks), and not on every attempt.
func TestUnreachableBrokerIsLoggedAtWarn(t *testing.T) {
	ca, other := testkit.NewCA(t, "broker CA"), testkit.NewCA(t, "another CA")
	cert, key := ca.IssueFiles(t, "broker", true)
	tlsCfg, err := broker.TLSConfig(cert, key, "")
	require.NoError(t, err)
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Auth: devices, TLS: tlsCfg})
	require.NoError(t, err)
	require.NoError(t, b.Start())
	t.Cleanup(func() { assert.NoError(t, b.Close()) })

	var logs testkit.Buffer
	opts := deviceOptions(b.URL(), "d1")
	opts.TLS = &tls.Config{RootCAs: other.Pool, MinVersion: tls.VersionTLS12}
	opts.MaxReconnectInterval = 50 * time.Millisecond
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Connect(ctx, opts)
		done <- err
	}()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "level=WARN") }, waitFor, 10*time.Millisecond,
		"a broker that stays unreachable is logged at WARN")
	line := logs.String()
	assert.Contains(t, line, "cannot connect to the broker")
	assert.Contains(t, line, "certificate", "the cause is in the line")
	assert.Contains(t, line, "attempts=3")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Equal(t, 1, strings.Count(logs.String(), "level=WARN"), "at most one WARN a minute:\n%s", logs.String())
}

// TestResubscribeInSubscribeOrder: after a reconnect the subscriptions are
// re-made in the order they were first made, so retained messages arrive
// in that order again (an agent must see the trust bundle before the
// desired state signed by a key the bundle introduces).
func TestResubscribeInSubscribeOrder(t *testing.T) {
	filters := []string{scheme.Trust(), scheme.Desired("d1")}
	for _, m := range []string{"f", "e", "d", "c", "b", "a"} {
		filters = append(filters, scheme.Manifest(m, "1"))
	}
	retain := func(b *broker.Broker) {
		for _, f := range filters {
			require.NoError(t, b.Publish(f, []byte(f), true, 1))
		}
	}
	// A broker with the retained messages in place before it listens.
	start := func(addr string) *broker.Broker {
		b, err := broker.New(broker.Options{Addr: addr, Auth: devices})
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Close() }) // Close is idempotent
		retain(b)
		require.NoError(t, b.Start())
		return b
	}
	b1 := start("127.0.0.1:0")
	addr := b1.Addr()
	connects := make(chan struct{}, 10)
	opts := deviceOptions(b1.URL(), "d1")
	opts.OnConnect = func(context.Context, *Client) { connects <- struct{}{} }
	c := connect(t, opts)
	<-connects
	var in inbox
	for _, f := range filters {
		require.NoError(t, c.Subscribe(context.Background(), f, 1, in.handle))
	}
	in.waitLen(t, len(filters))
	// Replacing a handler keeps the filter's place.
	require.NoError(t, c.Subscribe(context.Background(), filters[0], 1, in.handle))
	in.waitLen(t, len(filters)+1)

	for round := range 3 {
		require.NoError(t, b1.Close())
		require.Eventually(t, func() bool { return !c.IsConnected() }, waitFor, 5*time.Millisecond)
		before := len(in.get())
		b2 := start(addr)
		select {
		case <-connects:
		case <-time.After(waitFor):
			t.Fatal("no reconnect")
		}
		got := in.waitLen(t, before+len(filters))[before:]
		var order []string
		for _, m := range got {
			order = append(order, m.Topic)
		}
		assert.Equal(t, filters, order, "round %d: retained messages after the reconnect, in subscribe order", round)
		b1 = b2
	}
}
