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
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Bounds of an upload's parts besides the model.
const (
	// MaxMetadataSize bounds the metadata part.
	MaxMetadataSize = 8 << 20
	// MaxSamplesSize bounds the sample inputs.
	MaxSamplesSize = 16 << 20
	// MaxReferenceSize bounds the reference data (a CSV of training rows).
	MaxReferenceSize = 64 << 20
)

// ParseMetadata decodes the upload's metadata: a protojson efpb.Manifest
// holding only the fields the model's producer knows. Unknown fields are
// refused, and so are the fields the control plane computes.
func ParseMetadata(data []byte) (*efpb.Manifest, error) {
	m := &efpb.Manifest{}
	if len(bytes.TrimSpace(data)) == 0 {
		return m, nil
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(data, m); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "metadata (`--meta FILE` of edgefleet model push) is not a valid manifest JSON document: %v", err)
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

// reconcileSchema checks declared tensor specs against what the model
// serves, and returns the model's (which carry class-map kinds and class
// labels the metadata need not repeat).
func reconcileSchema(what string, declared, actual []*efpb.TensorSpec) ([]*efpb.TensorSpec, error) {
	if len(declared) == 0 {
		return actual, nil
	}
	if len(declared) != len(actual) {
		return nil, api.Errorf(api.ErrInvalid, "metadata declares %d %ss, the model has %d (%s); remove %ss from the metadata to take the model's", len(declared), what, len(actual), specNames(actual), what)
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
		case d.Kind != efpb.TensorKind_TENSOR_KIND_TENSOR && d.Kind != a.Kind:
			return nil, api.Errorf(api.ErrInvalid, "metadata %s %q has kind %s, the model's is %s", what, d.Name, d.Kind, a.Kind)
		}
	}
	return actual, nil
}

// isLabelSpec reports an output that can hold one class label per row: an
// integer or BYTES tensor of shape [rows] or [rows, 1].
func isLabelSpec(s *efpb.TensorSpec) bool {
	d := tensor.Datatype(s.GetDatatype())
	if s.GetKind() != efpb.TensorKind_TENSOR_KIND_TENSOR || !(d.IsInteger() || d == tensor.Bytes) {
		return false
	}
	sh := s.GetShape()
	return len(sh) == 1 || (len(sh) == 2 && sh[1] == 1)
}

// isScoreSpec reports an output holding class scores per row: a class map,
// or a floating-point [rows, classes] tensor.
func isScoreSpec(s *efpb.TensorSpec) bool {
	if s.GetKind() == efpb.TensorKind_TENSOR_KIND_CLASS_MAP {
		return true
	}
	sh := s.GetShape()
	return tensor.Datatype(s.GetDatatype()).IsFloat() && len(sh) == 2 && (sh[1] >= 2 || sh[1] < 0)
}

// monitoredOutputs checks the label and score outputs the metadata names,
// or, when it names none, picks them for a classifier: one label output
// next to class scores (what scikit-learn, XGBoost and LightGBM
// converters make). Accuracy monitoring then compares ground truth with
// the label output.
func monitoredOutputs(m *efpb.Manifest) error {
	has := func(n string) *efpb.TensorSpec {
		for _, o := range m.Outputs {
			if o.GetName() == n {
				return o
			}
		}
		return nil
	}
	if n := m.LabelOutput; n != "" {
		o := has(n)
		if o == nil {
			return api.Errorf(api.ErrInvalid, "metadata label_output %q is not an output of the model (outputs: %s)", n, specNames(m.Outputs))
		}
		if !isLabelSpec(o) {
			return api.Errorf(api.ErrInvalid, "metadata label_output %q is %s %v; a label output holds one integer or BYTES class label per row", n, o.Datatype, o.Shape)
		}
	}
	if n := m.ScoreOutput; n != "" {
		o := has(n)
		if o == nil {
			return api.Errorf(api.ErrInvalid, "metadata score_output %q is not an output of the model (outputs: %s)", n, specNames(m.Outputs))
		}
		if !tensor.Datatype(o.Datatype).IsNumeric() {
			return api.Errorf(api.ErrInvalid, "metadata score_output %q is %s; scores are numbers", n, o.Datatype)
		}
	}
	if m.LabelOutput != "" || m.ScoreOutput != "" {
		return nil
	}
	m.LabelOutput, m.ScoreOutput = ClassifierOutputs(m.Outputs)
	return nil
}

