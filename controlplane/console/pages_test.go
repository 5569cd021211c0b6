package console_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// TestEveryPageOnARealControlPlane renders every page from a real control
// plane's components, as an operator, and as a viewer (refused the audit
// log and the actions).
func TestEveryPageOnARealControlPlane(t *testing.T) {
	e := startEnv(t, nil)
	_, err := e.cp.RegisterDevice("dev-1", map[string]string{"site": "north"})
	require.NoError(t, err)
	e.upload("1.0.0", 1)
	ro, err := e.cp.CreateRollout(context.Background(), api.RolloutSpec{Model: "fraud", Version: "1.0.0", Selector: "site=north", Stages: []api.RolloutStage{{Canary: 1}, {Percent: 100}}}, "test")
	require.NoError(t, err)
	s := e.login(e.operator)
	for _, p := range []string{"/ui/fleet", "/ui/devices/dev-1", "/ui/models", "/ui/rollouts", "/ui/rollouts/" + ro.ID, "/ui/rollouts/" + ro.ID + "/pause", "/ui/monitoring", "/ui/audit", "/ui/retrain", "/ui/models/fraud/retrain", "/ui/models/fraud/retrain/start"} {
		code, body, _ := s.get(p)
		require.Equal(t, http.StatusOK, code, "%s: %s", p, body)
	}
	v := e.login(e.viewer)
	for p, want := range map[string]int{"/ui/fleet": 200, "/ui/rollouts/" + ro.ID: 200, "/ui/audit": 403, "/ui/rollouts/" + ro.ID + "/pause": 403, "/ui/retrain": 200, "/ui/models/fraud/retrain": 200, "/ui/models/fraud/retrain/start": 403} {
		code, body, _ := v.get(p)
		require.Equal(t, want, code, "viewer %s: %s", p, body)
	}
}
