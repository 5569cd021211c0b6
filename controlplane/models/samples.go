package models

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Deriving what a push leaves out: test vectors recorded by running the
// model on sample inputs (or, without any, on deterministic synthetic
// inputs), and reference statistics from a CSV of training data.

// Limits of derived metadata: test vectors travel in every signed
// manifest, so they stay small.
const (
	// MaxSampleVectors bounds the test vectors recorded from samples.
	MaxSampleVectors = 16
	// MaxCSVRowsPerVector bounds the rows of one CSV test vector.
	MaxCSVRowsPerVector = 16
	// MaxVectorBytes bounds the encoded test vectors of a manifest.
	MaxVectorBytes = 1 << 20
	// MaxSampleElements bounds one sample input's elements.
	MaxSampleElements = 1 << 22
	// MaxReferenceRows bounds the rows of reference data read.
	MaxReferenceRows = 1_000_000
)

// hint is what a refused derivation tells the user to do.
const (
	hintSamples   = "pass sample inputs (`edgefleet model push --sample-inputs FILE`: an OIP request JSON, or a CSV for a model with one tabular input)"
	hintReference = "`--reference-data FILE`"
)

// parseSamples reads sample inputs: an Open Inference Protocol request
// body or a JSON array of them, or a CSV (a header row is optional) for a
// model with one numeric input of shape [rows, features] or [rows]. Each
// JSON request is one test vector; CSV rows are grouped into vectors of up
// to MaxCSVRowsPerVector rows (the model's batch size when it is fixed).
func parseSamples(data []byte, name string, inputs []*efpb.TensorSpec) ([][]tensor.Tensor, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		reqs, err := oip.ParseRequests(trimmed)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "sample inputs: %v", err)
		}
		if len(reqs) > MaxSampleVectors {
			return nil, api.Errorf(api.ErrInvalid, "sample inputs hold %d requests; at most %d become test vectors: send fewer", len(reqs), MaxSampleVectors)
		}
		out := make([][]tensor.Tensor, len(reqs))
		for i, req := range reqs {
			ts, err := oip.DecodeInputs(req, name, inputs, MaxSampleElements)
			if err != nil {
				return nil, api.Errorf(api.ErrInvalid, "sample inputs: request %d: %v", i, err)
			}
			out[i] = ts
		}
		return out, nil
	}
	in, width, err := tabularInput(inputs, "sample inputs", "send an OIP request JSON instead")
	if err != nil {
		return nil, err
	}
	tab, err := readCSV(data, "sample inputs", MaxSampleVectors*MaxCSVRowsPerVector)
	if err != nil {
		return nil, err
	}
	cols, err := tab.columns(width, in, "sample inputs")
	if err != nil {
		return nil, err
	}
	per := MaxCSVRowsPerVector
	if len(in.Shape) > 0 && in.Shape[0] > 0 {
		per = int(in.Shape[0])
		if len(tab.rows) < per {
			return nil, api.Errorf(api.ErrInvalid, "sample inputs: the model takes exactly %d rows at a time and the CSV has %d", per, len(tab.rows))
		}
	}
	var out [][]tensor.Tensor
	for start := 0; start+per <= len(tab.rows) || (start < len(tab.rows) && in.Shape[0] < 0); start += per {
		end := min(start+per, len(tab.rows))
		t, err := csvTensor(in, tab.rows[start:end], cols)
		if err != nil {
			return nil, err
		}
		out = append(out, []tensor.Tensor{t})
		if len(out) == MaxSampleVectors {
			break
		}
	}
	return out, nil
}

