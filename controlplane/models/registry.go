// Package models is the control plane's model registry: it checks an
// uploaded ONNX model (it loads, it passes its test vectors), signs its
// manifest, stores the record and the content-addressed file, publishes the
// manifest retained, re-signs manifests when due, and serves the chunks
// devices ask for in coalesced rounds. Imported by controlplane,
// controlplane/httpapi (upload parsing limits), controlplane/cli (model
// inspect), fleet-sim/scenario and fleet-sim/sim (the same upload checks).
package models

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Store layout of model versions, in the registry's store namespace:
//
//	models/{name}/{version}  record as JSON
//
// The ONNX bytes are not in badger but in BlobDir/<sha256 hex>, one
// immutable file per distinct model, written atomically. Models run to
// hundreds of MiB: as badger values they would be rewritten by value-log
// GC, held whole in memory by every read, and bounded by badger's value
// size; as content-addressed files they are written once, read with the
// page cache's help, and identical uploads share one file.
const prefixModels = "models/"

// Defaults of Options.
const (
	DefaultChunkBatchWindow = 150 * time.Millisecond
	DefaultChunkBatchMax    = 2 * time.Second
	DefaultFetchBudget      = 4
	DefaultFetchWindow      = 10 * time.Minute
	blobCacheBytes          = 256 << 20
	// payloadCacheBytes bounds the encoded chunks kept for publishing
	// again (Registry.chunkPayload).
	payloadCacheBytes = 32 << 20
)

// Publisher publishes on the MQTT bus (QoS 1).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
}

// atMostOncePublisher is a Publisher that can also publish at QoS 0
// (bus.AtMostOncePublisher): chunks go out that way when it can.
type atMostOncePublisher interface {
	PublishAtMostOnce(ctx context.Context, topic string, payload []byte) error
}

// backlogger is a Publisher that says what its broker holds for its
// clients (bus.Embedded): the worker of the versions' shared topics paces
// its rounds by it (awaitBroker).
type backlogger interface {
	Backlog() (unacknowledged, clients int)
}

// Devices tells whether a device is registered and whether it may
// download a model version (fetch requests from others, and for other
// versions, are dropped).
type Devices interface {
	MayFetch(id, model, version string) (registered, allowed bool)
}

// Options configure a Registry. Fields without a documented default are
// required.
type Options struct {
	// KV is the store namespace holding the records.
	KV *store.KV
	// BlobDir holds the model files.
	BlobDir string
	// Keys sign manifests (release key) and check them (verifier).
	Keys *keys.Set
	// Runtime checks uploads; nil refuses every upload with RuntimeErr.
	Runtime    *infer.Runtime
	RuntimeErr error
	Bus        Publisher
	Scheme     topics.Scheme
	Devices    Devices
	// Ingest checks and counts the fetch requests devices publish.
	Ingest *ingest.Checker
	// ManifestTTL is how long a signed manifest is valid.
	ManifestTTL time.Duration
	// MaxModelSize bounds uploads.
	MaxModelSize uint64
	// ChunkBatchWindow and ChunkBatchMax: a version's fetch requests are
	// collected into a round that goes out once no request came for the
	// window, at the latest ChunkBatchMax after the first (a round a deploy
	// expects: ChunkBatchMax after the last new device, at most 15 ×
	// ChunkBatchMax after the first; defaults
	// DefaultChunkBatchWindow, DefaultChunkBatchMax; a negative window
	// publishes at once).
	ChunkBatchWindow time.Duration
	ChunkBatchMax    time.Duration
	// FetchBudget is how many times over a device may ask for a version's
	// chunks at once, refilled over FetchWindow (defaults
	// DefaultFetchBudget, DefaultFetchWindow): enough for a download and
	// its retries, while one stolen credential cannot make the control
	// plane publish a model again and again.
	FetchBudget int
	FetchWindow time.Duration
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// Registerer receives the registry's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// record is a stored model version.
type record struct {
	api.ModelVersion
	// Envelope is the release-signed manifest envelope (protobuf bytes),
	// exactly as published.
	Envelope []byte `json:"envelope"`
}

func modelKey(name, version string) string { return prefixModels + name + "/" + version }

// Registry holds the model versions.
type Registry struct {
	opts   Options
	log    *slog.Logger
	chunks *chunkQueue
	fetch  *fetchLimit
	blobs  *blobCache
	// payloads are encoded efpb.Chunk messages by version and index: a
	// chunk sent to many devices' own topics is encoded once.
	payloads *blobCache
	metrics  *metrics

	// mu guards recs and corrupt. Records are replaced, never modified
	// in place.
	mu      sync.RWMutex
	recs    map[string]*record // by name + "/" + version
	corrupt map[string]string  // by name + "/" + version: why its file cannot be served
	// writeMu serialises the final existence check and write of a model
	// version, and manifest renewals.
	writeMu sync.Mutex
}

// New loads the stored model versions.
func New(o Options) (*Registry, error) {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	switch {
	case o.ChunkBatchWindow == 0:
		o.ChunkBatchWindow = DefaultChunkBatchWindow
	case o.ChunkBatchWindow < 0:
		o.ChunkBatchWindow = 0
	}
	if o.ChunkBatchMax == 0 {
		o.ChunkBatchMax = DefaultChunkBatchMax
	}
	if o.FetchBudget <= 0 {
		o.FetchBudget = DefaultFetchBudget
	}
	if o.FetchWindow <= 0 {
		o.FetchWindow = DefaultFetchWindow
	}
	if err := os.MkdirAll(o.BlobDir, 0o700); err != nil {
		return nil, fmt.Errorf("models: %w", err)
	}
	r := &Registry{
		opts:     o,
		log:      o.Logger.With("component", "models"),
		chunks:   newChunkQueue(o.ChunkBatchWindow, o.ChunkBatchMax),
		fetch:    newFetchLimit(o.FetchBudget, o.FetchWindow),
		blobs:    newBlobCache(blobCacheBytes),
		payloads: newBlobCache(payloadCacheBytes),
		recs:     map[string]*record{},
		corrupt:  map[string]string{},
	}
	err := o.KV.Scan(prefixModels, func(key string, val []byte) error {
		rec := &record{}
		if err := json.Unmarshal(val, rec); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		r.recs[rec.Name+"/"+rec.Version] = rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load models: %w", err)
	}
	r.metrics = newMetrics(o.Registerer, func() float64 { return float64(r.Count()) }, func() float64 { return float64(r.corruptCount()) })
	return r, nil
}

func (r *Registry) get(name, version string) *record {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.recs[name+"/"+version]
}

func (r *Registry) put(rec *record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs[rec.Name+"/"+rec.Version] = rec
}

// corruptCount is the number of versions whose file is corrupt.
func (r *Registry) corruptCount() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.corrupt)
}

