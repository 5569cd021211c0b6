package oip

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// testBackend stands in for the agent. Model "fraud" (x: [-1,3]) returns
// per-row sums and doubled inputs; "pair" (a, b: [-1,2]) returns a-b;
// "free" accepts any shape and returns its input; "typed" (ids INT64 [-1],
// name BYTES [-1], flag BOOL [-1], half FP16 [-1]) echoes them and adds a
// class map "probs" [rows, 2] with classes 0 and 1; "fixed" takes x
// [2000, 1] and returns it. The first value of x
// selects failures: 666 errors, 777 yields NaN, 555 is an ErrInvalidInput,
// 444 returns an output of the wrong length.
type testBackend struct {
	ready atomic.Bool
	calls atomic.Int64
	// gate, when set, holds every Infer call until it is closed.
	gate chan struct{}

	mu         sync.Mutex // guards violations
	violations []string   // inputs that should never have passed validation
}

func newTestBackend() *testBackend {
	b := &testBackend{}
	b.ready.Store(true)
	return b
}

// f32 returns the FP32 data of t.
func f32(t Tensor) []float32 { d, _ := t.Data.([]float32); return d }

func spec(name string, shape ...int64) *efpb.TensorSpec {
	return &efpb.TensorSpec{Name: name, Datatype: DatatypeFP32, Shape: shape}
}

var _ Backend = (*testBackend)(nil)

func (b *testBackend) Ready() (bool, string) {
	if !b.ready.Load() {
		return false, `model "fraud" has no version serving`
	}
	return true, ""
}

func (b *testBackend) Model(name string) (ModelInfo, bool) {
	if !b.ready.Load() {
		return ModelInfo{}, false // nothing serves
	}
	switch name {
	case "fraud":
		return ModelInfo{Name: "fraud", Version: "3", Platform: "onnxruntime_onnx",
			Inputs:  []*efpb.TensorSpec{spec("x", -1, 3)},
			Outputs: []*efpb.TensorSpec{spec("sum", -1, 1), spec("double", -1, 3)}}, true
	case "pair":
		return ModelInfo{Name: "pair", Version: "1", Platform: "onnxruntime_onnx",
			Inputs:  []*efpb.TensorSpec{spec("a", -1, 2), spec("b", -1, 2)},
			Outputs: []*efpb.TensorSpec{spec("diff", -1, 2)}}, true
	case "free":
		return ModelInfo{Name: "free", Version: "1", Platform: "onnxruntime_onnx",
			Inputs:  []*efpb.TensorSpec{{Name: "x", Datatype: DatatypeFP32}},
			Outputs: []*efpb.TensorSpec{{Name: "y", Datatype: DatatypeFP32}}}, true
	case "typed":
		return ModelInfo{Name: "typed", Version: "1", Platform: "onnxruntime_onnx",
			Inputs: []*efpb.TensorSpec{
				{Name: "ids", Datatype: "INT64", Shape: []int64{-1}}, {Name: "name", Datatype: "BYTES", Shape: []int64{-1}},
				{Name: "flag", Datatype: "BOOL", Shape: []int64{-1}}, {Name: "half", Datatype: "FP16", Shape: []int64{-1}},
			},
			Outputs: []*efpb.TensorSpec{
				{Name: "ids", Datatype: "INT64", Shape: []int64{-1}}, {Name: "name", Datatype: "BYTES", Shape: []int64{-1}},
				{Name: "flag", Datatype: "BOOL", Shape: []int64{-1}}, {Name: "half", Datatype: "FP16", Shape: []int64{-1}},
				{Name: "probs", Datatype: "FP32", Shape: []int64{-1, 2}, Kind: efpb.TensorKind_TENSOR_KIND_CLASS_MAP,
					Classes: &efpb.Tensor{Name: "classes", Datatype: "INT64", Shape: []int64{2}, IntData: []int64{0, 1}}},
			}}, true
	case "fixed":
		return ModelInfo{Name: "fixed", Version: "1", Platform: "onnxruntime_onnx",
			Inputs:  []*efpb.TensorSpec{spec("x", 2000, 1)},
			Outputs: []*efpb.TensorSpec{spec("y", 2000, 1)}}, true
	}
	return ModelInfo{}, false
}

func (b *testBackend) violate(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.violations = append(b.violations, fmt.Sprintf(format, args...))
}

