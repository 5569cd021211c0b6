// Package infer runs ONNX models locally with onnxruntime (through
// github.com/yalue/onnxruntime_go, ORT API 24, libonnxruntime 1.24.x): it finds
// the shared library, describes uploaded models (what each input and output
// is served as, or why not), loads sessions, runs typed tensors (every Open
// Inference Protocol datatype, and ZipMap class maps as tensors) with shape
// checks, and checks manifest test vectors. Imported by agent (serving),
// controlplane (the shared runtime), controlplane/models (upload checks),
// controlplane/cli (model inspect), controlplane/retrain (evaluation),
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
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/onnxmodel"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Sentinel errors for branching with errors.Is.
var (
	// ErrInvalidModel: the bytes are not an ONNX model onnxruntime can load.
	ErrInvalidModel = errors.New("not a valid ONNX model")
	// ErrUnsupported: a valid model this package cannot serve; the error
	// names the value, its ONNX type and why (see Describe).
	ErrUnsupported = errors.New("unsupported model")
	// ErrBadInput: Run was given tensors that do not fit the model, or
	// onnxruntime refused them before computing. Serving layers map it to
	// HTTP 400; it says nothing about the model's health.
	ErrBadInput = errors.New("bad input")
	// ErrRunFailed: onnxruntime failed while computing.
	ErrRunFailed = errors.New("inference failed")
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

// ValueDescription is one model input or output as serving sees it.
type ValueDescription struct {
	Name string
	// Type is the ONNX type (tensor(float), seq(map(int64,tensor(float))));
	// Shape the declared shape ([N,3], [?,3], unknown rank), for tensors.
	Type, Shape string
	// Spec is what the value is served as; nil when Problem says why it
	// cannot be (an error wrapping ErrUnsupported).
	Spec    *efpb.TensorSpec
	Problem error
	// Scalar is set for a rank-0 tensor (its Spec's empty shape cannot
	// tell it from a tensor of unknown rank).
	Scalar bool
}

// Description is what a model declares and how each of its values is
// served.
type Description struct {
	Model           *onnxmodel.Model
	Inputs, Outputs []ValueDescription
}

// Err returns the first value's problem, or nil when every value is served.
func (d *Description) Err() error {
	for _, v := range append(slices.Clone(d.Inputs), d.Outputs...) {
		if v.Problem != nil {
			return v.Problem
		}
	}
	return nil
}

// Specs returns the served inputs and outputs; Err must be nil.
func (d *Description) Specs() (inputs, outputs []*efpb.TensorSpec) {
	for _, v := range d.Inputs {
		inputs = append(inputs, proto.CloneOf(v.Spec))
	}
	for _, v := range d.Outputs {
		outputs = append(outputs, proto.CloneOf(v.Spec))
	}
	return inputs, outputs
}

// DescribeModel says, without onnxruntime, how each value m declares is
// served (see Describe).
func DescribeModel(m *onnxmodel.Model) *Description {
	d := &Description{Model: m}
	for _, set := range []struct {
		what string
		vals []onnxmodel.Value
		dst  *[]ValueDescription
	}{{"input", m.Inputs, &d.Inputs}, {"output", m.Outputs, &d.Outputs}} {
		for _, v := range set.vals {
			vd := ValueDescription{Name: v.Name, Type: v.Type.String()}
			if v.Type.Kind == onnxmodel.KindTensor || v.Type.Kind == onnxmodel.KindSparseTensor {
				vd.Shape = v.Type.ShapeString()
				vd.Scalar = v.Type.Kind == onnxmodel.KindTensor && v.Type.HasShape && len(v.Type.Shape) == 0
			}
			var labels *tensor.Tensor
			if l, ok := m.ClassLabels(v.Name); ok {
				labels = &l
			}
			vd.Spec, vd.Problem = Describe(set.what, v, labels)
			*set.dst = append(*set.dst, vd)
		}
	}
	return d
}

// Describe checks that onnxruntime loads model and says how each of its
// inputs and outputs is served. Bytes onnxruntime cannot load give
// ErrInvalidModel; a model it loads is always described, problems and all.
func (r *Runtime) Describe(model []byte) (*Description, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("infer: describe: runtime %w", ErrClosed)
	}
	d, err := r.describe(model)
	if err != nil {
		return nil, fmt.Errorf("infer: describe: %w", err)
	}
	return d, nil
}

