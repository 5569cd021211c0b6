// Package infer runs ONNX models locally with onnxruntime (through
// github.com/yalue/onnxruntime_go, ORT API 24, libonnxruntime 1.24.x): it
// finds the shared library, inspects models, loads sessions, runs tensors
// with shape checks, and checks manifest test vectors. Imported by agent,
// controlplane (the shared runtime), controlplane/models (upload checks),
// fleet-sim/... and internal/fleettest.
package infer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Sentinel errors for branching with errors.Is.
var (
	// ErrInvalidModel: the bytes are not an ONNX model onnxruntime can load.
	ErrInvalidModel = errors.New("not a valid ONNX model")
	// ErrUnsupported: a valid model this package cannot serve (for now:
	// non-FP32 inputs or outputs, non-tensor values).
	ErrUnsupported = errors.New("unsupported model")
	// ErrBadInput: Run was given tensors that do not fit the model. Serving
	// layers map it to HTTP 400.
	ErrBadInput = errors.New("bad input")
	// ErrCheckFailed: a model failed its test vectors.
	ErrCheckFailed = errors.New("test vector check failed")
	// ErrClosed: the Runtime or Session was closed.
	ErrClosed = errors.New("closed")
	// ErrLibraryConflict: onnxruntime is already loaded in this process from
	// another library path.
	ErrLibraryConflict = errors.New("onnxruntime already loaded from another library")
)

// ortEnv is the process-wide onnxruntime environment. This is package-level
// state because the C library forces it: onnxruntime_go keeps the dlopen'ed
// library, the OrtEnv and its memory info in package variables and allows one
// InitializeEnvironment per process. Every open Runtime holds one reference;
// the first initialises the environment, the last Close destroys it, so
// several Runtimes in one process (tests, fleet-sim) share it.
var ortEnv struct {
	mu      sync.Mutex // guards the fields below and every Initialize/DestroyEnvironment call
	refs    int
	libPath string
	version string
}

// Runtime is a handle on the shared onnxruntime environment. It owns the
// sessions it loads: Close closes them. Safe for concurrent use.
type Runtime struct {
	logger  *slog.Logger
	libPath string
	version string

	// life is held shared by Inspect and Load while they call into
	// onnxruntime and exclusively by Close, so the environment is never
	// released under them. Lock order: life, then mu.
	life   sync.RWMutex
	closed bool // guarded by life

	mu       sync.Mutex              // guards sessions, shared and every sessionCore.refs
	sessions map[*Session]struct{}   // open sessions; nil once closed
	shared   map[string]*sessionCore // LoadShared cores by key
}

// NewRuntime loads onnxruntime from the library FindLibrary(libPath) finds
// ("" searches the usual places) and
// returns a Runtime sharing the process-wide environment. All Runtimes in a
// process must use the same library file; a different path is
// ErrLibraryConflict. A nil logger discards logs.
func NewRuntime(libPath string, logger *slog.Logger) (*Runtime, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "infer")
	found, err := FindLibrary(libPath)
	if err != nil {
		return nil, fmt.Errorf("infer: new runtime: %w", err)
	}
	libPath = found
	if !isFile(libPath) {
		return nil, fmt.Errorf("infer: new runtime: %w: %s does not exist or is not a file", ErrLibraryNotFound, libPath)
	}
	abs, err := filepath.Abs(libPath)
	if err != nil {
		return nil, fmt.Errorf("infer: new runtime: %w", err)
	}
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}

	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if ortEnv.refs == 0 {
		if ort.IsInitialized() {
			return nil, fmt.Errorf("infer: new runtime: onnxruntime was initialised outside package infer")
		}
		ort.SetSharedLibraryPath(abs)
		// Warnings and below stay quiet: onnxruntime logs to stderr itself,
		// outside slog and any rate limit.
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			return nil, fmt.Errorf("infer: new runtime: load onnxruntime from %s "+
				"(onnxruntime_go v1.27 needs libonnxruntime 1.24.x): %w", abs, err)
		}
		ortEnv.libPath = abs
		ortEnv.version = ort.GetVersion()
		logger.Info("onnxruntime environment initialised", "library", abs, "version", ortEnv.version)
	} else if ortEnv.libPath != abs {
		return nil, fmt.Errorf("infer: new runtime: %w: loaded %s, asked for %s",
			ErrLibraryConflict, ortEnv.libPath, abs)
	}
	ortEnv.refs++
	return &Runtime{
		logger:   logger,
		libPath:  abs,
		version:  ortEnv.version,
		sessions: map[*Session]struct{}{},
		shared:   map[string]*sessionCore{},
	}, nil
}

