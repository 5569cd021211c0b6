package agent

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestAgentStoppedAtPhaseResumes holds an agent with a PhaseHook as its
// update of v1 to v2 enters each phase, checks v1 still serves there, stops
// the agent while it is held (the hook sees its context end and the agent
// goes no further), and starts a new agent on the same state: it resumes
// from the persisted phase and ends on v2, committed, with v1 kept as the
// previous version; from verifying on, without fetching a chunk again.
func TestAgentStoppedAtPhaseResumes(t *testing.T) {
	v1, v2 := testModels(t)
	for _, tt := range []struct {
		phase   Phase
		resumed []string // phases the second agent enters
	}{
		{PhaseDownloading, []string{"verifying", "staging"}},
		{PhaseVerifying, []string{"verifying", "staging"}},
		{PhaseStaging, []string{"staging"}},
	} {
		t.Run(string(tt.phase), func(t *testing.T) {
			h := newHarness(t)
			dir := t.TempDir()
			first, err := New(h.agentOptions(t, "dev-1", dir))
			require.NoError(t, err)
			held := make(chan struct{})
			released := make(chan error, 1)
			first.SetPhaseHook(func(ctx context.Context, model, version string, phase Phase) {
				if model != "fraud" || version != "2.0.0" || phase != tt.phase {
					return
				}
				close(held)
				<-ctx.Done()
				released <- ctx.Err()
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- first.Run(ctx) }()
			select {
			case <-first.Ready():
			case err := <-done:
				t.Fatalf("agent stopped before it was ready: %v", err)
			}

			h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
			waitServing(t, first, "fraud", "1.0.0")
			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
			select {
			case <-held:
			case <-time.After(30 * time.Second):
				t.Fatalf("the update never entered %s; status %+v", tt.phase, first.Status())
			}
			st := first.Status()
			require.Len(t, st, 1)
			assert.Equal(t, ModelStatus{Name: "fraud", Serving: "1.0.0", Active: "1.0.0", Target: "2.0.0", Phase: tt.phase}, st[0],
				"held in %s with the previous version serving and committed", tt.phase)
			infer := func(addr string) string {
				t.Helper()
				c := &oip.Client{BaseURL: "http://" + addr}
				resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{fp32(t, "features", []int64{1, 7}, make([]float32, 7))}})
				require.NoError(t, err)
				return resp.ModelVersion
			}
			assert.Equal(t, "1.0.0", infer(first.InferenceAddr()))
			fetches := len(h.fetchesFor("dev-1"))

			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Fatal("the held agent did not stop within 20s")
			}
			require.ErrorIs(t, <-released, context.Canceled, "the hook returned because its agent stopped")

			second, err := New(h.agentOptions(t, "dev-1", dir))
			require.NoError(t, err)
			var mu sync.Mutex
			var entered []string
			second.SetPhaseHook(func(_ context.Context, _, _ string, phase Phase) {
				mu.Lock()
				entered = append(entered, string(phase))
				mu.Unlock()
			})
			testkit.Run(t, "second agent", second.Run, second.Ready())
			waitServing(t, second, "fraud", "2.0.0")
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0")
			st = second.Status()
			require.Len(t, st, 1)
			assert.Equal(t, ModelStatus{Name: "fraud", Serving: "2.0.0", Active: "2.0.0", Previous: "1.0.0"}, st[0], "v2 committed, v1 kept")
			assert.Equal(t, "2.0.0", infer(second.InferenceAddr()))
			mu.Lock()
			assert.Equal(t, tt.resumed, entered, "where the second agent resumed")
			mu.Unlock()
			if tt.phase != "downloading" {
				assert.Len(t, h.fetchesFor("dev-1"), fetches, "the whole model was on disk: no chunk fetched again")
			}
			entries, err := os.ReadDir(filepath.Join(dir, "models", "fraud"))
			require.NoError(t, err)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			assert.ElementsMatch(t, []string{sha256hex(v1.ONNX) + ".onnx", sha256hex(v2.ONNX) + ".onnx"}, names,
				"exactly the active and previous versions are on disk, no partial files")
		})
	}
}
