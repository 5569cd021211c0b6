package mqttc

import (
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCopyStoreNeverSharesPublishPackets(t *testing.T) {
	s := newCopyStore()
	s.Open()
	defer s.Close()
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, 7, "ef/v1/dev/d1/status", []byte("x")
	s.Put("o.7", pub)

	got, ok := s.Get("o.7").(*packets.PublishPacket)
	require.True(t, ok)
	assert.NotSame(t, pub, got, "the writer's packet is not the stored one")
	got.Dup = true // what paho's resume does on reconnect
	assert.False(t, pub.Dup, "the packet handed to the writer is untouched")
	again := s.Get("o.7").(*packets.PublishPacket)
	assert.NotSame(t, got, again, "every Get is a fresh copy")
	assert.Equal(t, "ef/v1/dev/d1/status", again.TopicName)
	assert.Equal(t, uint16(7), again.MessageID)

	sub := packets.NewControlPacket(packets.Subscribe)
	s.Put("o.8", sub)
	assert.Same(t, sub, s.Get("o.8"), "other packets are stored as they are")
	assert.Nil(t, s.Get("o.9"))
}
