package fraud

import (
	"context"
	"encoding/hex"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

var fixedNow = func() time.Time { return time.Unix(1_700_000_000, 0) }

// trainDefault trains the default artifact (seed 1, fixed clock).
func trainDefault(t *testing.T) *Artifact {
	t.Helper()
	a, err := TrainArtifact(TrainConfig{Seed: 1, Now: fixedNow})
	require.NoError(t, err)
	return a
}

func TestTrainArtifactBeatsBaseline(t *testing.T) {
	a := trainDefault(t)
	m := a.Test
	t.Logf("held-out (%d rows): accuracy %.4f (majority baseline %.4f), precision %.4f, recall %.4f, F1 %.4f, AUC %.4f, log loss %.4f",
		m.Rows, m.Accuracy, m.BaselineAccuracy, m.Precision, m.Recall, m.F1, m.AUC, m.LogLoss)
	assert.Equal(t, 5000, m.Rows)
	assert.Greater(t, m.Accuracy, m.BaselineAccuracy+0.05, "accuracy must clearly beat always-legit")
	assert.Greater(t, m.AUC, 0.88)
	assert.Greater(t, m.Precision, 0.6)
	assert.Greater(t, m.Recall, 0.4)
	assert.InDelta(t, 2*m.Precision*m.Recall/(m.Precision+m.Recall), m.F1, 1e-12)
	// Not overfitted: train and test agree.
	assert.InDelta(t, a.Train.Accuracy, m.Accuracy, 0.02)
}

func TestTrainArtifactDeterministic(t *testing.T) {
	a := trainDefault(t)
	b := trainDefault(t)
	assert.Equal(t, a.ONNX, b.ONNX, "same seed must give byte-identical ONNX")
	assert.True(t, proto.Equal(a.Metadata(), b.Metadata()), "same seed must give identical metadata")
	assert.Equal(t, a.Test, b.Test)

	c, err := TrainArtifact(TrainConfig{Seed: 2, Now: fixedNow})
	require.NoError(t, err)
	assert.NotEqual(t, a.ONNX, c.ONNX)
	assert.NotEqual(t, a.Training.DatasetSha256, c.Training.DatasetSha256)
}

func TestGeneratorDeterministic(t *testing.T) {
	gen := func(seed uint64) *Dataset {
		g, err := NewGenerator(seed, Params{})
		require.NoError(t, err)
		return g.Generate(2000)
	}
	a, b, c := gen(7), gen(7), gen(8)
	assert.Equal(t, a.Rows, b.Rows)
	assert.Equal(t, a.Labels, b.Labels)
	assert.Equal(t, a.SHA256(), b.SHA256())
	assert.NotEqual(t, a.Rows, c.Rows)
	assert.NotEqual(t, a.SHA256(), c.SHA256())

	// The stream is the same whether drawn at once or row by row.
	g, err := NewGenerator(7, Params{})
	require.NoError(t, err)
	for i := range 10 {
		r, y := g.Next()
		require.Equal(t, a.Rows[i], r, "row %d", i)
		require.Equal(t, a.Labels[i], y, "label %d", i)
	}
}

func TestGeneratorFeatureRanges(t *testing.T) {
	g, err := NewGenerator(3, Params{HourShift: -5, AmountScale: 0.1})
	require.NoError(t, err)
	d := g.Generate(20000)
	for i, r := range d.Rows {
		require.GreaterOrEqual(t, r[FeatAmount], float32(0.5), "row %d amount", i)
		require.True(t, r[FeatHour] >= 0 && r[FeatHour] <= 23 && r[FeatHour] == float32(math.Trunc(float64(r[FeatHour]))),
			"row %d hour %v", i, r[FeatHour])
		require.True(t, r[FeatMerchantRisk] >= 0 && r[FeatMerchantRisk] <= 1, "row %d merchant_risk %v", i, r[FeatMerchantRisk])
		require.GreaterOrEqual(t, r[FeatDistanceKm], float32(0), "row %d distance", i)
		require.GreaterOrEqual(t, r[FeatVelocity1h], float32(0), "row %d velocity", i)
		require.Contains(t, []float32{0, 1}, r[FeatForeign], "row %d foreign", i)
		require.True(t, r[FeatCardAgeDays] >= 1 && r[FeatCardAgeDays] <= 3650, "row %d card age %v", i, r[FeatCardAgeDays])
	}
}

func TestGeneratorFraudRate(t *testing.T) {
	tests := []struct {
		p    Params
		want float64
	}{
		{Params{}, DefaultFraudRate*(1-DefaultLabelNoise) + (1-DefaultFraudRate)*DefaultLabelNoise},
		{Params{FraudRate: 0.05, LabelNoise: -1}, 0.05},
		{Params{FraudRate: 0.3, LabelNoise: -1, Pattern: PatternCardTesting}, 0.3},
		// Shifted features do not change the rate: the intercept is recalibrated.
		{Params{FraudRate: 0.1, LabelNoise: -1, AmountScale: 4, DistanceScale: 3}, 0.1},
	}
	for _, tt := range tests {
		g, err := NewGenerator(11, tt.p)
		require.NoError(t, err)
		got := g.Generate(40000).FraudRate()
		assert.InDelta(t, tt.want, got, 0.01, "fraud rate with %+v = %v, want %v", tt.p, got, tt.want)
	}
}

func TestParamsRejected(t *testing.T) {
	tests := []struct {
		p    Params
		want string
	}{
		{Params{FraudRate: 1}, "fraud rate 1 is outside (0, 1)"},
		{Params{FraudRate: -0.1}, "fraud rate -0.1"},
		{Params{FraudRate: math.NaN()}, "fraud rate NaN"},
		{Params{LabelNoise: 0.5}, "label noise 0.5"},
		{Params{AmountScale: -1}, "amount scale -1"},
		{Params{AmountScale: math.Inf(1)}, "amount scale +Inf"},
		{Params{DistanceScale: math.NaN()}, "distance scale NaN"},
		{Params{ForeignRate: 1.5}, "foreign rate 1.5"},
		{Params{Pattern: 9}, "unknown pattern 9"},
	}
	for _, tt := range tests {
		_, err := NewGenerator(1, tt.p)
		require.Error(t, err, "params %+v", tt.p)
		assert.ErrorIs(t, err, ErrInvalidParams)
		assert.Contains(t, err.Error(), tt.want)
	}
}

func TestTrainConfigRejected(t *testing.T) {
	tests := []struct {
		cfg  TrainConfig
		want string
	}{
		{TrainConfig{Rows: 10}, "rows 10 is outside"},
		{TrainConfig{Rows: 20_000_000}, "rows 20000000 is outside"},
		{TrainConfig{TestFraction: 0.95}, "test fraction 0.95"},
		{TrainConfig{Params: Params{FraudRate: 2}}, "fraud rate 2"},
	}
	for _, tt := range tests {
		_, err := TrainArtifact(tt.cfg)
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrInvalidParams)
		assert.Contains(t, err.Error(), tt.want)
	}
}

