package infer

import (
	"fmt"
	"slices"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgefleet/edgefleet/internal/onnxmodel"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// What the Open Inference Protocol can carry of an ONNX value, and how:
//
//   - a tensor of BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64
//     or string (BYTES): as it is;
//   - a sequence of maps from int64 or string class labels to float or
//     double scores (what ai.onnx.ml ZipMap makes of a classifier's
//     probabilities, one map per row): as a [rows, classes] FP32 or FP64
//     tensor, its columns in the order of the class labels
//     (TENSOR_KIND_CLASS_MAP; the labels travel in TensorSpec.classes);
//   - anything else (other sequences, bare maps, optionals, sparse tensors,
//     complex, float8 and 4-bit elements) is refused by name.
//
// onnxruntime_go v1.27 cannot build or return everything the C API can;
// where it cannot, the refusal says so: rank-0 FP16/BF16/BYTES inputs,
// rank-0 BYTES outputs, BYTES elements holding a NUL byte (they go through
// C strings), and empty FP16/BF16 inputs.

// Describe returns what serving makes of value v of a model: the spec it
// is served as, or an error wrapping ErrUnsupported that names the ONNX
// type and why. what is "input" or "output"; labels are the class labels
// the model declares for v (ZipMap), if any.
func Describe(what string, v onnxmodel.Value, labels *tensor.Tensor) (*efpb.TensorSpec, error) {
	t := v.Type
	switch t.Kind {
	case onnxmodel.KindTensor:
		d, ok := t.Elem.Datatype()
		if !ok {
			return nil, fmt.Errorf("%w: %s %q is a %s; the Open Inference Protocol has no datatype for %s elements",
				ErrUnsupported, what, v.Name, t, t.Elem)
		}
		spec := &efpb.TensorSpec{Name: v.Name, Datatype: string(d), Shape: declaredShape(t)}
		if t.HasShape && len(t.Shape) == 0 {
			switch {
			case what == "input" && (d == tensor.FP16 || d == tensor.BF16 || d == tensor.Bytes):
				return nil, fmt.Errorf("%w: input %q is a rank-0 %s; onnxruntime_go cannot make a scalar of that type", ErrUnsupported, v.Name, t)
			case what == "output" && d == tensor.Bytes:
				return nil, fmt.Errorf("%w: output %q is a rank-0 %s; onnxruntime_go cannot return a string scalar", ErrUnsupported, v.Name, t)
			}
		}
		return spec, nil
	case onnxmodel.KindSequence:
		if what != "output" {
			return nil, fmt.Errorf("%w: input %q is a %s; only tensor inputs can be fed over the Open Inference Protocol", ErrUnsupported, v.Name, t)
		}
		inner := t.Inner
		if inner.Kind != onnxmodel.KindMap {
			return nil, fmt.Errorf("%w: output %q is a %s; of sequences only a sequence of maps from class label to score (ai.onnx.ml ZipMap) is served",
				ErrUnsupported, v.Name, t)
		}
		if inner.Key != 7 && inner.Key != 8 {
			return nil, fmt.Errorf("%w: output %q is a %s; class-map keys must be int64 or string class labels", ErrUnsupported, v.Name, t)
		}
		val := inner.Inner
		d, _ := val.Elem.Datatype()
		if val.Kind != onnxmodel.KindTensor || (d != tensor.FP32 && d != tensor.FP64) {
			return nil, fmt.Errorf("%w: output %q is a %s; class-map values must be float or double scores", ErrUnsupported, v.Name, t)
		}
		spec := &efpb.TensorSpec{Name: v.Name, Datatype: string(d), Shape: []int64{-1, -1}, Kind: efpb.TensorKind_TENSOR_KIND_CLASS_MAP}
		if labels != nil {
			want := tensor.Int64
			if inner.Key == 8 {
				want = tensor.Bytes
			}
			if labels.Datatype != want {
				return nil, fmt.Errorf("%w: output %q is a %s but its ZipMap lists %s class labels", ErrUnsupported, v.Name, t, labels.Datatype)
			}
			classes, err := tensor.ToProto(labels)
			if err != nil {
				return nil, fmt.Errorf("%w: output %q: class labels: %v", ErrUnsupported, v.Name, err)
			}
			classes.Name = "classes"
			spec.Classes = classes
			spec.Shape[1] = int64(labels.Len())
		}
		return spec, nil
	case onnxmodel.KindMap:
		return nil, fmt.Errorf("%w: %s %q is a %s; a map is served only as a row of a sequence of class scores (ZipMap output)", ErrUnsupported, what, v.Name, t)
	case onnxmodel.KindOptional:
		return nil, fmt.Errorf("%w: %s %q is a %s; optional values are not served", ErrUnsupported, what, v.Name, t)
	case onnxmodel.KindSparseTensor:
		return nil, fmt.Errorf("%w: %s %q is a %s; sparse tensors are not served", ErrUnsupported, what, v.Name, t)
	}
	return nil, fmt.Errorf("%w: %s %q has no type the model declares", ErrUnsupported, what, v.Name)
}

// declaredShape converts a declared shape: -1 for a dynamic dimension,
// nil (any shape) for an unknown rank.
func declaredShape(t onnxmodel.Type) []int64 {
	if !t.HasShape {
		return nil
	}
	shape := make([]int64, len(t.Shape))
	for i, d := range t.Shape {
		shape[i] = -1
		if d.Known && d.Value >= 0 {
			shape[i] = d.Value
		}
	}
	return shape
}

// newValue makes the onnxruntime value fed for t (already checked against
// its spec).
func newValue(t *Tensor) (ort.Value, error) {
	d := t.DT()
	shape := ort.NewShape(t.Shape...)
	if len(t.Shape) == 0 {
		return newScalar(t)
	}
	switch d {
	case tensor.FP16, tensor.BF16:
		data := t.Data.([]float32)
		if len(data) == 0 {
			return nil, fmt.Errorf("%w: input %q: onnxruntime_go cannot make an empty %s tensor", ErrBadInput, t.Name, d)
		}
		raw := make([]byte, 2*len(data))
		bits := tensor.FP16Bits
		if d == tensor.BF16 {
			bits = tensor.BF16Bits
		}
		for i, v := range data {
			b := bits(v)
			raw[2*i], raw[2*i+1] = byte(b), byte(b>>8)
		}
		et := ort.TensorElementDataType(ort.TensorElementDataTypeFloat16)
		if d == tensor.BF16 {
			et = ort.TensorElementDataTypeBFloat16
		}
		return ort.NewCustomDataTensor(shape, raw, et)
	case tensor.Bytes:
		strs := t.Data.([]string)
		for i, s := range strs {
			if j := indexNUL(s); j >= 0 {
				return nil, fmt.Errorf("%w: input %q element %d has a NUL byte at %d; onnxruntime_go passes strings as C strings", ErrBadInput, t.Name, i, j)
			}
		}
		st, err := ort.NewStringTensor(shape)
		if err != nil {
			return nil, err
		}
		if err := st.SetContents(strs); err != nil {
			_ = st.Destroy()
			return nil, err
		}
		return st, nil
	}
	switch v := t.Data.(type) {
	case []bool:
		return ort.NewTensor(shape, v)
	case []uint8:
		return ort.NewTensor(shape, v)
	case []uint16:
		return ort.NewTensor(shape, v)
	case []uint32:
		return ort.NewTensor(shape, v)
	case []uint64:
		return ort.NewTensor(shape, v)
	case []int8:
		return ort.NewTensor(shape, v)
	case []int16:
		return ort.NewTensor(shape, v)
	case []int32:
		return ort.NewTensor(shape, v)
	case []int64:
		return ort.NewTensor(shape, v)
	case []float32:
		return ort.NewTensor(shape, v)
	case []float64:
		return ort.NewTensor(shape, v)
	}
	return nil, fmt.Errorf("%w: input %q: no onnxruntime tensor for %s", ErrUnsupported, t.Name, d)
}

func indexNUL(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return i
		}
	}
	return -1
}

