package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
)

// A rollout of a one-chunk model costs each device 12 MQTT packets on the
// broker: the desired state (carrying the manifest), SUBSCRIBE and
// UNSUBSCRIBE of the version's chunk topic, one fetch request (QoS 0), the
// chunk, one status event and one acknowledgement (QoS 0), with the
// answers the protocol requires. Each packet is broker CPU per device per
// rollout (docs/scaling.md); this guards the count, which is exact where a
// timing would not be: progress reports are held past the outcome here, as
// a fast update's are. The broker's counters leave out the control plane's
// own publishes, which mochi counts as received packets.
func TestRolloutPacketsPerDevice(t *testing.T) {
	ts := newTestServer(t, nil)
	const devices = 4
	var agents []*agent.Agent
	var ids []string
	for i := range devices {
		id := fmt.Sprintf("dev-%d", i)
		opts := fleettest.AgentOptions(t, ts.register(id, nil), testRuntime)
		opts.HeartbeatInterval = time.Hour // no telemetry in the window
		opts.StatusHold = time.Hour        // only the outcome is reported
		opts.InferenceListen = ""
		agents, ids = append(agents, fleettest.RunAgent(t, opts)), append(ids, id)
	}
	packets := func() float64 {
		return metricValue(t, ts, "edgefleet_broker_packets_received_total") + metricValue(t, ts, "edgefleet_broker_packets_sent_total")
	}
	settled := func() {
		t.Helper()
		last := -1.0
		require.Eventually(t, func() bool {
			for _, a := range agents {
				if a.QueuedReports() > 0 {
					return false
				}
			}
			n := packets()
			quiet := n == last
			last = n
			return quiet
		}, time.Minute, 500*time.Millisecond, "the agents' start settles")
	}
	settled()
	mv := ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	require.EqualValues(t, 1, mv.ChunkCount)
	before := packets()
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: ids})
	waitReportedActive(t, ts.Server, "v1", time.Minute, ids...)
	settled() // the acknowledgements delivered, the chunk topic left
	perDevice := (packets() - before) / devices
	t.Logf("%.2f MQTT packets per device", perDevice)
	assert.Equal(t, 12.0, perDevice, "MQTT packets per device per rollout (the control plane's own publishes not counted)")
}

// A device that asks for a version after its shared round went out (it
// was off, or slow to verify its desired state) is sent the chunks on its
// own topic, to it alone: the devices that downloaded in the round do not
// receive the version again.
func TestLateAskerIsServedOnItsOwnTopic(t *testing.T) {
	ts := newTestServer(t, nil)
	ids := []string{"dev-0", "dev-1", "dev-late"}
	creds := map[string]api.DeviceCredentials{}
	for _, id := range ids {
		creds[id] = ts.register(id, nil)
	}
	start := func(id string) {
		t.Helper()
		opts := fleettest.AgentOptions(t, creds[id], testRuntime)
		opts.InferenceListen = ""
		fleettest.RunAgent(t, opts)
	}
	start("dev-0")
	start("dev-1")
	mv := ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	chunks := float64(mv.ChunkCount)
	direct := func() float64 { return metricValue(t, ts, "edgefleet_chunk_publishes_direct_total") }
	// Publishes on the version's shared topic: rounds.
	shared := func() float64 { return metricValue(t, ts, "edgefleet_chunk_publishes_total") - direct() }

	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: ids})
	waitReportedActive(t, ts.Server, "v1", time.Minute, "dev-0", "dev-1")
	require.Equal(t, chunks, shared(), "one round, without the device that was off")
	directBefore := direct() // a device slow to ask under load is a late asker too

	start("dev-late")
	waitReportedActive(t, ts.Server, "v1", time.Minute, "dev-late")
	assert.Equal(t, chunks, direct()-directBefore, "the late device's chunks went to its own topic")
	assert.Equal(t, chunks, shared(), "and nowhere else: no second round")
	assert.GreaterOrEqual(t, metricValue(t, ts, "edgefleet_chunk_requests_late_total"), 1.0)
}
