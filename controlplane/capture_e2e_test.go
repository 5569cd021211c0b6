package controlplane_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
)

func fastCapture(o *agent.Options) {
	o.Capture = agent.CaptureOptions{FlushInterval: 20 * time.Millisecond, AckTimeout: 300 * time.Millisecond, BatchRows: 8}
}

func waitServes(t *testing.T, a *agent.Agent, model, version string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, s := range a.Status() {
			if s.Name == model && s.Serving == version && s.Target == "" {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "agent never served %s@%s: %+v", model, version, a.Status())
}

func waitCaptured(t *testing.T, c *client.Client, model string, rows, labelled uint64) {
	t.Helper()
	ok := assert.Eventually(t, func() bool {
		st, err := c.CapturePolicy(context.Background(), model)
		return err == nil && st.Rows == rows && st.Labelled == labelled
	}, 60*time.Second, 20*time.Millisecond, "want %d rows (%d labelled)", rows, labelled)
	if !ok {
		st, err := c.CapturePolicy(context.Background(), model)
		t.Fatalf("captured: %+v, %v", st, err)
	}
}

// Field data capture end to end, with a real control plane, broker,
// agent, badger and onnxruntime: a deployment carries a capture policy,
// the agent's rows and labels arrive once, become a content-addressed
// dataset that validates and exports; a control-plane (and broker) outage
// loses nothing the agent captured meanwhile.
func TestCaptureEndToEnd(t *testing.T) {
	dir := t.TempDir()
	ts := newTestServer(t, func(o *controlplane.Options) { o.DataDir = dir })
	token := ts.Token
	ctx := context.Background()
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	a := ts.StartAgent(t, testRuntime, "dev-1", map[string]string{"site": "berlin"}, fastCapture)
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"},
		Capture: &api.CapturePolicy{SampleRate: 1}})
	waitServes(t, a, "fraud", "v1")

	g, err := fraud.NewGenerator(3, fraud.Params{})
	require.NoError(t, err)
	labels := fleettest.InferFraud(t, a.InferenceAddr(), g, 20, 4)
	_, err = a.Feedback(ctx, "fraud", labels)
	require.NoError(t, err)
	if !assert.Eventually(t, func() bool { return a.CaptureStats().Uploaded == 40 }, 30*time.Second, 20*time.Millisecond) {
		t.Fatalf("agent capture: %+v", a.CaptureStats())
	}
	waitCaptured(t, ts.Client, "fraud", 20, 20)
	st, err := ts.Client.CapturePolicy(ctx, "fraud")
	require.NoError(t, err)
	assert.True(t, st.Enabled)
	assert.Equal(t, 1, st.Devices)

	ds, err := ts.Client.BuildDataset(ctx, "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, 1, ds.Version)
	assert.Equal(t, 20, ds.Rows)
	assert.Equal(t, 20, ds.Labelled)
	assert.Equal(t, []string{"dev-1"}, ds.Devices)
	assert.Equal(t, []string{"berlin"}, ds.Sites)
	assert.Equal(t, []string{"v1"}, ds.ModelVersions)
	assert.True(t, ds.Validation.Passed, "validation: %+v", ds.Validation.Checks)
	assert.Zero(t, ds.Validation.Duplicates)
	var names []string
	for _, c := range ds.Schema {
		names = append(names, c.Name)
	}
	assert.Contains(t, names, fraud.FeatureNames()[0], "columns are named after the manifest's reference features")
	assert.Contains(t, names, "label")

	again, err := ts.Client.BuildDataset(ctx, "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, ds.Version, again.Version, "the same rows are the same dataset")
	assert.Equal(t, ds.SHA256, again.SHA256)

	var jl bytes.Buffer
	sum, err := ts.Client.ExportDataset(ctx, "fraud", "latest", api.FormatJSONL, &jl)
	require.NoError(t, err)
	got := sha256.Sum256(jl.Bytes())
	assert.Equal(t, ds.SHA256, hex.EncodeToString(got[:]), "the jsonl export is the bytes the dataset is named by")
	assert.Equal(t, ds.SHA256, sum)
	var cb bytes.Buffer
	_, err = ts.Client.ExportDataset(ctx, "fraud", "1", api.FormatCSV, &cb)
	require.NoError(t, err)
	recs, err := csv.NewReader(&cb).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 21, "a header and 20 rows")
	assert.Equal(t, []string{"time", "device", "site", "model_version", "inference_id", "row"}, recs[0][:6])
	assert.Equal(t, "label", recs[0][len(recs[0])-1])
	_, err = ts.Client.ExportDataset(ctx, "fraud", "1", "xlsx", &cb)
	require.ErrorIs(t, err, api.ErrInvalid)

	// The control plane and its embedded broker go away; the agent keeps
	// capturing on disk and delivers once both are back on the same port.
	brokerURL := ts.BrokerURL()
	ts.Stop()
	more := fleettest.InferFraud(t, a.InferenceAddr(), g, 12, 4)
	_, err = a.Feedback(ctx, "fraud", more)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return a.CaptureStats().Queued == 24 }, 30*time.Second, 20*time.Millisecond,
		"12 rows and 12 labels wait on disk: %+v", a.CaptureStats())
	second := newTestServer(t, func(o *controlplane.Options) {
		o.DataDir = dir
		o.MQTTListen = strings.TrimPrefix(brokerURL, "tcp://")
	})
	c2 := second.WithToken(token)
	waitCaptured(t, c2, "fraud", 32, 32)
	require.Eventually(t, func() bool { return a.CaptureStats().Queued == 0 }, 30*time.Second, 20*time.Millisecond)
	ds2, err := c2.BuildDataset(ctx, "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, 2, ds2.Version)
	assert.Equal(t, 32, ds2.Rows)
	list, err := c2.Datasets(ctx, "fraud")
	require.NoError(t, err)
	require.Len(t, list, 2)

	// Turning capture off reaches the agent in a new desired state: from
	// then on nothing is captured.
	gen := a.Generation()
	off, err := c2.SetCapturePolicy(ctx, "fraud", api.CapturePolicy{})
	require.NoError(t, err)
	assert.False(t, off.Enabled)
	require.Eventually(t, func() bool { return a.Generation() > gen }, 30*time.Second, 20*time.Millisecond)
	entries, err := c2.Audit(ctx, api.AuditQuery{})
	require.NoError(t, err)
	audited := false
	for _, e := range entries {
		audited = audited || e.Action == "api.PUT "+api.PathModelCapture && e.Result == "ok"
	}
	assert.True(t, audited, "changing a capture policy is in the audit log")
	before := a.CaptureStats()
	fleettest.InferFraud(t, a.InferenceAddr(), g, 8, 4)
	after := a.CaptureStats()
	assert.Equal(t, before.Queued+before.Buffered, after.Queued+after.Buffered, "capture is off")

	// Bad input: a clear 400, nothing stored.
	_, err = c2.SetCapturePolicy(ctx, "fraud", api.CapturePolicy{SampleRate: 1.5})
	require.ErrorIs(t, err, api.ErrInvalid)
	_, err = c2.SetCapturePolicy(ctx, "fraud", api.CapturePolicy{SampleRate: 1, DropInputs: []string{"x"}, HashInputs: []string{"x"}})
	require.ErrorIs(t, err, api.ErrInvalid)
	_, err = c2.BuildDataset(ctx, "fraud", api.DatasetRequest{Since: time.Now().Add(time.Hour)})
	require.ErrorIs(t, err, api.ErrInvalid)
	_, err = c2.Dataset(ctx, "fraud", "7")
	require.ErrorIs(t, err, api.ErrNotFound)
	var se *client.StatusError
	_, err = second.WithToken("").Datasets(ctx, "fraud")
	require.True(t, errors.As(err, &se))
	assert.Equal(t, http.StatusUnauthorized, se.Status)
}