func newScalar(t *Tensor) (ort.Value, error) {
	switch v := t.Data.(type) {
	case []bool:
		return ort.NewScalar(v[0])
	case []uint8:
		return ort.NewScalar(v[0])
	case []uint16:
		return ort.NewScalar(v[0])
	case []uint32:
		return ort.NewScalar(v[0])
	case []uint64:
		return ort.NewScalar(v[0])
	case []int8:
		return ort.NewScalar(v[0])
	case []int16:
		return ort.NewScalar(v[0])
	case []int32:
		return ort.NewScalar(v[0])
	case []int64:
		return ort.NewScalar(v[0])
	case []float64:
		return ort.NewScalar(v[0])
	case []float32:
		if d := t.DT(); d != tensor.FP32 {
			return nil, fmt.Errorf("%w: input %q: onnxruntime_go cannot make a %s scalar", ErrBadInput, t.Name, d)
		}
		return ort.NewScalar(v[0])
	}
	return nil, fmt.Errorf("%w: input %q: onnxruntime_go cannot make a %s scalar", ErrBadInput, t.Name, t.DT())
}

// newEmptyScalar pre-allocates a rank-0 output: onnxruntime_go cannot
// convert one it allocated itself (v1.27 refuses the empty shape).
func newEmptyScalar(d tensor.Datatype) (ort.Value, error) {
	switch d {
	case tensor.Bool:
		return ort.NewEmptyScalar[bool]()
	case tensor.Uint8:
		return ort.NewEmptyScalar[uint8]()
	case tensor.Uint16:
		return ort.NewEmptyScalar[uint16]()
	case tensor.Uint32:
		return ort.NewEmptyScalar[uint32]()
	case tensor.Uint64:
		return ort.NewEmptyScalar[uint64]()
	case tensor.Int8:
		return ort.NewEmptyScalar[int8]()
	case tensor.Int16:
		return ort.NewEmptyScalar[int16]()
	case tensor.Int32:
		return ort.NewEmptyScalar[int32]()
	case tensor.Int64:
		return ort.NewEmptyScalar[int64]()
	case tensor.FP16, tensor.BF16, tensor.FP32: // half outputs are widened to float
		return ort.NewEmptyScalar[float32]()
	case tensor.FP64:
		return ort.NewEmptyScalar[float64]()
	}
	return nil, fmt.Errorf("%w: onnxruntime_go cannot return a %s scalar", ErrUnsupported, d)
}