// tabularInput returns the one input CSV rows can feed and its width
// (columns per row; -1 when the model leaves it open). instead says what
// to do otherwise.
func tabularInput(inputs []*efpb.TensorSpec, what, instead string) (*efpb.TensorSpec, int, error) {
	if len(inputs) != 1 {
		return nil, 0, api.Errorf(api.ErrInvalid, "%s: a CSV feeds a model with one input, this one has %d (%s); %s", what, len(inputs), specNames(inputs), instead)
	}
	in := inputs[0]
	d := tensor.Datatype(in.Datatype)
	if !d.IsNumeric() || d == tensor.Bool {
		return nil, 0, api.Errorf(api.ErrInvalid, "%s: input %q is %s; a CSV feeds numeric inputs only, %s", what, in.Name, in.Datatype, instead)
	}
	switch sh := in.Shape; {
	case len(sh) == 1:
		return in, 1, nil
	case len(sh) == 2:
		return in, int(sh[1]), nil
	}
	return nil, 0, api.Errorf(api.ErrInvalid, "%s: input %q has shape %v; a CSV feeds an input of shape [rows, features] or [rows]; %s", what, in.Name, in.Shape, instead)
}

type table struct {
	header []string // nil when the CSV has none
	rows   [][]float64
}

// readCSV parses numeric CSV rows, with an optional header row (a first row
// that is not all numbers), at most maxRows of them.
func readCSV(data []byte, what string, maxRows int) (*table, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.ReuseRecord = true
	t := &table{}
	for line := 1; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "%s: CSV: %v", what, err)
		}
		row := make([]float64, len(rec))
		bad := -1
		for i, f := range rec {
			v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil {
				bad = i
				break
			}
			row[i] = v
		}
		switch {
		case bad >= 0 && line == 1:
			t.header = make([]string, len(rec))
			for i, f := range rec {
				t.header[i] = strings.TrimSpace(f)
			}
		case bad >= 0:
			return nil, api.Errorf(api.ErrInvalid, "%s: CSV line %d column %d: %q is not a number", what, line, bad+1, rec[bad])
		default:
			if len(t.rows) == maxRows {
				return t, nil
			}
			t.rows = append(t.rows, row)
		}
	}
	if len(t.rows) == 0 {
		return nil, api.Errorf(api.ErrInvalid, "%s: the CSV has no data rows", what)
	}
	return t, nil
}

// columns returns the indexes of the CSV columns that feed an input of
// width columns (all of them when width is -1): the first width columns.
func (t *table) columns(width int, in *efpb.TensorSpec, what string) ([]int, error) {
	n := len(t.rows[0])
	if width < 0 {
		width = n
	}
	if n < width {
		return nil, api.Errorf(api.ErrInvalid, "%s: the CSV has %d columns, input %q takes %d per row", what, n, in.Name, width)
	}
	cols := make([]int, width)
	for i := range cols {
		cols[i] = i
	}
	return cols, nil
}

// csvTensor builds one input tensor of rows.
func csvTensor(in *efpb.TensorSpec, rows [][]float64, cols []int) (tensor.Tensor, error) {
	d := tensor.Datatype(in.Datatype)
	shape := []int64{int64(len(rows)), int64(len(cols))}
	if len(in.Shape) == 1 {
		shape = shape[:1]
	}
	t, err := tensor.Zeros(in.Name, d, shape)
	if err != nil {
		return tensor.Tensor{}, api.Errorf(api.ErrInvalid, "sample inputs: %v", err)
	}
	i := 0
	for _, row := range rows {
		for _, c := range cols {
			if err := setNumber(&t, i, row[c]); err != nil {
				return tensor.Tensor{}, api.Errorf(api.ErrInvalid, "sample inputs: CSV row %d column %d: %v", i/len(cols)+1, c+1, err)
			}
			i++
		}
	}
	return t, nil
}

