package infer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// fraudArtifact trains the worked-example model once per test binary.
var fraudArtifact = sync.OnceValues(func() (*fraud.Artifact, error) {
	return fraud.TrainArtifact(fraud.TrainConfig{Seed: 1})
})

func testArtifact(t testing.TB) *fraud.Artifact {
	t.Helper()
	a, err := fraudArtifact()
	require.NoError(t, err)
	return a
}

// newRuntime opens a Runtime on the real library and closes it at cleanup.
func newRuntime(t testing.TB) *Runtime {
	t.Helper()
	lib, err := FindLibrary("")
	require.NoError(t, err, "the real onnxruntime library is needed: run `make deps`")
	r, err := NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.Close()) })
	return r
}

// loadFraud loads the fraud model into a new session of r.
func loadFraud(t testing.TB, r *Runtime) *Session {
	t.Helper()
	s, err := r.Load(testArtifact(t).ONNX, []string{fraud.InputName}, []string{fraud.OutputName})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func rowsTensor(rows []fraud.Row) Tensor {
	data := make([]float32, 0, len(rows)*fraud.NumFeatures)
	for _, r := range rows {
		data = append(data, r[:]...)
	}
	return Tensor{Name: fraud.InputName, Shape: []int64{int64(len(rows)), fraud.NumFeatures}, Data: data}
}

func TestInspectFraudModel(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	ins, outs, err := r.Inspect(a.ONNX)
	require.NoError(t, err)
	require.Len(t, ins, 1)
	require.Len(t, outs, 1)
	assert.True(t, proto.Equal(a.Inputs[0], ins[0]), "inputs: got %v, want %v", ins[0], a.Inputs[0])
	assert.True(t, proto.Equal(a.Outputs[0], outs[0]), "outputs: got %v, want %v", outs[0], a.Outputs[0])
	assert.Regexp(t, `^1\.24\.`, r.Version())
}

func TestCheckFraudTestVectors(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	s := loadFraud(t, r)
	require.NoError(t, s.Warm())
	m := a.Metadata()
	require.NoError(t, s.Check(m.TestVectors, ManifestTolerance(m)))
	// Also with nil names: all inputs and outputs.
	s2, err := r.Load(a.ONNX, nil, nil)
	require.NoError(t, err)
	require.NoError(t, s2.Check(m.TestVectors, ManifestTolerance(m)))
	assert.Equal(t, []string{fraud.OutputName}, outputNames(mustRun(t, s2, rowsTensor(make([]fraud.Row, 2)))))
}

// f32 returns the float32 data of t.
func f32(t Tensor) []float32 { return t.Data.([]float32) }

func mustRun(t *testing.T, s *Session, in ...Tensor) []Tensor {
	t.Helper()
	out, err := s.Run(in)
	require.NoError(t, err)
	return out
}

func TestCheckDetectsFailures(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	s := loadFraud(t, r)
	base := a.Metadata()

	t.Run("altered expected value", func(t *testing.T) {
		m := proto.CloneOf(base)
		m.TestVectors[3].Expected[0].Data[0] += 0.01
		err := s.Check(m.TestVectors, ManifestTolerance(m))
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrCheckFailed)
		var mm *MismatchError
		require.ErrorAs(t, err, &mm)
		assert.Equal(t, 3, mm.Vector)
		assert.Equal(t, fraud.OutputName, mm.Output)
		assert.Equal(t, 0, mm.Element)
		want, _ := strconv.ParseFloat(mm.Want, 32)
		got, _ := strconv.ParseFloat(mm.Got, 32)
		assert.InDelta(t, want-0.01, got, 1e-4)
		assert.Contains(t, err.Error(), `test vector 3: output "fraud_probability" element 0: got`)
	})
	t.Run("altered element in the batch vector", func(t *testing.T) {
		m := proto.CloneOf(base)
		last := len(m.TestVectors) - 1
		m.TestVectors[last].Expected[0].Data[5] = 2 // a probability cannot be 2
		var mm *MismatchError
		require.ErrorAs(t, s.Check(m.TestVectors, ManifestTolerance(m)), &mm)
		assert.Equal(t, last, mm.Vector)
		assert.Equal(t, 5, mm.Element)
		assert.Equal(t, "2", mm.Want)
	})

	tests := []struct {
		name   string
		modify func(m *efpb.Manifest)
		want   string
	}{
		{"no vectors", func(m *efpb.Manifest) { m.TestVectors = nil }, "no test vectors"},
		{"negative tolerance", func(m *efpb.Manifest) { m.Tolerance = -1 }, "tolerance -1 + 0"},
		{"negative relative tolerance", func(m *efpb.Manifest) { m.RelativeTolerance = -1 }, "+ -1·|want| is not finite"},
		{"no expected outputs", func(m *efpb.Manifest) { m.TestVectors[2].Expected = nil }, "test vector 2 has no expected outputs"},
		{"unknown output", func(m *efpb.Manifest) { m.TestVectors[1].Expected[0].Name = "score" },
			`test vector 1 expects output "score"`},
		{"wrong expected shape", func(m *efpb.Manifest) { m.TestVectors[0].Expected[0].Shape = []int64{1} },
			`test vector 0: output "fraud_probability" has shape [1,1], expected [1]`},
		{"bad input shape", func(m *efpb.Manifest) { m.TestVectors[4].Inputs[0].Shape = []int64{1, 6} },
			`test vector 4 input 0: invalid tensor: tensor "features" has 7 values, shape [1,6] needs 6`},
		{"NaN expected", func(m *efpb.Manifest) { m.TestVectors[0].Expected[0].Data[0] = float32(nan()) }, "want NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.CloneOf(base)
			tt.modify(m)
			err := s.Check(m.TestVectors, ManifestTolerance(m))
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrCheckFailed)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func nan() float64 {
	var zero float64
	return zero / zero
}

func TestGarbageModels(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	tests := []struct {
		name  string
		model []byte
	}{
		{"empty", nil},
		{"text", []byte("this is not an onnx model")},
		{"random bytes", []byte{0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x99, 0x01}},
		{"truncated", a.ONNX[:len(a.ONNX)/2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := r.Inspect(tt.model)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidModel)
			assert.Contains(t, err.Error(), "infer: inspect: not a valid ONNX model")

			s, err := r.Load(tt.model, nil, nil)
			require.Error(t, err)
			assert.Nil(t, s)
			assert.ErrorIs(t, err, ErrInvalidModel)
			assert.Contains(t, err.Error(), "infer: load: not a valid ONNX model")
		})
	}
}

func TestLoadRejectsUnknownNames(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	tests := []struct {
		name         string
		inputs, outs []string
		want         string
	}{
		{"unknown input", []string{"x"}, nil, `model has no input "x" (it has ["features"])`},
		{"unknown output", nil, []string{"y"}, `model has no output "y"`},
		{"input twice", []string{"features", "features"}, nil, `input "features" requested twice`},
	}
	for _, tt := range tests {
		_, err := r.Load(a.ONNX, tt.inputs, tt.outs)
		require.Error(t, err, tt.name)
		assert.ErrorIs(t, err, ErrUnsupported, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
	}
}

func TestRunRejectsBadInputs(t *testing.T) {
	r := newRuntime(t)
	s := loadFraud(t, r)
	ok := rowsTensor(make([]fraud.Row, 2))
	okData := ok.Data.([]float32)
	tests := []struct {
		name   string
		inputs []Tensor
		want   string
	}{
		{"no inputs", nil, `got 0 input tensors, the model takes 1 (["features FP32 [-1 7]"])`},
		{"two inputs", []Tensor{ok, ok}, "got 2 input tensors"},
		{"unknown name", []Tensor{{Name: "x", Shape: ok.Shape, Data: ok.Data}}, `unknown input "x"`},
		{"rank 1", []Tensor{{Name: "features", Shape: []int64{14}, Data: ok.Data}},
			`input "features" has shape [14] (rank 1), the model wants rank 2 [-1 7]`},
		{"rank 3", []Tensor{{Name: "features", Shape: []int64{1, 2, 7}, Data: ok.Data}}, "rank 3"},
		{"wrong feature count", []Tensor{{Name: "features", Shape: []int64{2, 6}, Data: okData[:12]}},
			`input "features" has shape [2 6], the model wants dimension 1 = 7`},
		{"short data", []Tensor{{Name: "features", Shape: []int64{2, 7}, Data: okData[:13]}},
			`tensor "features" has 13 values, shape [2,7] needs 14`},
		{"long data", []Tensor{{Name: "features", Shape: []int64{1, 7}, Data: ok.Data}}, "has 14 values, shape [1,7] needs 7"},
		{"negative batch", []Tensor{{Name: "features", Shape: []int64{-1, 7}}}, "dimension 0 is -1"},
		{"huge batch", []Tensor{{Name: "features", Shape: []int64{1 << 40, 7}}}, "more than"},
		{"other datatype", []Tensor{{Name: "features", Shape: []int64{1, 7}, Data: make([]float64, 7)}}, `input "features" is FP64, the model takes FP32`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := s.Run(tt.inputs)
			require.Error(t, err)
			assert.Nil(t, out)
			assert.ErrorIs(t, err, ErrBadInput)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	// The session still works after rejecting bad input.
	out, err := s.Run([]Tensor{ok})
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 1}, out[0].Shape)
}

func TestMatchesGoPredict(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	s := loadFraud(t, r)
	for _, p := range []fraud.Params{{}, {AmountScale: 20, DistanceScale: 10, HourShift: 5}, {Pattern: fraud.PatternCardTesting}} {
		g, err := fraud.NewGenerator(77, p)
		require.NoError(t, err)
		d := g.Generate(3000)
		out, err := s.Run([]Tensor{rowsTensor(d.Rows)})
		require.NoError(t, err)
		require.Len(t, out, 1)
		assert.Equal(t, []int64{3000, 1}, out[0].Shape)
		want := a.Predict(d.Rows)
		var maxDiff float64
		for i := range want {
			diff := float64(f32(out[0])[i]) - float64(want[i])
			if diff < 0 {
				diff = -diff
			}
			maxDiff = max(maxDiff, diff)
			require.InDelta(t, want[i], f32(out[0])[i], 1e-5, "row %d %v (params %+v)", i, d.Rows[i], p)
		}
		t.Logf("params %+v: max |onnxruntime - Go| = %.3g over %d rows", p, maxDiff, d.Len())
	}
}

func TestConcurrentRun(t *testing.T) {
	r := newRuntime(t)
	a := testArtifact(t)
	s := loadFraud(t, r)
	g, err := fraud.NewGenerator(5, fraud.Params{})
	require.NoError(t, err)
	d := g.Generate(512)
	want := a.Predict(d.Rows)

	const workers, runs = 8, 60
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range runs {
				from := (w*runs + i*7) % 448
				n := 1 + (i*13+w)%64
				out, err := s.Run([]Tensor{rowsTensor(d.Rows[from : from+n])})
				if err != nil {
					errs <- fmt.Errorf("worker %d run %d: %w", w, i, err)
					return
				}
				for k, got := range f32(out[0]) {
					if diff := got - want[from+k]; diff > 1e-5 || diff < -1e-5 {
						errs <- fmt.Errorf("worker %d run %d row %d: got %v, want %v", w, i, from+k, got, want[from+k])
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
}

func TestCloseSemantics(t *testing.T) {
	a := testArtifact(t)
	lib, err := FindLibrary("")
	require.NoError(t, err)
	r, err := NewRuntime(lib, nil)
	require.NoError(t, err)
	s1, err := r.Load(a.ONNX, nil, nil)
	require.NoError(t, err)
	s2, err := r.Load(a.ONNX, nil, nil)
	require.NoError(t, err)
	require.NoError(t, s1.Close())
	require.NoError(t, s1.Close(), "session Close is idempotent")
	_, err = s1.Run([]Tensor{rowsTensor(make([]fraud.Row, 1))})
	assert.ErrorIs(t, err, ErrClosed)

	require.NoError(t, r.Close())
	require.NoError(t, r.Close(), "runtime Close is idempotent")
	_, err = s2.Run([]Tensor{rowsTensor(make([]fraud.Row, 1))})
	assert.ErrorIs(t, err, ErrClosed, "runtime Close closes its sessions")
	assert.ErrorIs(t, s2.Check(a.Metadata().TestVectors, ManifestTolerance(a.Metadata())), ErrClosed)
	_, err = r.Load(a.ONNX, nil, nil)
	assert.ErrorIs(t, err, ErrClosed)
	_, _, err = r.Inspect(a.ONNX)
	assert.ErrorIs(t, err, ErrClosed)
}

func TestSharedEnvironment(t *testing.T) {
	a := testArtifact(t)
	lib, err := FindLibrary("")
	require.NoError(t, err)
	r1, err := NewRuntime(lib, nil)
	require.NoError(t, err)
	r2, err := NewRuntime(lib, nil)
	require.NoError(t, err)
	s2, err := r2.Load(a.ONNX, nil, nil)
	require.NoError(t, err)

	// A second copy of the library at another path cannot join.
	other := filepath.Join(t.TempDir(), LibraryName)
	copyFile(t, lib, other)
	_, err = NewRuntime(other, nil)
	require.ErrorIs(t, err, ErrLibraryConflict)
	assert.Contains(t, err.Error(), other)

	// Closing one Runtime leaves the shared environment to the other.
	require.NoError(t, r1.Close())
	require.NoError(t, s2.Check(a.Metadata().TestVectors, ManifestTolerance(a.Metadata())))
	require.NoError(t, r2.Close())

	// Once every Runtime is closed, the environment can start again, even
	// from another path.
	r3, err := NewRuntime(other, nil)
	require.NoError(t, err)
	s3, err := r3.Load(a.ONNX, nil, nil)
	require.NoError(t, err)
	require.NoError(t, s3.Check(a.Metadata().TestVectors, ManifestTolerance(a.Metadata())))
	assert.Equal(t, other, r3.LibraryPath())
	require.NoError(t, r3.Close())
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.Create(to)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
}

func TestNewRuntimeErrors(t *testing.T) {
	_, err := NewRuntime(filepath.Join(t.TempDir(), "missing.so"), nil)
	require.ErrorIs(t, err, ErrLibraryNotFound)

	notALib := filepath.Join(t.TempDir(), LibraryName)
	require.NoError(t, os.WriteFile(notALib, []byte("not a shared library"), 0o644))
	_, err = NewRuntime(notALib, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "load onnxruntime from "+notALib)
}

// TestAttributesAndTypes runs models built by onnxbuild that exercise node
// attributes and non-FP32 values through the real onnxruntime.
func TestAttributesAndTypes(t *testing.T) {
	r := newRuntime(t)

	// y = 2 * x W^T + 0.5 * c with W [2,3]: checks float and int attributes.
	gemm := &onnxbuild.Model{Graph: onnxbuild.Graph{
		Name: "gemm",
		Initializers: []onnxbuild.Tensor{
			{Name: "W", Dims: []int64{2, 3}, Data: []float32{1, 2, 3, -1, 0, 1}},
			{Name: "c", Dims: []int64{2}, Data: []float32{10, 20}},
		},
		Nodes: []onnxbuild.Node{{
			OpType: "Gemm", Inputs: []string{"x", "W", "c"}, Outputs: []string{"y"},
			Attributes: []onnxbuild.Attribute{
				onnxbuild.FloatAttr("alpha", 2), onnxbuild.FloatAttr("beta", 0.5), onnxbuild.IntAttr("transB", 1),
			},
		}},
		Inputs:  []onnxbuild.ValueInfo{{Name: "x", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("batch"), onnxbuild.Fixed(3)}}},
		Outputs: []onnxbuild.ValueInfo{{Name: "y", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("batch"), onnxbuild.Fixed(2)}}},
	}}
	b, err := gemm.Marshal()
	require.NoError(t, err)
	s, err := r.Load(b, nil, nil)
	require.NoError(t, err)
	out, err := s.Run([]Tensor{{Name: "x", Shape: []int64{2, 3}, Data: []float32{1, 1, 1, 0, 1, 2}}})
	require.NoError(t, err)
	// row 0: xW^T = [6, 0] -> 2*[6,0] + [5,10] = [17, 10]; row 1: [8, 2] -> [21, 14]
	assert.Equal(t, []float32{17, 10, 21, 14}, out[0].Data)
	assert.Equal(t, []int64{2, 2}, out[0].Shape)

	// INT64 input through Cast(to=FLOAT): described and served.
	cast := &onnxbuild.Model{Graph: onnxbuild.Graph{
		Name:    "cast",
		Nodes:   []onnxbuild.Node{{OpType: "Cast", Inputs: []string{"ids"}, Outputs: []string{"f"}, Attributes: []onnxbuild.Attribute{onnxbuild.IntAttr("to", 1)}}},
		Inputs:  []onnxbuild.ValueInfo{{Name: "ids", ElemType: onnxbuild.Int64, Shape: []onnxbuild.Dim{onnxbuild.Symbolic("n")}}},
		Outputs: []onnxbuild.ValueInfo{{Name: "f", Shape: []onnxbuild.Dim{onnxbuild.Symbolic("n")}}},
	}}
	b, err = cast.Marshal()
	require.NoError(t, err)
	ins, outs, err := r.Inspect(b)
	require.NoError(t, err)
	assert.True(t, proto.Equal(&efpb.TensorSpec{Name: "ids", Datatype: "INT64", Shape: []int64{-1}}, ins[0]), "got %v", ins[0])
	assert.True(t, proto.Equal(&efpb.TensorSpec{Name: "f", Datatype: "FP32", Shape: []int64{-1}}, outs[0]), "got %v", outs[0])
	s, err = r.Load(b, nil, nil)
	require.NoError(t, err)
	out, err = s.Run([]Tensor{{Name: "ids", Shape: []int64{3}, Data: []int64{-1, 0, 1 << 40}}})
	require.NoError(t, err)
	assert.Equal(t, []float32{-1, 0, 1 << 40}, out[0].Data)
}

// vmRSS returns this process's resident set size in bytes.
func vmRSS(t testing.TB) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb * 1024
		}
	}
	require.NoError(t, sc.Err())
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestSessionMemory logs how much resident memory the environment and one
// fraud session add. It asserts only a generous ceiling; the figures are for
// sizing devices.
func TestSessionMemory(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc/self/status")
	}
	a := testArtifact(t)
	lib, err := FindLibrary("")
	require.NoError(t, err)
	before := vmRSS(t)
	r, err := NewRuntime(lib, nil)
	require.NoError(t, err)
	defer func() { assert.NoError(t, r.Close()) }()
	afterEnv := vmRSS(t)

	first, err := r.Load(a.ONNX, nil, nil)
	require.NoError(t, err)
	require.NoError(t, first.Warm())
	afterFirst := vmRSS(t)

	const extra = 20
	for range extra {
		s, err := r.Load(a.ONNX, nil, nil)
		require.NoError(t, err)
		require.NoError(t, s.Warm())
	}
	afterMany := vmRSS(t)

	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	perSession := (afterMany - afterFirst) / extra
	t.Logf("RSS: environment (dlopen + OrtEnv) +%.1f MiB; first fraud session (load + warm) +%.2f MiB; "+
		"each further session +%.3f MiB (over %d); total %.1f MiB",
		mib(afterEnv-before), mib(afterFirst-afterEnv), mib(perSession), extra, mib(afterMany))
	assert.Less(t, perSession, int64(16<<20), "one tiny session must not cost 16 MiB")
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrInvalidModel, ErrUnsupported, ErrBadInput, ErrRunFailed, ErrCheckFailed, ErrClosed, ErrLibraryConflict, ErrLibraryNotFound}
	for i, a := range all {
		for j, b := range all {
			assert.Equal(t, i == j, errors.Is(a, b), "%v vs %v", a, b)
		}
	}
}