func TestTrainRejectsDegenerateData(t *testing.T) {
	_, err := Train(&Dataset{}, DefaultL2)
	assert.ErrorIs(t, err, ErrTraining)

	g, err := NewGenerator(1, Params{})
	require.NoError(t, err)
	d := g.Generate(100)
	for i := range d.Labels {
		d.Labels[i] = false
	}
	_, err = Train(d, DefaultL2)
	require.ErrorIs(t, err, ErrTraining)
	assert.Contains(t, err.Error(), "same class")

	_, err = Train(g.Generate(100), math.NaN())
	assert.ErrorIs(t, err, ErrInvalidParams)

	short := g.Generate(100)
	short.Labels = short.Labels[:60]
	_, err = Train(short, DefaultL2)
	require.ErrorIs(t, err, ErrTraining)
	assert.Contains(t, err.Error(), "100 rows and 60 labels")
	// Other functions use the labelled rows only and do not panic.
	m, err := Train(g.Generate(500), DefaultL2)
	require.NoError(t, err)
	assert.Equal(t, 60, m.Evaluate(short).Rows)
	assert.Len(t, short.SHA256(), 64)
	assert.Len(t, ReferenceStats(short), NumFeatures)
}

func TestFoldedMatchesStandardised(t *testing.T) {
	a := trainDefault(t)
	g, err := NewGenerator(5, Params{})
	require.NoError(t, err)
	d := g.Generate(2000)
	got := a.Predict(d.Rows)
	for i := range d.Rows {
		want := a.Model.probability(&d.Rows[i])
		require.InDelta(t, want, float64(got[i]), 1e-5, "row %d %v", i, d.Rows[i])
	}
}

