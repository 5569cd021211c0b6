package controlplane_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
)

// TestCorruptModelFileIsVisible: a stored model file whose bytes no longer
// match its sha256 is found at start, shown on the version and on the
// devices waiting for it, counted, and deploying it is refused with the
// reason; the sound versions are unaffected.
func TestCorruptModelFileIsVisible(t *testing.T) {
	dir := t.TempDir()
	mod := func(o *controlplane.Options) { o.DataDir = dir }
	first := newTestServer(t, mod)
	first.register("dev-1", nil)
	v1 := first.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	first.mustUpload("fraud", "v2", fleettest.TrainedModel(t, 2))
	first.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	first.Stop()

	blob := filepath.Join(dir, "blobs", v1.SHA256)
	data, err := os.ReadFile(blob)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff // one flipped byte, same size and name
	require.NoError(t, os.WriteFile(blob, data, 0o644))

	ts := newTestServer(t, mod)
	ts.Token = first.Token // the admin token is the one stored at first start
	ts.Client = ts.WithToken(first.Token)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		mv, err := ts.Client.Model(ctx, "fraud", "v1")
		return err == nil && mv.Corrupt != ""
	}, 30*time.Second, 250*time.Millisecond, "the corrupt file is found at start")
	mv, err := ts.Client.Model(ctx, "fraud", "v1")
	require.NoError(t, err)
	assert.Contains(t, mv.Corrupt, "does not match its sha256")
	sound, err := ts.Client.Model(ctx, "fraud", "v2")
	require.NoError(t, err)
	assert.Empty(t, sound.Corrupt)
	assert.Equal(t, 1.0, metricValue(t, ts, "edgefleet_model_versions_corrupt"))

	dev, err := ts.Client.Device(ctx, "dev-1")
	require.NoError(t, err)
	assert.Contains(t, dev.Blocked, "fraud@v1", "the device waiting for it is shown blocked")

	_, err = ts.Client.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "corrupt")
	assert.True(t, errors.Is(err, api.ErrChecksFailed), "422: %v", err)
	_, err = ts.Client.CreateRollout(ctx, api.RolloutSpec{Model: "fraud", Version: "v1", Selector: "", Stages: []api.RolloutStage{{Percent: 100}}})
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "corrupt") || errors.Is(err, api.ErrInvalid), "%v", err)

	// The sound version deploys, and the device is no longer blocked.
	res, err := ts.Client.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "v2", Devices: []string{"dev-1"}})
	require.NoError(t, err)
	require.Len(t, res.Devices, 1)
	dev, err = ts.Client.Device(ctx, "dev-1")
	require.NoError(t, err)
	assert.Empty(t, dev.Blocked)
	code, _ := ts.do("GET", "/api/v1/models/fraud/versions/v1", nil)
	assert.Equal(t, http.StatusOK, code, "the version stays listed, marked")
}
