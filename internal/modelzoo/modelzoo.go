// Package modelzoo builds small real ONNX models (with onnxbuild) that
// cover what users bring: every tensor datatype, several inputs and
// outputs of mixed types, scikit-learn style classifiers with a label
// output and ZipMap probabilities, dynamic and fixed dimensions,
// zero-size and rank-0 outputs, non-ASCII names, and values that cannot
// be served. It holds no state. Imported by tests only.
package modelzoo

import (
	"fmt"

	ob "github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

// Elem returns the ONNX element type of an Open Inference Protocol datatype.
func Elem(d tensor.Datatype) ob.DataType {
	switch d {
	case tensor.Bool:
		return ob.Bool
	case tensor.Uint8:
		return ob.Uint8
	case tensor.Uint16:
		return ob.Uint16
	case tensor.Uint32:
		return ob.Uint32
	case tensor.Uint64:
		return ob.Uint64
	case tensor.Int8:
		return ob.Int8
	case tensor.Int16:
		return ob.Int16
	case tensor.Int32:
		return ob.Int32
	case tensor.Int64:
		return ob.Int64
	case tensor.FP16:
		return ob.Float16
	case tensor.BF16:
		return ob.BFloat16
	case tensor.FP32:
		return ob.Float
	case tensor.FP64:
		return ob.Double
	case tensor.Bytes:
		return ob.String
	}
	panic(fmt.Sprintf("modelzoo: no ONNX type for datatype %q", d))
}

func marshal(m *ob.Model) []byte {
	b, err := m.Marshal()
	if err != nil {
		panic("modelzoo: " + err.Error()) // the models here are fixed: a failure is a bug
	}
	return b
}

var batch = ob.Symbolic("N")

// Identity returns y = x for x of datatype d and shape [N, 2].
func Identity(d tensor.Datatype) []byte {
	shape := []ob.Dim{batch, ob.Fixed(2)}
	return marshal(&ob.Model{Graph: ob.Graph{
		Name:    "identity_" + string(d),
		Nodes:   []ob.Node{{OpType: "Identity", Inputs: []string{"x"}, Outputs: []string{"y"}}},
		Inputs:  []ob.ValueInfo{{Name: "x", ElemType: Elem(d), Shape: shape}},
		Outputs: []ob.ValueInfo{{Name: "y", ElemType: Elem(d), Shape: shape}},
	}})
}

// Mixed has four inputs of mixed types and six outputs:
//
//	amount FP64 [N,1], count INT32 [N,1], country BYTES [N], flag BOOL [N]
//	doubled  FP64  = amount + amount
//	count64  INT64 = Cast(count)
//	country  BYTES = country (renamed country_out)
//	negated  BOOL  = Not(flag)
//	half     FP16  = Cast(amount)
//	score    FP32  = Cast(amount) * 0.5
func Mixed() []byte {
	col := []ob.Dim{batch, ob.Fixed(1)}
	row := []ob.Dim{batch}
	return marshal(&ob.Model{Opsets: []ob.Opset{{Version: 15}}, Graph: ob.Graph{
		Name:         "mixed",
		Initializers: []ob.Tensor{{Name: "half_c", Dims: []int64{}, Data: []float32{0.5}}},
		Nodes: []ob.Node{
			{OpType: "Add", Inputs: []string{"amount", "amount"}, Outputs: []string{"doubled"}},
			{OpType: "Cast", Inputs: []string{"count"}, Outputs: []string{"count64"}, Attributes: []ob.Attribute{ob.IntAttr("to", int64(ob.Int64))}},
			{OpType: "Identity", Inputs: []string{"country"}, Outputs: []string{"country_out"}},
			{OpType: "Not", Inputs: []string{"flag"}, Outputs: []string{"negated"}},
			{OpType: "Cast", Inputs: []string{"amount"}, Outputs: []string{"half"}, Attributes: []ob.Attribute{ob.IntAttr("to", int64(ob.Float16))}},
			{OpType: "Cast", Inputs: []string{"amount"}, Outputs: []string{"amount32"}, Attributes: []ob.Attribute{ob.IntAttr("to", int64(ob.Float))}},
			{OpType: "Mul", Inputs: []string{"amount32", "half_c"}, Outputs: []string{"score"}},
		},
		Inputs: []ob.ValueInfo{
			{Name: "amount", ElemType: ob.Double, Shape: col},
			{Name: "count", ElemType: ob.Int32, Shape: col},
			{Name: "country", ElemType: ob.String, Shape: row},
			{Name: "flag", ElemType: ob.Bool, Shape: row},
		},
		Outputs: []ob.ValueInfo{
			{Name: "doubled", ElemType: ob.Double, Shape: col},
			{Name: "count64", ElemType: ob.Int64, Shape: col},
			{Name: "country_out", ElemType: ob.String, Shape: row},
			{Name: "negated", ElemType: ob.Bool, Shape: row},
			{Name: "half", ElemType: ob.Float16, Shape: col},
			{Name: "score", ElemType: ob.Float, Shape: col},
		},
	}})
}

// ClassifierFeatures is the input width of Classifier.
const ClassifierFeatures = 2

// Classifier is what skl2onnx makes of a binary logistic regression: input
// "float_input" FP32 [N, 2]; outputs "output_label" INT64 [N] (class 1
// when x0 + 2·x1 > 1) and "output_probability", a
// sequence<map<int64,float>> from ZipMap with classes 0 and 1. With
// stringLabels the classes are "legit" and "fraud" and the label output is
// BYTES.
func Classifier(stringLabels bool) []byte {
	labelAttr := ob.IntsAttr("classlabels_ints", 0, 1)
	zipAttr := ob.IntsAttr("classlabels_int64s", 0, 1)
	labelType, key := ob.Int64, ob.Int64
	if stringLabels {
		labelAttr = ob.StringsAttr("classlabels_strings", "legit", "fraud")
		zipAttr = ob.StringsAttr("classlabels_strings", "legit", "fraud")
		labelType, key = ob.String, ob.String
	}
	return marshal(&ob.Model{
		IRVersion:       8,
		ProducerName:    "skl2onnx",
		ProducerVersion: "1.17.0",
		Opsets:          []ob.Opset{{Version: 15}, {Domain: "ai.onnx.ml", Version: 1}},
		Graph: ob.Graph{
			Name: "logistic_regression",
			Nodes: []ob.Node{
				// Scores per class: class 1 gets 4·(x0 + 2·x1 - 1), class 0 its negative.
				{Name: "LinearClassifier", OpType: "LinearClassifier", Domain: "ai.onnx.ml",
					Inputs: []string{"float_input"}, Outputs: []string{"output_label", "probabilities"},
					Attributes: []ob.Attribute{
						ob.FloatsAttr("coefficients", -4, -8, 4, 8), ob.FloatsAttr("intercepts", 4, -4),
						labelAttr, ob.IntAttr("multi_class", 0), ob.StringAttr("post_transform", "SOFTMAX"),
					}},
				{Name: "ZipMap", OpType: "ZipMap", Domain: "ai.onnx.ml",
					Inputs: []string{"probabilities"}, Outputs: []string{"output_probability"},
					Attributes: []ob.Attribute{zipAttr}},
			},
			Inputs: []ob.ValueInfo{{Name: "float_input", Shape: []ob.Dim{ob.UnknownDim(), ob.Fixed(ClassifierFeatures)}}},
			Outputs: []ob.ValueInfo{
				{Name: "output_label", ElemType: labelType, Shape: []ob.Dim{ob.UnknownDim()}},
				{Name: "output_probability", Type: ob.SequenceOf(ob.MapOf(key, ob.TensorOf(ob.Float)))},
			},
		},
	})
}

// FixedBatch takes exactly [rows, 1] FP32 ("x") and returns it doubled
// ("y"): a model whose batch dimension is fixed.
func FixedBatch(rows int64) []byte {
	shape := []ob.Dim{ob.Fixed(rows), ob.Fixed(1)}
	return marshal(&ob.Model{Graph: ob.Graph{
		Name:    "fixed_batch",
		Nodes:   []ob.Node{{OpType: "Add", Inputs: []string{"x", "x"}, Outputs: []string{"y"}}},
		Inputs:  []ob.ValueInfo{{Name: "x", Shape: shape}},
		Outputs: []ob.ValueInfo{{Name: "y", Shape: shape}},
	}})
}

// ZeroSize takes "x" FP32 [N, 3] and returns "empty" = x[:, 0:0] (shape
// [N, 0]) and "sum", the rank-0 sum of x.
func ZeroSize() []byte {
	return marshal(&ob.Model{Graph: ob.Graph{
		Name: "zero_size",
		Initializers: []ob.Tensor{
			ob.Int64Tensor("starts", []int64{1}, 0), ob.Int64Tensor("ends", []int64{1}, 0), ob.Int64Tensor("axes", []int64{1}, 1),
		},
		Nodes: []ob.Node{
			{OpType: "Slice", Inputs: []string{"x", "starts", "ends", "axes"}, Outputs: []string{"empty"}},
			{OpType: "ReduceSum", Inputs: []string{"x"}, Outputs: []string{"sum"}, Attributes: []ob.Attribute{ob.IntAttr("keepdims", 0)}},
		},
		Inputs: []ob.ValueInfo{{Name: "x", Shape: []ob.Dim{batch, ob.Fixed(3)}}},
		Outputs: []ob.ValueInfo{
			{Name: "empty", Shape: []ob.Dim{batch, ob.Fixed(0)}},
			{Name: "sum", Shape: []ob.Dim{}},
		},
	}})
}

// Unicode names its input "entrée" and its output "résultat_分数"
// (y = x + x, FP32 [N, 1]).
func Unicode() []byte {
	shape := []ob.Dim{batch, ob.Fixed(1)}
	return marshal(&ob.Model{Graph: ob.Graph{
		Name:    "unicode",
		Nodes:   []ob.Node{{OpType: "Add", Inputs: []string{"entrée", "entrée"}, Outputs: []string{"résultat_分数"}}},
		Inputs:  []ob.ValueInfo{{Name: "entrée", Shape: shape}},
		Outputs: []ob.ValueInfo{{Name: "résultat_分数", Shape: shape}},
	}})
}

// SequenceOutput splits "x" FP32 [N, 2] into a sequence<tensor(float)>
// ("parts"): onnxruntime loads it, edgefleet cannot serve it.
func SequenceOutput() []byte {
	return marshal(&ob.Model{Graph: ob.Graph{
		Name:    "sequence_output",
		Nodes:   []ob.Node{{OpType: "SplitToSequence", Inputs: []string{"x"}, Outputs: []string{"parts"}, Attributes: []ob.Attribute{ob.IntAttr("axis", 1)}}},
		Inputs:  []ob.ValueInfo{{Name: "x", Shape: []ob.Dim{batch, ob.Fixed(2)}}},
		Outputs: []ob.ValueInfo{{Name: "parts", Type: ob.SequenceOf(ob.TensorOf(ob.Float))}},
	}})
}

// MapInput is a DictVectorizer: input "features" map<string,float>,
// output FP32 [1, 2]. onnxruntime loads it; its input cannot be fed over
// the Open Inference Protocol.
func MapInput() []byte {
	return marshal(&ob.Model{
		Opsets: []ob.Opset{{Version: 15}, {Domain: "ai.onnx.ml", Version: 1}},
		Graph: ob.Graph{
			Name: "dict_vectorizer",
			Nodes: []ob.Node{{OpType: "DictVectorizer", Domain: "ai.onnx.ml", Inputs: []string{"features"}, Outputs: []string{"vector"},
				Attributes: []ob.Attribute{ob.StringsAttr("string_vocabulary", "a", "b")}}},
			Inputs:  []ob.ValueInfo{{Name: "features", Type: ob.MapOf(ob.String, ob.TensorOf(ob.Float))}},
			Outputs: []ob.ValueInfo{{Name: "vector", Shape: []ob.Dim{ob.Fixed(1), ob.Fixed(2)}}},
		},
	})
}

// Lookup returns "value" = table[ids] for "ids" INT64 [N, 3] and a table of
// two values (0.25, 0.75): ids other than 0 and 1 make onnxruntime fail
// (Gather out of bounds), as a model that needs real inputs does.
func Lookup() []byte {
	return marshal(&ob.Model{Graph: ob.Graph{
		Name:         "lookup",
		Initializers: []ob.Tensor{{Name: "table", Dims: []int64{2}, Data: []float32{0.25, 0.75}}},
		Nodes:        []ob.Node{{OpType: "Gather", Inputs: []string{"table", "ids"}, Outputs: []string{"value"}}},
		Inputs:       []ob.ValueInfo{{Name: "ids", ElemType: ob.Int64, Shape: []ob.Dim{batch, ob.Fixed(3)}}},
		Outputs:      []ob.ValueInfo{{Name: "value", Shape: []ob.Dim{batch, ob.Fixed(3)}}},
	}})
}
