package fleettest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// Main runs a package's tests (call it from TestMain) with one onnxruntime
// handle in *rt, shared by its control planes and agents (onnxruntime's
// environment is process-wide anyway), and returns the exit code. Without
// the library it fails loudly: these tests need the real onnxruntime (make
// deps).
func Main(m *testing.M, rt **infer.Runtime) int {
	path, err := infer.FindLibrary("")
	if err == nil {
		*rt, err = infer.NewRuntime(path, nil)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "onnxruntime (make deps): %v\n", err)
		return 1
	}
	defer func() { _ = (*rt).Close() }()
	return m.Run()
}

// InferFraud sends n transactions from g, in batches, through the fraud
// model of the agent whose inference API listens at addr, and returns their
// true labels keyed by inference id and row (for Agent.Feedback).
func InferFraud(t testing.TB, addr string, g *fraud.Generator, n, batch int) []oip.Label {
	t.Helper()
	c := &oip.Client{BaseURL: "http://" + addr}
	var labels []oip.Label
	for sent := 0; sent < n; sent += batch {
		flat := make([]float32, 0, batch*fraud.NumFeatures)
		truth := make([]int64, batch)
		for i := range batch {
			row, isFraud := g.Next()
			flat = append(flat, row[:]...)
			if isFraud {
				truth[i] = 1
			}
		}
		in, err := oip.NewFP32Input(fraud.InputName, []int64{int64(batch), fraud.NumFeatures}, flat)
		require.NoError(t, err)
		resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
		require.NoError(t, err)
		for i := range batch {
			labels = append(labels, oip.Label{ID: resp.ID, Row: i, Label: &truth[i]})
		}
	}
	return labels
}

// TrainedModel trains the fraud model of the given seed on 2,000 rows with
// a fixed clock: deterministic, and a few tens of milliseconds.
func TrainedModel(t testing.TB, seed uint64) *fraud.Artifact {
	t.Helper()
	a, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: 2000, Now: func() time.Time { return time.Unix(1_700_000_000, 0) }})
	require.NoError(t, err)
	return a
}
