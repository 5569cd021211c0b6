package fleet

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// retainedBus keeps the last retained payload per topic.
type retainedBus struct {
	mu       sync.Mutex
	retained map[string][]byte
}

func (b *retainedBus) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if retain {
		b.retained[topic] = payload
	}
	return nil
}

func (b *retainedBus) URL() string { return "tcp://127.0.0.1:1" }

func (b *retainedBus) get(topic string) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.retained[topic]
}

type oneModel struct{}

func (oneModel) SHA256(string, string) ([]byte, error) { return make([]byte, 32), nil }
func (oneModel) ExpectFetches(string, string, int)     {}
func (oneModel) Envelope(name, version string) ([]byte, error) {
	return []byte("the manifest of " + name + "@" + version), nil
}
func (oneModel) Corrupt(string, string) string { return "" }

// TestDeployIssuesEachDeviceItsOwnSignedState: desired states are written
// several devices to a transaction and only the first signature of a
// deployment is checked against the trust bundle; each device still gets
// a document of its own (its id, its next generation) that verifies, also
// past one transaction's worth of devices and on a second deployment.
func TestDeployIssuesEachDeviceItsOwnSignedState(t *testing.T) {
	n := maxDevicesPerWrite + 3
	devs := make([]string, n)
	for i := range devs {
		devs[i] = fmt.Sprintf("dev-%04d", i)
	}
	tf := newTestFleet(t, t.TempDir(), time.Hour, devs...)
	t.Cleanup(func() { _ = tf.db.Close() })
	bus := &retainedBus{retained: map[string][]byte{}}
	tf.opts.Bus, tf.opts.Models = bus, oneModel{}

	for round, version := range []string{"1", "2"} {
		res, err := tf.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: version, Devices: devs})
		require.NoError(t, err)
		require.Len(t, res.Devices, n)
		for _, id := range devs {
			env := &efpb.Envelope{}
			require.NoError(t, proto.Unmarshal(bus.get(tf.scheme.Desired(id)), env), id)
			d, err := tf.opts.Keys.Verifier.VerifyDesired(env, time.Now())
			require.NoError(t, err, "%s's desired state verifies", id)
			assert.Equal(t, id, d.DeviceId)
			assert.Equal(t, uint64(round+1), d.Generation, id)
			require.Len(t, d.Models, 1)
			assert.Equal(t, version, d.Models[0].Version, id)
			got, ok := tf.Registry().Get(id)
			require.True(t, ok)
			require.NotNil(t, got.Desired)
			assert.Equal(t, uint64(round+1), got.Desired.Generation, id)
		}
	}
}

// TestDeployRefusedWhenTheControlKeyIsNotTrusted: a control key the trust
// bundle does not list (the check made once per deployment) fails the
// deployment before anything is published or a generation is used.
func TestDeployRefusedWhenTheControlKeyIsNotTrusted(t *testing.T) {
	tf := newTestFleet(t, t.TempDir(), time.Hour, "dev-a", "dev-b")
	t.Cleanup(func() { _ = tf.db.Close() })
	bus := &retainedBus{retained: map[string][]byte{}}
	tf.opts.Bus, tf.opts.Models = bus, oneModel{}
	stranger, err := signing.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tf.opts.Keys.Control = stranger

	_, err = tf.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "1", Devices: []string{"dev-a", "dev-b"}})
	require.ErrorContains(t, err, "does not verify with the trust bundle")
	for _, id := range []string{"dev-a", "dev-b"} {
		assert.Nil(t, bus.get(tf.scheme.Desired(id)), "%s: nothing published", id)
		_, err := tf.opts.KV.Get(prefixDesired + id)
		assert.ErrorIs(t, err, store.ErrNotFound, "%s: nothing stored", id)
	}
}

