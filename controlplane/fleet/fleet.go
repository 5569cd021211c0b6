// Package fleet is the control plane's view of the devices: the registry
// (devices, labels, the credentials the broker checks), enrollment and
// revocation, desired-state issuance (signed, generation-numbered, one Assign
// for deployments and rollouts alike), and what devices report (status,
// refusals, presence, telemetry). Imported by controlplane and
// controlplane/brokerauth (device passwords for an external mosquitto).
package fleet

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// DefaultDesiredTTL is how long a signed desired state is valid by
// default.
const DefaultDesiredTTL = 30 * 24 * time.Hour

// DefaultInlineManifestMax is Options.InlineManifestMax by default: the
// fraud example's manifest for a 1 MiB model is 3.8 KiB; 8 KiB covers
// models of up to ~150 chunks (about 9 MiB) with its schema, test vectors
// and reference statistics. 10,000 devices' retained desired states grow
// by at most 80 MiB in the broker and the store.
const DefaultInlineManifestMax = 8 << 10

// Bus publishes on the MQTT bus (QoS 1) and names the broker devices use.
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
	URL() string
}

// Models is what the fleet needs of the model registry: the digest a
// desired state names, and a word that devices were just told to fetch a
// version (its chunks then go out in one round for all of them).
type Models interface {
	SHA256(name, version string) ([]byte, error)
	// Envelope is the version's signed manifest as published; a small one
	// travels in the desired state (Options.InlineManifestMax).
	Envelope(name, version string) ([]byte, error)
	ExpectFetches(name, version string, devices int)
	// Corrupt is why a version's stored file cannot be served ("" when it can).
	Corrupt(name, version string) string
}

// Options configure a Fleet. Fields without a documented default are
// required.
type Options struct {
	// KV is the store namespace of the registry and desired states; Sync
	// makes the store's writes durable (a generation is synced before it
	// is published).
	KV       *store.KV
	Sync     func() error
	Registry *Registry
	// Keys sign desired states (control key) and check them (verifier);
	// RootPEM goes into device credentials.
	Keys   *keys.Set
	Bus    Bus
	Scheme topics.Scheme
	Models Models
	// Ingest checks and counts what devices publish.
	Ingest *ingest.Checker
	// Capture, if set, gives the capture policy each assignment carries
	// (field data capture; capture.go).
	Capture CapturePolicies
	// BrokerURL is the broker devices are told at registration; default
	// Bus.URL().
	BrokerURL string
	// InlineManifestMax is the largest manifest envelope a desired state
	// carries in the assignment it changes (ModelAssignment.manifest),
	// sparing each device a subscription to the manifest topic; every
	// device's retained desired state grows by it. Default
	// DefaultInlineManifestMax; negative: never.
	InlineManifestMax int
	// DesiredTTL is how long a signed desired state is valid; default
	// DefaultDesiredTTL.
	DesiredTTL time.Duration
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// Registerer receives the fleet's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Acker, if set, is told the (device, seq) of each status event once
	// it is persisted or refused for good, and of each telemetry report
	// refused for good here (the monitor acknowledges the others).
	Acker Acker
	// StatusBatchDelay is how long status events wait for others to be
	// written in one store transaction with them (statusbatch.go); default
	// DefaultStatusBatchDelay, negative: no wait (what arrived during the
	// previous write still shares one).
	StatusBatchDelay time.Duration
}

// Acker is told which device reports are persisted or refused for good
// (the control plane's controlplane/acks). Ack must not block.
type Acker interface {
	Ack(device string, seqs ...uint64)
}

// Fleet is the devices and what they were told and report.
type Fleet struct {
	opts    Options
	reg     *Registry
	log     *slog.Logger
	enrolls *enrollStore
	deploys prometheus.Counter // desired states issued
	// refusals counts the signed documents devices reported refusing, by
	// api.RefusalKind.
	refusals *prometheus.CounterVec
	// statusWrites counts the store transactions that wrote status events
	// (edgefleet_device_status_writes_total).
	statusWrites atomic.Uint64

	// issueMu serialises desired-state issuing and publishing (see
	// issue). It comes after the rollout engine's lock and before the
	// registry's: docs/architecture.md has the whole lock order.
	issueMu sync.Mutex

	// Status events waiting for their batch (statusbatch.go): statusMu
	// guards status, a leaf lock; flushMu serialises Flush.
	statusMu   sync.Mutex
	status     []pendingStatus
	flushMu    sync.Mutex
	statusWake chan struct{} // cap 1: an event is pending
	statusFull chan struct{} // cap 1: maxStatusBatch are pending
}