// Version returns the onnxruntime library version, e.g. "1.24.3".
func (r *Runtime) Version() string { return r.version }

// LibraryPath returns the absolute path of the loaded library.
func (r *Runtime) LibraryPath() string { return r.libPath }

// Close closes every session this Runtime loaded (waiting for runs in
// flight) and releases its reference on the environment; the last Runtime to
// close destroys it. Close is idempotent.
func (r *Runtime) Close() error {
	r.life.Lock()
	if r.closed {
		r.life.Unlock()
		return nil
	}
	r.closed = true
	r.life.Unlock()

	r.mu.Lock()
	open := make([]*Session, 0, len(r.sessions))
	for s := range r.sessions {
		open = append(open, s)
	}
	r.sessions = nil
	r.mu.Unlock()

	var errs []error
	for _, s := range open {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}

	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	ortEnv.refs--
	if ortEnv.refs == 0 {
		if err := ort.DestroyEnvironment(); err != nil {
			errs = append(errs, fmt.Errorf("infer: close runtime: destroy environment: %w", err))
		}
		ortEnv.libPath, ortEnv.version = "", ""
		r.logger.Info("onnxruntime environment destroyed")
	}
	return errors.Join(errs...)
}

// Inspect returns the inputs and outputs of an ONNX model as TensorSpecs
// (Open Inference Protocol datatypes; -1 marks a dynamic dimension). The
// control plane uses it to validate uploads. Bytes that are not a model
// onnxruntime can load give ErrInvalidModel. Inspect builds a temporary
// session with onnxruntime's default options.
func (r *Runtime) Inspect(model []byte) (inputs, outputs []*efpb.TensorSpec, err error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, nil, fmt.Errorf("infer: inspect: runtime %w", ErrClosed)
	}
	ins, outs, err := r.inspect(model)
	if err != nil {
		return nil, nil, fmt.Errorf("infer: inspect: %w", err)
	}
	for _, in := range ins {
		spec, err := tensorSpec("input", in)
		if err != nil {
			return nil, nil, fmt.Errorf("infer: inspect: %w", err)
		}
		inputs = append(inputs, spec)
	}
	for _, out := range outs {
		spec, err := tensorSpec("output", out)
		if err != nil {
			return nil, nil, fmt.Errorf("infer: inspect: %w", err)
		}
		outputs = append(outputs, spec)
	}
	return inputs, outputs, nil
}

// inspect asks onnxruntime for the model's inputs and outputs. Callers hold
// r.life shared.
func (r *Runtime) inspect(model []byte) (ins, outs []ort.InputOutputInfo, err error) {
	if len(model) == 0 {
		return nil, nil, fmt.Errorf("%w: model is empty", ErrInvalidModel)
	}
	ins, outs, err = ort.GetInputOutputInfoWithONNXData(model)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: onnxruntime cannot load it (%d bytes): %v", ErrInvalidModel, len(model), err)
	}
	return ins, outs, nil
}

// Load creates a session for model that feeds the named inputs and fetches
// the named outputs (nil means all of the model's, in model order). Every
// model input must be fed. For now only FP32 inputs and outputs are
// supported. Sessions run with one intra-op and one inter-op thread and no
// spinning: each Run computes on its caller's goroutine, so concurrency is
// the caller's (concurrent Run calls are safe).
func (r *Runtime) Load(model []byte, inputs, outputs []string) (*Session, error) {
	return r.load(model, inputs, outputs, "")
}

