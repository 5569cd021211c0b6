package controlplane

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/atomicfile"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Store layout of model versions, in the "cp" namespace:
//
//	models/{name}/{version}  modelRecord as JSON
//
// The ONNX bytes are not in badger but in DataDir/blobs/<sha256 hex>, one
// immutable file per distinct model, written atomically. Models run to
// hundreds of MiB: as badger values they would be rewritten by value-log
// GC, held whole in memory by every read, and bounded by badger's value
// size; as content-addressed files they are written once, read with the
// page cache's help, and identical uploads share one file.
const prefixModels = "models/"

// modelRecord is a stored model version.
type modelRecord struct {
	api.ModelVersion
	// Envelope is the release-signed manifest envelope (protobuf bytes),
	// exactly as published.
	Envelope []byte `json:"envelope"`
}

func modelKey(name, version string) string { return prefixModels + name + "/" + version }

// modelIndex is the in-memory index of model records.
type modelIndex struct {
	// mu guards recs. Records are replaced, never modified in place.
	mu   sync.RWMutex
	recs map[string]*modelRecord // by name + "/" + version
}

func loadModels(kv *store.KV) (*modelIndex, error) {
	idx := &modelIndex{recs: map[string]*modelRecord{}}
	err := kv.Scan(prefixModels, func(key string, val []byte) error {
		rec := &modelRecord{}
		if err := json.Unmarshal(val, rec); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		idx.recs[rec.Name+"/"+rec.Version] = rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load models: %w", err)
	}
	return idx, nil
}

func (m *modelIndex) get(name, version string) *modelRecord {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.recs[name+"/"+version]
}

func (m *modelIndex) put(rec *modelRecord) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[rec.Name+"/"+rec.Version] = rec
}

func (m *modelIndex) count() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.recs)
}

// all returns the records sorted by name, then creation time.
func (m *modelIndex) all() []*modelRecord {
	m.mu.RLock()
	out := make([]*modelRecord, 0, len(m.recs))
	for _, r := range m.recs {
		out = append(out, r)
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b *modelRecord) int {
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

// maxMetadataSize bounds the metadata part of an upload.
const maxMetadataSize = 8 << 20

// parseMetadata decodes the upload's metadata: a protojson efpb.Manifest
// holding only the fields the model's producer knows. Unknown fields are
// refused, and so are the fields the control plane computes.
func parseMetadata(data []byte) (*efpb.Manifest, error) {
	m := &efpb.Manifest{}
	if len(bytes.TrimSpace(data)) == 0 {
		return m, nil
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(data, m); err != nil {
		return nil, newErr(api.ErrInvalid, "metadata is not a valid manifest JSON document: %v", err)
	}
	if err := checkMetadataFields(m); err != nil {
		return nil, err
	}
	return m, nil
}

// checkMetadataFields refuses metadata that sets fields the control plane
// computes, or a runtime other than onnxruntime.
func checkMetadataFields(m *efpb.Manifest) error {
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"protocol_version", m.ProtocolVersion != 0},
		{"name", m.Name != ""},
		{"version", m.Version != ""},
		{"sha256", len(m.Sha256) != 0},
		{"size", m.Size != 0},
		{"chunk_size", m.ChunkSize != 0},
		{"chunk_sha256", len(m.ChunkSha256) != 0},
		{"created_unix", m.CreatedUnix != 0},
		{"expires_unix", m.ExpiresUnix != 0},
	} {
		if f.set {
			set = append(set, f.name)
		}
	}
	if len(set) > 0 {
		return newErr(api.ErrInvalid, "metadata sets %s; the control plane computes these fields (name and version come from the URL): remove them", strings.Join(set, ", "))
	}
	if m.Runtime != "" && m.Runtime != "onnxruntime" {
		return newErr(api.ErrInvalid, "metadata runtime %q: only \"onnxruntime\" is supported", m.Runtime)
	}
	return nil
}

// reconcileSchema checks declared tensor specs against what onnxruntime
// reports, or returns the reported ones when none were declared.
func reconcileSchema(what string, declared, actual []*efpb.TensorSpec) ([]*efpb.TensorSpec, error) {
	if len(declared) == 0 {
		return actual, nil
	}
	if len(declared) != len(actual) {
		return nil, newErr(api.ErrInvalid, "metadata declares %d %ss, the model has %d (%s)", len(declared), what, len(actual), specNames(actual))
	}
	for i, d := range declared {
		a := actual[i]
		switch {
		case d.Name != a.Name:
			return nil, newErr(api.ErrInvalid, "metadata %ss[%d] is %q, the model's is %q", what, i, d.Name, a.Name)
		case d.Datatype != a.Datatype:
			return nil, newErr(api.ErrInvalid, "metadata %s %q has datatype %q, the model's is %q", what, d.Name, d.Datatype, a.Datatype)
		case !slices.Equal(d.Shape, a.Shape):
			return nil, newErr(api.ErrInvalid, "metadata %s %q has shape %v, the model's is %v (-1 is a dynamic dimension)", what, d.Name, d.Shape, a.Shape)
		}
	}
	return declared, nil
}

func specNames(specs []*efpb.TensorSpec) string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// runChecks loads the model and runs its test vectors.
func runChecks(rt *infer.Runtime, model []byte, m *efpb.Manifest) error {
	sess, err := rt.Load(model, tensorNames(m.Inputs), tensorNames(m.Outputs))
	if err != nil {
		return fmt.Errorf("model does not load: %w", err)
	}
	defer sess.Close()
	if err := sess.Check(m.TestVectors, m.Tolerance); err != nil {
		return fmt.Errorf("test vectors: %w", err)
	}
	return nil
}

func tensorNames(specs []*efpb.TensorSpec) []string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return names
}