// The in-process operations (what fleet-sim and the demo call) apply a
// deploy's or a rollout's capture policy as the API does: they once
// dropped it without a word.
func TestInProcessDeployAndRolloutSetTheCapturePolicy(t *testing.T) {
	ts := newTestServer(t, nil)
	ctx := context.Background()
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.mustUpload("other", "v1", fleettest.TrainedModel(t, 2))
	_, err := ts.Client.RegisterDevice(ctx, "dev-1", map[string]string{"site": "x"})
	require.NoError(t, err)

	_, err = ts.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"},
		Capture: &api.CapturePolicy{SampleRate: 0.5}})
	require.NoError(t, err)
	st, err := ts.Client.CapturePolicy(ctx, "fraud")
	require.NoError(t, err)
	assert.True(t, st.Enabled)
	assert.InDelta(t, 0.5, st.Policy.SampleRate, 1e-9)

	_, err = ts.CreateRollout(ctx, api.RolloutSpec{Model: "other", Version: "v1", Selector: "site=x",
		Stages: []api.RolloutStage{{Percent: 100}}, Capture: &api.CapturePolicy{SampleRate: 0.25}}, "test")
	require.NoError(t, err)
	st, err = ts.Client.CapturePolicy(ctx, "other")
	require.NoError(t, err)
	assert.InDelta(t, 0.25, st.Policy.SampleRate, 1e-9)

	_, err = ts.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "v9", Devices: []string{"dev-1"},
		Capture: &api.CapturePolicy{SampleRate: 1}})
	assert.True(t, errors.Is(err, api.ErrNotFound), "an unknown version: %v", err)
}
