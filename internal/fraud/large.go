package fraud

import (
	"fmt"
	"math/rand/v2"

	"github.com/edgefleet/edgefleet/internal/onnxbuild"
)

// LargeONNX is m as an ONNX model made about size bytes large by a real
// weight the graph reads on every inference: a [K] table gathered at an
// index computed from the input (always 0) and added times zero to the
// logit. It computes exactly what BuildONNX(m) does, while onnxruntime must
// keep the whole table: for benchmarks and tests of large-model memory.
// seed makes the table, and so the digest, differ.
func LargeONNX(m *Model, size int, seed uint64) ([]byte, error) {
	w, bias := m.Folded()
	k := max(size/4, 1)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	table := make([]float32, k)
	for i := range table {
		table[i] = rng.Float32()
	}
	zeros := make([]float32, NumFeatures)
	model := &onnxbuild.Model{
		Opsets: []onnxbuild.Opset{{Version: Opset}},
		Graph: onnxbuild.Graph{
			Name: "fraud_logreg_large",
			Initializers: []onnxbuild.Tensor{
				{Name: "weights", Dims: []int64{NumFeatures, 1}, Data: w[:]},
				{Name: "bias", Dims: []int64{1}, Data: []float32{bias}},
				{Name: "zero_weights", Dims: []int64{NumFeatures, 1}, Data: zeros},
				{Name: "zero", Dims: []int64{1}, Data: []float32{0}},
				{Name: "table", Dims: []int64{int64(k)}, Data: table},
			},
			Nodes: []onnxbuild.Node{
				{Name: "matmul", OpType: "MatMul", Inputs: []string{InputName, "weights"}, Outputs: []string{"weighted"}},
				{Name: "add_bias", OpType: "Add", Inputs: []string{"weighted", "bias"}, Outputs: []string{"logit"}},
				{Name: "index_f", OpType: "MatMul", Inputs: []string{InputName, "zero_weights"}, Outputs: []string{"index_f"}},
				{Name: "index", OpType: "Cast", Inputs: []string{"index_f"}, Outputs: []string{"index"},
					Attributes: []onnxbuild.Attribute{onnxbuild.IntAttr("to", int64(onnxbuild.Int64))}},
				{Name: "gather", OpType: "Gather", Inputs: []string{"table", "index"}, Outputs: []string{"gathered"}},
				{Name: "nothing", OpType: "Mul", Inputs: []string{"gathered", "zero"}, Outputs: []string{"nothing"}},
				{Name: "add_nothing", OpType: "Add", Inputs: []string{"logit", "nothing"}, Outputs: []string{"logit2"}},
				{Name: "sigmoid", OpType: "Sigmoid", Inputs: []string{"logit2"}, Outputs: []string{OutputName}},
			},
			Inputs: []onnxbuild.ValueInfo{{
				Name:  InputName,
				Shape: []onnxbuild.Dim{onnxbuild.Symbolic("batch"), onnxbuild.Fixed(NumFeatures)},
			}},
			Outputs: []onnxbuild.ValueInfo{{
				Name:  OutputName,
				Shape: []onnxbuild.Dim{onnxbuild.Symbolic("batch"), onnxbuild.Fixed(1)},
			}},
		},
	}
	out, err := model.Marshal()
	if err != nil {
		return nil, fmt.Errorf("fraud: large onnx: %w", err)
	}
	return out, nil
}