// ClassifierOutputs returns the label and score outputs of a classifier:
// one output holding a class label per row next to class scores (what
// scikit-learn, XGBoost and LightGBM converters make), or "", "" for other
// models (whose first output is then taken as a probability or class
// scores).
func ClassifierOutputs(outputs []*efpb.TensorSpec) (label, score string) {
	var labels, scores []*efpb.TensorSpec
	for _, o := range outputs {
		switch {
		case isLabelSpec(o):
			labels = append(labels, o)
		case isScoreSpec(o):
			scores = append(scores, o)
		}
	}
	if len(labels) == 1 && len(scores) >= 1 {
		return labels[0].Name, scores[0].Name
	}
	return "", ""
}

// checkReference refuses reference statistics drift cannot use: an input
// the model does not have, or one that is not numeric.
func checkReference(m *efpb.Manifest) error {
	for i, fs := range m.Reference {
		in := fs.GetInput()
		if in == "" {
			if len(m.Inputs) == 0 {
				continue
			}
			in = m.Inputs[0].Name
		}
		var spec *efpb.TensorSpec
		for _, s := range m.Inputs {
			if s.Name == in {
				spec = s
			}
		}
		switch {
		case spec == nil:
			return api.Errorf(api.ErrInvalid, "metadata reference[%d] (%q) reads input %q, which the model does not have (inputs: %s)", i, fs.GetName(), in, specNames(m.Inputs))
		case !tensor.Datatype(spec.Datatype).IsNumeric():
			return api.Errorf(api.ErrInvalid, "metadata reference[%d] (%q) reads input %q, which is %s; drift is computed for numeric inputs only: remove it", i, fs.GetName(), in, spec.Datatype)
		}
	}
	return nil
}

