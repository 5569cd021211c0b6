package agent

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/signing"
)

// Config is the agent's configuration file (YAML). It is what
// `edgefleet device add --config-out` writes and what the install script
// places on a device. Unknown keys are errors, reported with their line.
// A written config leaves out keys holding their zero value, which is also
// what a missing key decodes to.
type Config struct {
	DeviceID string `yaml:"device_id,omitempty"`
	// BrokerURL is the MQTT broker, e.g. tcp://cp.example:1883; a
	// comma-separated list names the nodes of a clustered broker (NATS),
	// and the agent reconnects to another node when its node dies.
	BrokerURL string `yaml:"broker_url,omitempty"`
	// MQTTQoS0Subscriptions subscribes at QoS 0: set it on a NATS
	// cluster, where each QoS 1 subscription costs a replicated JetStream
	// consumer (docs/deploy.md, "A NATS cluster"). Nothing is lost: what
	// the agent subscribes to is retained or fetched again.
	MQTTQoS0Subscriptions bool `yaml:"mqtt_qos0_subscriptions,omitempty"`
	// RetainedRecheck is how long after connecting the agent asks again
	// for its retained documents, e.g. "20s", or "off" (Options.RetainedRecheck;
	// empty: 20s with several broker nodes, off with one).
	RetainedRecheck string `yaml:"retained_recheck,omitempty"`
	// Username defaults to DeviceID.
	Username string `yaml:"username,omitempty"`
	Password string `yaml:"password,omitempty"`
	// RootPublicKey is the PEM of the fleet's root public key: the only key
	// an agent is provisioned with; every other key comes from the
	// root-signed trust bundle.
	RootPublicKey string `yaml:"root_public_key,omitempty"`
	// DataDir holds the agent's state and model files.
	DataDir string `yaml:"data_dir,omitempty"`
	// InferenceListen is the local inference API address; empty disables it.
	InferenceListen string `yaml:"inference_listen,omitempty"`
	// InferenceMaxBodyBytes bounds one request body (default 4 MiB);
	// InferenceMaxBatch a dynamic first dimension (default 1024);
	// InferenceMaxInflightBytes the request bytes handled at once, beyond
	// which requests get 503 with Retry-After (default 4 × the body limit).
	InferenceMaxBodyBytes     int64 `yaml:"inference_max_body_bytes,omitempty"`
	InferenceMaxBatch         int   `yaml:"inference_max_batch,omitempty"`
	InferenceMaxInflightBytes int64 `yaml:"inference_max_inflight_bytes,omitempty"`
	// MetricsListen is an optional Prometheus endpoint address; empty
	// disables it.
	MetricsListen string `yaml:"metrics_listen,omitempty"`
	TopicPrefix   string `yaml:"topic_prefix,omitempty"`
	// Hardware is the device class matched against a manifest's hardware
	// list; defaults to the GOARCH of the binary.
	Hardware string `yaml:"hardware,omitempty"`
	// ONNXRuntimeLibrary is the path of libonnxruntime.so.1; empty searches
	// next to the binary and in the usual places.
	ONNXRuntimeLibrary string `yaml:"onnxruntime_library,omitempty"`
	// HeartbeatInterval between telemetry reports, e.g. "30s".
	HeartbeatInterval string `yaml:"heartbeat_interval,omitempty"`
	// HealthPeriod a new version serves on trial before it is committed,
	// e.g. "30s"; empty or "0s" commits once its checks pass.
	HealthPeriod string `yaml:"health_period,omitempty"`
	// DisableMonitoring turns off per-inference drift and accuracy
	// monitoring.
	DisableMonitoring bool `yaml:"disable_monitoring,omitempty"`
	// LabelCapacity bounds the predictions kept per model while they wait
	// for a ground-truth label; LabelTTL is how long one waits, e.g. "24h".
	LabelCapacity int    `yaml:"label_capacity,omitempty"`
	LabelTTL      string `yaml:"label_ttl,omitempty"`
	// OutboxMaxReports and OutboxMaxBytes bound the telemetry kept while
	// the broker is unreachable; beyond them the oldest is dropped and
	// the loss reported.
	OutboxMaxReports int   `yaml:"outbox_max_reports,omitempty"`
	OutboxMaxBytes   int64 `yaml:"outbox_max_bytes,omitempty"`
	// Peers turns on sharing downloads with the devices of the same site.
	Peers *PeersConfig `yaml:"peers,omitempty"`
	// MemoryLimit is the Go runtime's soft memory limit for the agent
	// process (runtime/debug.SetMemoryLimit), e.g. "32MiB": the collector
	// works harder as the Go heap nears it. Empty leaves the runtime's
	// default ($GOMEMLIMIT, else none). It covers Go's memory only, not
	// onnxruntime's.
	MemoryLimit string `yaml:"memory_limit,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level,omitempty"`
	// TLS to the broker (tls:// broker_url): TLSCAFile is the PEM CA bundle
	// that signed the broker's certificate (empty: the system roots);
	// TLSCertFile/TLSKeyFile are this device's client certificate and key
	// for mutual TLS (the certificate's common name is the device id).
	TLSCAFile   string `yaml:"tls_ca_file,omitempty"`
	TLSCertFile string `yaml:"tls_cert_file,omitempty"`
	TLSKeyFile  string `yaml:"tls_key_file,omitempty"`
}

