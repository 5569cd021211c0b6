package models

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// MaxMetadataSize bounds the metadata part of an upload.
const MaxMetadataSize = 8 << 20

// ParseMetadata decodes the upload's metadata: a protojson efpb.Manifest
// holding only the fields the model's producer knows. Unknown fields are
// refused, and so are the fields the control plane computes.
func ParseMetadata(data []byte) (*efpb.Manifest, error) {
	m := &efpb.Manifest{}
	if len(bytes.TrimSpace(data)) == 0 {
		return m, nil
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(data, m); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "metadata is not a valid manifest JSON document: %v", err)
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
		return api.Errorf(api.ErrInvalid, "metadata sets %s; the control plane computes these fields (name and version come from the URL): remove them", strings.Join(set, ", "))
	}
	if m.Runtime != "" && m.Runtime != "onnxruntime" {
		return api.Errorf(api.ErrInvalid, "metadata runtime %q: only \"onnxruntime\" is supported", m.Runtime)
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
		return nil, api.Errorf(api.ErrInvalid, "metadata declares %d %ss, the model has %d (%s)", len(declared), what, len(actual), specNames(actual))
	}
	for i, d := range declared {
		a := actual[i]
		switch {
		case d.Name != a.Name:
			return nil, api.Errorf(api.ErrInvalid, "metadata %ss[%d] is %q, the model's is %q", what, i, d.Name, a.Name)
		case d.Datatype != a.Datatype:
			return nil, api.Errorf(api.ErrInvalid, "metadata %s %q has datatype %q, the model's is %q", what, d.Name, d.Datatype, a.Datatype)
		case !slices.Equal(d.Shape, a.Shape):
			return nil, api.Errorf(api.ErrInvalid, "metadata %s %q has shape %v, the model's is %v (-1 is a dynamic dimension)", what, d.Name, d.Shape, a.Shape)
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

// Add validates, checks, signs, stores and publishes a new model version.
// meta holds only the fields the model's producer knows (see
// ParseMetadata); nil is no metadata. force stores a model that fails its
// checks (to test refusal). Errors are api kinds written for the user.
func (r *Registry) Add(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error) {
	rec, err := r.add(ctx, name, version, model, meta, force)
	if err != nil {
		r.metrics.uploads.WithLabelValues(uploadRejected).Inc()
		return api.ModelVersion{}, err
	}
	result := uploadAccepted
	if rec.Checks.Forced {
		result = uploadForced
	}
	r.metrics.uploads.WithLabelValues(result).Inc()
	return withManifest(rec)
}

// CheckNew refuses a version that exists or is badly named: the cheap
// checks an upload makes before it reads its body.
func (r *Registry) CheckNew(name, version string) error {
	if err := topics.ValidModelName(name); err != nil {
		return api.Errorf(api.ErrInvalid, "%v", err)
	}
	if err := topics.ValidModelVersion(version); err != nil {
		return api.Errorf(api.ErrInvalid, "%v", err)
	}
	if r.get(name, version) != nil {
		return api.Errorf(api.ErrExists, "model %s version %s already exists; versions are immutable, upload a new version", name, version)
	}
	return nil
}

// MaxModelSize bounds the model bytes of an upload.
func (r *Registry) MaxModelSize() uint64 { return r.opts.MaxModelSize }

func (r *Registry) add(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (*record, error) {
	if err := r.CheckNew(name, version); err != nil {
		return nil, err
	}
	if len(model) == 0 {
		return nil, api.Errorf(api.ErrInvalid, "model is empty")
	}
	if uint64(len(model)) > r.opts.MaxModelSize {
		return nil, api.Errorf(api.ErrTooLarge, "model is %d bytes, max %d", len(model), r.opts.MaxModelSize)
	}
	if r.opts.Runtime == nil {
		return nil, api.Errorf(api.ErrUnavailable, "model uploads need onnxruntime to check models, and it did not load: %v", r.opts.RuntimeErr)
	}
	if meta == nil {
		meta = &efpb.Manifest{}
	} else if err := checkMetadataFields(meta); err != nil {
		return nil, err
	}
	m := proto.CloneOf(meta)
	ins, outs, err := r.opts.Runtime.Inspect(model)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model is not a loadable ONNX model: %v", err)
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
	now := r.opts.Clock()
	m.ProtocolVersion = efpb.ManifestVersion(m)
	m.Name, m.Version = name, version
	m.CreatedUnix = now.Unix()
	m.ExpiresUnix = now.Add(r.opts.ManifestTTL).Unix()
	transfer.FillManifest(m, model, transfer.DefaultChunkSize)
	if err := transfer.ValidateManifest(m, transfer.Limits{MaxModelSize: r.opts.MaxModelSize}); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "%v", err)
	}

	checks := api.UploadChecks{TestVectors: len(m.TestVectors), Passed: true}
	if err := runChecks(r.opts.Runtime, model, m); err != nil {
		if !force {
			return nil, api.Errorf(api.ErrChecksFailed, "model %s %s failed its checks: %v (upload with force=true, or `edgefleet model push --force`, to store it anyway)", name, version, err)
		}
		checks.Passed, checks.Forced, checks.Error = false, true, err.Error()
		r.log.Warn("model failed its checks; stored because force was set", "model", name, "version", version, "err", err)
	}

	env, err := signing.SignMessage(efpb.PayloadTypeManifest, m, r.opts.Keys.Release)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	if _, err := r.opts.Keys.Verifier.VerifyManifest(env, now); err != nil {
		return nil, fmt.Errorf("add model %s %s: the signed manifest does not verify with the trust bundle: %w", name, version, err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	sum := hex.EncodeToString(m.Sha256)
	if err := r.writeBlob(sum, model); err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	rec := &record{
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
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	err = r.opts.KV.Update(func(tx *store.Tx) error {
		if _, err := tx.Get(modelKey(name, version)); err == nil {
			return api.Errorf(api.ErrExists, "model %s version %s already exists; versions are immutable, upload a new version", name, version)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return tx.SetJSON(modelKey(name, version), rec)
	}, true)
	if err != nil {
		return nil, fmt.Errorf("add model %s %s: %w", name, version, err)
	}
	r.put(rec)
	r.blobs.put(sum, model)
	if err := r.opts.Bus.Publish(ctx, r.opts.Scheme.Manifest(name, version), envBytes, true); err != nil {
		// Stored: the manifest is published again at the next start or
		// broker reconnect.
		r.log.Error("publish manifest failed", "model", name, "version", version, "err", err)
	}
	r.log.Info("model version added", "model", name, "version", version, "size", m.Size, "chunks", rec.ChunkCount, "checks_passed", checks.Passed)
	return rec, nil
}
