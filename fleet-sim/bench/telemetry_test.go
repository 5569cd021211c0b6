package bench

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTelemetrySmall(t *testing.T) {
	const n = 3
	res, err := Telemetry(context.Background(), TelemetryOptions{Sizes: []int{n}, Duration: 3 * time.Second, Warmup: 2 * time.Second,
		Dir: t.TempDir(), Progress: io.Discard})
	require.NoError(t, err)
	require.Len(t, res, 1)
	r := res[0]
	assert.Equal(t, n, r.N)
	assert.InDelta(t, n, r.OfferedPerSec, 1e-9, "one report per agent per second")
	assert.Greater(t, r.PayloadBytes, 100, "a report with a fraud monitoring report")
	assert.Less(t, r.PayloadBytes, 4096)

	// A quiet run: every report the agents made in the window was ingested.
	assert.GreaterOrEqual(t, r.Produced, uint64(n*2), "3 agents over a 3 s window")
	assert.Positive(t, r.IngestedPerSec)
	assert.Zero(t, r.Lost, "produced %d, ingested %d", r.Produced, r.Ingested)
	assert.Zero(t, r.Duplicates)
	assert.Zero(t, r.PayloadsDropped)
	assert.Positive(t, r.Inferences, "the traffic ran")

	assert.GreaterOrEqual(t, r.LagSamples, 2, "one probe report per second")
	assert.Zero(t, r.LagMissed, "every probe report was recorded within its interval")
	assert.LessOrEqual(t, r.LagP50, r.LagMax)
	assert.Positive(t, r.CPU)

	assert.Positive(t, r.BaselinePerSec)
	assert.Zero(t, r.BaselineLost, "every acknowledged raw publish reached the subscriber")
	assert.Positive(t, r.Ratio)
}

func TestTelemetryUsage(t *testing.T) {
	for _, args := range [][]string{{"telemetry", "--n", "0"}, {"telemetry", "--duration", "soon"}} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, Main(context.Background(), args, &out, &errOut), "Main(%q)", args)
		assert.NotEmpty(t, errOut.String())
	}
}
