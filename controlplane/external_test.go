package controlplane_test

import (
	"crypto/sha256"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/bus"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestExternalBroker(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	ts := newTestServer(t, func(o *controlplane.Options) { o.MQTTURL = mq.URL() })
	assert.Equal(t, mq.URL(), ts.BrokerURL())
	creds := ts.register("dev-1", nil)
	assert.Equal(t, mq.URL(), creds.BrokerURL)
	a := fleettest.TrainedModel(t, 1)
	ts.mustUpload("fraud", "v1", a)
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})

	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	v := agentVerifier(t, creds, receive(t, subscribe(t, c, sc.Trust()), "trust bundle"))
	d, err := v.VerifyDesired(mustEnvelope(t, receive(t, subscribe(t, c, sc.Desired("dev-1")), "desired").payload), time.Now())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), d.Generation)

	// Fetch → chunks, and status ingest, through mosquitto.
	chunks := subscribe(t, c, sc.Chunks("fraud", "v1"))
	req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1"})
	require.NoError(t, err)
	publish(t, c, sc.Fetch("dev-1"), req)
	ch := &efpb.Chunk{}
	require.NoError(t, proto.Unmarshal(receive(t, chunks, "chunk").payload, ch))
	sum := sha256.Sum256(ch.Data)
	assert.Equal(t, sha256.Sum256(a.ONNX), sum, "the model is one chunk")
	st, err := proto.Marshal(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "fraud", ModelVersion: "v1", ActiveVersion: "v1", State: efpb.ModelState_MODEL_STATE_ACTIVE})
	require.NoError(t, err)
	publish(t, c, sc.Status("dev-1"), st)
	require.Eventually(t, func() bool {
		dev, _ := ts.internals().Registry.Get("dev-1")
		return dev.Reported["fraud"] != nil && dev.Reported["fraud"].State == api.ModelActive
	}, 10*time.Second, 5*time.Millisecond)

	// mosquitto restarts without persistence: its retained store is empty
	// until the control plane reconnects and publishes everything again.
	mq.Restart()
	c2, err := dialDevice(mq.URL(), "dev-1b", "")
	require.NoError(t, err)
	defer c2.Disconnect(50)
	manifests := subscribe(t, c2, sc.Manifest("fraud", "v1"))
	msg := receive(t, manifests, "manifest republished after the broker restarted")
	_, err = v.VerifyManifest(mustEnvelope(t, msg.payload), time.Now())
	require.NoError(t, err)

	// The control plane's subscriptions were re-made on reconnect.
	st, err = proto.Marshal(&efpb.StatusEvent{DeviceId: "dev-1b", ModelName: "fraud", State: efpb.ModelState_MODEL_STATE_FAILED})
	require.NoError(t, err)
	before := ts.Dropped()
	publish(t, c2, sc.Status("dev-1b"), st) // an unregistered device: counted and dropped
	require.Eventually(t, func() bool { return ts.Dropped() == before+1 }, 10*time.Second, 5*time.Millisecond)
}

// TestExternalBrokerSharedIngest: with IngestConnections, telemetry is
// split over a shared subscription: every report is aggregated exactly
// once (three plain subscriptions would each get every report).
func TestExternalBrokerSharedIngest(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	ts := newTestServer(t, func(o *controlplane.Options) { o.MQTTURL = mq.URL(); o.IngestConnections = 3 })
	eb := ts.internals().Bus.(*bus.External)
	require.Eventually(t, eb.IngestReady, 30*time.Second, 10*time.Millisecond, "the ingest connections never came up")
	creds := ts.register("dev-1", nil)
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}

	const reports = 30
	for seq := uint64(1); seq <= reports; seq++ {
		b, err := proto.Marshal(&efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-1", Seq: seq,
			Monitoring: []*efpb.MonitorReport{{ModelName: "fraud", ModelVersion: "v1", Rows: 1}}})
		require.NoError(t, err)
		publish(t, c, sc.Telemetry("dev-1"), b)
	}
	require.Eventually(t, func() bool { return ts.Monitor().Stats().Ingested == reports }, 10*time.Second, 5*time.Millisecond,
		"ingested %+v", ts.Monitor().Stats())
	assert.Zero(t, ts.Monitor().Stats().Duplicates, "each report reached exactly one ingest connection")

	_, err := controlplane.New(controlplane.Options{DataDir: t.TempDir(), IngestConnections: 2})
	assert.ErrorContains(t, err, "IngestConnections is for an external broker")
}
