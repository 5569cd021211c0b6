package infer

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// MaxTensorElements bounds the element count of one input tensor (1 GiB of
// float32), so a bad shape cannot make Run allocate without limit.
const MaxTensorElements = 1 << 28

// Tensor is a dense row-major float32 tensor. Only FP32 is supported for now.
type Tensor struct {
	Name  string
	Shape []int64
	Data  []float32
}

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
}

// Inputs returns the session's inputs (copies).
func (s *Session) Inputs() []*efpb.TensorSpec { return cloneSpecs(s.inputs) }

// Outputs returns the session's outputs (copies), in the order Run returns them.
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
// (unknown or missing name, wrong rank, a fixed dimension that differs, a
// dimension below 1, data length not the product of the shape) give an error
// wrapping ErrBadInput that names the problem. Run does not keep or modify
// the input data.
func (s *Session) Run(inputs []Tensor) ([]Tensor, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("infer: run: session %w", ErrClosed)
	}
	c := s.core
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.dyn == nil {
		return nil, fmt.Errorf("infer: run: session %w", ErrClosed)
	}
	ordered, err := s.order(inputs)
	if err != nil {
		return nil, fmt.Errorf("infer: run: %w", err)
	}

	values := make([]ort.Value, len(ordered))
	defer func() {
		for _, v := range values {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, in := range ordered {
		t, err := ort.NewTensor(ort.NewShape(in.Shape...), in.Data)
		if err != nil {
			return nil, fmt.Errorf("infer: run: input %q: %w", in.Name, err)
		}
		values[i] = t
	}
	outs := make([]ort.Value, len(s.outputs))
	defer func() {
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	if err := c.dyn.Run(values, outs); err != nil {
		return nil, fmt.Errorf("infer: run: %w", err)
	}
	result := make([]Tensor, len(outs))
	for i, v := range outs {
		t, ok := v.(*ort.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("infer: run: output %q: %w: got %T, want a float32 tensor",
				s.outputs[i].Name, ErrUnsupported, v)
		}
		// GetData is already a Go copy of onnxruntime's buffer; it stays
		// valid after Destroy releases the OrtValue.
		result[i] = Tensor{Name: s.outputs[i].Name, Shape: []int64(t.GetShape()), Data: t.GetData()}
	}
	return result, nil
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
		if err := checkShape(s.inputs[i], in); err != nil {
			return nil, err
		}
		ordered[i], filled[i] = in, true
	}
	return ordered, nil
}

func (s *Session) inputNames() string {
	names := make([]string, len(s.inputs))
	for i, sp := range s.inputs {
		names[i] = fmt.Sprintf("%s %v", sp.Name, sp.Shape)
	}
	return fmt.Sprintf("%q", names)
}

// checkShape validates one input tensor against the model's spec.
func checkShape(spec *efpb.TensorSpec, in Tensor) error {
	if len(in.Shape) != len(spec.Shape) {
		return fmt.Errorf("%w: input %q has shape %v (rank %d), the model wants rank %d %v",
			ErrBadInput, in.Name, in.Shape, len(in.Shape), len(spec.Shape), spec.Shape)
	}
	n := int64(1)
	for i, d := range in.Shape {
		if d < 1 {
			return fmt.Errorf("%w: input %q dimension %d is %d, want >= 1", ErrBadInput, in.Name, i, d)
		}
		if want := spec.Shape[i]; want >= 0 && d != want {
			return fmt.Errorf("%w: input %q has shape %v, the model wants dimension %d = %d (%v, -1 is any)",
				ErrBadInput, in.Name, in.Shape, i, want, spec.Shape)
		}
		if d > MaxTensorElements/n {
			return fmt.Errorf("%w: input %q shape %v has more than %d elements", ErrBadInput, in.Name, in.Shape, MaxTensorElements)
		}
		n *= d
	}
	if int64(len(in.Data)) != n {
		return fmt.Errorf("%w: input %q has %d values, shape %v needs %d", ErrBadInput, in.Name, len(in.Data), in.Shape, n)
	}
	return nil
}

// MismatchError reports the first output element of a test vector outside
// the tolerance. It wraps ErrCheckFailed.
type MismatchError struct {
	Vector    int
	Output    string
	Element   int
	Got, Want float32
	Tolerance float32
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("test vector %d: output %q element %d: got %g, want %g (tolerance %g)",
		e.Vector, e.Output, e.Element, e.Got, e.Want, e.Tolerance)
}

// Unwrap makes errors.Is(err, ErrCheckFailed) true.
func (e *MismatchError) Unwrap() error { return ErrCheckFailed }

// Check runs every test vector and compares each expected output element
// with the computed one: |got-want| must be <= tolerance (NaN never passes).
// Any failure wraps ErrCheckFailed; a value mismatch is a *MismatchError
// naming the vector index, output, element, got and want. No vectors is a
// failure too: a model must prove itself before it serves.
func (s *Session) Check(vectors []*efpb.TestVector, tolerance float32) error {
	tol := float64(tolerance)
	if !(tol >= 0) || math.IsInf(tol, 0) {
		return fmt.Errorf("infer: check: %w: tolerance %v is not a finite non-negative number", ErrCheckFailed, tolerance)
	}
	if len(vectors) == 0 {
		return fmt.Errorf("infer: check: %w: no test vectors", ErrCheckFailed)
	}
	for i, v := range vectors {
		if err := s.checkVector(i, v, tolerance); err != nil {
			return fmt.Errorf("infer: check: %w", err)
		}
	}
	return nil
}

func (s *Session) checkVector(i int, v *efpb.TestVector, tolerance float32) error {
	if v == nil || len(v.Expected) == 0 {
		return fmt.Errorf("%w: test vector %d has no expected outputs", ErrCheckFailed, i)
	}
	inputs := make([]Tensor, len(v.Inputs))
	for j, in := range v.Inputs {
		if in == nil {
			return fmt.Errorf("%w: test vector %d input %d is empty", ErrCheckFailed, i, j)
		}
		inputs[j] = Tensor{Name: in.Name, Shape: in.Shape, Data: in.Data}
	}
	outs, err := s.Run(inputs)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("%w: test vector %d: %w", ErrCheckFailed, i, err)
	}
	for _, exp := range v.Expected {
		if exp == nil {
			return fmt.Errorf("%w: test vector %d has an empty expected output", ErrCheckFailed, i)
		}
		k := slices.IndexFunc(outs, func(t Tensor) bool { return t.Name == exp.Name })
		if k < 0 {
			return fmt.Errorf("%w: test vector %d expects output %q, the session fetches %q",
				ErrCheckFailed, i, exp.Name, outputNames(outs))
		}
		got := outs[k]
		if !slices.Equal(got.Shape, exp.Shape) {
			return fmt.Errorf("%w: test vector %d: output %q has shape %v, expected %v",
				ErrCheckFailed, i, exp.Name, got.Shape, exp.Shape)
		}
		if len(got.Data) != len(exp.Data) {
			return fmt.Errorf("%w: test vector %d: output %q has %d values, expected %d",
				ErrCheckFailed, i, exp.Name, len(got.Data), len(exp.Data))
		}
		for e, want := range exp.Data {
			g := got.Data[e]
			if !(math.Abs(float64(g)-float64(want)) <= float64(tolerance)) {
				return &MismatchError{Vector: i, Output: exp.Name, Element: e, Got: g, Want: want, Tolerance: tolerance}
			}
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

// Warm runs one batch of zeros (dynamic dimensions set to 1) so the first
// real request does not pay for onnxruntime's lazy initialisation.
func (s *Session) Warm() error {
	inputs := make([]Tensor, len(s.inputs))
	for i, sp := range s.inputs {
		shape := make([]int64, len(sp.Shape))
		n := int64(1)
		for j, d := range sp.Shape {
			if d < 1 {
				d = 1
			}
			if d > MaxTensorElements/n {
				return fmt.Errorf("infer: warm: %w: input %q shape %v has more than %d elements",
					ErrUnsupported, sp.Name, sp.Shape, MaxTensorElements)
			}
			shape[j] = d
			n *= d
		}
		inputs[i] = Tensor{Name: sp.Name, Shape: shape, Data: make([]float32, n)}
	}
	if _, err := s.Run(inputs); err != nil {
		return fmt.Errorf("infer: warm: %w", err)
	}
	return nil
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
