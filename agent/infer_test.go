package agent_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/oip"
)

// TestInferInProcessMatchesHTTP checks that Agent.Infer answers exactly as
// the local inference API does, and refuses a model the agent lacks.
func TestInferInProcessMatchesHTTP(t *testing.T) {
	f := startFleet(t)
	a := f.addAgent("dev-1", "site=a")

	_, _, err := a.Infer(context.Background(), "fraud", nil)
	require.Error(t, err, "nothing deployed yet")

	v1 := f.train("fraud-v1.onnx", "1")
	f.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", v1)
	f.cli("deploy", "fraud@1.0.0", "--device", "dev-1")
	f.waitReported("fraud", "1.0.0", "dev-1")

	viaHTTP := infer1(t, a)
	version, outs, err := a.Infer(context.Background(), "fraud", []oip.Tensor{{
		Name:  "features",
		Shape: []int64{2, 7},
		Data:  []float32{4.5, 8, 0.05, 1.2, 1, 0, 1400, 1450, 3, 0.9, 2400, 6, 1, 12},
	}})
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", version)
	require.Len(t, outs, 1)
	httpOut, err := viaHTTP.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, httpOut.Data, outs[0].Data)

	_, _, err = a.Infer(context.Background(), "other", nil)
	assert.Error(t, err, "unknown model")
	_, _, err = a.Infer(context.Background(), "fraud", []oip.Tensor{{Name: "features", Shape: []int64{1, 3}, Data: []float32{1, 2, 3}}})
	assert.Error(t, err, "wrong shape is refused by onnxruntime, not a crash")
}