// New returns the fleet of o.Registry.
func New(o Options) *Fleet {
	if o.InlineManifestMax == 0 {
		o.InlineManifestMax = DefaultInlineManifestMax
	}
	if o.DesiredTTL == 0 {
		o.DesiredTTL = DefaultDesiredTTL
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.StatusBatchDelay == 0 {
		o.StatusBatchDelay = DefaultStatusBatchDelay
	}
	f := &Fleet{
		opts:       o,
		statusWake: make(chan struct{}, 1),
		statusFull: make(chan struct{}, 1),
		reg:        o.Registry,
		log:        o.Logger.With("component", "fleet"),
		enrolls:    &enrollStore{kv: o.KV, clock: o.Clock},
		deploys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_desired_states_issued_total",
			Help: "Signed desired-state documents issued to devices.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_device_refusals_total",
			Help: "Signed documents devices reported refusing (a bad signature, an expiry, a replay, a broken trust chain ...), by kind: trust-bundle, manifest, desired-state, site-document, unknown (an older agent).",
		}, []string{"kind"}),
	}
	for _, k := range []api.RefusalKind{api.RefusedTrustBundle, api.RefusedManifest, api.RefusedDesiredState, api.RefusedSite, api.RefusedUnknown} {
		f.refusals.WithLabelValues(string(k)) // every kind shows, at 0
	}
	o.Registerer.MustRegister(f.deploys, f.refusals,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_device_status_writes_total",
			Help: "Store transactions that wrote devices' status events (a batch of every event that arrived within a short delay).",
		}, func() float64 { return float64(f.statusWrites.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_devices_trust_behind",
			Help: "Devices whose reported trust bundle version is older than the newest one the control plane publishes.",
		}, func() float64 { return float64(f.reg.trustBehind(o.Keys.Bundle.GetVersion())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgefleet_devices", Help: "Registered devices."},
			func() float64 { t, _ := f.reg.Counts(); return float64(t) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgefleet_devices_online", Help: "Devices currently online."},
			func() float64 { _, on := f.reg.Counts(); return float64(on) }),
	)
	return f
}

// Registry is the fleet's device registry.
func (f *Fleet) Registry() *Registry { return f.reg }

// Register registers a device and returns its credentials; the password
// is not stored and cannot be shown again.
func (f *Fleet) Register(id string, lbls map[string]string) (api.DeviceCredentials, error) {
	password, err := f.reg.register(id, lbls)
	if err != nil {
		return api.DeviceCredentials{}, err
	}
	f.log.Info("device registered", "device", id, "labels", lbls)
	return f.credentials(id, password), nil
}

func (f *Fleet) credentials(id, password string) api.DeviceCredentials {
	url := f.opts.BrokerURL
	if url == "" {
		url = f.opts.Bus.URL()
	}
	return api.DeviceCredentials{
		ID:            id,
		Username:      id,
		Password:      password,
		BrokerURL:     url,
		TopicPrefix:   f.opts.Scheme.Prefix,
		RootPublicKey: f.opts.Keys.RootPEM,
	}
}

// Device returns one device.
func (f *Fleet) Device(id string) (api.Device, error) {
	d, ok := f.reg.Get(id)
	if !ok {
		return api.Device{}, api.Errorf(api.ErrNotFound, "device %q is not registered", id)
	}
	f.markBlocked(&d)
	return d, nil
}

// markBlocked sets d.Blocked when the device waits for a version the
// control plane cannot serve (its stored file is corrupt).
func (f *Fleet) markBlocked(d *api.Device) { d.Blocked = d.BlockedBy(f.opts.Models.Corrupt) }

// Devices returns the devices matching selector ("" for all), by id.
func (f *Fleet) Devices(selector string) ([]api.Device, error) {
	var list []api.Device
	if selector == "" {
		list = f.reg.List(nil)
	} else {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "%v", err)
		}
		list = f.reg.List(&sel)
	}
	for i := range list {
		f.markBlocked(&list[i])
	}
	return list, nil
}
