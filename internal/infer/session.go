package infer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// MaxTensorElements bounds the element count of one input tensor, so a
// bad shape cannot make Run allocate without limit.
const MaxTensorElements = 1 << 28

// Tensor is a dense typed tensor (see package tensor).
type Tensor = tensor.Tensor

// Session is a loaded model. Run, Check and Warm are safe for concurrent
// use; Close waits for runs in flight.
type Session struct {
	rt      *Runtime
	inputs  []*efpb.TensorSpec // in session feed order; never modified
	outputs []*efpb.TensorSpec // in session fetch order; never modified
	core    *sessionCore
	closed  atomic.Bool
}

// sessionCore is one onnxruntime session. Sessions from LoadShared share
// a core; it is destroyed when the last of them closes.
type sessionCore struct {
	key string // the share key; "" for a session from Load

	mu  sync.RWMutex                // held shared by runs, exclusively to destroy
	dyn *ort.DynamicAdvancedSession // guarded by mu; nil once destroyed

	refs int // open Sessions on this core; guarded by the Runtime's mu

	inputs, outputs []*efpb.TensorSpec // shared by its Sessions; never modified
	scalarOut       []bool             // outputs of rank 0, by index; never modified
	mapped          int                // initializers onnxruntime maps from the model file
}

// Inputs returns the session's inputs (copies).
func (s *Session) Inputs() []*efpb.TensorSpec { return cloneSpecs(s.inputs) }

// Outputs returns the session's outputs (copies), in the order Run returns
// them. A class-map output (TENSOR_KIND_CLASS_MAP) is described as the
// [rows, classes] tensor Run returns, with its class labels.
func (s *Session) Outputs() []*efpb.TensorSpec { return cloneSpecs(s.outputs) }

func cloneSpecs(specs []*efpb.TensorSpec) []*efpb.TensorSpec {
	out := make([]*efpb.TensorSpec, len(specs))
	for i, sp := range specs {
		out[i] = proto.CloneOf(sp)
	}
	return out
}

// Run feeds one tensor per model input (matched by name, any order) and
// returns the outputs in Outputs order. Inputs that do not fit the model
// (unknown or missing name, another datatype, wrong rank, a fixed
// dimension that differs, data length not the product of the shape) give
// an error wrapping ErrBadInput that names the problem; so does an input
// onnxruntime refuses before computing (ErrBadInput too). Run does not
// keep or modify the input data.
func (s *Session) Run(inputs []Tensor) ([]Tensor, error) {
	outs, err := s.runWith(inputs, func(c *sessionCore, ordered []Tensor) ([]Tensor, error) { return c.run(ordered, nil) })
	if err != nil {
		return nil, fmt.Errorf("infer: run: %w", err)
	}
	return outs, nil
}

// runWith checks the session is open and inputs fit it, and calls run
// with the inputs in the model's order while holding the session shared.
func (s *Session) runWith(inputs []Tensor, run func(c *sessionCore, ordered []Tensor) ([]Tensor, error)) ([]Tensor, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("session %w", ErrClosed)
	}
	c := s.core
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.dyn == nil {
		return nil, fmt.Errorf("session %w", ErrClosed)
	}
	ordered, err := s.order(inputs)
	if err != nil {
		return nil, err
	}
	return run(c, ordered)
}

// RunContext is Run that ends when ctx does: onnxruntime's terminate flag
// is set, so a run in progress stops at its next node, and the error
// wraps ctx's. A ctx that has ended already terminates the run before it
// computes anything.
func (s *Session) RunContext(ctx context.Context, inputs []Tensor) ([]Tensor, error) {
	outs, err := s.runWith(inputs, func(c *sessionCore, ordered []Tensor) ([]Tensor, error) {
		ro, err := ort.NewRunOptions()
		if err != nil {
			return nil, fmt.Errorf("run options: %w", err)
		}
		// The options are destroyed only once the terminating callback, if
		// it started, is done with them.
		terminated := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(terminated)
			_ = ro.Terminate()
		})
		if ctx.Err() != nil {
			_ = ro.Terminate()
		}
		outs, err := c.run(ordered, ro)
		if !stop() && ctx.Err() != nil {
			<-terminated
		}
		_ = ro.Destroy()
		return outs, err
	})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			return nil, fmt.Errorf("infer: run: %w (%v)", cerr, err)
		}
		return nil, fmt.Errorf("infer: run: %w", err)
	}
	return outs, nil
}

// run feeds ordered inputs to c; c.mu is held shared (or c is not yet
// shared).
func (c *sessionCore) run(ordered []Tensor, ro *ort.RunOptions) ([]Tensor, error) {
	outs, err := c.runRaw(ordered, ro)
	defer destroyAll(outs)
	if err != nil {
		return nil, err
	}
	result := make([]Tensor, len(outs))
	for i, v := range outs {
		if v == nil {
			return nil, fmt.Errorf("output %q: onnxruntime returned nothing", c.outputs[i].GetName())
		}
		t, err := fromValue(c.outputs[i], v)
		if err != nil {
			return nil, err
		}
		result[i] = t
	}
	return result, nil
}