// describe is Describe for callers holding r.life shared.
func (r *Runtime) describe(model []byte) (*Description, error) {
	ins, outs, err := r.inspect(model)
	if err != nil {
		return nil, err
	}
	m, err := onnxmodel.Read(model)
	if err != nil {
		// onnxruntime loaded it: describe what it reports.
		m = &onnxmodel.Model{}
	}
	// onnxruntime decides which values there are, in which order; the
	// model's declarations give their full types.
	declared := map[string]onnxmodel.Value{}
	for _, v := range append(slices.Clone(m.Inputs), m.Outputs...) {
		declared[v.Name] = v
	}
	values := func(infos []ort.InputOutputInfo) []onnxmodel.Value {
		vals := make([]onnxmodel.Value, len(infos))
		for i, info := range infos {
			if v, ok := declared[info.Name]; ok && v.Type.Kind != onnxmodel.KindUnknown {
				vals[i] = v
				continue
			}
			vals[i] = valueFromORT(info)
		}
		return vals
	}
	m.Inputs, m.Outputs = values(ins), values(outs)
	return DescribeModel(m), nil
}

// describeForLoad is describe without onnxruntime when the model declares
// the full type of every input and output (onnxmodel.Read): asking
// onnxruntime means building a throwaway session, which for a large model
// costs as much time and memory as the session Load then builds. The
// session Load creates still checks that onnxruntime takes the model.
// Callers hold r.life shared.
func (r *Runtime) describeForLoad(model []byte) (*Description, error) {
	m, err := onnxmodel.Read(model)
	if err != nil || len(m.Inputs) == 0 || len(m.Outputs) == 0 {
		return r.describe(model)
	}
	for _, v := range append(slices.Clone(m.Inputs), m.Outputs...) {
		if v.Type.Kind == onnxmodel.KindUnknown {
			return r.describe(model)
		}
	}
	return DescribeModel(m), nil
}

// valueFromORT builds a declared value from onnxruntime's description
// (tensors only; other kinds without their inner types).
func valueFromORT(info ort.InputOutputInfo) onnxmodel.Value {
	v := onnxmodel.Value{Name: info.Name}
	switch info.OrtValueType {
	case ort.ONNXTypeTensor:
		v.Type = onnxmodel.Type{Kind: onnxmodel.KindTensor, Elem: onnxmodel.ElemType(info.DataType), HasShape: true}
		for _, d := range info.Dimensions {
			v.Type.Shape = append(v.Type.Shape, onnxmodel.Dim{Value: d, Known: d >= 0})
		}
	case ort.ONNXTypeSequence:
		v.Type = onnxmodel.Type{Kind: onnxmodel.KindSequence, Inner: &onnxmodel.Type{}}
	case ort.ONNXTypeMap:
		v.Type = onnxmodel.Type{Kind: onnxmodel.KindMap, Inner: &onnxmodel.Type{}}
	case ort.ONNXTypeOptional:
		v.Type = onnxmodel.Type{Kind: onnxmodel.KindOptional, Inner: &onnxmodel.Type{}}
	case ort.ONNXTypeSparseTensor:
		v.Type = onnxmodel.Type{Kind: onnxmodel.KindSparseTensor, Elem: onnxmodel.ElemType(info.DataType)}
	}
	return v
}