// view is rec's API view, with the reason its file is corrupt if it is.
func (r *Registry) view(rec *record) api.ModelVersion {
	mv := rec.ModelVersion
	mv.Corrupt = r.Corrupt(rec.Name, rec.Version)
	return mv
}

// Count is the number of model versions.
func (r *Registry) Count() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.recs)
}

// all returns the records sorted by name, then creation time.
func (r *Registry) all() []*record {
	r.mu.RLock()
	out := make([]*record, 0, len(r.recs))
	for _, rec := range r.recs {
		out = append(out, rec)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b *record) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Version, b.Version)
	})
	return out
}

// Has reports whether model name version exists.
func (r *Registry) Has(name, version string) bool { return r.get(name, version) != nil }

// List returns every version, by name, then creation time.
func (r *Registry) List() []api.ModelVersion {
	recs := r.all()
	out := make([]api.ModelVersion, len(recs))
	for i, rec := range recs {
		out[i] = r.view(rec)
	}
	return out
}

// Get returns one version with its manifest payload as protojson.
func (r *Registry) Get(name, version string) (api.ModelVersion, error) {
	rec := r.get(name, version)
	if rec == nil {
		return api.ModelVersion{}, api.Errorf(api.ErrNotFound, "model %s version %s does not exist", name, version)
	}
	return r.withManifest(rec)
}

// withManifest returns the record's view with its manifest payload as
// protojson.
func (r *Registry) withManifest(rec *record) (api.ModelVersion, error) {
	mv := r.view(rec)
	m, err := decodeManifest(rec)
	if err != nil {
		return mv, err
	}
	mv.Manifest, err = protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return mv, fmt.Errorf("encode manifest: %w", err)
	}
	return mv, nil
}

// SHA256 is the digest of a version's ONNX bytes, which desired states
// name.
func (r *Registry) SHA256(name, version string) ([]byte, error) {
	rec := r.get(name, version)
	if rec == nil {
		return nil, api.Errorf(api.ErrNotFound, "model %s version %s does not exist; upload it first", name, version)
	}
	if reason := r.Corrupt(name, version); reason != "" {
		return nil, errCorrupt(name, version, reason)
	}
	sum, err := hex.DecodeString(rec.SHA256)
	if err != nil {
		return nil, fmt.Errorf("stored sha256 of %s %s: %w", name, version, err)
	}
	return sum, nil
}

