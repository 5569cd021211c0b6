package mqttc

import (
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyStore is paho's memory store, except that it never shares a PUBLISH
// packet with paho's writer: it keeps a private copy and hands out fresh
// copies. On reconnect paho's resume sets the DUP flag on the packet it
// gets from the store while the new connection's writer may be encoding
// the same packet object (which also writes its RemainingLength): a data
// race in paho v1.5.x (upstream issue #703, open). Put runs before paho
// hands the packet to the writer, so copying there is safe.
type copyStore struct {
	*paho.MemoryStore
}

func newCopyStore() copyStore { return copyStore{paho.NewMemoryStore()} }

func (s copyStore) Put(key string, m packets.ControlPacket) {
	s.MemoryStore.Put(key, copyPublish(m))
}

func (s copyStore) Get(key string) packets.ControlPacket {
	return copyPublish(s.MemoryStore.Get(key))
}

// copyPublish returns a copy of a PUBLISH packet (the payload is shared:
// nobody writes it) and any other packet as it is.
func copyPublish(m packets.ControlPacket) packets.ControlPacket {
	if p, ok := m.(*packets.PublishPacket); ok && p != nil {
		c := *p
		return &c
	}
	return m
}