// fromValue converts an onnxruntime output to a Tensor of spec. The
// binding has already copied numeric data into Go memory.
func fromValue(spec *efpb.TensorSpec, v ort.Value) (Tensor, error) {
	name, d := spec.GetName(), tensor.Datatype(spec.GetDatatype())
	if spec.GetKind() == efpb.TensorKind_TENSOR_KIND_CLASS_MAP {
		seq, ok := v.(*ort.Sequence)
		if !ok {
			return Tensor{}, fmt.Errorf("output %q: %w: got %T, want a sequence of maps", name, ErrUnsupported, v)
		}
		return classMap(spec, seq)
	}
	out := Tensor{Name: name, Datatype: d, Shape: []int64(v.GetShape())}
	var data any
	switch x := v.(type) {
	case *ort.StringTensor:
		s, err := x.GetContents()
		if err != nil {
			return Tensor{}, fmt.Errorf("output %q: %w", name, err)
		}
		data = s
	case *ort.Scalar[bool]:
		data, out.Shape = []bool{x.GetData()}, []int64{}
	case *ort.Scalar[uint8]:
		data, out.Shape = []uint8{x.GetData()}, []int64{}
	case *ort.Scalar[uint16]:
		data, out.Shape = []uint16{x.GetData()}, []int64{}
	case *ort.Scalar[uint32]:
		data, out.Shape = []uint32{x.GetData()}, []int64{}
	case *ort.Scalar[uint64]:
		data, out.Shape = []uint64{x.GetData()}, []int64{}
	case *ort.Scalar[int8]:
		data, out.Shape = []int8{x.GetData()}, []int64{}
	case *ort.Scalar[int16]:
		data, out.Shape = []int16{x.GetData()}, []int64{}
	case *ort.Scalar[int32]:
		data, out.Shape = []int32{x.GetData()}, []int64{}
	case *ort.Scalar[int64]:
		data, out.Shape = []int64{x.GetData()}, []int64{}
	case *ort.Scalar[float32]:
		data, out.Shape = []float32{x.GetData()}, []int64{}
	case *ort.Scalar[float64]:
		data, out.Shape = []float64{x.GetData()}, []int64{}
	case *ort.Tensor[bool]:
		data = x.GetData()
	case *ort.Tensor[uint8]:
		data = x.GetData()
	case *ort.Tensor[uint16]:
		data = x.GetData()
	case *ort.Tensor[uint32]:
		data = x.GetData()
	case *ort.Tensor[uint64]:
		data = x.GetData()
	case *ort.Tensor[int8]:
		data = x.GetData()
	case *ort.Tensor[int16]:
		data = x.GetData()
	case *ort.Tensor[int32]:
		data = x.GetData()
	case *ort.Tensor[int64]:
		data = x.GetData()
	case *ort.Tensor[float32]:
		data = x.GetData()
	case *ort.Tensor[float64]:
		data = x.GetData()
	default:
		return Tensor{}, fmt.Errorf("output %q: %w: onnxruntime returned a %T", name, ErrUnsupported, v)
	}
	out.Data = data
	if !tensorMatches(d, data) {
		return Tensor{}, fmt.Errorf("output %q: %w: the model declares %s, onnxruntime returned %T", name, ErrUnsupported, d, data)
	}
	return out, nil
}

// tensorMatches reports whether data's Go type carries datatype d.
func tensorMatches(d tensor.Datatype, data any) bool {
	if _, ok := data.([]float32); ok {
		return d == tensor.FP32 || d == tensor.FP16 || d == tensor.BF16
	}
	probe := Tensor{Data: data}
	return probe.DT() == d
}