// Reference is a version's reference feature statistics (monitoring
// compares live inputs with them); false when the version is unknown.
func (r *Registry) Reference(name, version string) ([]*efpb.FeatureStats, bool) {
	rec := r.get(name, version)
	if rec == nil {
		return nil, false
	}
	m, err := decodeManifest(rec)
	if err != nil {
		return nil, false
	}
	return m.GetReference(), true
}

// Manifest is a version's signed manifest payload (retrain jobs read the
// schema, reference statistics and lineage from it).
func (r *Registry) Manifest(name, version string) (*efpb.Manifest, error) {
	rec := r.get(name, version)
	if rec == nil {
		return nil, api.Errorf(api.ErrNotFound, "model %s version %s does not exist", name, version)
	}
	return decodeManifest(rec)
}

// File is a version's ONNX bytes, checked against its sha256 (a retrain
// job evaluates the current version with them).
func (r *Registry) File(name, version string) ([]byte, error) {
	rec := r.get(name, version)
	if rec == nil {
		return nil, api.Errorf(api.ErrNotFound, "model %s version %s does not exist", name, version)
	}
	data, err := r.modelBytes(rec)
	if err != nil {
		return nil, errCorrupt(name, version, err.Error())
	}
	return data, nil
}

// decodeManifest returns the manifest payload of a stored record.
func decodeManifest(rec *record) (*efpb.Manifest, error) {
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(rec.Envelope, env); err != nil {
		return nil, fmt.Errorf("manifest of %s %s: %w", rec.Name, rec.Version, err)
	}
	m := &efpb.Manifest{}
	if err := proto.Unmarshal(env.Payload, m); err != nil {
		return nil, fmt.Errorf("manifest of %s %s: %w", rec.Name, rec.Version, err)
	}
	return m, nil
}

// PublishRetained publishes every manifest, retained (the embedded broker
// keeps retained messages in memory only: this runs at every start and
// after a reconnect to an external broker).
func (r *Registry) PublishRetained(ctx context.Context) (int, error) {
	recs := r.all()
	for _, rec := range recs {
		if err := r.opts.Bus.Publish(ctx, r.opts.Scheme.Manifest(rec.Name, rec.Version), rec.Envelope, true); err != nil {
			return 0, fmt.Errorf("publish manifest %s %s: %w", rec.Name, rec.Version, err)
		}
	}
	return len(recs), nil
}

// Renew re-signs manifests with less than a third of ManifestTTL left, or
// signed by a release key that was rotated out, with a new expiry (same
// content otherwise), and publishes them.
func (r *Registry) Renew(ctx context.Context) error {
	now := r.opts.Clock()
	for _, rec := range r.all() {
		if rec.Expires.Sub(now) >= r.opts.ManifestTTL/3 && keys.SignedBy(rec.Envelope, r.opts.Keys.Release.ID) {
			continue
		}
		if err := r.renew(ctx, rec, now); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) renew(ctx context.Context, rec *record, now time.Time) error {
	m, err := decodeManifest(rec)
	if err != nil {
		return fmt.Errorf("renew manifest: %w", err)
	}
	m.ExpiresUnix = now.Add(r.opts.ManifestTTL).Unix()
	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, r.opts.Keys.Release)
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	next := &record{ModelVersion: rec.ModelVersion, Envelope: envBytes}
	next.Expires = time.Unix(m.ExpiresUnix, 0).UTC()
	r.writeMu.Lock()
	err = r.opts.KV.SetJSON(modelKey(rec.Name, rec.Version), next, true)
	if err == nil {
		r.put(next)
	}
	r.writeMu.Unlock()
	if err != nil {
		return fmt.Errorf("renew manifest %s %s: %w", rec.Name, rec.Version, err)
	}
	if err := r.opts.Bus.Publish(ctx, r.opts.Scheme.Manifest(rec.Name, rec.Version), envBytes, true); err != nil {
		r.log.Error("publish renewed manifest failed", "model", rec.Name, "version", rec.Version, "err", err)
	}
	r.log.Info("manifest renewed", "model", rec.Name, "version", rec.Version, "expires", next.Expires)
	return nil
}

// Envelope is a version's signed manifest envelope, as published.
func (r *Registry) Envelope(name, version string) ([]byte, error) {
	rec := r.get(name, version)
	if rec == nil {
		return nil, api.Errorf(api.ErrNotFound, "model %s version %s does not exist", name, version)
	}
	return rec.Envelope, nil
}

// UnmonitoredInputs names the inputs of model@version that drift
// monitoring skips (non-numeric), each with its datatype; nil when every
// input is monitored or the version is unknown.
func (r *Registry) UnmonitoredInputs(name, version string) []string {
	rec := r.get(name, version)
	if rec == nil {
		return nil
	}
	m, err := decodeManifest(rec)
	if err != nil {
		return nil
	}
	return unmonitoredInputs(m)
}
