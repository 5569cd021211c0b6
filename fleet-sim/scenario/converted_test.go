package scenario

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/modelzoo"
)

var updateConverted = flag.Bool("update-converted-classifier", false, "rewrite the files of scenarios/converted-classifier")

const convertedDir = "../scenarios/converted-classifier"

// convertedRows makes n rows of the converted classifier's world: x0 in
// [0, 1), x1 in [0, 0.8), fraud when x0 + 2·x1 > 1, with noise flipped
// labels; label adds the is_fraud column.
func convertedRows(seed uint64, n int, noise float64, label bool) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	var b bytes.Buffer
	b.WriteString("x0,x1")
	if label {
		b.WriteString(",is_fraud")
	}
	b.WriteByte('\n')
	for range n {
		x0 := float64(int(r.Float64()*1000)) / 1000
		x1 := float64(int(r.Float64()*800)) / 1000
		y := 0
		if x0+2*x1 > 1 {
			y = 1
		}
		if r.Float64() < noise {
			y = 1 - y
		}
		fmt.Fprintf(&b, "%g,%g", x0, x1)
		if label {
			fmt.Fprintf(&b, ",%d", y)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// TestConvertedClassifierExampleFiles keeps the converted-classifier
// scenario's files what their generators make: the model is
// modelzoo.Classifier (what skl2onnx makes of a logistic regression), the
// CSVs come from convertedRows (-update-converted-classifier rewrites
// them). It also checks the scenario takes its input and feature names
// from the model and the reference data, with no metadata.
func TestConvertedClassifierExampleFiles(t *testing.T) {
	want := map[string][]byte{
		"model.onnx":  modelzoo.Classifier(false),
		"train.csv":   convertedRows(31, 400, 0.05, true),
		"traffic.csv": convertedRows(32, 400, 0.05, true),
		"samples.csv": convertedRows(33, 8, 0, false),
	}
	for name, b := range want {
		path := filepath.Join(convertedDir, name)
		if *updateConverted {
			require.NoError(t, os.WriteFile(path, b, 0o644))
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(b, got), "%s differs from its generator: go test ./fleet-sim/scenario -run TestConvertedClassifierExampleFiles -update-converted-classifier", name)
	}
	sc, err := Load("../scenarios/converted-classifier.yaml", NewRegistry())
	require.NoError(t, err)
	d := sc.Traffic.csv
	require.NotNil(t, d)
	require.Len(t, d.Inputs, 1)
	assert.Equal(t, "float_input", d.Inputs[0].Name, "from the model itself")
	assert.Equal(t, []string{"x0", "x1"}, d.Inputs[0].Columns, "from the reference data's header")
	assert.Len(t, d.Labels, 400)
	assert.True(t, strings.HasSuffix(sc.Timeline[0].Action.(*PushModel).SampleInputs, "samples.csv"))
}
