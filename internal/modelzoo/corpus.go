package modelzoo

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

// Entry is one model of the corpus with its sample inputs: an Open
// Inference Protocol request JSON array, what `edgefleet model push
// --sample-inputs` takes.
type Entry struct {
	Name    string // a valid model name
	Model   []byte
	Samples []byte
}

// Corpus returns the models the end-to-end tests push, deploy and infer
// (and testdata/models holds): an Identity per datatype, mixed inputs and
// outputs, converted classifiers with int and string labels, a fixed
// batch, zero-size and rank-0 outputs, non-ASCII names, and a model that
// needs real samples.
func Corpus() []Entry {
	var out []Entry
	for _, d := range tensor.Datatypes() {
		out = append(out, Entry{Name: "identity-" + string(d), Model: Identity(d),
			Samples: requests([]Tensor{{Name: "x", Datatype: d, Shape: []int64{2, 2}, Data: sample(d)}})})
	}
	out = append(out,
		Entry{Name: "mixed", Model: Mixed(), Samples: requests([]Tensor{
			{Name: "amount", Shape: []int64{2, 1}, Data: []float64{1.5, -0.25}},
			{Name: "count", Shape: []int64{2, 1}, Data: []int32{3, -4}},
			{Name: "country", Shape: []int64{2}, Data: []string{"de", "日本"}},
			{Name: "flag", Shape: []int64{2}, Data: []bool{true, false}},
		})},
		Entry{Name: "classifier-int", Model: Classifier(false), Samples: requests(
			[]Tensor{{Name: "float_input", Shape: []int64{3, 2}, Data: []float32{1, 1, 0, 0, 0.5, 0.25}}},
			[]Tensor{{Name: "float_input", Shape: []int64{1, 2}, Data: []float32{0.9, 0.1}}},
		)},
		Entry{Name: "classifier-string", Model: Classifier(true), Samples: requests(
			[]Tensor{{Name: "float_input", Shape: []int64{2, 2}, Data: []float32{1, 1, 0.1, 0.2}}},
		)},
		Entry{Name: "fixed-batch", Model: FixedBatch(4), Samples: requests(
			[]Tensor{{Name: "x", Shape: []int64{4, 1}, Data: []float32{1, 2, 3, 4}}},
		)},
		Entry{Name: "zero-size", Model: ZeroSize(), Samples: requests(
			[]Tensor{{Name: "x", Shape: []int64{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}}},
		)},
		Entry{Name: "unicode", Model: Unicode(), Samples: requests(
			[]Tensor{{Name: "entrée", Shape: []int64{2, 1}, Data: []float32{0.5, -1}}},
		)},
		Entry{Name: "lookup", Model: Lookup(), Samples: requests(
			[]Tensor{{Name: "ids", Shape: []int64{2, 3}, Data: []int64{0, 1, 1, 1, 0, 0}}},
		)},
	)
	return out
}

// Tensor is a typed tensor (see package tensor).
type Tensor = tensor.Tensor

// requests encodes each tensor list as one inference request, all in a
// JSON array.
func requests(reqs ...[]Tensor) []byte {
	var all []oip.InferRequest
	for _, ts := range reqs {
		var r oip.InferRequest
		for _, t := range ts {
			in, err := oip.NewInput(t)
			if err != nil {
				panic(fmt.Sprintf("modelzoo: sample %s: %v", t.Name, err)) // fixed data: a bug
			}
			r.Inputs = append(r.Inputs, in)
		}
		all = append(all, r)
	}
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		panic("modelzoo: " + err.Error())
	}
	return append(b, '\n')
}

// sample returns 4 values of datatype d covering its range.
func sample(d tensor.Datatype) any {
	switch d {
	case tensor.Bool:
		return []bool{true, false, false, true}
	case tensor.Uint8:
		return []uint8{0, 1, 128, 255}
	case tensor.Uint16:
		return []uint16{0, 1, 300, math.MaxUint16}
	case tensor.Uint32:
		return []uint32{0, 1, 70000, math.MaxUint32}
	case tensor.Uint64:
		return []uint64{0, 1, 1 << 40, math.MaxUint64}
	case tensor.Int8:
		return []int8{math.MinInt8, -1, 0, math.MaxInt8}
	case tensor.Int16:
		return []int16{math.MinInt16, -1, 0, math.MaxInt16}
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
		return []string{"", "plain", "日本語", "ünïcødé"}
	}
	panic(d)
}
