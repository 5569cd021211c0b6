package natsconf_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/edgefleet/edgefleet/internal/natsconf"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// cluster starts three nodes with NodeConfig and an authorization file of
// users (name → password) rendered by users.
type cluster struct {
	*testkit.NATSCluster
	auth string
}

func startCluster(t *testing.T, users func() []natsconf.User, mods ...func(*natsconf.Node)) *cluster {
	t.Helper()
	c := &cluster{}
	routePassword := fmt.Sprintf("route-%d", time.Now().UnixNano())
	c.NATSCluster = testkit.StartNATSCluster(t, 3, func(dir string, i int, ports []testkit.NATSPorts) string {
		if c.auth == "" {
			c.auth = filepath.Join(dir, "auth.conf")
			c.writeAuth(t, users())
		}
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p.Cluster))
			}
		}
		n := natsconf.Node{
			Name: fmt.Sprintf("n%d", i), Host: "127.0.0.1",
			MQTTPort: ports[i].MQTT, ClusterPort: ports[i].Cluster, MonitorPort: ports[i].Monitor,
			Routes: routes, StoreDir: filepath.Join(dir, fmt.Sprintf("js%d", i)), AuthFile: "auth.conf", RoutePassword: routePassword,
		}
		for _, mod := range mods {
			mod(&n)
		}
		conf, err := natsconf.NodeConfig(n)
		require.NoError(t, err)
		return conf
	})
	return c
}

func (c *cluster) writeAuth(t *testing.T, users []natsconf.User) {
	t.Helper()
	text, err := natsconf.Authorization(users)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(c.auth, []byte(text), 0o600))
}

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	require.NoError(t, err)
	return string(h)
}

// mqttClient is a raw paho client (no local ACL: the broker must refuse).
type mqttClient struct {
	t   *testing.T
	c   paho.Client
	got chan paho.Message
}

func connect(t *testing.T, url, user, pw string) (*mqttClient, error) {
	t.Helper()
	m := &mqttClient{t: t, got: make(chan paho.Message, 64)}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(user).SetUsername(user).SetPassword(pw).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(20 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, msg paho.Message) { m.got <- msg })
	m.c = paho.NewClient(o)
	tok := m.c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		return nil, fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { m.c.Disconnect(0) })
	return m, nil
}

// connectEventually retries a login until NATS lets the client id in
// (it refuses one whose previous session it is still closing).
func connectEventually(t *testing.T, url, user, pw string) *mqttClient {
	t.Helper()
	var m *mqttClient
	require.Eventually(t, func() bool {
		var err error
		m, err = connect(t, url, user, pw)
		return err == nil
	}, time.Minute, 200*time.Millisecond, "%s cannot log in to %s", user, url)
	return m
}

func (m *mqttClient) sub(filter string) byte {
	m.t.Helper()
	tok := m.c.Subscribe(filter, 1, nil)
	require.True(m.t, tok.WaitTimeout(20*time.Second), "SUBACK for %s", filter)
	require.NoError(m.t, tok.Error())
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (m *mqttClient) pub(topic string, retained bool, payload string) {
	m.t.Helper()
	tok := m.c.Publish(topic, 1, retained, payload)
	require.True(m.t, tok.WaitTimeout(20*time.Second), "PUBACK for %s", topic)
	require.NoError(m.t, tok.Error())
}

// retained subscribes to filter (a topic name) and returns the retained
// message it delivers. A NATS node serves a new subscription the retained messages it
// has read from the cluster's stream so far; a node that lags (a loaded
// run once got nothing within 30 s on node 2) is asked again, by
// subscribing anew, for up to two minutes.
func (m *mqttClient) retained(filter string) paho.Message {
	m.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		require.Equal(m.t, byte(1), m.sub(filter), "dev may subscribe to %s", filter)
		wait := time.After(10 * time.Second)
	read:
		for {
			select {
			case msg := <-m.got:
				if msg.Topic() == filter { // not a late copy for an earlier filter
					return msg
				}
			case <-wait:
				break read
			}
		}
		require.True(m.t, time.Now().Before(deadline), "no retained message on %s within 2 minutes", filter)
		tok := m.c.Unsubscribe(filter)
		require.True(m.t, tok.WaitTimeout(20*time.Second), "UNSUBACK for %s", filter)
	}
}

// next is the next message received.
func (m *mqttClient) next() paho.Message {
	m.t.Helper()
	select {
	case msg := <-m.got:
		return msg
	case <-time.After(30 * time.Second):
		m.t.Fatal("no message within 30s")
		return nil
	}
}

