package scenario

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A scenario's rollout takes shadow stages and the shadow margin with the
// API's keys, and refuses a spec the API refuses.
func TestParseShadowStage(t *testing.T) {
	sc, err := Parse([]byte(minimal+`timeline:
  - create_rollout:
      name: c
      spec: {model: fraud, version: 2.0.0, selector: "site!=none", gates: {min_labelled: 500, shadow_margin: 0.01},
             stages: [{name: shadow, canary: 2, shadow: true}, {name: all, percent: 100}]}
`), NewRegistry())
	require.NoError(t, err)
	spec := sc.Timeline[0].Action.(*CreateRollout).Spec.spec
	require.Len(t, spec.Stages, 2)
	assert.True(t, spec.Stages[0].Shadow)
	assert.False(t, spec.Stages[1].Shadow)
	require.NotNil(t, spec.Gates.ShadowMargin)
	assert.Equal(t, 0.01, *spec.Gates.ShadowMargin)

	_, err = Parse([]byte(minimal+`timeline:
  - create_rollout:
      name: c
      spec: {model: fraud, version: 2.0.0, selector: "site!=none", stages: [{percent: 100, shadow: true}]}
`), NewRegistry())
	assert.ErrorContains(t, err, "the last stage cannot be a shadow stage")
}