// setNumber stores v as element i of a numeric tensor, refusing values its
// datatype cannot hold.
func setNumber(t *tensor.Tensor, i int, v float64) error {
	d := t.DT()
	if d.IsInteger() && (v != math.Trunc(v) || math.IsInf(v, 0)) {
		return fmt.Errorf("%v is not an integer (input is %s)", v, d)
	}
	if lo, hi, ok := tensor.IntRange(d); ok && (v < float64(lo) || v > float64(hi)) {
		return fmt.Errorf("%v is out of %s range", v, d)
	}
	if hi, ok := tensor.UintMax(d); ok && (v < 0 || v > float64(hi)) {
		return fmt.Errorf("%v is out of %s range", v, d)
	}
	switch x := t.Data.(type) {
	case []float32:
		x[i] = float32(v)
		if d == tensor.FP16 {
			x[i] = tensor.RoundFP16(x[i])
		} else if d == tensor.BF16 {
			x[i] = tensor.RoundBF16(x[i])
		}
	case []float64:
		x[i] = v
	case []int8:
		x[i] = int8(v)
	case []int16:
		x[i] = int16(v)
	case []int32:
		x[i] = int32(v)
	case []int64:
		x[i] = int64(v)
	case []uint8:
		x[i] = uint8(v)
	case []uint16:
		x[i] = uint16(v)
	case []uint32:
		x[i] = uint32(v)
	case []uint64:
		x[i] = uint64(v)
	default:
		return fmt.Errorf("input is %s, which a CSV cannot fill", d)
	}
	return nil
}

// SyntheticInputs returns deterministic inputs for the model's schema: two
// rows when the first dimension is dynamic, other dynamic dimensions 1;
// small numbers cycling through -1, -0.5, 0, 0.5, 1 (integers 0, 1, 2;
// booleans alternating; strings "a", "b", "c").
func SyntheticInputs(inputs []*efpb.TensorSpec) ([]tensor.Tensor, error) {
	out := make([]tensor.Tensor, len(inputs))
	for k, in := range inputs {
		shape := []int64{2}
		if in.Shape != nil {
			shape = make([]int64, len(in.Shape))
			for i, d := range in.Shape {
				switch {
				case d >= 0:
					shape[i] = d
				case i == 0:
					shape[i] = 2
				default:
					shape[i] = 1
				}
			}
		}
		if _, err := tensor.Elements(shape, MaxSampleElements); err != nil {
			return nil, fmt.Errorf("input %q: %w", in.Name, err)
		}
		t, err := tensor.Zeros(in.Name, tensor.Datatype(in.Datatype), shape)
		if err != nil {
			return nil, err
		}
		for i := range t.Len() {
			switch x := t.Data.(type) {
			case []bool:
				x[i] = i%2 == 0
			case []string:
				x[i] = string(rune('a' + i%3))
			default:
				v := float64(i % 3) // integers
				if tensor.Datatype(in.Datatype).IsFloat() {
					v = float64(i%5)/2 - 1
				}
				_ = setNumber(&t, i, v) // in range for every type
			}
		}
		out[k] = t
	}
	return out, nil
}

// recordVectors runs the model on each sample and returns test vectors
// holding the outputs onnxruntime computed.
func recordVectors(rt *infer.Runtime, model []byte, m *efpb.Manifest, samples [][]tensor.Tensor) ([]*efpb.TestVector, error) {
	sess, err := rt.Load(model, tensorNames(m.Inputs), tensorNames(m.Outputs))
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	var vectors []*efpb.TestVector
	size := 0
	for i, in := range samples {
		outs, err := sess.Run(in)
		if err != nil {
			return nil, fmt.Errorf("sample %d: %w", i, err)
		}
		v := &efpb.TestVector{}
		for j := range in {
			p, err := tensor.ToProto(&in[j])
			if err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
			v.Inputs = append(v.Inputs, p)
		}
		for j := range outs {
			p, err := tensor.ToProto(&outs[j])
			if err != nil {
				return nil, fmt.Errorf("sample %d: output %q: %w", i, outs[j].Name, err)
			}
			v.Expected = append(v.Expected, p)
		}
		size += proto.Size(v)
		if size > MaxVectorBytes {
			return nil, api.Errorf(api.ErrInvalid, "sample inputs make test vectors of more than %d bytes (they travel in every signed manifest): send fewer or smaller samples", MaxVectorBytes)
		}
		vectors = append(vectors, v)
	}
	return vectors, nil
}