// TestClusterACL runs the rendered config as a real 3-node cluster and
// tries the device ACL with a real MQTT client on other nodes than the
// control plane's: retained documents (a model version with dots
// included) reach every node; another device's topics, a forged desired
// state and a retained overwrite are refused; wrong passwords are refused;
// a login removed from the authorization file is disconnected and refused
// after a reload, without restarting a node.
func TestClusterACL(t *testing.T) {
	t.Parallel()
	s := topics.Scheme{}
	pw := map[string]string{"edgefleet-cp": "cp-secret", "dev-1": "pw-1", "dev-2": "pw-2", "dev-3": "pw-3"}
	hashes := map[string]string{}
	for u, p := range pw {
		hashes[u] = hash(t, p)
	}
	revoked, enrolled := false, false
	users := func() []natsconf.User {
		cp, err := natsconf.ControlUser(s, "edgefleet-cp", hashes["edgefleet-cp"])
		require.NoError(t, err)
		out := []natsconf.User{cp}
		for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
			if id == "dev-2" && revoked || id == "dev-3" && !enrolled {
				continue
			}
			u, err := natsconf.DeviceUser(s, id, hashes[id])
			require.NoError(t, err)
			out = append(out, u)
		}
		return out
	}
	c := startCluster(t, users)

	cp, err := connect(t, c.MQTTURL(0), "edgefleet-cp", pw["edgefleet-cp"])
	require.NoError(t, err)
	manifest := s.Manifest("fraud", "1.2.0")
	cp.pub(s.Trust(), true, "trust")
	cp.pub(manifest, true, "manifest-1.2.0")
	cp.pub(s.Desired("dev-1"), true, "desired-1")
	cp.pub(s.Desired("dev-2"), true, "desired-2")
	require.Equal(t, byte(1), cp.sub(s.AllStatus()))

	// A device enrolled while the control plane is subscribed: a reload
	// lets it in, and the control plane's subscriptions keep delivering.
	_, err = connect(t, c.MQTTURL(1), "dev-3", pw["dev-3"])
	assert.Error(t, err, "dev-3 is not enrolled yet")
	enrolled = true
	c.writeAuth(t, users())
	c.Reload()
	d3 := connectEventually(t, c.MQTTURL(1), "dev-3", pw["dev-3"])
	d3.pub(s.Status("dev-3"), false, "status-3")
	msg := cp.next()
	assert.Equal(t, s.Status("dev-3"), msg.Topic())

	_, err = connect(t, c.MQTTURL(1), "dev-1", "wrong")
	assert.Error(t, err, "a wrong password is refused")
	_, err = connect(t, c.MQTTURL(1), "", "")
	assert.Error(t, err, "an anonymous login is refused")

	// dev-1 on node 1 reads what the control plane retained on node 0.
	d1, err := connect(t, c.MQTTURL(1), "dev-1", pw["dev-1"])
	require.NoError(t, err)
	for _, f := range []string{s.Trust(), s.Desired("dev-1"), "ef/v1/models/+/+/+"} {
		require.Equal(t, byte(1), d1.sub(f), "dev-1 may subscribe to %s", f)
	}
	got := map[string]string{}
	for range 3 {
		msg := d1.next()
		got[msg.Topic()] = string(msg.Payload())
	}
	assert.Equal(t, map[string]string{s.Trust(): "trust", s.Desired("dev-1"): "desired-1", manifest: "manifest-1.2.0"}, got)

	// Another device's desired state, every device's topics, '#': refused.
	for _, f := range []string{s.Desired("dev-2"), "ef/v1/dev/+/desired", "ef/v1/#", "#", s.AllStatus(), s.Telemetry("dev-2")} {
		assert.Equal(t, byte(0x80), d1.sub(f), "dev-1 must not subscribe to %s", f)
	}

	// Forged documents and another device's status: the broker drops them
	// (NATS acknowledges a refused QoS 1 publish and keeps the connection).
	d1.pub(s.Desired("dev-1"), true, "forged-desired")
	d1.pub(manifest, true, "forged-manifest")
	d1.pub(s.Trust(), true, "forged-trust")
	d1.pub(s.Status("dev-2"), false, "forged-status")
	d1.pub(s.Status("dev-1"), false, "status-1")
	msg = cp.next()
	assert.Equal(t, s.Status("dev-1"), msg.Topic(), "the control plane gets dev-1's own status, and nothing forged before it")
	assert.Equal(t, "status-1", string(msg.Payload()))

	// The retained documents are the control plane's, on every node.
	d2, err := connect(t, c.MQTTURL(2), "dev-2", pw["dev-2"])
	require.NoError(t, err)
	assert.Equal(t, "desired-2", string(d2.retained(s.Desired("dev-2")).Payload()))
	assert.Equal(t, "manifest-1.2.0", string(d2.retained(manifest).Payload()), "dev-1's retained overwrite was refused")
	assert.Equal(t, "trust", string(d2.retained(s.Trust()).Payload()))
	d1.c.Disconnect(0)
	d1b := connectEventually(t, c.MQTTURL(2), "dev-1", pw["dev-1"])
	assert.Equal(t, "desired-1", string(d1b.retained(s.Desired("dev-1")).Payload()), "dev-1's forged desired state was refused")

	// Revocation: dev-2 leaves the authorization file; a reload closes its
	// live session and refuses it from then on; dev-1 stays.
	lost := make(chan struct{})
	d2.c.Disconnect(0)
	o := paho.NewClientOptions().AddBroker(c.MQTTURL(2)).SetClientID("dev-2").SetUsername("dev-2").SetPassword(pw["dev-2"]).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(20 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	// NATS refuses a client id whose previous session (d2's) it is still
	// closing somewhere in the cluster: retry until it lets the id in.
	require.Eventually(t, func() bool {
		tok := paho.NewClient(o).Connect()
		return tok.WaitTimeout(30*time.Second) && tok.Error() == nil
	}, time.Minute, 200*time.Millisecond, "dev-2 cannot log in again")
	revoked = true
	c.writeAuth(t, users())
	c.Reload()
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the revoked device's session was not closed after the reload")
	}
	_, err = connect(t, c.MQTTURL(0), "dev-2", pw["dev-2"])
	assert.Error(t, err, "the revoked device is refused")
	assert.True(t, d1b.c.IsConnectionOpen(), "dev-1 keeps its session")
	d1b.pub(s.Status("dev-1"), false, "status-after-reload")
	assert.Equal(t, "status-after-reload", string(cp.next().Payload()))
}