func TestMetadata(t *testing.T) {
	a := trainDefault(t)
	m := a.Metadata()

	assert.Empty(t, m.Name)
	assert.Empty(t, m.Version)
	assert.Empty(t, m.Sha256)
	assert.Zero(t, m.Size)
	assert.Empty(t, m.ChunkSha256)
	assert.Equal(t, "onnxruntime", m.Runtime)
	assert.EqualValues(t, 13, m.Opset)
	assert.Contains(t, m.Description, "fraud")
	assert.Equal(t, float32(Tolerance), m.Tolerance)

	require.Len(t, m.Inputs, 1)
	assert.True(t, proto.Equal(&efpb.TensorSpec{Name: "features", Datatype: "FP32", Shape: []int64{-1, 7}}, m.Inputs[0]))
	require.Len(t, m.Outputs, 1)
	assert.True(t, proto.Equal(&efpb.TensorSpec{Name: "fraud_probability", Datatype: "FP32", Shape: []int64{-1, 1}}, m.Outputs[0]))

	require.Len(t, m.Reference, NumFeatures)
	for j, fs := range m.Reference {
		assert.Equal(t, FeatureNames()[j], fs.Name)
		assert.Len(t, fs.BinFractions, len(fs.BinEdges)+1, "feature %s", fs.Name)
		assert.LessOrEqual(t, len(fs.BinFractions), ReferenceBins, "feature %s", fs.Name)
		var sum float64
		for _, f := range fs.BinFractions {
			sum += f
		}
		assert.InDelta(t, 1, sum, 1e-9, "feature %s fractions", fs.Name)
		assert.IsIncreasing(t, fs.BinEdges, "feature %s edges", fs.Name)
		assert.LessOrEqual(t, fs.Min, fs.Mean)
		assert.LessOrEqual(t, fs.Mean, fs.Max)
		assert.Greater(t, fs.Stddev, 0.0)
	}
	foreign := m.Reference[FeatForeign]
	assert.Equal(t, []float64{0.5}, foreign.BinEdges, "a binary feature gets one bin per value")
	assert.InDelta(t, DefaultForeignRate, foreign.BinFractions[1], 0.01)
	amount := m.Reference[FeatAmount]
	require.Len(t, amount.BinFractions, ReferenceBins)
	for _, f := range amount.BinFractions {
		assert.InDelta(t, 0.1, f, 0.01, "a continuous feature gets decile bins")
	}

	require.Len(t, m.TestVectors, 2*testVectorsPerClass+1)
	for i, v := range m.TestVectors {
		require.Len(t, v.Inputs, 1, "vector %d", i)
		require.Len(t, v.Expected, 1, "vector %d", i)
		in, exp := v.Inputs[0], v.Expected[0]
		assert.Equal(t, "features", in.Name)
		assert.Equal(t, "fraud_probability", exp.Name)
		batch := in.Shape[0]
		assert.Equal(t, []int64{batch, NumFeatures}, in.Shape)
		assert.Equal(t, []int64{batch, 1}, exp.Shape)
		require.Len(t, in.Data, int(batch)*NumFeatures)
		rows := make([]Row, batch)
		for r := range rows {
			copy(rows[r][:], in.Data[r*NumFeatures:])
		}
		assert.Equal(t, a.Predict(rows), exp.Data, "vector %d expected output", i)
	}
	assert.Len(t, m.TestVectors[len(m.TestVectors)-1].Inputs[0].Data, 2*testVectorsPerClass*NumFeatures)

	tr := m.Training
	require.NotNil(t, tr)
	assert.Equal(t, Algorithm, tr.Algorithm)
	assert.EqualValues(t, 1, tr.Seed)
	assert.EqualValues(t, DefaultRows, tr.DatasetRows)
	sum, err := hex.DecodeString(tr.DatasetSha256)
	require.NoError(t, err)
	assert.Len(t, sum, 32)
	assert.Equal(t, fixedNow().Unix(), tr.TrainedUnix)
	metrics := map[string]float64{}
	for _, mt := range tr.Metrics {
		metrics[mt.Name] = mt.Value
	}
	assert.Equal(t, a.Test.Accuracy, metrics["test_accuracy"])
	assert.Equal(t, a.Test.AUC, metrics["test_auc"])
	params := map[string]string{}
	for _, p := range tr.Params {
		params[p.Key] = p.Value
	}
	assert.Equal(t, "classic", params["pattern"])
	assert.Equal(t, "0.15", params["fraud_rate"])

	// The manifest shares nothing with the artifact.
	m.Inputs[0].Name = "changed"
	m.Reference[0].BinFractions[0] = 42
	m.TestVectors[0].Expected[0].Data[0] = 42
	m.Training.Metrics[0].Value = 42
	fresh := a.Metadata()
	assert.Equal(t, "features", fresh.Inputs[0].Name)
	assert.NotEqual(t, 42.0, fresh.Reference[0].BinFractions[0])
	assert.NotEqual(t, float32(42), fresh.TestVectors[0].Expected[0].Data[0])
	assert.NotEqual(t, 42.0, fresh.Training.Metrics[0].Value)
}

