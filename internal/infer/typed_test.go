package infer

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/modelzoo"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// sampleData returns 4 values of datatype d covering its edges.
func sampleData(d tensor.Datatype) any {
	switch d {
	case tensor.Bool:
		return []bool{true, false, false, true}
	case tensor.Uint8:
		return []uint8{0, 1, 128, 255}
	case tensor.Uint16:
		return []uint16{0, 1, 300, 65535}
	case tensor.Uint32:
		return []uint32{0, 1, 70000, math.MaxUint32}
	case tensor.Uint64:
		return []uint64{0, 1, 1 << 40, math.MaxUint64}
	case tensor.Int8:
		return []int8{-128, -1, 0, 127}
	case tensor.Int16:
		return []int16{-32768, -1, 0, 32767}
	case tensor.Int32:
		return []int32{math.MinInt32, -1, 0, math.MaxInt32}
	case tensor.Int64:
		return []int64{math.MinInt64, -1, 0, math.MaxInt64}
	case tensor.FP16:
		return []float32{-65504, 0.5, 0, 6.1035156e-05}
	case tensor.BF16:
		return []float32{-3.3895314e38, 0.5, 0, 1}
	case tensor.FP32:
		return []float32{-math.MaxFloat32, 0.1, 0, 1e-30}
	case tensor.FP64:
		return []float64{-math.MaxFloat64, 0.1, 0, 1e-300}
	case tensor.Bytes:
		return []string{"", "plain", "日本語", "\xff\x01"}
	}
	panic(d)
}

// TestEveryDatatypeRoundTrips feeds every datatype through an Identity
// model: Inspect names the datatype, Run returns the values bit for bit,
// and a test vector of that datatype checks.
func TestEveryDatatypeRoundTrips(t *testing.T) {
	r := newRuntime(t)
	for _, d := range tensor.Datatypes() {
		t.Run(string(d), func(t *testing.T) {
			model := modelzoo.Identity(d)
			ins, outs, err := r.Inspect(model)
			require.NoError(t, err)
			want := &efpb.TensorSpec{Name: "x", Datatype: string(d), Shape: []int64{-1, 2}}
			assert.True(t, proto.Equal(want, ins[0]), "Inspect input = %v, want %v", ins[0], want)
			assert.Equal(t, string(d), outs[0].Datatype)

			s, err := r.Load(model, nil, nil)
			require.NoError(t, err)
			defer s.Close()
			require.NoError(t, s.Warm())
			in := Tensor{Name: "x", Datatype: d, Shape: []int64{2, 2}, Data: sampleData(d)}
			got, err := s.Run([]Tensor{in})
			require.NoError(t, err)
			require.Len(t, got, 1)
			assert.Equal(t, "y", got[0].Name)
			assert.Equal(t, d, got[0].Datatype)
			assert.Equal(t, []int64{2, 2}, got[0].Shape)
			assert.Equal(t, in.Data, got[0].Data, "Identity(%s)", d)

			inP, err := tensor.ToProto(&in)
			require.NoError(t, err)
			exp := in
			exp.Name = "y"
			expP, err := tensor.ToProto(&exp)
			require.NoError(t, err)
			vec := []*efpb.TestVector{{Inputs: []*efpb.Tensor{inP}, Expected: []*efpb.Tensor{expP}}}
			require.NoError(t, s.Check(vec, tensor.Tolerance{}))
			// An integer, BOOL or BYTES output is compared exactly, whatever the tolerance.
			if !d.IsFloat() {
				bad := proto.CloneOf(expP)
				switch {
				case len(bad.IntData) > 0:
					bad.IntData[1]++
				case len(bad.UintData) > 0:
					bad.UintData[0]++
				case len(bad.BoolData) > 0:
					bad.BoolData[0] = !bad.BoolData[0]
				case len(bad.BytesData) > 0:
					bad.BytesData[1] = []byte("other")
				}
				err := s.Check([]*efpb.TestVector{{Inputs: []*efpb.Tensor{inP}, Expected: []*efpb.Tensor{bad}}}, tensor.Tolerance{Abs: 1e9})
				var mm *MismatchError
				require.ErrorAs(t, err, &mm)
				assert.Contains(t, err.Error(), "exactly")
			}
		})
	}
}

