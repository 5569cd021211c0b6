package controlplane_test

import (
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestRunLeavesNoGoroutines runs a server through every path that starts
// goroutines (API, broker, ingest, chunk worker, renewal, store) and checks
// that after Run returns the goroutine count is back where it was.
func TestRunLeavesNoGoroutines(t *testing.T) {
	http.DefaultClient.CloseIdleConnections()
	before := runtime.NumGoroutine()

	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", nil)
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	c, err := dialDevice(creds.BrokerURL, creds.Username, creds.Password)
	require.NoError(t, err)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	chunks := subscribe(t, c, sc.Chunks("fraud", "v1"))
	req, err := proto.Marshal(&efpb.FetchRequest{DeviceId: "dev-1", Name: "fraud", Version: "v1"})
	require.NoError(t, err)
	publish(t, c, sc.Fetch("dev-1"), req)
	receive(t, chunks, "chunk")
	c.Disconnect(50)
	ts.Stop()
	http.DefaultClient.CloseIdleConnections()

	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d before, %d after Run returned:\n%s", before, runtime.NumGoroutine(), buf)
		}
		time.Sleep(10 * time.Millisecond) // polling: nothing to wait on for "goroutines exited"
	}
}