// psi is the population stability index of sample d's feature j against the
// reference bins.
func psi(ref *efpb.FeatureStats, d *Dataset, j int) float64 {
	counts := make([]float64, len(ref.BinFractions))
	for _, r := range d.Rows {
		counts[binIndex(ref.BinEdges, float64(r[j]))]++
	}
	const eps = 1e-4
	var s float64
	for i, c := range counts {
		act := math.Max(c/float64(d.Len()), eps)
		exp := math.Max(ref.BinFractions[i], eps)
		s += (act - exp) * math.Log(act/exp)
	}
	return s
}

func TestCovariateDriftShiftsFeatures(t *testing.T) {
	a := trainDefault(t)
	sample := func(p Params) *Dataset {
		g, err := NewGenerator(21, p)
		require.NoError(t, err)
		return g.Generate(10000)
	}
	same := sample(Params{})
	drifted := sample(Params{AmountScale: 3, HourShift: 8, DistanceScale: 4, ForeignRate: 0.3})
	shifted := map[int]bool{FeatAmount: true, FeatHour: true, FeatDistanceKm: true, FeatForeign: true}
	for j, ref := range a.Reference {
		base, drift := psi(ref, same, j), psi(ref, drifted, j)
		t.Logf("%-14s PSI reference sample %.4f, drifted sample %.4f", ref.Name, base, drift)
		assert.Less(t, base, 0.02, "%s: a fresh reference sample must not look drifted", ref.Name)
		if shifted[j] {
			assert.Greater(t, drift, 0.25, "%s: shifted feature must drift", ref.Name)
		} else {
			assert.Less(t, drift, 0.02, "%s: untouched feature must not drift", ref.Name)
		}
	}
	assert.Greater(t, meanOf(drifted, FeatAmount), 2.5*meanOf(same, FeatAmount))
}

