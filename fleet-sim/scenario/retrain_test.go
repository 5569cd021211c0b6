package scenario

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

const labelledTraffic = `traffic: {model: fraud, rate: 10, label_fraction: 1}
`

// The retrain steps take the API's own keys (capture and retrain policy,
// rollout template) and default wait_retrain to a job that rolled out.
func TestParseRetrainSteps(t *testing.T) {
	sc, err := Parse([]byte(minimal+labelledTraffic+`timeline:
  - set_retrain_policy:
      model: fraud
      capture: {sample_rate: 1, labelled_only: true}
      policy:
        triggers: [low_accuracy]
        trainer: builtin:fraud
        window: 1h
        site_scope: alert
        margin: 0.05
        rollout: {selector: "site!=none", stages: [{name: shadow, canary: 1, shadow: true}, {name: all, percent: 100}]}
  - wait_retrain: {name: r1, model: fraud, rollout: v2, timeout: 1m}
assertions:
  - retrain_lineage: {job: r1, parent: 1.0.0, trigger: "alert:low_accuracy"}
  - accuracy_recovered: {model: fraud, selector: site=site-1, before: 1.0.0, job: r1, min_gain: 0.05, min_labelled: 10}
`), NewRegistry())
	require.NoError(t, err)
	set := sc.Timeline[0].Action.(*SetRetrainPolicy)
	require.NotNil(t, set.Capture)
	assert.Equal(t, 1.0, set.Capture.v.SampleRate)
	assert.True(t, set.Capture.v.LabelledOnly)
	p := set.Policy.v
	assert.Equal(t, []string{"low_accuracy"}, p.Triggers)
	assert.Equal(t, api.SiteScopeAlert, p.SiteScope)
	require.NotNil(t, p.Margin)
	assert.Equal(t, 0.05, *p.Margin)
	require.NotNil(t, p.Rollout)
	assert.True(t, p.Rollout.Stages[0].Shadow)
	w := sc.Timeline[1].Action.(*WaitRetrain)
	assert.Equal(t, []string{string(api.RetrainRollingOut)}, w.States, "a job is waited for until it rolled out unless told otherwise")
}

// Bad retrain steps are refused at load, naming the line and the reason
// the API would give.
func TestParseRejectsBadRetrainSteps(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"unknown policy key", `timeline:
  - set_retrain_policy: {model: fraud, policy: {trainer: builtin:fraud, trigers: [low_accuracy]}}
`, `line 4: json: unknown field "trigers" (in action set_retrain_policy)`},
		{"bad trigger", `timeline:
  - set_retrain_policy: {model: fraud, policy: {trainer: builtin:fraud, triggers: [slow]}}
`, `trigger "slow": want an alert rule name`},
		{"bad capture", `timeline:
  - set_retrain_policy: {model: fraud, capture: {sample_rate: 2}, policy: {trainer: builtin:fraud}}
`, "sample_rate 2 must be between 0 (off) and 1"},
		{"no model", `timeline:
  - set_retrain_policy: {policy: {trainer: builtin:fraud}}
`, "model is required"},
		{"unfinished state", `timeline:
  - wait_retrain: {name: r, model: fraud, states: [training]}
`, `state "training": want states a job ends in`},
		{"rollout of a rejected job", `timeline:
  - wait_retrain: {name: r, model: fraud, states: [rejected], rollout: v2}
`, "only a job in state rolling-out has one"},
		{"no labels", `assertions:
  - accuracy_recovered: {model: fraud, selector: site=site-1, before: 1.0.0, job: r, min_labelled: 10}
`, "needs traffic with a label_fraction"},
		{"lineage without parent", `assertions:
  - retrain_lineage: {job: r}
`, "job (a wait_retrain name) and parent are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(minimal+tt.doc), NewRegistry())
			require.ErrorIs(t, err, ErrInvalid)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// A retrain job that ends outside the wanted states fails wait_retrain at
// once with the job's own reason (here: too few labelled rows for the
// policy), and the assertions that depend on it say no job was claimed.
func TestWaitRetrainFailsWithTheJobsReason(t *testing.T) {
	sc, err := Parse([]byte(`name: too-few-labels
fleet: {sites: 2, devices_per_site: 2}
agent: {heartbeat: 300ms, fetch_retry: 500ms}
traffic: {model: fraud, rate: 40, seed: 13, label_fraction: 1, label_delay: 300ms}
monitor: {interval: 500ms, window: 1m, min_accuracy: 0.85, min_labels: 300}
timeline:
  - push_model: {model: fraud, version: 1.0.0, seed: 1}
  - deploy: {model: fraud, version: 1.0.0}
  - wait_active: {model: fraud, version: 1.0.0, timeout: 30s}
  - set_retrain_policy:
      model: fraud
      capture: {sample_rate: 1, labelled_only: true}
      policy: {triggers: [low_accuracy], trainer: builtin:fraud, site_scope: alert, min_labelled: 1000000}
  - shift_traffic: {selector: site=site-2, params: {pattern: card-testing}}
  - wait_retrain: {name: r1, model: fraud, timeout: 90s}
assertions:
  - retrain_lineage: {job: r1, parent: 1.0.0}
`), NewRegistry())
	require.NoError(t, err)
	rep, err := Run(context.Background(), sc, RunOptions{WorkDir: t.TempDir()})
	require.NoError(t, err)
	assert.False(t, rep.Passed)
	require.Len(t, rep.Steps, 6)
	assert.Contains(t, rep.Steps[5].Error, "(alert:low_accuracy site=site-2) ended failed, want one of [rolling-out]")
	assert.Contains(t, rep.Steps[5].Error, "the policy needs 1000000 (min_labelled)")
	require.Len(t, rep.Assertions, 1)
	assert.Contains(t, rep.Assertions[0].Explanation, `no retrain job named "r1" was waited for`)
	fig, ok := rep.Figures["retrain_r1"].(map[string]any)
	require.True(t, ok, "the failed job's figures are reported: %v", rep.Figures)
	assert.Equal(t, api.RetrainFailed, fig["state"])
	assert.Equal(t, "site-2", fig["site"])
}
