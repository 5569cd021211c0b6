package controlplane_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// Shadow stages with real agents, onnxruntime, badger and the embedded
// broker: the fraud pattern has changed (card testing), the champion was
// trained on the old one. A challenger trained on the new pattern is scored
// in shadow on every device, beats the champion on the labelled traffic
// and is promoted to serve; a challenger trained on the old pattern does
// not pass the gate, and the rollout pauses with the figures as its reason.
func TestShadowStageGatesOnLabelledAccuracy(t *testing.T) {
	ts := newTestServer(t, func(o *controlplane.Options) { o.RolloutInterval = 50 * time.Millisecond })
	ctx := context.Background()
	classic := fleettest.TrainedModel(t, 1)
	cardTesting := trainFraud(t, 2, fraud.PatternCardTesting)
	classicAgain := trainFraud(t, 3, fraud.PatternClassic)
	ts.mustUpload("fraud", "v1", classic)
	ts.mustUpload("fraud", "v2", cardTesting)
	ts.mustUpload("fraud", "v3", classicAgain)

	ids := []string{"shadow-a", "shadow-b"}
	agents := map[string]*agent.Agent{}
	for _, id := range ids {
		agents[id] = ts.StartAgent(t, testRuntime, id, map[string]string{"fleet": "shadow"}, nil)
	}
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Selector: "fleet=shadow"})
	waitServing(t, agents, "v1")

	g, err := fraud.NewGenerator(7, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	margin := 0.02
	spec := func(version string) api.RolloutSpec {
		return api.RolloutSpec{Model: "fraud", Version: version, Selector: "fleet=shadow", AutoPromote: true,
			Bake:  api.Duration(time.Millisecond),
			Gates: api.Gates{MinLabelled: 300, ShadowMargin: &margin},
			Stages: []api.RolloutStage{
				{Name: "shadow", Percent: 100, Shadow: true},
				{Name: "all", Percent: 100},
			}}
	}

	// The better challenger: scored in shadow while v1 answers, then served.
	ro, err := ts.Client.CreateRollout(ctx, spec("v2"))
	require.NoError(t, err)
	var final *api.Rollout
	require.Eventually(t, func() bool {
		sendLabelled(t, agents, g, "v1", "v2")
		final, err = ts.Client.Rollout(ctx, ro.ID, false)
		require.NoError(t, err)
		require.NotEqual(t, api.RolloutPaused, final.State, "the better challenger must not be held: %s", final.Reason)
		return final.State == api.RolloutCompleted
	}, 2*time.Minute, 20*time.Millisecond, "rollout of the better challenger: %s", rolloutText{&final})
	waitServing(t, agents, "v2")
	for id, a := range agents {
		// One chunk of v1, one of v2 for the shadow, none after: the
		// promoted challenger was staged from the file checked for it.
		assert.Equal(t, uint64(2), a.ChunksReceived(), "%s downloaded v2 twice", id)
	}
	sh := final.Stages[0].Shadow
	require.NotNil(t, sh, "the shadow stage keeps its figures")
	assert.Equal(t, len(ids), sh.DevicesReady)
	assert.GreaterOrEqual(t, sh.Labelled, uint64(300))
	assert.Greater(t, sh.ChallengerAccuracy, sh.ChampionAccuracy+margin, "figures: %+v", *sh)
	assert.Less(t, sh.Agreement, 1.0, "the versions disagree on some rows")
	t.Logf("v2 in shadow of v1: %+v", *sh)
	require.Len(t, final.Stages[0].Gates, 1)
	assert.Equal(t, api.GatePass, final.Stages[0].Gates[0].Status)

	// The worse challenger: held by the gate, v2 keeps serving.
	ro, err = ts.Client.CreateRollout(ctx, spec("v3"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		sendLabelled(t, agents, g, "v2", "v3")
		final, err = ts.Client.Rollout(ctx, ro.ID, false)
		require.NoError(t, err)
		require.NotEqual(t, api.RolloutCompleted, final.State, "the worse challenger must not pass")
		return final.State == api.RolloutPaused
	}, 2*time.Minute, 20*time.Millisecond, "rollout of the worse challenger: %s", rolloutText{&final})
	assert.Contains(t, final.Reason, "gate shadow_accuracy breached")
	assert.Contains(t, final.Reason, "challenger v3 accuracy")
	sh = final.Stages[0].Shadow
	require.NotNil(t, sh)
	assert.Less(t, sh.ChallengerAccuracy, sh.ChampionAccuracy+margin, "figures: %+v", *sh)
	t.Logf("v3 in shadow of v2: %+v; reason %q", *sh, final.Reason)
	waitServing(t, agents, "v2")

	// The operator sees why in rollout get; abort withdraws the shadows.
	out, errOut, code := runCLI(ts, "rollout", "get", ro.ID)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "shadow_accuracy")
	assert.Contains(t, out, "challenger")
	_, err = ts.Client.RolloutAction(ctx, ro.ID, api.ActionAbort, api.RollbackRequest{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, id := range ids {
			d, err := ts.Client.Device(ctx, id)
			require.NoError(t, err)
			if d.Desired == nil || len(d.Desired.Shadows) > 0 {
				return false
			}
		}
		return true
	}, time.Minute, 20*time.Millisecond)
}

