package sim

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFleetSpecExpand(t *testing.T) {
	devs, err := FleetSpec{Sites: 2, DevicesPerSite: 4, Regions: []string{"eu"}, Hardware: map[string]int{"x86": 3, "arm": 1}, Labels: map[string]string{"env": "sim"}}.Expand()
	require.NoError(t, err)
	require.Len(t, devs, 8)
	assert.Equal(t, "dev-1-1", devs[0].ID)
	assert.Equal(t, "dev-2-4", devs[7].ID)
	assert.Equal(t, map[string]string{"site": "site-2", "region": "eu", "hw": "x86", "env": "sim"}, devs[7].Labels)
	hw := map[string]int{}
	for _, d := range devs {
		hw[d.Labels["hw"]]++
	}
	assert.Equal(t, map[string]int{"arm": 2, "x86": 6}, hw, "weights 3:1 per site")

	for _, bad := range []FleetSpec{
		{Sites: 0, DevicesPerSite: 1},
		{Sites: 1, DevicesPerSite: -1},
		{Sites: 1000, DevicesPerSite: 1000},
		{Sites: 1, DevicesPerSite: 1, Hardware: map[string]int{"x86": 0}},
		{Sites: 1, DevicesPerSite: 1, IDPrefix: "bad/"},
		{Sites: 1, DevicesPerSite: 1, Regions: []string{" "}},
	} {
		_, err := bad.Expand()
		assert.ErrorIs(t, err, ErrInvalidFleet, "Expand(%+v)", bad)
	}
}

func encode(t *testing.T, p packets.ControlPacket) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, p.Write(&b))
	return b.Bytes()
}

func TestProxyParsesMQTT(t *testing.T) {
	c := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	c.ProtocolName, c.ProtocolVersion, c.ClientIdentifier, c.Keepalive = "MQTT", 4, "dev-7", 30
	c.UsernameFlag, c.Username = true, "dev-7"
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.TopicName, pub.Qos, pub.MessageID, pub.Payload = "ef/v1/models/fraud/2/chunks", 1, 9, bytes.Repeat([]byte{0xaa}, 300)
	other := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	other.TopicName, other.Payload = "ef/v1/dev/dev-7/desired", []byte{1, 2, 3}

	stream := append(append(encode(t, c), encode(t, pub)...), encode(t, other)...)
	r := bufio.NewReader(bytes.NewReader(stream))

	first, err := readPacket(r)
	require.NoError(t, err)
	id, err := connectClientID(first)
	require.NoError(t, err)
	assert.Equal(t, "dev-7", id)

	chunk, err := readPacket(r)
	require.NoError(t, err)
	require.True(t, corruptChunk(chunk))
	decoded, err := packets.ReadPacket(bytes.NewReader(chunk))
	require.NoError(t, err, "still a well-formed packet")
	p := decoded.(*packets.PublishPacket)
	assert.Equal(t, byte(0x55), p.Payload[len(p.Payload)-1], "last payload byte flipped")
	assert.Equal(t, byte(0xaa), p.Payload[0])

	desired, err := readPacket(r)
	require.NoError(t, err)
	assert.False(t, corruptChunk(desired), "only chunk topics are corrupted")

	_, err = connectClientID(chunk)
	assert.Error(t, err, "a PUBLISH is not a CONNECT")
	_, err = connectClientID([]byte{0x10, 0x01, 0x00})
	assert.Error(t, err, "truncated CONNECT")
	_, err = readPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01})))
	assert.Error(t, err, "remaining length over 4 bytes")
}
