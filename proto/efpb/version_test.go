package efpb_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

func TestManifestVersion(t *testing.T) {
	v1 := func() *efpb.Manifest {
		return &efpb.Manifest{
			Inputs:    []*efpb.TensorSpec{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}},
			Outputs:   []*efpb.TensorSpec{{Name: "y", Datatype: "FP32", Shape: []int64{-1, 1}}},
			Reference: []*efpb.FeatureStats{{Name: "a"}},
			TestVectors: []*efpb.TestVector{{
				Inputs:   []*efpb.Tensor{{Name: "x", Shape: []int64{1, 3}, Data: []float32{1, 2, 3}}},
				Expected: []*efpb.Tensor{{Name: "y", Datatype: "FP32", Shape: []int64{1, 1}, Data: []float32{0.5}}},
			}},
			Tolerance: 0.001,
		}
	}
	tests := []struct {
		name   string
		modify func(m *efpb.Manifest)
		want   uint32
	}{
		{"fp32 only", func(*efpb.Manifest) {}, 1},
		{"empty", func(m *efpb.Manifest) { proto.Reset(m) }, 1},
		{"int64 input", func(m *efpb.Manifest) { m.Inputs[0].Datatype = "INT64" }, 2},
		{"class map output", func(m *efpb.Manifest) { m.Outputs[0].Kind = efpb.TensorKind_TENSOR_KIND_CLASS_MAP }, 2},
		{"classes", func(m *efpb.Manifest) { m.Outputs[0].Classes = &efpb.Tensor{} }, 2},
		{"relative tolerance", func(m *efpb.Manifest) { m.RelativeTolerance = 0.01 }, 2},
		{"label output", func(m *efpb.Manifest) { m.LabelOutput = "y" }, 2},
		{"score output", func(m *efpb.Manifest) { m.ScoreOutput = "y" }, 2},
		{"reference input", func(m *efpb.Manifest) { m.Reference[0].Input = "x" }, 2},
		{"typed vector", func(m *efpb.Manifest) { m.TestVectors[0].Expected[0].Datatype = "FP16" }, 2},
		{"int data", func(m *efpb.Manifest) { m.TestVectors[0].Inputs[0].IntData = []int64{1} }, 2},
		{"bytes data", func(m *efpb.Manifest) { m.TestVectors[0].Inputs[0].BytesData = [][]byte{{}} }, 2},
	}
	for _, tt := range tests {
		m := v1()
		tt.modify(m)
		assert.Equal(t, tt.want, efpb.ManifestVersion(m), "ManifestVersion(%s)", tt.name)
	}
	assert.LessOrEqual(t, uint32(efpb.ProtocolVersion1), uint32(efpb.ProtocolVersion))
}