// addModelVersion validates, checks, signs, stores and publishes a new
// model version.
func (s *Server) addModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (*modelRecord, error) {
	if err := transfer.ValidName(name); err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}
	if err := transfer.ValidVersion(version); err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}
	if s.models.get(name, version) != nil {
		return nil, newErr(api.ErrExists, "model %s version %s already exists; versions are immutable, upload a new version", name, version)
	}
	if len(model) == 0 {
		return nil, newErr(api.ErrInvalid, "model is empty")
	}
	if uint64(len(model)) > s.opts.MaxModelSize {
		return nil, newErr(api.ErrTooLarge, "model is %d bytes, max %d", len(model), s.opts.MaxModelSize)
	}
	if s.runtime == nil {
		return nil, newErr(api.ErrUnavailable, "model uploads need onnxruntime to check models, and it did not load: %v", s.runtimeErr)
	}
	if meta == nil {
		meta = &efpb.Manifest{}
	}
	m := proto.CloneOf(meta)
	ins, outs, err := s.runtime.Inspect(model)
	if err != nil {
		return nil, newErr(api.ErrInvalid, "model is not a loadable ONNX model: %v", err)
	}
	if m.Inputs, err = reconcileSchema("input", m.Inputs, ins); err != nil {
		return nil, err
	}
	if m.Outputs, err = reconcileSchema("output", m.Outputs, outs); err != nil {
		return nil, err
	}
	if m.Runtime == "" {
		m.Runtime = "onnxruntime"
	}
	now := s.clock()
	m.ProtocolVersion = efpb.ProtocolVersion
	m.Name, m.Version = name, version
	m.CreatedUnix = now.Unix()
	m.ExpiresUnix = now.Add(s.opts.ManifestTTL).Unix()
	transfer.FillManifest(m, model, transfer.DefaultChunkSize)
	if err := transfer.ValidateManifest(m, transfer.Limits{MaxModelSize: s.opts.MaxModelSize}); err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}

	checks := api.UploadChecks{TestVectors: len(m.TestVectors), Passed: true}
	if err := runChecks(s.runtime, model, m); err != nil {
		if !force {
			return nil, newErr(api.ErrChecksFailed, "model %s %s failed its checks: %v (upload with force=true, or `edgefleet model push --force`, to store it anyway)", name, version, err)
		}
		checks.Passed, checks.Forced, checks.Error = false, true, err.Error()
		s.log.Warn("model failed its checks; stored because force was set", "model", name, "version", version, "err", err)
	}

	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, s.keys.Release)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	if _, err := s.keys.Verifier.VerifyManifest(env, now); err != nil {
		return nil, fmt.Errorf("add model %s %s: the signed manifest does not verify with the trust bundle: %w", name, version, err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	sum := hex.EncodeToString(m.Sha256)
	if err := s.writeBlob(sum, model); err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	rec := &modelRecord{
		ModelVersion: api.ModelVersion{
			Name:       name,
			Version:    version,
			SHA256:     sum,
			Size:       m.Size,
			ChunkSize:  m.ChunkSize,
			ChunkCount: uint32(len(m.ChunkSha256)),
			Created:    time.Unix(m.CreatedUnix, 0).UTC(),
			Expires:    time.Unix(m.ExpiresUnix, 0).UTC(),
			Checks:     checks,
		},
		Envelope: envBytes,
	}

	// uploadMu makes the existence check and the write one step, so two
	// concurrent uploads of one version cannot both succeed.
	s.uploadMu.Lock()
	defer s.uploadMu.Unlock()
	err = s.kv.Update(func(tx *store.Tx) error {
		if _, err := tx.Get(modelKey(name, version)); err == nil {
			return newErr(api.ErrExists, "model %s version %s already exists; versions are immutable, upload a new version", name, version)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return tx.SetJSON(modelKey(name, version), rec)
	}, true)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	s.models.put(rec)
	s.blobs.put(sum, model)
	if err := s.bus.Publish(ctx, s.scheme.Manifest(name, version), envBytes, true); err != nil {
		// Stored: the manifest is published again at the next start or
		// broker reconnect.
		s.log.Error("publish manifest failed", "model", name, "version", version, "err", err)
	}
	s.log.Info("model version added", "model", name, "version", version, "size", m.Size, "chunks", rec.ChunkCount, "checks_passed", checks.Passed)
	return rec, nil
}

// decodeManifest returns the manifest payload of a stored record.
func decodeManifest(rec *modelRecord) (*efpb.Manifest, error) {
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

// blobPath is where the model with the given hex sha256 lives.
func (s *Server) blobPath(sum string) string { return filepath.Join(s.opts.DataDir, "blobs", sum) }

// writeBlob stores model under its hash unless a file is already there.
func (s *Server) writeBlob(sum string, model []byte) error {
	path := s.blobPath(sum)
	if _, err := os.Stat(path); err == nil {
		return nil // content-addressed: same name, same bytes
	}
	return atomicfile.Write(path, model, 0o644)
}

// readBlob reads a model file and checks it still hashes to its name.
func (s *Server) readBlob(sum string, size uint64) ([]byte, error) {
	f, err := os.Open(s.blobPath(sum))
	if err != nil {
		return nil, fmt.Errorf("read model file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(size)+1))
	if err != nil {
		return nil, fmt.Errorf("read model file: %w", err)
	}
	got := sha256.Sum256(data)
	if hex.EncodeToString(got[:]) != sum || uint64(len(data)) != size {
		return nil, fmt.Errorf("model file %s is corrupt: its content does not match its sha256", s.blobPath(sum))
	}
	return data, nil
}

// blobCache keeps recently published models in memory by sha256, up to max
// bytes; the most recently used model always stays, however large, so a
// fetch of a big model reads its file once.
type blobCache struct {
	max int64

	// mu guards everything below.
	mu    sync.Mutex
	size  int64
	order *list.List // of *blobEntry, most recent first
	byKey map[string]*list.Element
}

type blobEntry struct {
	sum  string
	data []byte
}

func newBlobCache(max int64) *blobCache {
	return &blobCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *blobCache) get(sum string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byKey[sum]
	if el == nil {
		return nil
	}
	c.order.MoveToFront(el)
	return el.Value.(*blobEntry).data
}

func (c *blobCache) put(sum string, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byKey[sum]; el != nil {
		c.order.MoveToFront(el)
		return
	}
	c.byKey[sum] = c.order.PushFront(&blobEntry{sum: sum, data: data})
	c.size += int64(len(data))
	for c.size > c.max && c.order.Len() > 1 {
		el := c.order.Back()
		e := el.Value.(*blobEntry)
		c.order.Remove(el)
		delete(c.byKey, e.sum)
		c.size -= int64(len(e.data))
	}
}

// modelBytes returns a model's bytes from the cache or its file.
func (s *Server) modelBytes(rec *modelRecord) ([]byte, error) {
	if data := s.blobs.get(rec.SHA256); data != nil {
		return data, nil
	}
	data, err := s.readBlob(rec.SHA256, rec.Size)
	if err != nil {
		return nil, err
	}
	s.blobs.put(rec.SHA256, data)
	return data, nil
}
