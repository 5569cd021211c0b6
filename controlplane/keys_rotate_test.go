package controlplane_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestRotatedKeysArePublishedAndDocumentsResigned: after the release and
// control keys rotate, a restarted control plane publishes the new trust
// bundle and re-signs the manifests and desired states it had signed with
// the old keys, so a device that follows the bundle accepts them.
func TestRotatedKeysArePublishedAndDocumentsResigned(t *testing.T) {
	dir := t.TempDir()
	first := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	creds := first.register("dev-1", nil)
	first.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	first.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}})
	c := deviceClient(t, creds)
	sc := topics.Scheme{Prefix: creds.TopicPrefix}
	device := agentVerifier(t, creds, receive(t, subscribe(t, c, sc.Trust()), "trust bundle v1"))
	c.Disconnect(50)
	first.Stop()

	keyDir := filepath.Join(dir, "keys")
	_, err := keys.Rotate(keyDir, efpb.Role_ROLE_RELEASE, time.Now(), time.Hour*24)
	require.NoError(t, err)
	b, err := keys.Rotate(keyDir, efpb.Role_ROLE_CONTROL, time.Now(), time.Hour*24)
	require.NoError(t, err)
	require.Equal(t, uint64(3), b.Version)

	second := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	creds.BrokerURL = second.BrokerURL()
	c = deviceClient(t, creds)
	trust := receive(t, subscribe(t, c, sc.Trust()), "trust bundle v3")
	got, err := device.UpdateTrustBundle(mustEnvelope(t, trust.payload), time.Now())
	require.NoError(t, err, "the device follows the rotated bundle")
	assert.Equal(t, uint64(3), got.Version)

	// The retained manifest and desired state end up signed by the new keys.
	manifests := subscribe(t, c, sc.Manifest("fraud", "v1"))
	require.Eventually(t, func() bool {
		select {
		case m := <-manifests:
			_, err := device.VerifyManifest(mustEnvelope(t, m.payload), time.Now())
			return err == nil
		default:
			return false
		}
	}, 15*time.Second, 10*time.Millisecond, "a manifest signed by the new release key is published")
	desired := subscribe(t, c, sc.Desired("dev-1"))
	require.Eventually(t, func() bool {
		select {
		case m := <-desired:
			d, err := device.VerifyDesired(mustEnvelope(t, m.payload), time.Now())
			return err == nil && d.Generation == 2
		default:
			return false
		}
	}, 15*time.Second, 10*time.Millisecond, "the desired state is re-issued under the new control key")
}
