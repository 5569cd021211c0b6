package agent

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAgentMetricsEndpoint(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	opts.MetricsListen = "127.0.0.1:0"
	a := h.startAgent(t, opts)
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	waitServing(t, a, "fraud", "1.0.0")
	for range 3 {
		score(t, a, sampleRows(t, 1))
	}

	resp, err := http.Get("http://" + a.MetricsAddr() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(b)
	assert.Contains(t, text, `edgefleet_agent_inferences_total{model="fraud",version="1.0.0"} 3`)
	assert.Contains(t, text, `edgefleet_agent_inference_errors_total{model="fraud",version="1.0.0"} 0`)
	assert.Contains(t, text, `edgefleet_agent_model_info{active="1.0.0",model="fraud",on_trial="false",previous="",serving="1.0.0",target=""} 1`)
	assert.Contains(t, text, "edgefleet_agent_desired_generation 1")
	assert.Contains(t, text, "edgefleet_agent_trust_version 1")
	assert.Contains(t, text, "edgefleet_agent_state_write_failures_total 0")

	parser := expfmt.NewTextParser(model.LegacyValidation)
	parsed, err := parser.TextToMetricFamilies(strings.NewReader(text))
	require.NoError(t, err, "the exposition parses as Prometheus text")
	assert.Len(t, parsed, len(families), "every family once")
	assert.Contains(t, parsed, "edgefleet_agent_capture_queued_rows", "the capture queue is read at scrape time")
	assert.Equal(t, "text/plain; version=0.0.4; charset=utf-8", resp.Header.Get("Content-Type"))
	goMem := map[string]float64{}
	if f := parsed["edgefleet_agent_go_memory_bytes"]; assert.NotNil(t, f, "Go memory by class") {
		for _, m := range f.GetMetric() {
			goMem[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	assert.Positive(t, goMem["heap_objects"], "live heap objects")
	assert.Positive(t, goMem["heap_stacks"], "goroutine stacks")
	assert.NotContains(t, goMem, "total", "classes only: the total is their sum")

	if path, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(path, "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		out, err := cmd.CombinedOutput()
		assert.NoError(t, err, "promtool check metrics: %s", out)
	} else if os.Getenv("CI") != "" {
		t.Error("promtool is not installed, and CI must lint the exposition (.ci/run installs prometheus)")
	} else {
		t.Log("promtool not installed (Debian package prometheus): exposition lint skipped")
	}
}