func TestMixedInputsAndOutputs(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(modelzoo.Mixed(), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Warm())
	var outNames []string
	for _, o := range s.Outputs() {
		outNames = append(outNames, o.Name+":"+o.Datatype)
	}
	assert.Equal(t, []string{"doubled:FP64", "count64:INT64", "country_out:BYTES", "negated:BOOL", "half:FP16", "score:FP32"}, outNames)

	// Given in another order than the model's.
	got, err := s.Run([]Tensor{
		{Name: "flag", Shape: []int64{3}, Data: []bool{true, false, true}},
		{Name: "country", Shape: []int64{3}, Data: []string{"de", "fr", "日本"}},
		{Name: "count", Shape: []int64{3, 1}, Data: []int32{-5, 0, 1 << 30}},
		{Name: "amount", Shape: []int64{3, 1}, Data: []float64{1.5, 0.1, 70000}},
	})
	require.NoError(t, err)
	assert.Equal(t, []float64{3, 0.2, 140000}, got[0].Data)
	assert.Equal(t, []int64{-5, 0, 1 << 30}, got[1].Data)
	assert.Equal(t, []string{"de", "fr", "日本"}, got[2].Data)
	assert.Equal(t, []bool{false, true, false}, got[3].Data)
	assert.Equal(t, tensor.FP16, got[4].Datatype)
	assert.Equal(t, []float32{1.5, tensor.RoundFP16(0.1), float32(math.Inf(1))}, got[4].Data, "FP16 outputs come back exactly; 70000 is beyond FP16")
	assert.Equal(t, []float32{0.75, 0.05, 35000}, got[5].Data)

	// Only some outputs, in another order.
	sel, err := r.Load(modelzoo.Mixed(), nil, []string{"half", "country_out"})
	require.NoError(t, err)
	defer sel.Close()
	require.NoError(t, sel.Warm())
	assert.Equal(t, []string{"half", "country_out"}, outputNames(mustRun(t, sel,
		Tensor{Name: "amount", Shape: []int64{1, 1}, Data: []float64{2}},
		Tensor{Name: "count", Shape: []int64{1, 1}, Data: []int32{2}},
		Tensor{Name: "country", Shape: []int64{1}, Data: []string{"x"}},
		Tensor{Name: "flag", Shape: []int64{1}, Data: []bool{true}},
	)))
}

func TestClassifierServesClassMaps(t *testing.T) {
	r := newRuntime(t)
	for _, strs := range []bool{false, true} {
		model := modelzoo.Classifier(strs)
		ins, outs, err := r.Inspect(model)
		require.NoError(t, err)
		assert.True(t, proto.Equal(&efpb.TensorSpec{Name: "float_input", Datatype: "FP32", Shape: []int64{-1, 2}}, ins[0]), "%v", ins[0])
		require.Len(t, outs, 2)
		probs := outs[1]
		assert.Equal(t, efpb.TensorKind_TENSOR_KIND_CLASS_MAP, probs.Kind)
		assert.Equal(t, "FP32", probs.Datatype)
		assert.Equal(t, []int64{-1, 2}, probs.Shape)
		classes, err := tensor.FromProto(probs.Classes)
		require.NoError(t, err)

		s, err := r.Load(model, nil, nil)
		require.NoError(t, err)
		require.NoError(t, s.Warm())
		got := mustRun(t, s, Tensor{Name: "float_input", Shape: []int64{3, 2}, Data: []float32{1, 1, 0, 0, 1, 0}})
		p := f32(got[1])
		require.Len(t, p, 6)
		assert.Equal(t, []int64{3, 2}, got[1].Shape)
		for row := range 3 {
			assert.InDelta(t, 1, p[2*row]+p[2*row+1], 1e-6, "row %d sums to 1", row)
		}
		assert.Greater(t, p[1], float32(0.99), "x0+2x1 = 3 > 1: class 1")
		assert.Greater(t, p[2], float32(0.98), "x = 0: class 0")
		assert.InDelta(t, 0.5, p[5], 1e-6, "x0+2x1 = 1: undecided")
		if strs {
			assert.Equal(t, []string{"legit", "fraud"}, classes.Data)
			assert.Equal(t, tensor.Bytes, got[0].Datatype)
			assert.Equal(t, "fraud", got[0].Data.([]string)[0])
		} else {
			assert.Equal(t, []int64{0, 1}, classes.Data)
			assert.Equal(t, []int64{1, 0}, got[0].Data.([]int64)[:2])
		}
		// An empty batch: zero rows, still two columns.
		got = mustRun(t, s, Tensor{Name: "float_input", Shape: []int64{0, 2}, Data: []float32{}})
		assert.Equal(t, []int64{0, 2}, got[1].Shape)
		require.NoError(t, s.Close())
	}
}

