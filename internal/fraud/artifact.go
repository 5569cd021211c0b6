package fraud

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/drift"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Names and constants of the exported model.
const (
	InputName  = "features"
	OutputName = "fraud_probability"
	Opset      = 13
	Runtime    = "onnxruntime"
	Algorithm  = "logistic-regression/newton-l2"
	// Tolerance is the largest absolute difference between a test vector's
	// expected and computed probability that an agent accepts. It covers
	// float32 rounding differences between CPU kernels (x64 vs arm64, FMA).
	Tolerance = 1e-4
	// ReferenceBins is the number of quantile bins in the reference
	// statistics of a continuous feature.
	ReferenceBins = drift.ReferenceBins
)

// Defaults for zero fields of TrainConfig.
const (
	DefaultRows         = 20000
	DefaultTestFraction = 0.25
	minRows             = 200
	maxRows             = 10_000_000
	testVectorsPerClass = 4
)

// TrainConfig says what to generate and how to train. Zero fields take the
// documented defaults.
type TrainConfig struct {
	// Seed seeds the data generator.
	Seed uint64
	// Rows is the number of generated rows, split into train and test.
	// 0 means DefaultRows; otherwise it must be in [200, 10e6].
	Rows int
	// Params shape the generated data.
	Params Params
	// TestFraction is the share of rows held out for metrics, in (0, 0.9].
	// 0 means DefaultTestFraction.
	TestFraction float64
	// L2 is the L2 penalty on standardised coefficients. 0 means DefaultL2;
	// a negative value means none.
	L2 float64
	// Now stamps TrainingInfo.trained_unix; nil means time.Now.
	Now func() time.Time
}

// Artifact is a trained fraud model and everything a manifest says about it.
type Artifact struct {
	// ONNX is the serialised model: features FP32 [batch, 7] -> MatMul ->
	// Add -> Sigmoid -> fraud_probability FP32 [batch, 1].
	ONNX        []byte
	Inputs      []*efpb.TensorSpec
	Outputs     []*efpb.TensorSpec
	Reference   []*efpb.FeatureStats
	TestVectors []*efpb.TestVector
	Tolerance   float32
	Training    *efpb.TrainingInfo
	// Model is the Go-side model the ONNX graph was built from.
	Model *Model
	// Train and Test are the metrics on the training and held-out rows.
	Train, Test Metrics
}

// TrainArtifact generates data, trains a model, and exports it. The same
// config (apart from Now) gives byte-identical ONNX and identical metadata.
func TrainArtifact(cfg TrainConfig) (*Artifact, error) {
	rows := cfg.Rows
	if rows == 0 {
		rows = DefaultRows
	}
	if rows < minRows || rows > maxRows {
		return nil, fmt.Errorf("fraud: train artifact: %w: rows %d is outside [%d, %d]",
			ErrInvalidParams, rows, minRows, maxRows)
	}
	testFrac := cfg.TestFraction
	if testFrac == 0 {
		testFrac = DefaultTestFraction
	}
	if !(testFrac > 0 && testFrac <= 0.9) {
		return nil, fmt.Errorf("fraud: train artifact: %w: test fraction %v is outside (0, 0.9]",
			ErrInvalidParams, testFrac)
	}
	l2 := cfg.L2
	switch {
	case l2 == 0:
		l2 = DefaultL2
	case l2 < 0:
		l2 = 0
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}

	gen, err := NewGenerator(cfg.Seed, cfg.Params)
	if err != nil {
		return nil, fmt.Errorf("fraud: train artifact: %w", err)
	}
	all := gen.Generate(rows)
	nTest := int(math.Round(float64(rows) * testFrac))
	train, test := all.Slice(0, rows-nTest), all.Slice(rows-nTest, rows)

	a, err := trainArtifact(context.Background(), train, test, l2)
	if err != nil {
		return nil, fmt.Errorf("fraud: train artifact: %w", err)
	}
	p := gen.Params()
	a.Training = &efpb.TrainingInfo{
		Algorithm: Algorithm,
		Seed:      cfg.Seed,
		Params: []*efpb.KeyValue{
			kv("fraud_rate", fmtFloat(p.FraudRate)),
			kv("label_noise", fmtFloat(p.LabelNoise)),
			kv("amount_scale", fmtFloat(p.AmountScale)),
			kv("hour_shift", strconv.Itoa(p.HourShift)),
			kv("distance_scale", fmtFloat(p.DistanceScale)),
			kv("foreign_rate", fmtFloat(p.ForeignRate)),
			kv("pattern", p.Pattern.String()),
			kv("l2", fmtFloat(l2)),
			kv("test_fraction", fmtFloat(testFrac)),
			kv("train_rows", strconv.Itoa(train.Len())),
			kv("test_rows", strconv.Itoa(test.Len())),
		},
		DatasetSha256: all.SHA256(),
		DatasetRows:   uint64(rows),
		Metrics: []*efpb.Metric{
			{Name: "test_accuracy", Value: a.Test.Accuracy},
			{Name: "test_precision", Value: a.Test.Precision},
			{Name: "test_recall", Value: a.Test.Recall},
			{Name: "test_f1", Value: a.Test.F1},
			{Name: "test_auc", Value: a.Test.AUC},
			{Name: "test_log_loss", Value: a.Test.LogLoss},
			{Name: "test_baseline_accuracy", Value: a.Test.BaselineAccuracy},
			{Name: "train_accuracy", Value: a.Train.Accuracy},
			{Name: "train_auc", Value: a.Train.AUC},
		},
		TrainedUnix: now().Unix(),
	}
	return a, nil
}

