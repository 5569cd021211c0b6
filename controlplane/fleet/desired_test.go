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
func (oneModel) Corrupt(string, string) string         { return "" }

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
		var rec desiredRecord
		assert.Error(t, tf.opts.KV.GetJSON(prefixDesired+id, &rec), "%s: nothing stored", id)
	}
}