// LoadShared is Load, except that every LoadShared of the same model bytes
// and names shares one onnxruntime session while any of them is open (each
// gets its own Session to close). Many agents in one process (fleet-sim)
// then hold one session per model version instead of one each.
func (r *Runtime) LoadShared(model []byte, inputs, outputs []string) (*Session, error) {
	return r.LoadSharedSum(model, sha256.Sum256(model), inputs, outputs)
}

// LoadSharedSum is LoadShared for a caller that has just computed sum =
// sha256(model) itself (the agent verifies every model file against its
// manifest before loading it), saving one more pass over the bytes. A wrong
// sum would hand out another model's session: never pass one from
// elsewhere.
func (r *Runtime) LoadSharedSum(model []byte, sum [sha256.Size]byte, inputs, outputs []string) (*Session, error) {
	key := hex.EncodeToString(sum[:]) + "|" + strings.Join(inputs, ",") + "|" + strings.Join(outputs, ",")
	r.mu.Lock()
	if c := r.shared[key]; c != nil && r.sessions != nil {
		if s := r.handleLocked(c); s != nil {
			r.mu.Unlock()
			return s, nil
		}
	}
	r.mu.Unlock()
	return r.load(model, inputs, outputs, key)
}

// handleLocked opens one more Session on core c; r.mu is held.
func (r *Runtime) handleLocked(c *sessionCore) *Session {
	if c.refs == 0 {
		return nil // being destroyed
	}
	c.refs++
	s := &Session{rt: r, inputs: c.inputs, outputs: c.outputs, core: c}
	r.sessions[s] = struct{}{}
	return s
}

func (r *Runtime) load(model []byte, inputs, outputs []string, key string) (*Session, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("infer: load: runtime %w", ErrClosed)
	}
	ins, outs, err := r.inspect(model)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}
	inSpecs, err := pick("input", ins, inputs, true)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}
	outSpecs, err := pick("output", outs, outputs, false)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}

	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("infer: load: session options: %w", err)
	}
	defer opts.Destroy()
	for _, set := range []struct {
		what string
		fn   func() error
	}{
		{"intra-op threads", func() error { return opts.SetIntraOpNumThreads(1) }},
		{"inter-op threads", func() error { return opts.SetInterOpNumThreads(1) }},
		{"intra-op spinning", func() error { return opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0") }},
		{"inter-op spinning", func() error { return opts.AddSessionConfigEntry("session.inter_op.allow_spinning", "0") }},
	} {
		if err := set.fn(); err != nil {
			return nil, fmt.Errorf("infer: load: set %s: %w", set.what, err)
		}
	}

	names := func(specs []*efpb.TensorSpec) []string {
		out := make([]string, len(specs))
		for i, s := range specs {
			out[i] = s.Name
		}
		return out
	}
	dyn, err := ort.NewDynamicAdvancedSessionWithONNXData(model, names(inSpecs), names(outSpecs), opts)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w: %v", ErrInvalidModel, err)
	}
	c := &sessionCore{key: key, dyn: dyn, inputs: inSpecs, outputs: outSpecs}
	r.mu.Lock()
	if key != "" {
		if other := r.shared[key]; other != nil {
			// Loaded concurrently by someone else: share theirs.
			if s := r.handleLocked(other); s != nil {
				r.mu.Unlock()
				_ = dyn.Destroy()
				return s, nil
			}
		}
		r.shared[key] = c
	}
	c.refs = 1
	s := &Session{rt: r, inputs: inSpecs, outputs: outSpecs, core: c}
	r.sessions[s] = struct{}{}
	r.mu.Unlock()
	r.logger.Debug("session loaded", "inputs", names(inSpecs), "outputs", names(outSpecs), "model_bytes", len(model))
	return s, nil
}