func trainFraud(t *testing.T, seed uint64, p fraud.Pattern) *fraud.Artifact {
	t.Helper()
	a, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: seed, Rows: 2000, Params: fraud.Params{Pattern: p},
		Now: func() time.Time { return time.Unix(1_700_000_000, 0) }})
	require.NoError(t, err)
	return a
}

// waitServing waits until every agent serves version of fraud.
func waitServing(t *testing.T, agents map[string]*agent.Agent, version string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, a := range agents {
			st := a.Status()
			if len(st) != 1 || st[0].Serving != version {
				return false
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "agents serve fraud %s", version)
}

// sendLabelled sends a round of labelled traffic from g to every agent
// and checks that the champion answered (a challenger in shadow never
// does), or the challenger once it was promoted.
func sendLabelled(t *testing.T, agents map[string]*agent.Agent, g *fraud.Generator, champion, challenger string) {
	t.Helper()
	const batch = 20
	for _, a := range agents {
		c := &oip.Client{BaseURL: "http://" + a.InferenceAddr()}
		var labels []oip.Label
		for range 2 {
			flat := make([]float32, 0, batch*fraud.NumFeatures)
			truth := make([]int64, batch)
			for i := range batch {
				row, isFraud := g.Next()
				flat = append(flat, row[:]...)
				if isFraud {
					truth[i] = 1
				}
			}
			in, err := oip.NewFP32Input(fraud.InputName, []int64{batch, fraud.NumFeatures}, flat)
			require.NoError(t, err)
			resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
			require.NoError(t, err)
			require.Contains(t, []string{champion, challenger}, resp.ModelVersion)
			for i := range batch {
				labels = append(labels, oip.Label{ID: resp.ID, Row: i, Label: &truth[i]})
			}
		}
		_, err := a.Feedback(context.Background(), "fraud", labels)
		require.NoError(t, err)
	}
}

// runCLI runs the edgefleet CLI against ts.
func runCLI(ts *testServer, args ...string) (string, string, int) {
	var out, errOut strings.Builder
	all := append([]string{"--api", ts.APIURL(), "--token", ts.Token}, args...)
	code := cli.Main(context.Background(), all, &out, &errOut)
	return out.String(), errOut.String(), code
}

// rolloutText formats *r when printed (after a wait gave up).
type rolloutText struct{ r **api.Rollout }

func (r rolloutText) String() string {
	if *r.r == nil {
		return "none"
	}
	b, _ := json.Marshal(*r.r)
	return string(b)
}

// TestShadowAfterRestartAndRefusal: a challenger loaded before the agent
// restarts scores again after it from the checked file on disk (no chunk
// fetched), and a challenger a device refuses is reported with the reason
// and breaches the failure-rate gate; the served version never changes.
func TestShadowAfterRestartAndRefusal(t *testing.T) {
	ts := newTestServer(t, func(o *controlplane.Options) { o.RolloutInterval = 50 * time.Millisecond })
	ctx := context.Background()
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	ts.mustUpload("fraud", "v2", trainFraud(t, 2, fraud.PatternCardTesting))
	riscv := trainFraud(t, 4, fraud.PatternCardTesting)
	meta := riscv.Metadata()
	meta.Hardware = []string{"riscv64"}
	code, body := ts.upload("fraud", "v9", riscv.ONNX, meta, false)
	require.Equal(t, 201, code, "upload: %s", body)

	creds, err := ts.RegisterDevice("shadow-r", map[string]string{"fleet": "restart"})
	require.NoError(t, err)
	opts := fleettest.AgentOptions(t, creds, testRuntime)
	opts.Hardware = "amd64"
	start := func() (*agent.Agent, func()) {
		a, err := agent.New(opts)
		require.NoError(t, err)
		return a, testkit.Start(t, "agent", a.Run, a.Ready())
	}
	a, stop := start()
	ts.deploy(api.DeployRequest{Model: "fraud", Version: "v1", Selector: "fleet=restart"})
	waitServing(t, map[string]*agent.Agent{"r": a}, "v1")

	g, err := fraud.NewGenerator(9, fraud.Params{Pattern: fraud.PatternCardTesting})
	require.NoError(t, err)
	spec := api.RolloutSpec{Model: "fraud", Version: "v2", Selector: "fleet=restart", Bake: api.Duration(time.Millisecond),
		Gates:  api.Gates{MinLabelled: 1 << 30}, // held: this test is about the shadow, not the promotion
		Stages: []api.RolloutStage{{Name: "shadow", Canary: 1, Shadow: true}, {Name: "all", Percent: 100}}}
	ro, err := ts.Client.CreateRollout(ctx, spec)
	require.NoError(t, err)
	rows := func() uint64 {
		st, err := ts.Client.Rollout(ctx, ro.ID, false)
		require.NoError(t, err)
		if st.Stages[0].Shadow == nil {
			return 0
		}
		return st.Stages[0].Shadow.Rows
	}
	require.Eventually(t, func() bool {
		sendLabelled(t, map[string]*agent.Agent{"r": a}, g, "v1", "v1")
		return rows() > 0
	}, time.Minute, 20*time.Millisecond)

	stop()
	a, stop = start()
	defer stop()
	waitServing(t, map[string]*agent.Agent{"r": a}, "v1")
	before := rows()
	require.Eventually(t, func() bool {
		sendLabelled(t, map[string]*agent.Agent{"r": a}, g, "v1", "v1")
		return rows() > before
	}, time.Minute, 20*time.Millisecond, "the challenger scores after the restart")
	assert.Zero(t, a.ChunksReceived(), "it was loaded from the file checked before the restart")

	_, err = ts.Client.RolloutAction(ctx, ro.ID, api.ActionAbort, api.RollbackRequest{})
	require.NoError(t, err)
	zero := 0.0
	spec.Version, spec.Gates = "v9", api.Gates{MaxFailureRate: &zero}
	ro, err = ts.Client.CreateRollout(ctx, spec)
	require.NoError(t, err)
	var st *api.Rollout
	require.Eventually(t, func() bool {
		st, err = ts.Client.Rollout(ctx, ro.ID, false)
		require.NoError(t, err)
		return st.State == api.RolloutPaused
	}, time.Minute, 20*time.Millisecond, "rollout of a challenger the device refuses: %s", rolloutText{&st})
	assert.Contains(t, st.Reason, "gate failure_rate breached: 1 of 1 reporting devices refused the challenger")
	require.NotNil(t, st.Stages[0].Shadow)
	require.Len(t, st.Stages[0].Shadow.Failures, 1)
	assert.Contains(t, st.Stages[0].Shadow.Failures[0], "shadow-r: manifest refused: model is built for [riscv64], this device is amd64")
	waitServing(t, map[string]*agent.Agent{"r": a}, "v1")
}