// errText is err's message without the infer package's operation
// prefixes, which say nothing to a user.
func errText(err error) string {
	msg := err.Error()
	for _, p := range []string{"infer: run: ", "infer: load: ", "infer: describe: ", "infer: inspect: ", "Error running network: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}

func specNames(specs []*efpb.TensorSpec) string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// deriveVectors appends test vectors recorded from samples, or, when there
// are none and m has no test vectors either, from synthetic inputs. It
// reports whether it recorded any, and what it did.
func (r *Registry) deriveVectors(model []byte, m *efpb.Manifest, samples []byte) (derived bool, note string, err error) {
	rt := r.opts.Runtime
	if samples != nil {
		ins, err := parseSamples(samples, m.Name, m.Inputs)
		if err != nil {
			return false, "", err
		}
		vs, err := recordVectors(rt, model, m, ins)
		if err != nil {
			if _, ok := errors.AsType[*api.Error](err); ok {
				return false, "", err
			}
			return false, "", api.Errorf(api.ErrInvalid, "the model fails on the sample inputs: %s; fix the samples (they must fit the model's inputs: %s)", errText(err), specList(m.Inputs))
		}
		m.TestVectors = append(m.TestVectors, vs...)
		return true, fmt.Sprintf("test vectors: %d recorded by running the model on the sample inputs (onnxruntime %s)", len(vs), rt.Version()), nil
	}
	if len(m.TestVectors) > 0 {
		return false, "", nil
	}
	in, err := SyntheticInputs(m.Inputs)
	if err == nil {
		var vs []*efpb.TestVector
		if vs, err = recordVectors(rt, model, m, [][]tensor.Tensor{in}); err == nil {
			m.TestVectors = vs
			return true, fmt.Sprintf("test vectors: 1 recorded by running the model on synthetic inputs (onnxruntime %s); pass real sample inputs for a stronger check", rt.Version()), nil
		}
	}
	return false, "", api.Errorf(api.ErrInvalid, "model %s %s has no test vectors, and it fails on synthetic inputs made from its schema (%s): %s, or give test vectors in the metadata (`--meta FILE`)",
		m.Name, m.Version, errText(err), hintSamples)
}

// specList describes specs for messages: x FP32 [-1,3], ids INT64 [-1].
func specList(specs []*efpb.TensorSpec) string {
	parts := make([]string, len(specs))
	for i, s := range specs {
		parts[i] = fmt.Sprintf("%s %s %s", s.Name, s.Datatype, tensor.FormatShape(s.Shape))
	}
	return strings.Join(parts, ", ")
}

// runChecks loads the model and runs its test vectors.
func runChecks(rt *infer.Runtime, model []byte, m *efpb.Manifest) error {
	sess, err := rt.Load(model, tensorNames(m.Inputs), tensorNames(m.Outputs))
	if err != nil {
		return fmt.Errorf("model does not load: %w", err)
	}
	defer sess.Close()
	if err := sess.Check(m.TestVectors, infer.ManifestTolerance(m)); err != nil {
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

// Upload is a model version to add: the ONNX bytes and what the user
// gives besides them.
type Upload struct {
	Name, Version string
	Model         []byte
	// Meta holds only the fields the model's producer knows (see
	// ParseMetadata); nil is none. What the model declares (inputs,
	// outputs, opset) need not be in it.
	Meta *efpb.Manifest
	// Samples are sample inputs: the control plane runs the model on them
	// and records the outputs as test vectors (an OIP request body, a JSON
	// array of them, or a CSV for a model with one tabular input). Without
	// samples and without test vectors in Meta, deterministic synthetic
	// inputs are tried.
	Samples []byte
	// Reference is a CSV of training data; its reference statistics are
	// what agents compare live inputs with for drift.
	Reference []byte
	// Force stores a model that fails its checks (to test refusal).
	Force bool
}

// Add validates, checks, signs, stores and publishes a new model version.
// meta holds only the fields the model's producer knows (see
// ParseMetadata); nil is no metadata. force stores a model that fails its
// checks (to test refusal). Errors are api kinds written for the user.
func (r *Registry) Add(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error) {
	return r.AddUpload(ctx, Upload{Name: name, Version: version, Model: model, Meta: meta, Force: force})
}

// AddUpload is Add with everything an upload may carry (see Upload).
func (r *Registry) AddUpload(ctx context.Context, u Upload) (api.ModelVersion, error) {
	rec, err := r.add(ctx, u)
	if err != nil {
		r.metrics.uploads.WithLabelValues(uploadRejected).Inc()
		return api.ModelVersion{}, err
	}
	result := uploadAccepted
	if rec.Checks.Forced {
		result = uploadForced
	}
	r.metrics.uploads.WithLabelValues(result).Inc()
	return r.withManifest(rec)
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

func (r *Registry) add(ctx context.Context, u Upload) (*record, error) {
	name, version, model, meta, force := u.Name, u.Version, u.Model, u.Meta, u.Force
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
	desc, err := r.opts.Runtime.Describe(model)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model is not a loadable ONNX model: %v", err)
	}
	if err := desc.Err(); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model %s %s cannot be served: %s (run `edgefleet model inspect` on it to see every input and output)",
			name, version, strings.TrimPrefix(errText(err), infer.ErrUnsupported.Error()+": "))
	}
	ins, outs := desc.Specs()
	if m.Inputs, err = reconcileSchema("input", m.Inputs, ins); err != nil {
		return nil, err
	}
	if m.Outputs, err = reconcileSchema("output", m.Outputs, outs); err != nil {
		return nil, err
	}
	if err := monitoredOutputs(m); err != nil {
		return nil, err
	}
	if m.Opset == 0 {
		m.Opset = desc.Model.Opset("")
	}
	var notes []string
	if u.Reference != nil {
		stats, ignored, err := referenceStats(u.Reference, m.Inputs)
		if err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, fs := range m.Reference {
			have[fs.GetName()] = true
		}
		added := 0
		for _, fs := range stats {
			if !have[fs.GetName()] {
				m.Reference = append(m.Reference, fs)
				added++
			}
		}
		note := fmt.Sprintf("reference statistics: %d features from the reference data", added)
		if len(ignored) > 0 {
			note += fmt.Sprintf(" (columns left out: %s)", strings.Join(ignored, ", "))
		}
		notes = append(notes, note)
	}
	if err := checkReference(m); err != nil {
		return nil, err
	}
	if skipped := unmonitoredInputs(m); len(skipped) > 0 {
		notes = append(notes, fmt.Sprintf("drift: numeric inputs only; %s not monitored", strings.Join(skipped, ", ")))
	}
	m.Name, m.Version = name, version
	derived, note, err := r.deriveVectors(model, m, u.Samples)
	if err != nil {
		return nil, err
	}
	if note != "" {
		notes = append(notes, note)
	}
	if derived && m.Tolerance == 0 && m.RelativeTolerance == 0 {
		tol := defaultTolerance(m)
		notes = append(notes, fmt.Sprintf("tolerance: floats within %g + %g·|expected| (integers, BOOL and BYTES exactly)", tol.Abs, tol.Rel))
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

	checks := api.UploadChecks{TestVectors: len(m.TestVectors), Passed: true, Notes: notes}
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

// unmonitoredInputs names m's inputs that drift monitoring skips (the
// non-numeric ones, BYTES), each with its datatype.
func unmonitoredInputs(m *efpb.Manifest) []string {
	var out []string
	for _, in := range m.GetInputs() {
		if dt := tensor.Datatype(in.GetDatatype()); dt != "" && !dt.IsNumeric() {
			out = append(out, fmt.Sprintf("%s (%s)", in.GetName(), dt))
		}
	}
	return out
}