// Inspect returns the inputs and outputs of an ONNX model as they are
// served (TensorSpecs with Open Inference Protocol datatypes; -1 marks a
// dynamic dimension; class maps as [rows, classes] tensors). Bytes that
// are not a model onnxruntime can load give ErrInvalidModel; a value that
// cannot be served gives ErrUnsupported naming it (see Describe for all of
// them at once).
func (r *Runtime) Inspect(model []byte) (inputs, outputs []*efpb.TensorSpec, err error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, nil, fmt.Errorf("infer: inspect: runtime %w", ErrClosed)
	}
	d, err := r.describe(model)
	if err != nil {
		return nil, nil, fmt.Errorf("infer: inspect: %w", err)
	}
	if err := d.Err(); err != nil {
		return nil, nil, fmt.Errorf("infer: inspect: %w", err)
	}
	inputs, outputs = d.Specs()
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
// model input must be fed, and every named value must be servable (see
// Describe). Sessions run with one intra-op and one inter-op thread, no
// spinning and no CPU memory arena: each Run computes on its caller's
// goroutine, so concurrency is the caller's (concurrent Run calls are
// safe), and memory a run needed is given back when it ends. Load does not
// keep model: the caller may release or unmap it once Load returns.
func (r *Runtime) Load(model []byte, inputs, outputs []string) (*Session, error) {
	return r.load(model, "", inputs, outputs, "")
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
	return r.LoadSharedFile("", model, sum, inputs, outputs)
}