func TestZeroSizeScalarAndUnicode(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(modelzoo.ZeroSize(), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Warm())
	got := mustRun(t, s, Tensor{Name: "x", Shape: []int64{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}})
	assert.Equal(t, []int64{2, 0}, got[0].Shape)
	assert.Empty(t, got[0].Data)
	assert.Equal(t, []int64{}, got[1].Shape, "a rank-0 output")
	assert.Equal(t, []float32{21}, got[1].Data)

	u, err := r.Load(modelzoo.Unicode(), nil, nil)
	require.NoError(t, err)
	defer u.Close()
	got = mustRun(t, u, Tensor{Name: "entrée", Shape: []int64{1, 1}, Data: []float32{2}})
	assert.Equal(t, "résultat_分数", got[0].Name)
	assert.Equal(t, []float32{4}, got[0].Data)
}

func TestUnservableValuesAreNamed(t *testing.T) {
	r := newRuntime(t)
	tests := []struct {
		name  string
		model []byte
		want  string
	}{
		{"sequence of tensors", modelzoo.SequenceOutput(),
			`output "parts" is a seq(tensor(float)); of sequences only a sequence of maps from class label to score (ai.onnx.ml ZipMap) is served`},
		{"map input", modelzoo.MapInput(), `input "features" is a map(string,tensor(float)); a map is served only as a row of a sequence`},
	}
	for _, tt := range tests {
		d, err := r.Describe(tt.model)
		require.NoError(t, err, "%s: onnxruntime loads it, so it is described", tt.name)
		require.Error(t, d.Err(), tt.name)
		assert.ErrorIs(t, d.Err(), ErrUnsupported, tt.name)
		assert.Contains(t, d.Err().Error(), tt.want, tt.name)
		assert.NotContains(t, d.Err().Error(), "not a valid ONNX model", tt.name)
		_, err = r.Load(tt.model, nil, nil)
		assert.ErrorIs(t, err, ErrUnsupported, tt.name)
	}
}

