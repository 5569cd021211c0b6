package controlplane_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestInProcessOperations(t *testing.T) {
	notReady, err := controlplane.New(controlplane.Options{DataDir: t.TempDir()})
	require.NoError(t, err)
	_, err = notReady.Devices("")
	assert.ErrorIs(t, err, api.ErrUnavailable)
	assert.ErrorContains(t, err, "not ready")

	ts := newTestServer(t, nil)
	ctx := context.Background()
	creds, err := ts.RegisterDevice("dev-1", map[string]string{"ring": "canary"})
	require.NoError(t, err)
	assert.Equal(t, ts.BrokerURL(), creds.BrokerURL)
	_, err = ts.RegisterDevice("dev-1", nil)
	assert.ErrorIs(t, err, api.ErrExists)
	_, err = ts.RegisterDevice("dev 2", nil)
	assert.ErrorIs(t, err, api.ErrInvalid)

	a := fleettest.TrainedModel(t, 1)
	bad := a.Metadata()
	bad.Size = 1
	_, err = ts.AddModelVersion(ctx, "fraud", "v1", a.ONNX, bad, false)
	assert.ErrorIs(t, err, api.ErrInvalid)
	assert.ErrorContains(t, err, "metadata sets size")
	mv, err := ts.AddModelVersion(ctx, "fraud", "v1", a.ONNX, a.Metadata(), false)
	require.NoError(t, err)
	assert.True(t, mv.Checks.Passed)

	res, err := ts.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "v1", Selector: "ring=canary"})
	require.NoError(t, err)
	assert.Equal(t, []api.DeployedDevice{{ID: "dev-1", Generation: 1}}, res.Devices)

	devs, err := ts.Devices("ring!=canary")
	require.NoError(t, err)
	assert.Empty(t, devs)
	d, err := ts.Device("dev-1")
	require.NoError(t, err)
	assert.Equal(t, uint64(1), d.Desired.Generation)
	_, err = ts.Device("dev-9")
	assert.ErrorIs(t, err, api.ErrNotFound)
}

func TestTelemetryLastSeenPersistenceIsThrottled(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	ts := newTestServer(t, func(o *controlplane.Options) { o.Clock = clock.Now })
	ts.register("dev-1", nil)
	in := ts.internals()
	sc := in.Scheme
	tel, err := proto.Marshal(&efpb.Telemetry{DeviceId: "dev-1", Seq: 1})
	require.NoError(t, err)
	stored := func() time.Time { // what a registry loaded from the store has
		t.Helper()
		reg, err := fleet.OpenRegistry(in.KV, nil)
		require.NoError(t, err)
		d, _ := reg.Get("dev-1")
		return d.LastSeen
	}

	// Registration wrote the record just now: the first telemetry is within
	// the window, so only memory changes.
	t0 := clock.Add(time.Second)
	in.OnTelemetry(sc.Telemetry("dev-1"), tel)
	d, _ := ts.internals().Registry.Get("dev-1")
	assert.True(t, d.LastSeen.Equal(t0), "in memory last_seen is always current")
	assert.True(t, stored().IsZero())

	t1 := clock.Add(30 * time.Second) // fleet persists last_seen at most every 30s
	in.OnTelemetry(sc.Telemetry("dev-1"), tel)
	assert.True(t, stored().Equal(t1), "persisted once the window passed")

	clock.Add(10 * time.Second)
	in.OnTelemetry(sc.Telemetry("dev-1"), tel)
	assert.True(t, stored().Equal(t1), "not again within the window")

	// A status event is a change: written through with the next batch of
	// status events.
	t3 := clock.Add(time.Second)
	st, err := proto.Marshal(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "fraud", State: efpb.ModelState_MODEL_STATE_ACTIVE})
	require.NoError(t, err)
	in.OnStatus(sc.Status("dev-1"), st)
	require.Eventually(t, func() bool { return stored().Equal(t3) }, 10*time.Second, 5*time.Millisecond)
}

func TestAlertWindowShorterThanTheBucketsIsRefused(t *testing.T) {
	_, err := controlplane.New(controlplane.Options{DataDir: t.TempDir(), Monitor: monitor.Config{Rules: monitor.Rules{Window: 20 * time.Second}}})
	assert.ErrorContains(t, err, "alert window 20s is shorter than the 1m0s resolution")
	_, err = controlplane.New(controlplane.Options{DataDir: t.TempDir(), Monitor: monitor.Config{Rules: monitor.Rules{Window: time.Minute}}})
	assert.NoError(t, err)
}