func TestPatternDriftDegradesModel(t *testing.T) {
	a := trainDefault(t)
	g, err := NewGenerator(31, Params{Pattern: PatternCardTesting})
	require.NoError(t, err)
	d := g.Generate(10000)
	m := a.Model.Evaluate(d)
	t.Logf("classic model on card-testing data: accuracy %.4f (baseline %.4f), AUC %.4f; on its own test data: accuracy %.4f, AUC %.4f",
		m.Accuracy, m.BaselineAccuracy, m.AUC, a.Test.Accuracy, a.Test.AUC)
	assert.Less(t, m.AUC, a.Test.AUC-0.2)
	assert.Less(t, m.Accuracy, a.Test.Accuracy-0.05)
	// Concept drift leaves the inputs alone.
	for j, ref := range a.Reference {
		assert.Less(t, psi(ref, d, j), 0.02, "%s", ref.Name)
	}

	// A model retrained on the new pattern recovers.
	b, err := TrainArtifact(TrainConfig{Seed: 32, Params: Params{Pattern: PatternCardTesting}})
	require.NoError(t, err)
	assert.Greater(t, b.Model.Evaluate(d).AUC, a.Test.AUC-0.05)
}

func meanOf(d *Dataset, j int) float64 {
	var s float64
	for _, r := range d.Rows {
		s += float64(r[j])
	}
	return s / float64(d.Len())
}

func TestAUC(t *testing.T) {
	tests := []struct {
		name   string
		scores []float64
		labels []bool
		want   float64
	}{
		{"perfect", []float64{0.1, 0.2, 0.8, 0.9}, []bool{false, false, true, true}, 1},
		{"reversed", []float64{0.9, 0.8, 0.2, 0.1}, []bool{false, false, true, true}, 0},
		{"all tied", []float64{0.5, 0.5, 0.5, 0.5}, []bool{false, true, false, true}, 0.5},
		{"one class", []float64{0.1, 0.9}, []bool{true, true}, 0.5},
		{"partial", []float64{0.1, 0.4, 0.35, 0.8}, []bool{false, false, true, true}, 0.75},
	}
	for _, tt := range tests {
		got := auc(tt.scores, tt.labels)
		assert.InDelta(t, tt.want, got, 1e-12, "auc(%s) = %v, want %v", tt.name, got, tt.want)
	}
}

func TestReferenceStatsBins(t *testing.T) {
	d := &Dataset{}
	for i := range 100 {
		var r Row
		r[FeatAmount] = float32(i) // 100 distinct values: decile bins
		r[FeatVelocity1h] = float32(i % 3)
		r[FeatForeign] = 1 // constant: a single bin
		d.Rows = append(d.Rows, r)
		d.Labels = append(d.Labels, i%2 == 0)
	}
	stats := ReferenceStats(d)
	amount := stats[FeatAmount]
	assert.Equal(t, []float64{10, 20, 30, 40, 50, 60, 70, 80, 90}, amount.BinEdges)
	for _, f := range amount.BinFractions {
		assert.InDelta(t, 0.1, f, 1e-12)
	}
	assert.Equal(t, 0.0, amount.Min)
	assert.Equal(t, 99.0, amount.Max)
	assert.InDelta(t, 49.5, amount.Mean, 1e-12)

	vel := stats[FeatVelocity1h]
	assert.Equal(t, []float64{0.5, 1.5}, vel.BinEdges)
	assert.InDeltaSlice(t, []float64{0.34, 0.33, 0.33}, vel.BinFractions, 1e-12)

	foreign := stats[FeatForeign]
	assert.Empty(t, foreign.BinEdges)
	assert.Equal(t, []float64{1}, foreign.BinFractions)
	assert.Equal(t, 0.0, foreign.Stddev)
}

// A fit stops when its context ends (a retrain job's cancel or time
// limit), with the context's error.
func TestTrainContextStops(t *testing.T) {
	g, err := NewGenerator(3, Params{})
	require.NoError(t, err)
	d := g.Generate(2000)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = TrainContext(ctx, d, DefaultL2)
	require.ErrorIs(t, err, context.Canceled)
	_, err = ArtifactFromData(ctx, d, d, DefaultL2, time.Now())
	require.ErrorIs(t, err, context.Canceled)
	m, err := TrainContext(context.Background(), d, DefaultL2)
	require.NoError(t, err)
	assert.Greater(t, m.Evaluate(d).Accuracy, 0.5)
}
