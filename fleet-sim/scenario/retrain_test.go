package scenario

import (
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