func TestBytesWithNULAreRefused(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(modelzoo.Identity(tensor.Bytes), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Run([]Tensor{{Name: "x", Shape: []int64{1, 2}, Data: []string{"ok", "a\x00b"}}})
	require.ErrorIs(t, err, ErrBadInput)
	assert.Contains(t, err.Error(), `input "x" element 1 has a NUL byte at 1`)
}

func TestOnnxruntimeRefusalIsBadInput(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(modelzoo.FixedBatch(4), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Run([]Tensor{{Name: "x", Shape: []int64{3, 1}, Data: make([]float32, 3)}})
	require.ErrorIs(t, err, ErrBadInput, "the declared fixed batch is checked before onnxruntime sees it")
	assert.Contains(t, err.Error(), "the model wants dimension 0 = 4")
	got := mustRun(t, s, Tensor{Name: "x", Shape: []int64{4, 1}, Data: []float32{1, 2, 3, 4}})
	assert.Equal(t, []float32{2, 4, 6, 8}, got[0].Data)
	assert.True(t, slices.Equal([]int64{4, 1}, got[0].Shape))
}

// TestEmptyInputTheModelCannotTakeIsBadInput: a model that cannot run on
// an empty batch (ArgMax over the batch axis) fails the request, not the
// model: ErrBadInput.
func TestEmptyInputTheModelCannotTakeIsBadInput(t *testing.T) {
	r := newRuntime(t)
	m := &onnxbuild.Model{Graph: onnxbuild.Graph{
		Name:    "argmax",
		Nodes:   []onnxbuild.Node{{OpType: "ArgMax", Inputs: []string{"x"}, Outputs: []string{"i"}, Attributes: []onnxbuild.Attribute{onnxbuild.IntAttr("axis", 0)}}},
		Inputs:  []onnxbuild.ValueInfo{{Name: "x", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("N"), onnxbuild.Fixed(2)}}},
		Outputs: []onnxbuild.ValueInfo{{Name: "i", ElemType: onnxbuild.Int64, Shape: []onnxbuild.Dim{onnxbuild.Fixed(1), onnxbuild.Fixed(2)}}},
	}}
	b, err := m.Marshal()
	require.NoError(t, err)
	s, err := r.Load(b, nil, nil)
	require.NoError(t, err)
	defer s.Close()
	got := mustRun(t, s, Tensor{Name: "x", Shape: []int64{2, 2}, Data: []float32{1, 5, 3, 2}})
	assert.Equal(t, []int64{1, 0}, got[0].Data)
	_, err = s.Run([]Tensor{{Name: "x", Shape: []int64{0, 2}, Data: []float32{}}})
	require.ErrorIs(t, err, ErrBadInput)
	assert.Contains(t, err.Error(), `input "x" is empty (shape [0,2]) and the model cannot run on it`)
}

// RunContext runs like Run while its context lives, and a context that
// has ended sets onnxruntime's terminate flag: the run fails with the
// context's error instead of computing.
func TestRunContextTerminates(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(modelzoo.Identity(tensor.FP32), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	in := Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 2}, Data: []float32{1, 2}}

	got, err := s.RunContext(context.Background(), []Tensor{in})
	require.NoError(t, err)
	assert.Equal(t, in.Data, got[0].Data)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = s.RunContext(ctx, []Tensor{in})
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "terminate", "onnxruntime stopped on its terminate flag")

	got, err = s.RunContext(context.Background(), []Tensor{in})
	require.NoError(t, err, "a terminated run leaves the session usable")
	assert.Equal(t, in.Data, got[0].Data)
}

// slowModel chains n MatMuls of its [N, 256] input with one 256×256
// weight: seconds of work for a large N, in many nodes, so onnxruntime
// checks its terminate flag between them.
func slowModel(t *testing.T, n int) []byte {
	t.Helper()
	const k = 256
	w := make([]float32, k*k)
	for i := range k {
		w[i*k+i] = 1 // identity: values stay finite
	}
	g := onnxbuild.Graph{Name: "slow", Initializers: []onnxbuild.Tensor{{Name: "w", Dims: []int64{k, k}, Data: w}},
		Inputs:  []onnxbuild.ValueInfo{{Name: "x", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("N"), onnxbuild.Fixed(k)}}},
		Outputs: []onnxbuild.ValueInfo{{Name: "y", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("N"), onnxbuild.Fixed(k)}}}}
	prev := "x"
	for i := range n {
		out := fmt.Sprintf("h%d", i)
		if i == n-1 {
			out = "y"
		}
		g.Nodes = append(g.Nodes, onnxbuild.Node{OpType: "MatMul", Inputs: []string{prev, "w"}, Outputs: []string{out}})
		prev = out
	}
	b, err := (&onnxbuild.Model{Graph: g}).Marshal()
	require.NoError(t, err)
	return b
}

// A context that ends while onnxruntime computes stops the run at its
// next node: the run returns the context's error long before it would
// have finished.
func TestRunContextStopsARunInProgress(t *testing.T) {
	r := newRuntime(t)
	s, err := r.Load(slowModel(t, 400), nil, nil)
	require.NoError(t, err)
	defer s.Close()
	in := Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1024, 256}, Data: make([]float32, 1024*256)}

	_, err = s.Run([]Tensor{in}) // warm: the first run allocates
	require.NoError(t, err)
	start := time.Now()
	_, err = s.Run([]Tensor{in})
	require.NoError(t, err)
	full := time.Since(start)

	// Cancelled at a tenth of a whole run's time (measured just now, on
	// this machine's load): a run that was not stopped would finish
	// without an error.
	ctx, cancel := context.WithTimeout(context.Background(), full/10)
	defer cancel()
	start = time.Now()
	_, err = s.RunContext(ctx, []Tensor{in})
	stopped := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the run went on to the end (a whole run takes %v)", full)
	assert.Contains(t, err.Error(), "terminate")
	t.Logf("a whole run %v; stopped after %v", full, stopped)
}