// runRaw runs c and returns onnxruntime's outputs, which the caller
// destroys (also on error). ro, if not nil, are the run's options.
func (c *sessionCore) runRaw(ordered []Tensor, ro *ort.RunOptions) ([]ort.Value, error) {
	values := make([]ort.Value, len(ordered))
	defer destroyAll(values)
	for i := range ordered {
		v, err := newValue(&ordered[i])
		if err != nil {
			if errors.Is(err, ErrBadInput) || errors.Is(err, ErrUnsupported) {
				return nil, err
			}
			return nil, fmt.Errorf("input %q: %w", ordered[i].Name, err)
		}
		values[i] = v
	}
	outs := make([]ort.Value, len(c.outputs))
	for i, sp := range c.outputs {
		if c.scalarOut[i] {
			v, err := newEmptyScalar(tensor.Datatype(sp.GetDatatype()))
			if err != nil {
				return outs, fmt.Errorf("output %q: %w", sp.GetName(), err)
			}
			outs[i] = v
		}
	}
	if err := c.dyn.RunWithOptions(values, outs, ro); err != nil {
		for _, in := range ordered {
			if in.Len() == 0 {
				// The model cannot run on an empty tensor: the input's
				// limit, not a fault of the model.
				return outs, fmt.Errorf("%w: input %q is empty (shape %s) and the model cannot run on it: %v", ErrBadInput, in.Name, tensor.FormatShape(in.Shape), err)
			}
		}
		return outs, runError(err)
	}
	return outs, nil
}

func destroyAll(vs []ort.Value) {
	for _, v := range vs {
		if v != nil {
			_ = v.Destroy()
		}
	}
}

// runError classifies an onnxruntime run failure: inputs it refuses before
// computing (a dimension or type the graph does not take) are the
// caller's, ErrBadInput; the rest are the model's.
func runError(err error) error {
	msg := err.Error()
	for _, p := range []string{"Got invalid dimensions for input", "Unexpected input data type", "invalid rank for input", "Invalid rank for input"} {
		if strings.Contains(msg, p) {
			return fmt.Errorf("%w: onnxruntime refused the input: %v", ErrBadInput, err)
		}
	}
	return fmt.Errorf("%w: %v", ErrRunFailed, err)
}

// order matches inputs to the session's feed order and validates them.
func (s *Session) order(inputs []Tensor) ([]Tensor, error) {
	if len(inputs) != len(s.inputs) {
		return nil, fmt.Errorf("%w: got %d input tensors, the model takes %d (%s)",
			ErrBadInput, len(inputs), len(s.inputs), s.inputNames())
	}
	ordered := make([]Tensor, len(s.inputs))
	filled := make([]bool, len(s.inputs))
	for _, in := range inputs {
		i := slices.IndexFunc(s.inputs, func(sp *efpb.TensorSpec) bool { return sp.Name == in.Name })
		if i < 0 {
			return nil, fmt.Errorf("%w: unknown input %q; the model takes %s", ErrBadInput, in.Name, s.inputNames())
		}
		if filled[i] {
			return nil, fmt.Errorf("%w: input %q given twice", ErrBadInput, in.Name)
		}
		if err := checkInput(s.inputs[i], &in); err != nil {
			return nil, err
		}
		if in.Datatype == "" {
			in.Datatype = in.DT()
		}
		ordered[i], filled[i] = in, true
	}
	return ordered, nil
}

func (s *Session) inputNames() string {
	names := make([]string, len(s.inputs))
	for i, sp := range s.inputs {
		names[i] = fmt.Sprintf("%s %s %v", sp.Name, sp.Datatype, sp.Shape)
	}
	return fmt.Sprintf("%q", names)
}