// LoadSharedFile is LoadSharedSum for a model stored in the file at path
// whose content is model (mapped, typically): onnxruntime reads the file
// itself and maps its large initializers from it (see loadFromFile), so
// neither the caller's copy nor a parsed copy of the weights needs to be
// resident while the session is built. model is still read to describe
// the model, which touches little beyond its graph structure. The file
// must not change while the session is open. Empty path is
// LoadSharedSum.
func (r *Runtime) LoadSharedFile(path string, model []byte, sum [sha256.Size]byte, inputs, outputs []string) (*Session, error) {
	key := hex.EncodeToString(sum[:]) + "|" + strings.Join(inputs, ",") + "|" + strings.Join(outputs, ",")
	r.mu.Lock()
	if c := r.shared[key]; c != nil && r.sessions != nil {
		if s := r.handleLocked(c); s != nil {
			r.mu.Unlock()
			return s, nil
		}
	}
	r.mu.Unlock()
	return r.load(model, path, inputs, outputs, key)
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

// load creates the session from path when it is set (its content is
// model), else from model.
func (r *Runtime) load(model []byte, path string, inputs, outputs []string, key string) (*Session, error) {
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("infer: load: runtime %w", ErrClosed)
	}
	desc, err := r.describeForLoad(model)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}
	inSpecs, err := pick("input", desc.Inputs, inputs, true)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}
	outSpecs, err := pick("output", desc.Outputs, outputs, false)
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w", err)
	}
	// onnxruntime_go cannot return half-precision outputs: fetch them
	// widened to float32 (exact) instead.
	var half []string
	for _, sp := range outSpecs {
		if d := tensor.Datatype(sp.Datatype); d == tensor.FP16 || d == tensor.BF16 {
			half = append(half, sp.Name)
		}
	}
	fetch := names(outSpecs)
	if len(half) > 0 {
		widened, renamed, err := onnxmodel.WidenOutputs(model, half)
		if err != nil {
			return nil, fmt.Errorf("infer: load: %w: %v", ErrUnsupported, err)
		}
		model, path = widened, "" // the widened model exists only in memory
		for i, n := range fetch {
			if alt, ok := renamed[n]; ok {
				fetch[i] = alt
			}
		}
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
		// No CPU arena: it keeps what a run's peak needed (rounded up) for
		// the session's life, and places initializers in it too; small
		// models on small devices are better served by malloc, which gives
		// a large freed block back to the system at once.
		{"CPU memory arena", func() error { return opts.SetCpuMemArena(false) }},
		// No memory pattern: it plans one block per run for each input
		// shape it sees and keeps the plan, so a model served with many
		// batch sizes accumulates them; malloc per tensor is what the
		// arena-less setting above asks for anyway.
		{"memory pattern", func() error { return opts.SetMemPattern(false) }},
		{"intra-op threads", func() error { return opts.SetIntraOpNumThreads(1) }},
		{"inter-op threads", func() error { return opts.SetInterOpNumThreads(1) }},
		{"intra-op spinning", func() error { return opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0") }},
		{"inter-op spinning", func() error { return opts.AddSessionConfigEntry("session.inter_op.allow_spinning", "0") }},
	} {
		if err := set.fn(); err != nil {
			return nil, fmt.Errorf("infer: load: set %s: %w", set.what, err)
		}
	}

	var dyn *ort.DynamicAdvancedSession
	mapped := 0
	if path != "" {
		dyn, mapped, err = loadFromFile(opts, path, model, names(inSpecs), fetch)
	} else {
		dyn, err = ort.NewDynamicAdvancedSessionWithONNXData(model, names(inSpecs), fetch, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("infer: load: %w: %v", ErrInvalidModel, err)
	}
	c := &sessionCore{key: key, dyn: dyn, inputs: inSpecs, outputs: outSpecs, scalarOut: make([]bool, len(outSpecs)), mapped: mapped}
	for i, sp := range outSpecs {
		for _, v := range desc.Outputs {
			if v.Name == sp.Name {
				c.scalarOut[i] = v.Scalar
			}
		}
	}
	if err := c.learnClasses(); err != nil {
		_ = dyn.Destroy()
		return nil, fmt.Errorf("infer: load: %w", err)
	}
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
	r.logger.Debug("session loaded", "inputs", names(inSpecs), "outputs", names(outSpecs), "model_bytes", len(model),
		"mapped_initializers", mapped)
	return s, nil
}

// externalMinBytes is the smallest initializer loadFromFile leaves in
// the model file for onnxruntime to map: smaller ones cost little to copy.
const externalMinBytes = 1 << 20

// loadFromFile creates a session for the model stored at path (whose
// content is model). Its large initializers are pointed at their own bytes
// in that file as ONNX external data (onnxmodel.Externalize), which
// onnxruntime maps: the weights stay pages of the file, shared with the
// page cache, instead of a parsed protobuf copied into tensors (a load
// then peaks at about the model's size, not twice it). Should onnxruntime
// refuse that form, the file is loaded as it is. mapped counts the
// initializers left in the file.
func loadFromFile(opts *ort.SessionOptions, path string, model []byte, inputs, outputs []string) (dyn *ort.DynamicAdvancedSession, mapped int, err error) {
	slim, n, err := onnxmodel.Externalize(model, filepath.Base(path), externalMinBytes)
	if err == nil && n > 0 {
		err = opts.AddSessionConfigEntry("session.model_external_initializers_file_folder_path", filepath.Dir(path))
		if err == nil {
			if dyn, err = ort.NewDynamicAdvancedSessionWithONNXData(slim, inputs, outputs, opts); err == nil {
				return dyn, n, nil
			}
		}
	}
	dyn, err = ort.NewDynamicAdvancedSession(path, inputs, outputs, opts)
	return dyn, 0, err
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

func names(specs []*efpb.TensorSpec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}

// learnClasses runs the model once on zero inputs to read the class
// labels of class-map outputs the model does not name (no ZipMap node
// declares them). Nothing shares c yet.
func (c *sessionCore) learnClasses() error {
	var unknown []int
	for i, sp := range c.outputs {
		if sp.GetKind() == efpb.TensorKind_TENSOR_KIND_CLASS_MAP && sp.GetClasses() == nil {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	inputs, err := zeroInputs(c.inputs)
	if err != nil {
		return err
	}
	outs, err := c.runRaw(inputs, nil)
	defer destroyAll(outs)
	if err != nil {
		return fmt.Errorf("%w: reading the class labels of output %q needs a run on zero inputs, which failed: %v",
			ErrUnsupported, c.outputs[unknown[0]].GetName(), err)
	}
	for _, i := range unknown {
		if err := discoverClasses(c.outputs[i], outs[i]); err != nil {
			return fmt.Errorf("%w: %v", ErrUnsupported, err)
		}
	}
	return nil
}

// pick selects the named values (all when names is empty) and checks they
// are served. With requireAll, every model value must be named.
func pick(what string, vals []ValueDescription, names []string, requireAll bool) ([]*efpb.TensorSpec, error) {
	all := make([]string, len(vals))
	byName := map[string]ValueDescription{}
	for i, v := range vals {
		all[i] = v.Name
		byName[v.Name] = v
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
		v, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("%w: model has no %s %q (it has %q)", ErrUnsupported, what, n, all)
		}
		if seen[n] {
			return nil, fmt.Errorf("%w: %s %q requested twice", ErrUnsupported, what, n)
		}
		seen[n] = true
		if v.Problem != nil {
			return nil, v.Problem
		}
		specs = append(specs, proto.CloneOf(v.Spec))
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