// PeersConfig is the peers section of the config file (see PeerOptions).
// Sharing is off unless listen is set: it opens a port on the LAN, which
// is the operator's call (firewall, interface), not a default.
type PeersConfig struct {
	// Listen is host:port, e.g. 0.0.0.0:7946.
	Listen string `yaml:"listen,omitempty"`
	// Advertise is the host:port other devices dial, when the bound
	// address is not reachable as it is (NAT, 0.0.0.0 on a multi-homed
	// host).
	Advertise string `yaml:"advertise,omitempty"`
	// Join are devices to contact besides those the control plane lists.
	Join []string `yaml:"join,omitempty"`
	// ServeWorkers and ServeBytesPerSec bound what the device sends to
	// its peers (defaults 2 and 8 MiB/s).
	ServeWorkers     int   `yaml:"serve_workers,omitempty"`
	ServeBytesPerSec int64 `yaml:"serve_bytes_per_sec,omitempty"`
}

// LoadConfig reads and strictly decodes a config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig strictly decodes a config document: unknown keys and a second
// document are errors.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		return nil, errors.New("agent config: more than one YAML document")
	}
	return &c, nil
}

// Options turns the file into agent Options, checking what the agent cannot
// run without.
func (c *Config) Options() (Options, error) {
	var o Options
	if c.DeviceID == "" {
		return o, errors.New("agent config: device_id is required")
	}
	if c.BrokerURL == "" {
		return o, errors.New("agent config: broker_url is required (e.g. tcp://control-plane:1883)")
	}
	if _, err := mqttc.BrokerURLs(c.BrokerURL, c.DeviceID); err != nil {
		return o, fmt.Errorf("agent config: broker_url: %w", err)
	}
	if c.RootPublicKey == "" {
		return o, errors.New("agent config: root_public_key is required: paste the PEM of the fleet's root public key from the provisioning bundle")
	}
	root, err := signing.ParsePublicKeyPEM([]byte(c.RootPublicKey))
	if err != nil {
		return o, fmt.Errorf("agent config: root_public_key: %w", err)
	}
	if c.DataDir == "" {
		return o, errors.New("agent config: data_dir is required")
	}
	hb, err := configDuration("heartbeat_interval", c.HeartbeatInterval)
	if err != nil {
		return o, err
	}
	health, err := configDuration("health_period", c.HealthPeriod)
	if err != nil {
		return o, err
	}
	recheck := time.Duration(-1)
	if c.RetainedRecheck != "off" {
		if recheck, err = configDuration("retained_recheck", c.RetainedRecheck); err != nil {
			return o, err
		}
	}
	labelTTL, err := configDuration("label_ttl", c.LabelTTL)
	if err != nil {
		return o, err
	}
	if c.LabelCapacity < 0 || c.OutboxMaxReports < 0 || c.OutboxMaxBytes < 0 {
		return o, errors.New("agent config: label_capacity, outbox_max_reports and outbox_max_bytes must not be negative")
	}
	if c.InferenceMaxBodyBytes < 0 || c.InferenceMaxBatch < 0 || c.InferenceMaxInflightBytes < 0 {
		return o, errors.New("agent config: inference_max_body_bytes, inference_max_batch and inference_max_inflight_bytes must not be negative")
	}
	if c.InferenceMaxInflightBytes > 0 && c.InferenceMaxInflightBytes < c.InferenceMaxBodyBytes {
		return o, fmt.Errorf("agent config: inference_max_inflight_bytes %d is below inference_max_body_bytes %d: a largest request could never be handled",
			c.InferenceMaxInflightBytes, c.InferenceMaxBodyBytes)
	}
	if _, err := c.GoMemoryLimit(); err != nil {
		return o, err
	}
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return o, err
	}
	var peerOpts PeerOptions
	if p := c.Peers; p != nil {
		for key, v := range map[string]string{"peers.listen": p.Listen, "peers.advertise": p.Advertise} {
			if v == "" {
				continue
			}
			if _, _, err := splitListen(v); err != nil {
				return o, fmt.Errorf("agent config: %s: want host:port: %w", key, err)
			}
		}
		for _, j := range p.Join {
			if _, _, err := splitListen(j); err != nil {
				return o, fmt.Errorf("agent config: peers.join: want host:port: %w", err)
			}
		}
		if p.Listen == "" && (p.Advertise != "" || len(p.Join) > 0) {
			return o, errors.New("agent config: peers.listen is required to share with the site (advertise and join need it)")
		}
		if p.ServeWorkers < 0 {
			return o, errors.New("agent config: peers.serve_workers must not be negative")
		}
		peerOpts = PeerOptions{Listen: p.Listen, Advertise: p.Advertise, Join: p.Join,
			ServeWorkers: p.ServeWorkers, ServeBytesPerSec: p.ServeBytesPerSec}
	}
	return Options{
		TLS:                       tlsCfg,
		HealthPeriod:              health,
		DeviceID:                  c.DeviceID,
		BrokerURL:                 c.BrokerURL,
		QoS0Subscriptions:         c.MQTTQoS0Subscriptions,
		RetainedRecheck:           recheck,
		Username:                  c.Username,
		Password:                  c.Password,
		RootPublicKey:             root,
		DataDir:                   c.DataDir,
		InferenceListen:           c.InferenceListen,
		InferenceMaxBodyBytes:     c.InferenceMaxBodyBytes,
		InferenceMaxBatch:         c.InferenceMaxBatch,
		InferenceMaxInflightBytes: c.InferenceMaxInflightBytes,
		MetricsListen:             c.MetricsListen,
		TopicPrefix:               c.TopicPrefix,
		Hardware:                  c.Hardware,
		ORTLibrary:                c.ONNXRuntimeLibrary,
		HeartbeatInterval:         hb,
		DisableMonitoring:         c.DisableMonitoring,
		LabelCapacity:             c.LabelCapacity,
		LabelTTL:                  labelTTL,
		OutboxMaxReports:          c.OutboxMaxReports,
		OutboxMaxBytes:            c.OutboxMaxBytes,
		Peers:                     peerOpts,
	}, nil
}