// Predict returns the Go-side fraud probability of each row, equal to what
// the artifact's ONNX graph computes up to float32 rounding.
func (a *Artifact) Predict(rows []Row) []float32 { return a.Model.Predict(rows) }

// Metadata returns a manifest with only the fields the artifact knows: the
// schema, reference statistics, test vectors, tolerance, training info,
// runtime, opset and description. The control plane fills name, version,
// hashes, chunks, times and signs it. The result shares nothing with a.
func (a *Artifact) Metadata() *efpb.Manifest {
	m := &efpb.Manifest{
		Tolerance: a.Tolerance,
		Runtime:   Runtime,
		Opset:     Opset,
		Description: fmt.Sprintf("fraud detection: logistic regression over %d card-transaction features (%v); "+
			"output %s in [0, 1]; pattern %s; test accuracy %.4f, AUC %.4f",
			NumFeatures, FeatureNames(), OutputName, a.paramValue("pattern"), a.Test.Accuracy, a.Test.AUC),
	}
	for _, s := range a.Inputs {
		m.Inputs = append(m.Inputs, proto.CloneOf(s))
	}
	for _, s := range a.Outputs {
		m.Outputs = append(m.Outputs, proto.CloneOf(s))
	}
	for _, s := range a.Reference {
		m.Reference = append(m.Reference, proto.CloneOf(s))
	}
	for _, v := range a.TestVectors {
		m.TestVectors = append(m.TestVectors, proto.CloneOf(v))
	}
	if a.Training != nil {
		m.Training = proto.CloneOf(a.Training)
	}
	return m
}

func (a *Artifact) paramValue(key string) string {
	if a.Training == nil {
		return ""
	}
	for _, p := range a.Training.Params {
		if p.Key == key {
			return p.Value
		}
	}
	return ""
}