// classMap turns a ZipMap sequence (one map from class label to score per
// row) into a [rows, classes] tensor with columns in the order of
// spec.classes.
func classMap(spec *efpb.TensorSpec, seq *ort.Sequence) (Tensor, error) {
	name, d := spec.GetName(), tensor.Datatype(spec.GetDatatype())
	rows, err := seq.GetValues()
	if err != nil {
		return Tensor{}, fmt.Errorf("output %q: %w", name, err)
	}
	classes, err := tensor.FromProto(spec.GetClasses())
	if err != nil {
		return Tensor{}, fmt.Errorf("output %q: class labels: %w", name, err)
	}
	col := map[string]int{}
	for i := range classes.Len() {
		col[classes.Format(i)] = i
	}
	n := classes.Len()
	out := Tensor{Name: name, Datatype: d, Shape: []int64{int64(len(rows)), int64(n)}}
	f32 := make([]float32, 0, len(rows)*n)
	var f64 []float64
	if d == tensor.FP64 {
		f32, f64 = nil, make([]float64, 0, len(rows)*n)
	}
	for r, rv := range rows {
		mp, ok := rv.(*ort.Map)
		if !ok {
			return Tensor{}, fmt.Errorf("output %q row %d: %w: got %T, want a map", name, r, ErrUnsupported, rv)
		}
		kv, vv, err := mp.GetKeysAndValues()
		if err != nil {
			return Tensor{}, fmt.Errorf("output %q row %d: %w", name, r, err)
		}
		keys, err := fromValue(&efpb.TensorSpec{Name: name, Datatype: string(classes.Datatype)}, kv)
		if err != nil {
			return Tensor{}, fmt.Errorf("row %d keys: %w", r, err)
		}
		vals, err := fromValue(&efpb.TensorSpec{Name: name, Datatype: string(d)}, vv)
		if err != nil {
			return Tensor{}, fmt.Errorf("row %d scores: %w", r, err)
		}
		if keys.Len() != n || vals.Len() != n {
			return Tensor{}, fmt.Errorf("output %q row %d has %d classes, the model declares %d", name, r, keys.Len(), n)
		}
		row32 := make([]float32, n)
		row64 := make([]float64, n)
		for i := range n {
			c, ok := col[keys.Format(i)]
			if !ok {
				return Tensor{}, fmt.Errorf("output %q row %d has class %s, which the model does not declare", name, r, keys.Format(i))
			}
			switch s := vals.Data.(type) {
			case []float32:
				row32[c] = s[i]
			case []float64:
				row64[c] = s[i]
			}
		}
		if f64 != nil {
			f64 = append(f64, row64...)
		} else {
			f32 = append(f32, row32...)
		}
	}
	out.Data = f32
	if d == tensor.FP64 {
		out.Data = f64
	}
	return out, nil
}

// discoverClasses reads the class labels of a class-map output from the
// first row of a run, for a model that does not declare them (no ZipMap
// node names them): labels in the order onnxruntime's map holds them.
func discoverClasses(spec *efpb.TensorSpec, v ort.Value) error {
	seq, ok := v.(*ort.Sequence)
	if !ok {
		return fmt.Errorf("output %q: %w: got %T, want a sequence of maps", spec.GetName(), ErrUnsupported, v)
	}
	rows, err := seq.GetValues()
	if err != nil || len(rows) == 0 {
		return fmt.Errorf("output %q: the model names no class labels and returned no rows to read them from", spec.GetName())
	}
	mp, ok := rows[0].(*ort.Map)
	if !ok {
		return fmt.Errorf("output %q: %w: got %T, want a map", spec.GetName(), ErrUnsupported, rows[0])
	}
	kv, _, err := mp.GetKeysAndValues()
	if err != nil {
		return fmt.Errorf("output %q: %w", spec.GetName(), err)
	}
	var keys Tensor
	switch k := kv.(type) {
	case *ort.Tensor[int64]:
		keys = Tensor{Name: "classes", Datatype: tensor.Int64, Shape: []int64{int64(len(k.GetData()))}, Data: slices.Clone(k.GetData())}
	case *ort.StringTensor:
		s, err := k.GetContents()
		if err != nil {
			return fmt.Errorf("output %q: %w", spec.GetName(), err)
		}
		keys = Tensor{Name: "classes", Datatype: tensor.Bytes, Shape: []int64{int64(len(s))}, Data: s}
	default:
		return fmt.Errorf("output %q: %w: class labels are %T", spec.GetName(), ErrUnsupported, kv)
	}
	p, err := tensor.ToProto(&keys)
	if err != nil {
		return err
	}
	spec.Classes = p
	spec.Shape = []int64{-1, int64(keys.Len())}
	return nil
}