// The assignment a deployment changes carries the version's manifest when
// it is small (the agent then needs no subscription to the manifest
// topic); the assignments carried over from the device's previous state
// drop theirs, so a device's retained state holds one manifest at most.
// Beyond InlineManifestMax, or with it negative, none is carried.
func TestDesiredStateCarriesASmallManifest(t *testing.T) {
	tf := newTestFleet(t, t.TempDir(), time.Hour, "dev-a")
	t.Cleanup(func() { _ = tf.db.Close() })
	bus := &retainedBus{retained: map[string][]byte{}}
	tf.opts.Bus, tf.opts.Models = bus, oneModel{}
	desired := func() map[string][]byte {
		t.Helper()
		env := &efpb.Envelope{}
		require.NoError(t, proto.Unmarshal(bus.get(tf.scheme.Desired("dev-a")), env))
		d, err := tf.opts.Keys.Verifier.VerifyDesired(env, time.Now())
		require.NoError(t, err)
		out := map[string][]byte{}
		for _, m := range d.Models {
			out[m.Name+"@"+m.Version] = m.Manifest
		}
		return out
	}
	deploy := func(model, version string) {
		t.Helper()
		_, err := tf.Deploy(context.Background(), api.DeployRequest{Model: model, Version: version, Devices: []string{"dev-a"}})
		require.NoError(t, err)
	}

	assert.Equal(t, DefaultInlineManifestMax, tf.opts.InlineManifestMax)
	deploy("fraud", "1")
	assert.Equal(t, map[string][]byte{"fraud@1": []byte("the manifest of fraud@1")}, desired())
	deploy("churn", "7")
	assert.Equal(t, map[string][]byte{"fraud@1": nil, "churn@7": []byte("the manifest of churn@7")}, desired(),
		"the carried-over assignment drops its manifest")

	tf.opts.InlineManifestMax = len("the manifest of fraud@2") - 1
	deploy("fraud", "2")
	assert.Equal(t, map[string][]byte{"fraud@2": nil, "churn@7": nil}, desired(), "one byte too large")
	tf.opts.InlineManifestMax = -1
	deploy("churn", "8")
	assert.Equal(t, map[string][]byte{"fraud@2": nil, "churn@8": nil}, desired(), "negative: never")
}

// Desired-state records written as JSON by earlier versions are read: a
// control plane upgraded over them republishes them at start, counts
// their generations on, and writes the binary form from the next deploy.
func TestDesiredRecordsWrittenAsJSONAreRead(t *testing.T) {
	tf := newTestFleet(t, t.TempDir(), time.Hour, "dev-a", "dev-b")
	t.Cleanup(func() { _ = tf.db.Close() })
	bus := &retainedBus{retained: map[string][]byte{}}
	tf.opts.Bus, tf.opts.Models = bus, oneModel{}
	_, err := tf.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "1", Devices: []string{"dev-a", "dev-b"}})
	require.NoError(t, err)
	b, err := tf.opts.KV.Get(prefixDesired + "dev-a")
	require.NoError(t, err)
	require.Equal(t, byte(desiredRecordV1), b[0], "written in the binary form")
	rec, err := decodeDesiredRecord(b)
	require.NoError(t, err)
	old := desiredRecord{Generation: 41, Envelope: rec.Envelope} // as an earlier version wrote it
	require.NoError(t, tf.opts.KV.SetJSON(prefixDesired+"dev-a", old, true))

	bus.retained = map[string][]byte{}
	n, err := tf.PublishRetained(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, n, "the JSON record and the binary one")
	assert.Equal(t, rec.Envelope, bus.get(tf.scheme.Desired("dev-a")))

	res, err := tf.Deploy(context.Background(), api.DeployRequest{Model: "fraud", Version: "2", Devices: []string{"dev-a"}})
	require.NoError(t, err)
	assert.Equal(t, uint64(42), res.Devices[0].Generation, "the JSON record's generation counted on")
	b, err = tf.opts.KV.Get(prefixDesired + "dev-a")
	require.NoError(t, err)
	assert.Equal(t, byte(desiredRecordV1), b[0], "rewritten in the binary form")

	for _, bad := range [][]byte{nil, {0x7f}, {desiredRecordV1}, []byte("{not json")} {
		_, err := decodeDesiredRecord(bad)
		assert.Error(t, err, "%q", bad)
	}
}