// release drops a closed Session from r's set and reports whether it was
// the last one on its core (which the caller then destroys).
func (r *Runtime) release(s *Session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sessions, s)
	c := s.core
	c.refs--
	if c.refs > 0 {
		return false
	}
	if c.key != "" && r.shared[c.key] == c {
		delete(r.shared, c.key)
	}
	return true
}

// pick selects the named values (all when names is empty) and checks they
// are FP32 tensors. With requireAll, every model value must be named.
func pick(what string, infos []ort.InputOutputInfo, names []string, requireAll bool) ([]*efpb.TensorSpec, error) {
	all := make([]string, len(infos))
	byName := map[string]ort.InputOutputInfo{}
	for i, info := range infos {
		all[i] = info.Name
		byName[info.Name] = info
	}
	if len(names) == 0 {
		names = all
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: model has no %ss", ErrUnsupported, what)
	}
	seen := map[string]bool{}
	var specs []*efpb.TensorSpec
	for _, n := range names {
		info, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("%w: model has no %s %q (it has %q)", ErrUnsupported, what, n, all)
		}
		if seen[n] {
			return nil, fmt.Errorf("%w: %s %q requested twice", ErrUnsupported, what, n)
		}
		seen[n] = true
		spec, err := tensorSpec(what, info)
		if err != nil {
			return nil, err
		}
		if spec.Datatype != "FP32" {
			return nil, fmt.Errorf("%w: %s %q is %s; only FP32 inputs and outputs are supported",
				ErrUnsupported, what, n, spec.Datatype)
		}
		specs = append(specs, spec)
	}
	if requireAll {
		for _, n := range all {
			if !seen[n] {
				return nil, fmt.Errorf("%w: model %s %q is not fed (requested %q)", ErrUnsupported, what, n, names)
			}
		}
	}
	return specs, nil
}

// tensorSpec converts onnxruntime's description of a value.
func tensorSpec(what string, info ort.InputOutputInfo) (*efpb.TensorSpec, error) {
	if info.OrtValueType != ort.ONNXTypeTensor {
		return nil, fmt.Errorf("%w: %s %q is a %s; only tensors are supported",
			ErrUnsupported, what, info.Name, info.OrtValueType)
	}
	dt, ok := datatypeName(info.DataType)
	if !ok {
		return nil, fmt.Errorf("%w: %s %q has element type %s, which has no Open Inference Protocol name",
			ErrUnsupported, what, info.Name, info.DataType)
	}
	shape := slices.Clone([]int64(info.Dimensions))
	for i, d := range shape {
		if d < 0 {
			shape[i] = -1
		}
	}
	return &efpb.TensorSpec{Name: info.Name, Datatype: dt, Shape: shape}, nil
}

// datatypeName maps an onnxruntime element type to its Open Inference
// Protocol datatype name.
func datatypeName(t ort.TensorElementDataType) (string, bool) {
	switch t {
	case ort.TensorElementDataTypeFloat:
		return "FP32", true
	case ort.TensorElementDataTypeDouble:
		return "FP64", true
	case ort.TensorElementDataTypeFloat16:
		return "FP16", true
	case ort.TensorElementDataTypeBFloat16:
		return "BF16", true
	case ort.TensorElementDataTypeInt8:
		return "INT8", true
	case ort.TensorElementDataTypeInt16:
		return "INT16", true
	case ort.TensorElementDataTypeInt32:
		return "INT32", true
	case ort.TensorElementDataTypeInt64:
		return "INT64", true
	case ort.TensorElementDataTypeUint8:
		return "UINT8", true
	case ort.TensorElementDataTypeUint16:
		return "UINT16", true
	case ort.TensorElementDataTypeUint32:
		return "UINT32", true
	case ort.TensorElementDataTypeUint64:
		return "UINT64", true
	case ort.TensorElementDataTypeBool:
		return "BOOL", true
	case ort.TensorElementDataTypeString:
		return "BYTES", true
	default:
		return "", false
	}
}