// checkInput validates one input tensor against the model's spec.
func checkInput(spec *efpb.TensorSpec, in *Tensor) error {
	if spec.Shape != nil && len(in.Shape) != len(spec.Shape) {
		return fmt.Errorf("%w: input %q has shape %v (rank %d), the model wants rank %d %v",
			ErrBadInput, in.Name, in.Shape, len(in.Shape), len(spec.Shape), spec.Shape)
	}
	for i, d := range in.Shape {
		if d < 0 {
			return fmt.Errorf("%w: input %q dimension %d is %d, want >= 0", ErrBadInput, in.Name, i, d)
		}
		if spec.Shape != nil {
			if want := spec.Shape[i]; want >= 0 && d != want {
				return fmt.Errorf("%w: input %q has shape %v, the model wants dimension %d = %d (%v, -1 is any)",
					ErrBadInput, in.Name, in.Shape, i, want, spec.Shape)
			}
		}
	}
	if _, err := tensor.Elements(in.Shape, MaxTensorElements); err != nil {
		return fmt.Errorf("%w: input %q: %v", ErrBadInput, in.Name, err)
	}
	want := tensor.Datatype(spec.GetDatatype())
	switch got := in.DT(); {
	case got == "" && in.Data == nil:
		return fmt.Errorf("%w: input %q has no data", ErrBadInput, in.Name)
	case got != want:
		return fmt.Errorf("%w: input %q is %s, the model takes %s", ErrBadInput, in.Name, got, want)
	}
	if err := in.Check(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	return nil
}

// MismatchError reports the first test vector output outside the
// tolerance. It wraps ErrCheckFailed.
type MismatchError struct {
	Vector int
	*tensor.Mismatch
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("test vector %d: %s", e.Vector, e.Mismatch.Error())
}

// Unwrap makes errors.Is(err, ErrCheckFailed) true.
func (e *MismatchError) Unwrap() error { return ErrCheckFailed }

// ManifestTolerance returns the tolerance a manifest sets for its test
// vectors.
func ManifestTolerance(m *efpb.Manifest) tensor.Tolerance {
	return tensor.Tolerance{Abs: float64(m.GetTolerance()), Rel: float64(m.GetRelativeTolerance())}
}

// Check runs every test vector and compares its expected outputs with the
// computed ones (tensor.Compare: floats within tol, integers, BOOL and
// BYTES exactly). Any failure wraps ErrCheckFailed; a value mismatch is a
// *MismatchError naming the vector, output, element, got and want. No
// vectors is a failure too: a model must prove itself before it serves.
func (s *Session) Check(vectors []*efpb.TestVector, tol tensor.Tolerance) error {
	if !tol.Valid() {
		return fmt.Errorf("infer: check: %w: tolerance %g + %g·|want| is not finite and non-negative", ErrCheckFailed, tol.Abs, tol.Rel)
	}
	if len(vectors) == 0 {
		return fmt.Errorf("infer: check: %w: no test vectors", ErrCheckFailed)
	}
	for i, v := range vectors {
		if err := s.checkVector(i, v, tol); err != nil {
			return fmt.Errorf("infer: check: %w", err)
		}
	}
	return nil
}

func (s *Session) checkVector(i int, v *efpb.TestVector, tol tensor.Tolerance) error {
	if v == nil || len(v.Expected) == 0 {
		return fmt.Errorf("%w: test vector %d has no expected outputs", ErrCheckFailed, i)
	}
	inputs := make([]Tensor, len(v.Inputs))
	for j, in := range v.Inputs {
		t, err := tensor.FromProto(in)
		if err != nil {
			return fmt.Errorf("%w: test vector %d input %d: %w", ErrCheckFailed, i, j, err)
		}
		inputs[j] = t
	}
	outs, err := s.Run(inputs)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("%w: test vector %d: %w", ErrCheckFailed, i, err)
	}
	for j, exp := range v.Expected {
		want, err := tensor.FromProto(exp)
		if err != nil {
			return fmt.Errorf("%w: test vector %d expected output %d: %w", ErrCheckFailed, i, j, err)
		}
		k := slices.IndexFunc(outs, func(t Tensor) bool { return t.Name == want.Name })
		if k < 0 {
			return fmt.Errorf("%w: test vector %d expects output %q, the session fetches %q",
				ErrCheckFailed, i, want.Name, outputNames(outs))
		}
		if m := tensor.Compare(&outs[k], &want, tol); m != nil {
			return &MismatchError{Vector: i, Mismatch: m}
		}
	}
	return nil
}

func outputNames(ts []Tensor) []string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return names
}

// Warm runs one batch of zeros (dynamic dimensions set to 1, "" for
// BYTES) so the first real request does not pay for onnxruntime's lazy
// initialisation.
func (s *Session) Warm() error {
	inputs, err := zeroInputs(s.inputs)
	if err != nil {
		return fmt.Errorf("infer: warm: %w", err)
	}
	if _, err := s.Run(inputs); err != nil {
		return fmt.Errorf("infer: warm: %w", err)
	}
	return nil
}

// zeroInputs returns a zero tensor per spec, dynamic dimensions 1 (an
// unknown rank becomes [1]).
func zeroInputs(specs []*efpb.TensorSpec) ([]Tensor, error) {
	inputs := make([]Tensor, len(specs))
	for i, sp := range specs {
		shape := []int64{1}
		if sp.Shape != nil {
			shape = make([]int64, len(sp.Shape))
			for j, d := range sp.Shape {
				shape[j] = max(d, 1)
			}
		}
		if _, err := tensor.Elements(shape, MaxTensorElements); err != nil {
			return nil, fmt.Errorf("%w: input %q: %v", ErrUnsupported, sp.Name, err)
		}
		t, err := tensor.Zeros(sp.Name, tensor.Datatype(sp.Datatype), shape)
		if err != nil {
			return nil, fmt.Errorf("%w: input %q: %v", ErrUnsupported, sp.Name, err)
		}
		inputs[i] = t
	}
	return inputs, nil
}

// Close releases the session. The onnxruntime session behind it is
// destroyed, after the runs in flight, when no other Session shares it.
// Idempotent.
func (s *Session) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	if !s.rt.release(s) {
		return nil // another Session still uses the core
	}
	// Destroy under the lock: Runtime.Close relies on a returned Close
	// meaning the C session is gone before it releases the environment.
	c := s.core
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dyn == nil {
		return nil
	}
	err := c.dyn.Destroy()
	c.dyn = nil
	if err != nil {
		return fmt.Errorf("infer: close session: %w", err)
	}
	return nil
}
