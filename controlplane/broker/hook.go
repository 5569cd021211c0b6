package broker

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// hook enforces device authentication and the topic ACL. mochi refuses
// every connection unless a hook allows it, and its inline client bypasses
// hooks for publishes, so the control plane is unaffected.
type hook struct {
	mqtt.HookBase
	scheme topics.Scheme
	auth   Authenticator
	log    *slog.Logger
	srv    *mqtt.Server
	closed <-chan struct{} // the broker's: ends waits in hooks

	withhold func(clientID, filter string) bool // Options.WithholdRetained
	received *atomic.Uint64                     // Broker.Packets: every packet read from a network client
}

func (h *hook) ID() string { return "edgefleet-auth" }

func (h *hook) Provides(b byte) bool {
	if b == mqtt.OnSubscribe {
		return h.withhold != nil
	}
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablish, mqtt.OnACLCheck, mqtt.OnPacketRead}, []byte{b})
}

// OnSubscribe applies Options.WithholdRetained: retain handling 2 ("send
// no retained messages"), which mochi honours whatever the protocol
// version, on the filters it names.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	filters := slices.Clone(pk.Filters)
	for i, sub := range filters {
		if h.withhold(cl.ID, sub.Filter) {
			filters[i].RetainHandling = 2
		}
	}
	pk.Filters = filters
	return pk
}

// takeoverWait bounds how long a reconnecting client waits for its previous
// connection's clean-up.
const takeoverWait = 5 * time.Second

// OnSessionEstablish runs for an authenticated client just before mochi
// takes over a previous connection with the same client id. When that
// previous session ends with its connection (a clean session, as devices
// use), it is disconnected here and the new client waits until mochi has
// cleaned it up. mochi's own takeover races with that clean-up: the old
// connection's goroutine checks "taken over?" and then, late on a loaded
// machine, unsubscribes its filters by client id and deletes the id from
// the client list — removing what the new connection had just subscribed
// (a device that reconnected quickly then received nothing on a live
// connection). Persistent sessions are left to mochi's takeover, which
// hands them over.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl || !sessionEndsWithConnection(old) {
		return
	}
	if !old.Closed() {
		_ = h.srv.DisconnectClient(old, packets.ErrSessionTakenOver)
	}
	deadline := time.NewTimer(takeoverWait)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if cur, ok := h.srv.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			h.log.Warn("previous connection not cleaned up in time; taking it over", "client", cl.ID, "waited", takeoverWait)
			return
		case <-h.closed:
			return
		}
	}
}

// sessionEndsWithConnection reports whether mochi deletes cl's session when
// its connection ends: a clean MQTT 3.1.1 session, or an MQTT 5 session
// with no expiry interval.
func sessionEndsWithConnection(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion < 5 {
		return cl.Properties.Clean
	}
	return cl.Properties.Props.SessionExpiryInterval == 0
}

// OnConnectAuthenticate admits a device: username is a valid device id, the
// client id equals it (so no device can take over another's session), the
// will (if any) is a topic the device may publish and not retained, and the
// Authenticator accepts the password. A refusal is CONNACK 0x86 (bad
// username or password), which mochi sends to MQTT 3.1.1 clients as 0x05
// (not authorized).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	refuse := func(reason string) bool {
		h.log.Info("connection refused", "reason", reason, "username", user, "client", pk.Connect.ClientIdentifier, "remote", cl.Net.Remote)
		return false
	}
	switch {
	case topics.ValidDeviceID(user) != nil:
		return refuse("username is not a valid device id")
	case user == mqtt.InlineClientId:
		return refuse("username is reserved")
	case pk.Connect.ClientIdentifier != user:
		return refuse("client id differs from username")
	case pk.Connect.WillFlag && pk.Connect.WillRetain:
		return refuse("retained will")
	case pk.Connect.WillFlag && !h.scheme.DeviceMayPublish(user, pk.Connect.WillTopic, false):
		return refuse("will topic not allowed")
	case !certIdentityMatches(cl, user):
		return refuse("client certificate common name differs from the client id")
	case !h.auth.AuthenticateDevice(user, pk.Connect.Password):
		return refuse("bad credentials")
	}
	h.log.Debug("device connected", "device", user, "remote", cl.Net.Remote)
	return true
}

// OnACLCheck applies topics.Scheme's device ACL. topic is a topic name for
// publishes and deliveries and a filter for subscribes. A refused QoS 0
// publish is dropped; a refused QoS 1+ publish from an MQTT 3.1.1 client
// disconnects it (mochi's behaviour); a refused subscription gets 0x80.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	dev := cl.ID
	if dev != string(cl.Properties.Username) {
		return false
	}
	var ok bool
	if write {
		ok = h.scheme.DeviceMayPublish(dev, topic, false)
	} else {
		ok = h.scheme.DeviceMaySubscribe(dev, topic)
	}
	if !ok {
		h.log.Debug("acl refused", "device", dev, "topic", topic, "write", write)
	}
	return ok
}

// OnPacketRead refuses retained publishes from devices (only the control
// plane retains) and publishes to $-topics ($SYS): mochi would drop those
// without a PUBACK or a disconnect, and a QoS 1 client would wait forever.
// Rejecting the packet here ends the connection, the same outcome as an
// ACL refusal, and nothing is retained or delivered.
//
// It also answers MQTT 3.1.1's empty password as 3.1.1 defines: a CONNECT
// with the password flag and a zero-length password is legal there, but
// mochi refuses it with CONNACK 130, a code 3.1.1 does not have. Without
// the flag the login goes to OnConnectAuthenticate, which refuses it as a
// bad password (CONNACK 5, not authorized).
//
// And it counts every packet (Broker.Packets).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.received.Add(1) // only network clients' packets come here, not the inline client's
	switch pk.FixedHeader.Type {
	case packets.Connect:
		if pk.ProtocolVersion < 5 && pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
			pk.Connect.PasswordFlag = false
		}
	case packets.Publish:
		if cl.Net.Inline {
			break
		}
		if pk.FixedHeader.Retain {
			h.log.Info("retained publish refused, disconnecting", "device", cl.ID, "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
		if strings.HasPrefix(pk.TopicName, "$") {
			h.log.Info("publish to a $-topic refused, disconnecting", "device", cl.ID, "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, nil
}
