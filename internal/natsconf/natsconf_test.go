package natsconf

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/topics"
)

func TestNodeConfigRefuses(t *testing.T) {
	ok := Node{Name: "n0", MQTTPort: 1883, ClusterPort: 6222, StoreDir: "/data", AuthFile: "auth.conf", RoutePassword: "s3cret"}
	_, err := NodeConfig(ok)
	require.NoError(t, err)
	for name, mod := range map[string]func(*Node){
		"no name":            func(n *Node) { n.Name = "" },
		"absolute auth file": func(n *Node) { n.AuthFile = "/etc/nats/auth.conf" },
		"no mqtt port":       func(n *Node) { n.MQTTPort = 0 },
		"newline in name":    func(n *Node) { n.Name = "n0\ninclude x" },
		"no route password":  func(n *Node) { n.RoutePassword = "" },
		"@ in password":      func(n *Node) { n.RoutePassword = "a@b" },
		"ack wait under 1s":  func(n *Node) { n.MQTTAckWait = 500 * time.Millisecond },
		"fractional wait":    func(n *Node) { n.MQTTAckWait = 1500 * time.Millisecond },
		"negative wait":      func(n *Node) { n.MQTTAckWait = -time.Second },
	} {
		n := ok
		mod(&n)
		_, err := NodeConfig(n)
		assert.ErrorIs(t, err, ErrConfig, name)
	}
}

func TestNodeConfigAckWait(t *testing.T) {
	n := Node{Name: "n0", MQTTPort: 1883, ClusterPort: 6222, StoreDir: "/data", AuthFile: "auth.conf", RoutePassword: "s3cret"}
	conf, err := NodeConfig(n)
	require.NoError(t, err)
	assert.NotContains(t, conf, "ack_wait", "NATS's default unless set")
	n.MQTTAckWait = 5 * time.Second
	conf, err = NodeConfig(n)
	require.NoError(t, err)
	mqtt := conf[strings.Index(conf, "mqtt {"):]
	assert.Contains(t, mqtt[:strings.Index(mqtt, "}")], `ack_wait: "5s"`, "in the mqtt block")
}

func TestAuthorization(t *testing.T) {
	s := topics.Scheme{}
	dev, err := DeviceUser(s, "dev-1", "$2a$04$x")
	require.NoError(t, err)
	assert.Equal(t, []string{"ef.v1.dev.dev-1.status", "ef.v1.dev.dev-1.telemetry", "ef.v1.dev.dev-1.fetch", "ef.v1.dev.dev-1.presence",
		"ef.v1.dev.dev-1.capture"}, dev.Publish)
	assert.Equal(t, []string{"ef.v1.dev.dev-1.desired", "ef.v1.dev.dev-1.ack", "ef.v1.dev.dev-1.site", "ef.v1.dev.dev-1.chunks", "ef.v1.trust", "ef.v1.models.*.*.*",
		"ef.v1.dev.dev-1.capture-ack"}, dev.Subscribe)
	ing, err := IngestUser(s, "cp-ingest-0", "$2a$10$y")
	require.NoError(t, err)
	text, err := Authorization([]User{dev, ing})
	require.NoError(t, err)
	assert.Contains(t, text, `publish: {allow: ["$edgefleet.none"]}`, "no publish rights is an allow list of a subject nobody uses, not an empty (unrestricted) one")

	_, err = DeviceUser(s, "dev.1", "$2a$04$x")
	assert.ErrorIs(t, err, ErrDeviceID)
	_, err = Authorization([]User{dev, dev})
	assert.ErrorIs(t, err, ErrConfig, "a user twice")
	_, err = Authorization([]User{{Name: "x", Hash: "plain"}})
	assert.ErrorIs(t, err, ErrConfig, "not a bcrypt hash")
	q, err := quote(`a"b\c$d//e`)
	require.NoError(t, err)
	assert.Equal(t, `"a\"b\\c$d//e"`, q)
	assert.False(t, strings.Contains(q, "\n"))
}