// configDuration parses an optional duration key; empty means zero (the
// option's default).
func configDuration(key, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("agent config: %s %q is not a duration (e.g. 30s)", key, v)
	}
	return d, nil
}

// minMemoryLimit is the smallest memory_limit accepted: below it the
// collector would run all the time for an agent's ordinary heap.
const minMemoryLimit = 16 << 20

// GoMemoryLimit returns memory_limit in bytes (0 when unset). The limit is
// process-wide, so the agent's main applies it, not Run: fleet-sim runs
// many agents in one process.
func (c *Config) GoMemoryLimit() (int64, error) {
	if c.MemoryLimit == "" {
		return 0, nil
	}
	n, err := parseBytes(c.MemoryLimit)
	if err != nil {
		return 0, fmt.Errorf("agent config: memory_limit %q: %w", c.MemoryLimit, err)
	}
	if n < minMemoryLimit {
		return 0, fmt.Errorf("agent config: memory_limit %q is below %d MiB: the collector would run without pause", c.MemoryLimit, minMemoryLimit>>20)
	}
	return n, nil
}

// parseBytes reads a size: a whole number of bytes, or one with a unit
// (KiB, MiB, GiB, or kB, MB, GB).
func parseBytes(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, errors.New("not a size (e.g. 32MiB, 40MB or a number of bytes)")
	}
	return n * mult, nil
}