// defaultTolerance sets the tolerance of recorded test vectors:
// tensor.DefaultTolerance, or DefaultHalfTolerance for a model with an
// FP16 or BF16 output. A manifest that needs nothing of protocol version 2
// gets it as one absolute tolerance (Abs + Rel·max|expected|), so version
// 1 agents can check it too.
func defaultTolerance(m *efpb.Manifest) tensor.Tolerance {
	tol := tensor.DefaultTolerance
	for _, o := range m.Outputs {
		if d := tensor.Datatype(o.Datatype); d == tensor.FP16 || d == tensor.BF16 {
			tol = tensor.DefaultHalfTolerance
		}
	}
	if efpb.ManifestVersion(m) > efpb.ProtocolVersion1 {
		m.Tolerance, m.RelativeTolerance = float32(tol.Abs), float32(tol.Rel)
		return tol
	}
	maxAbs := 0.0
	for _, v := range m.TestVectors {
		for _, e := range v.Expected {
			for _, x := range e.Data {
				if a := math.Abs(float64(x)); a > maxAbs && !math.IsInf(a, 0) {
					maxAbs = a
				}
			}
		}
	}
	m.Tolerance = float32(tol.Abs + tol.Rel*maxAbs)
	return tensor.Tolerance{Abs: float64(m.Tolerance)}
}

// referenceStats computes reference statistics from a CSV of training
// data. With a header, a column named after an input of shape [rows] or
// [rows, 1] is that input's feature; otherwise the model's one tabular
// input takes the first columns (named by the header, or f0, f1, ...).
// Other columns (a label, ids) are left out and listed in ignored.
func referenceStats(data []byte, inputs []*efpb.TensorSpec) (stats []*efpb.FeatureStats, ignored []string, err error) {
	tab, err := readCSV(data, "reference data", MaxReferenceRows)
	if err != nil {
		return nil, nil, err
	}
	column := func(c int) []float64 {
		vals := make([]float64, len(tab.rows))
		for i, r := range tab.rows {
			if c < len(r) {
				vals[i] = r[c]
			} else {
				vals[i] = math.NaN()
			}
		}
		return vals
	}
	colName := func(c int) string {
		if tab.header != nil && c < len(tab.header) && tab.header[c] != "" {
			return tab.header[c]
		}
		return "f" + strconv.Itoa(c)
	}
	// Columns named after single-feature inputs.
	if tab.header != nil {
		used := map[int]bool{}
		for _, in := range inputs {
			sh := in.Shape
			if !(len(sh) == 1 || (len(sh) == 2 && sh[1] == 1)) || !tensor.Datatype(in.Datatype).IsNumeric() {
				continue
			}
			for c, h := range tab.header {
				if h == in.Name {
					used[c] = true
					fs := drift.Reference(h, column(c))
					fs.Input = in.Name
					stats = append(stats, fs)
				}
			}
		}
		if len(stats) > 0 {
			for c := range tab.header {
				if !used[c] {
					ignored = append(ignored, colName(c))
				}
			}
			return stats, ignored, nil
		}
	}
	in, width, err := tabularInput(inputs, "reference data", "or name the CSV's columns after the model's numeric inputs of shape [rows] or [rows, 1]")
	if err != nil {
		return nil, nil, err
	}
	cols, err := tab.columns(width, in, "reference data")
	if err != nil {
		return nil, nil, err
	}
	for _, c := range cols {
		stats = append(stats, drift.Reference(colName(c), column(c)))
	}
	for c := len(cols); c < len(tab.rows[0]); c++ {
		ignored = append(ignored, colName(c))
	}
	return stats, ignored, nil
}