func (b *testBackend) Violations() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.violations...)
}

// checkInputs re-checks what the handler promises about inputs.
func (b *testBackend) checkInputs(info ModelInfo, inputs []Tensor) {
	if len(inputs) != len(info.Inputs) {
		b.violate("%s: got %d inputs, model has %d", info.Name, len(inputs), len(info.Inputs))
		return
	}
	for i, in := range inputs {
		s := info.Inputs[i]
		if in.Name != s.GetName() {
			b.violate("%s: input %d is %q, want %q", info.Name, i, in.Name, s.GetName())
		}
		n := int64(1)
		for _, d := range in.Shape {
			if d < 0 {
				b.violate("%s: negative dim in %v", info.Name, in.Shape)
			}
			n *= d
		}
		if n != int64(in.Len()) {
			b.violate("%s: %q has %d values for shape %v", info.Name, in.Name, in.Len(), in.Shape)
		}
		if err := in.Check(); err != nil {
			b.violate("%s: %v", info.Name, err)
		}
		if string(in.DT()) != s.GetDatatype() {
			b.violate("%s: %q is %s, want %s", info.Name, in.Name, in.DT(), s.GetDatatype())
		}
		if ms := s.GetShape(); len(ms) > 0 {
			if len(ms) != len(in.Shape) {
				b.violate("%s: rank %v vs %v", info.Name, in.Shape, ms)
			} else {
				for k, d := range ms {
					if d >= 0 && d != in.Shape[k] {
						b.violate("%s: dim %d of %v vs %v", info.Name, k, in.Shape, ms)
					}
				}
			}
		}
		if len(in.Shape) > 0 && in.Shape[0] > DefaultMaxBatch && (len(s.GetShape()) == 0 || s.GetShape()[0] < 0) {
			b.violate("%s: batch %d", info.Name, in.Shape[0])
		}

	}
}

func (b *testBackend) Infer(ctx context.Context, name string, inputs []Tensor) (string, []Tensor, error) {
	b.calls.Add(1)
	info, ok := b.Model(name)
	if !ok {
		return "", nil, fmt.Errorf("infer %q: %w", name, ErrModelNotFound)
	}
	b.checkInputs(info, inputs)
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
		}
	}
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	switch name {
	case "pair":
		a, c := f32(inputs[0]), f32(inputs[1])
		diff := make([]float32, len(a))
		for i := range diff {
			diff[i] = a[i] - c[i]
		}
		return info.Version, []Tensor{{Name: "diff", Shape: inputs[0].Shape, Data: diff}}, nil
	case "free":
		return info.Version, []Tensor{{Name: "y", Shape: inputs[0].Shape, Data: inputs[0].Data}}, nil
	case "fixed":
		return info.Version, []Tensor{{Name: "y", Shape: inputs[0].Shape, Data: inputs[0].Data}}, nil
	case "typed":
		rows := inputs[0].Shape[0]
		probs := make([]float32, 2*rows)
		for r := range rows {
			probs[2*r], probs[2*r+1] = 0.25, 0.75
		}
		out := append([]Tensor(nil), inputs...)
		return info.Version, append(out, Tensor{Name: "probs", Shape: []int64{rows, 2}, Data: probs}), nil
	}
	x := inputs[0]
	xd := f32(x)
	if len(xd) > 0 {
		switch xd[0] {
		case 666:
			return "", nil, errors.New("runtime exploded")
		case 555:
			return "", nil, fmt.Errorf("tensor rejected by runtime: %w", ErrInvalidInput)
		case 777:
			return info.Version, []Tensor{{Name: "sum", Shape: []int64{1, 1}, Data: []float32{float32(math.NaN())}}}, nil
		case 444:
			return info.Version, []Tensor{{Name: "sum", Shape: []int64{2, 1}, Data: []float32{1}}}, nil
		}
	}
	rows := x.Shape[0]
	sum := make([]float32, rows)
	double := make([]float32, len(xd))
	for r := range rows {
		for c := range int64(3) {
			v := xd[r*3+c]
			sum[r] += v
			double[r*3+c] = 2 * v
		}
	}
	return info.Version, []Tensor{
		{Name: "sum", Shape: []int64{rows, 1}, Data: sum},
		{Name: "double", Shape: []int64{rows, 3}, Data: double},
	}, nil
}