// BuildONNX exports m as an ONNX model with the standardisation folded into
// the weights: features [batch, 7] -> MatMul(weights [7, 1]) -> Add(bias [1])
// -> Sigmoid -> fraud_probability [batch, 1].
func BuildONNX(m *Model) ([]byte, error) {
	w, b := m.Folded()
	for j, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("fraud: build onnx: weight %d (%s) is %v", j, FeatureNames()[j], v)
		}
	}
	if math.IsNaN(float64(b)) || math.IsInf(float64(b), 0) {
		return nil, fmt.Errorf("fraud: build onnx: bias is %v", b)
	}
	model := &onnxbuild.Model{
		Opsets:    []onnxbuild.Opset{{Version: Opset}},
		DocString: "edgefleet fraud detection: logistic regression, standardisation folded into the weights",
		Graph: onnxbuild.Graph{
			Name: "fraud_logreg",
			Initializers: []onnxbuild.Tensor{
				{Name: "weights", Dims: []int64{NumFeatures, 1}, Data: w[:]},
				{Name: "bias", Dims: []int64{1}, Data: []float32{b}},
			},
			Nodes: []onnxbuild.Node{
				{Name: "matmul", OpType: "MatMul", Inputs: []string{InputName, "weights"}, Outputs: []string{"weighted"}},
				{Name: "add_bias", OpType: "Add", Inputs: []string{"weighted", "bias"}, Outputs: []string{"logit"}},
				{Name: "sigmoid", OpType: "Sigmoid", Inputs: []string{"logit"}, Outputs: []string{OutputName}},
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
		return nil, fmt.Errorf("fraud: build onnx: %w", err)
	}
	return out, nil
}

// ReferenceStats returns per-feature statistics of d for drift detection
// (drift.Reference for each feature).
func ReferenceStats(d *Dataset) []*efpb.FeatureStats {
	names := FeatureNames()
	out := make([]*efpb.FeatureStats, NumFeatures)
	vals := make([]float64, d.Len())
	for j := range NumFeatures {
		for i := range vals {
			vals[i] = float64(d.Rows[i][j])
		}
		out[j] = drift.Reference(names[j], vals)
	}
	return out
}

// binIndex returns the bin of v: the number of edges e with e <= v.
func binIndex(edges []float64, v float64) int {
	i, found := slices.BinarySearch(edges, v)
	if found {
		return i + 1
	}
	return i
}

// testVectors takes the first testVectorsPerClass fraud and legitimate rows
// of the held-out data as single-row vectors, plus one vector with all of
// them as a batch, each with the model's expected output.
func testVectors(m *Model, test *Dataset) []*efpb.TestVector {
	var rows []Row
	var nPos, nNeg int
	for i, r := range test.Rows[:test.Len()] {
		if test.Labels[i] && nPos < testVectorsPerClass {
			rows = append(rows, r)
			nPos++
		} else if !test.Labels[i] && nNeg < testVectorsPerClass {
			rows = append(rows, r)
			nNeg++
		}
		if nPos == testVectorsPerClass && nNeg == testVectorsPerClass {
			break
		}
	}
	probs := m.Predict(rows)
	var out []*efpb.TestVector
	for i, r := range rows {
		out = append(out, vector([]Row{r}, probs[i:i+1]))
	}
	if len(rows) > 1 {
		out = append(out, vector(rows, probs))
	}
	return out
}

func vector(rows []Row, probs []float32) *efpb.TestVector {
	in := &efpb.Tensor{Name: InputName, Shape: []int64{int64(len(rows)), NumFeatures}}
	for _, r := range rows {
		in.Data = append(in.Data, r[:]...)
	}
	return &efpb.TestVector{
		Inputs:   []*efpb.Tensor{in},
		Expected: []*efpb.Tensor{{Name: OutputName, Shape: []int64{int64(len(rows)), 1}, Data: slices.Clone(probs)}},
	}
}

func kv(k, v string) *efpb.KeyValue { return &efpb.KeyValue{Key: k, Value: v} }

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// trainArtifact trains on train with l2 (already defaulted), measures on
// both sets and builds the model's ONNX graph, specs, reference and test
// vectors; callers add TrainingInfo.
func trainArtifact(ctx context.Context, train, test *Dataset, l2 float64) (*Artifact, error) {
	model, err := TrainContext(ctx, train, l2)
	if err != nil {
		return nil, err
	}
	onnx, err := BuildONNX(model)
	if err != nil {
		return nil, err
	}
	return &Artifact{
		ONNX:        onnx,
		Inputs:      []*efpb.TensorSpec{{Name: InputName, Datatype: "FP32", Shape: []int64{-1, NumFeatures}}},
		Outputs:     []*efpb.TensorSpec{{Name: OutputName, Datatype: "FP32", Shape: []int64{-1, 1}}},
		Reference:   ReferenceStats(train),
		TestVectors: testVectors(model, test),
		Tolerance:   Tolerance,
		Model:       model,
		Train:       model.Evaluate(train),
		Test:        model.Evaluate(test),
	}, nil
}

// ArtifactFromData trains on train, measures on test and exports: a
// retrain on field data (controlplane/retrain) rather than generated data.
// l2 as in TrainConfig (0 is DefaultL2, negative none). TrainingInfo
// records the training rows' sha256 (Dataset.SHA256) and both metrics;
// the caller adds the lineage. It stops when ctx ends (TrainContext).
func ArtifactFromData(ctx context.Context, train, test *Dataset, l2 float64, now time.Time) (*Artifact, error) {
	switch {
	case l2 == 0:
		l2 = DefaultL2
	case l2 < 0:
		l2 = 0
	}
	a, err := trainArtifact(ctx, train, test, l2)
	if err != nil {
		return nil, fmt.Errorf("fraud: artifact from data: %w", err)
	}
	if len(a.TestVectors) == 0 { // no held-out rows: vectors from training rows
		a.TestVectors = testVectors(a.Model, train)
	}
	a.Training = &efpb.TrainingInfo{
		Algorithm: Algorithm,
		Params: []*efpb.KeyValue{
			kv("pattern", "field-data"),
			kv("l2", fmtFloat(l2)),
			kv("train_rows", strconv.Itoa(train.Len())),
			kv("test_rows", strconv.Itoa(test.Len())),
		},
		DatasetSha256: train.SHA256(),
		DatasetRows:   uint64(train.Len()),
		Metrics: []*efpb.Metric{
			{Name: "test_accuracy", Value: a.Test.Accuracy},
			{Name: "test_f1", Value: a.Test.F1},
			{Name: "test_auc", Value: a.Test.AUC},
			{Name: "train_accuracy", Value: a.Train.Accuracy},
			{Name: "train_auc", Value: a.Train.AUC},
		},
		TrainedUnix: now.Unix(),
	}
	return a, nil
}