// TestClusterAckWait: a QoS 1 delivery the client does not acknowledge
// comes again after Node.MQTTAckWait (NATS's ack_wait) — the wait after
// which a delivery lost with a dead node is made again — and not before.
func TestClusterAckWait(t *testing.T) {
	const wait = 2 * time.Second
	s := topics.Scheme{Prefix: topics.DefaultPrefix}
	cpHash, devHash := hash(t, "cp-secret"), hash(t, "pw-1")
	c := startCluster(t, func() []natsconf.User {
		cp, err := natsconf.ControlUser(s, "edgefleet-cp", cpHash)
		require.NoError(t, err)
		dev, err := natsconf.DeviceUser(s, "dev-1", devHash)
		require.NoError(t, err)
		return []natsconf.User{cp, dev}
	}, func(n *natsconf.Node) { n.MQTTAckWait = wait })

	// The device takes its desired state at QoS 1 and never answers.
	got := make(chan time.Time, 8)
	o := paho.NewClientOptions().AddBroker(c.MQTTURL(1)).SetClientID("dev-1").SetUsername("dev-1").SetPassword("pw-1").
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(20 * time.Second).
		SetAutoAckDisabled(true)
	dev := paho.NewClient(o)
	require.Eventually(t, func() bool {
		tok := dev.Connect()
		return tok.WaitTimeout(20*time.Second) && tok.Error() == nil
	}, time.Minute, 200*time.Millisecond, "dev-1 cannot log in")
	t.Cleanup(func() { dev.Disconnect(0) })
	tok := dev.Subscribe(s.Desired("dev-1"), 1, func(_ paho.Client, _ paho.Message) { got <- time.Now() })
	require.True(t, tok.WaitTimeout(20*time.Second))
	require.NoError(t, tok.Error())
	require.Equal(t, byte(1), tok.(*paho.SubscribeToken).Result()[s.Desired("dev-1")])

	cp := connectEventually(t, c.MQTTURL(0), "edgefleet-cp", "cp-secret")
	cp.pub(s.Desired("dev-1"), false, "generation 2")
	var first time.Time
	select {
	case first = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the desired state never reached the device")
	}
	select {
	case again := <-got:
		gap := again.Sub(first)
		assert.GreaterOrEqual(t, gap, wait-250*time.Millisecond, "delivered again before the ack wait")
		assert.Less(t, gap, 10*wait, "delivered again long after the ack wait")
	case <-time.After(20 * time.Second): // NATS's default would redeliver after 30 s
		t.Fatalf("not delivered again within 20 s of the first delivery, with an ack wait of %v", wait)
	}
}
