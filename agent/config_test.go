package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/signing"
)

func TestConfigOptions(t *testing.T) {
	root, err := signing.GenerateKey(nil)
	require.NoError(t, err)
	base := fmt.Sprintf("device_id: d1\nbroker_url: tcp://127.0.0.1:1883\ndata_dir: /tmp/d1\nroot_public_key: |\n%s",
		indent(string(signing.EncodePublicKeyPEM(root.Public))))

	cfg, err := ParseConfig([]byte(base + "heartbeat_interval: 10s\nhealth_period: 30s\nlabel_ttl: 2h\nlabel_capacity: 500\n" +
		"outbox_max_reports: 20\noutbox_max_bytes: 65536\ndisable_monitoring: true\n" +
		"inference_max_body_bytes: 8388608\ninference_max_batch: 4096\ninference_max_inflight_bytes: 16777216\n"))
	require.NoError(t, err)
	o, err := cfg.Options()
	require.NoError(t, err)
	assert.Equal(t, 10*time.Second, o.HeartbeatInterval)
	assert.Equal(t, 30*time.Second, o.HealthPeriod)
	assert.Equal(t, 2*time.Hour, o.LabelTTL)
	assert.Equal(t, 500, o.LabelCapacity)
	assert.Equal(t, 20, o.OutboxMaxReports)
	assert.Equal(t, int64(65536), o.OutboxMaxBytes)
	assert.True(t, o.DisableMonitoring)
	assert.Equal(t, int64(8<<20), o.InferenceMaxBodyBytes)
	assert.Equal(t, 4096, o.InferenceMaxBatch)
	assert.Equal(t, int64(16<<20), o.InferenceMaxInflightBytes)
	assert.Equal(t, root.Public, o.RootPublicKey)
	assert.False(t, o.Peers.enabled(), "sharing is off by default")

	cfg, err = ParseConfig([]byte(base + "peers:\n  listen: 0.0.0.0:7946\n  advertise: 192.0.2.7:7946\n  join: [192.0.2.8:7946]\n  serve_workers: 3\n  serve_bytes_per_sec: 1048576\n"))
	require.NoError(t, err)
	o, err = cfg.Options()
	require.NoError(t, err)
	assert.Equal(t, PeerOptions{Listen: "0.0.0.0:7946", Advertise: "192.0.2.7:7946", Join: []string{"192.0.2.8:7946"},
		ServeWorkers: 3, ServeBytesPerSec: 1 << 20}, o.Peers)
	assert.True(t, o.Peers.enabled())

	for line, want := range map[string]time.Duration{"": 0, "retained_recheck: 45s\n": 45 * time.Second, "retained_recheck: off\n": -1} {
		cfg, err := ParseConfig([]byte(base + line))
		require.NoError(t, err)
		o, err := cfg.Options()
		require.NoError(t, err)
		assert.Equal(t, want, o.RetainedRecheck, "RetainedRecheck with %q", line)
	}

	for line, want := range map[string]int64{"": 0, "memory_limit: 40MiB\n": 40 << 20, "memory_limit: 48000000\n": 48e6,
		"memory_limit: 1 GB\n": 1e9} {
		cfg, err := ParseConfig([]byte(base + line))
		require.NoError(t, err)
		_, err = cfg.Options()
		require.NoError(t, err)
		got, err := cfg.GoMemoryLimit()
		require.NoError(t, err)
		assert.Equal(t, want, got, "GoMemoryLimit with %q", line)
	}

	for line, want := range map[string]string{
		"memory_limit: 8MiB\n":      "memory_limit \"8MiB\" is below 16 MiB",
		"memory_limit: lots\n":      "memory_limit \"lots\": not a size",
		"memory_limit: -5MiB\n":     "not a size",
		"health_period: soon\n":     "health_period \"soon\" is not a duration",
		"label_ttl: -1h\n":          "label_ttl \"-1h\" is not a duration",
		"retained_recheck: never\n": "retained_recheck \"never\" is not a duration",
		"heartbeat_interval: 1x\n":  "heartbeat_interval",
		"outbox_max_reports: -3\n":  "must not be negative",
		"inference_max_batch: -1\n": "must not be negative",
		"inference_max_body_bytes: 2000\ninference_max_inflight_bytes: 1000\n": "inference_max_inflight_bytes 1000 is below inference_max_body_bytes 2000",
		"label_capacity: lots\n":                             "cannot unmarshal",
		"device_id: d2\n":                                    "already defined",
		"unknown_key: 1\n":                                   "field unknown_key not found",
		"peers: {listen: 7946}\n":                            "peers.listen: want host:port",
		"peers: {join: [192.0.2.8:7946]}\n":                  "peers.listen is required",
		"peers: {listen: \":7946\", join: [nowhere]}\n":      "peers.join: want host:port",
		"peers: {listen: \":7946\", serve_workers: -1}\n":    "peers.serve_workers must not be negative",
		"peers: {listen: \":7946\", advertise: \"a:b:c\"}\n": "peers.advertise: want host:port",
	} {
		cfg, err := ParseConfig([]byte(base + line))
		if err == nil {
			_, err = cfg.Options()
		}
		require.Error(t, err, "config with %q", line)
		assert.Contains(t, err.Error(), want, "config with %q", line)
	}
}
