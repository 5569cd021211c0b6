package api

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v2"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

func ptr[T any](v T) *T { return &v }

// TestRouteRoles is the access policy, route by route: reading needs
// viewer, except tokens and enrollments (admin) and the audit log
// (operator); devices' identity (register, revoke) and everything under
// enrollments and tokens, and a site's gossip key, need admin; other changes need operator. A route
// added to the table without a line here fails.
func TestRouteRoles(t *testing.T) {
	want := map[string]Role{
		"GET /healthz":                                         "",
		"POST /api/v1/enroll":                                  "",
		"GET /metrics":                                         RoleViewer,
		"POST /api/v1/devices":                                 RoleAdmin,
		"GET /api/v1/devices":                                  RoleViewer,
		"GET /api/v1/devices/{id}":                             RoleViewer,
		"POST /api/v1/devices/{id}/revoke":                     RoleAdmin,
		"GET /api/v1/models":                                   RoleViewer,
		"POST /api/v1/models/{name}/versions/{version}":        RoleOperator,
		"GET /api/v1/models/{name}/versions/{version}":         RoleViewer,
		"GET /api/v1/models/{name}/versions/{version}/metrics": RoleViewer,
		"POST /api/v1/deployments":                             RoleOperator,
		"POST /api/v1/enrollments":                             RoleAdmin,
		"POST /api/v1/tokens":                                  RoleAdmin,
		"GET /api/v1/tokens":                                   RoleAdmin,
		"DELETE /api/v1/tokens/{id}":                           RoleAdmin,
		"GET /api/v1/audit":                                    RoleOperator,
		"POST /api/v1/rollouts":                                RoleOperator,
		"GET /api/v1/rollouts":                                 RoleViewer,
		"GET /api/v1/rollouts/{id}":                            RoleViewer,
		"POST /api/v1/rollouts/{id}/pause":                     RoleOperator,
		"POST /api/v1/rollouts/{id}/resume":                    RoleOperator,
		"POST /api/v1/rollouts/{id}/promote":                   RoleOperator,
		"POST /api/v1/rollouts/{id}/abort":                     RoleOperator,
		"POST /api/v1/rollouts/{id}/rollback":                  RoleOperator,
		"GET /api/v1/broker/mosquitto":                         RoleBroker,
		"GET /api/v1/broker/nats":                              RoleBroker,
		"POST /api/v1/broker/authenticate":                     RoleBroker,
		"POST /api/v1/broker/authorize":                        RoleBroker,
		// Field data capture and datasets.
		"GET /api/v1/models/{name}/capture":                   RoleViewer,
		"PUT /api/v1/models/{name}/capture":                   RoleOperator,
		"GET /api/v1/models/{name}/datasets":                  RoleViewer,
		"POST /api/v1/models/{name}/datasets":                 RoleOperator,
		"GET /api/v1/models/{name}/datasets/{version}":        RoleViewer,
		"GET /api/v1/models/{name}/datasets/{version}/export": RoleViewer,
		"GET /api/v1/models/{name}/base-datasets":             RoleViewer,
		"POST /api/v1/models/{name}/base-datasets":            RoleOperator,
		"GET /api/v1/models/{name}/base-datasets/{id}":        RoleViewer,
		"DELETE /api/v1/models/{name}/base-datasets/{id}":     RoleOperator,
		// Retraining and lineage.
		"GET /api/v1/models/{name}/retrain":       RoleViewer,
		"PUT /api/v1/models/{name}/retrain":       RoleOperator,
		"POST /api/v1/models/{name}/retrain/jobs": RoleOperator,
		"GET /api/v1/retrain/jobs":                RoleViewer,
		"GET /api/v1/retrain/jobs/{id}":           RoleViewer,
		"POST /api/v1/retrain/jobs/{id}/cancel":   RoleOperator,
		"GET /api/v1/models/{name}/lineage":       RoleViewer,
		"GET /api/v1/sites":                       RoleViewer,
		"POST /api/v1/sites/{site}/rotate-key":    RoleAdmin,
	}
	seen := map[string]bool{}
	for _, r := range Routes() {
		require.False(t, seen[r.Key()], "route %s listed twice", r.Key())
		seen[r.Key()] = true
		role, ok := want[r.Key()]
		if !assert.True(t, ok, "route %s has no expected role in this test", r.Key()) {
			continue
		}
		assert.Equal(t, role, r.Role, "Routes()[%s].Role", r.Key())
		assert.Equal(t, role == "", r.Public, "Routes()[%s].Public", r.Key())
		assert.NotEmpty(t, r.Summary, "Routes()[%s].Summary", r.Key())
	}
	assert.Len(t, seen, len(want), "routes in this test but not in the table")
}

func TestPath(t *testing.T) {
	tests := []struct {
		pattern string
		args    []string
		want    string
	}{
		{PathDevices, nil, "/api/v1/devices"},
		{PathDevice, []string{"dev-1"}, "/api/v1/devices/dev-1"},
		{PathModelVersion, []string{"fraud", "1.0.0"}, "/api/v1/models/fraud/versions/1.0.0"},
		{PathDevice, []string{"a/b c"}, "/api/v1/devices/a%2Fb%20c"},
		{PathRolloutAction(ActionPause), []string{"r-1"}, "/api/v1/rollouts/r-1/pause"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, Path(tt.pattern, tt.args...), "Path(%q, %q)", tt.pattern, tt.args)
	}
	assert.Panics(t, func() { Path(PathDevice) }, "a placeholder left unfilled")
	assert.Panics(t, func() { Path(PathDevices, "x") }, "an argument without a placeholder")
}

func TestErrorKindsRoundTrip(t *testing.T) {
	for _, k := range kinds {
		err := Errorf(k.err, "what went wrong")
		assert.Equal(t, k.status, HTTPStatus(err), "HTTPStatus(%v)", k.err)
		assert.Equal(t, k.err, KindOf(k.status), "KindOf(%d)", k.status)
		assert.ErrorIs(t, err, k.err)
		assert.Equal(t, "what went wrong", err.Error())
	}
	assert.Equal(t, http.StatusInternalServerError, HTTPStatus(errors.New("disk on fire")))
	assert.Nil(t, KindOf(http.StatusOK))
	assert.Nil(t, KindOf(http.StatusInternalServerError))
}

// TestModelStateOf: every state of the wire enum has a constant here, so
// no package compares against a string of its own.
func TestModelStateOf(t *testing.T) {
	declared := map[ModelState]bool{ModelIdle: true, ModelPending: true, ModelDownloading: true, ModelVerifying: true,
		ModelStaging: true, ModelActive: true, ModelFailed: true, ModelRolledBack: true}
	for n := range efpb.ModelState_name {
		s := efpb.ModelState(n)
		if s == efpb.ModelState_MODEL_STATE_UNSPECIFIED {
			continue
		}
		assert.True(t, declared[ModelStateOf(s)], "ModelStateOf(%v) = %q, not a declared constant", s, ModelStateOf(s))
	}
	assert.Equal(t, ModelRolledBack, ModelStateOf(efpb.ModelState_MODEL_STATE_ROLLED_BACK))
	assert.Equal(t, ModelState("state(99)"), ModelStateOf(99))
}

func TestSpecValidation(t *testing.T) {
	ok := func() RolloutSpec {
		return RolloutSpec{Model: "fraud", Version: "2.0.0", Selector: "fleet=demo",
			Stages: []RolloutStage{{Canary: 1}, {Percent: 50}, {Percent: 100}},
			Bake:   Duration(time.Second), Gates: Gates{MaxFailureRate: ptr(0.2)}}
	}
	tests := []struct {
		name string
		mod  func(*RolloutSpec)
		want string
	}{
		{"no selector", func(s *RolloutSpec) { s.Selector = "" }, "selector is required"},
		{"bad selector", func(s *RolloutSpec) { s.Selector = "a==" }, "selector"},
		{"no stages", func(s *RolloutSpec) { s.Stages = nil }, "at least one stage"},
		{"two kinds", func(s *RolloutSpec) { s.Stages[0].Percent = 10 }, "stage 1: give exactly one of"},
		{"no kind", func(s *RolloutSpec) { s.Stages[1] = RolloutStage{} }, "stage 2: give exactly one of"},
		{"percent range", func(s *RolloutSpec) { s.Stages[2].Percent = 120 }, "stage 3: percent 120"},
		{"on breach", func(s *RolloutSpec) { s.OnBreach = "explode" }, "on_breach \"explode\""},
		{"rate", func(s *RolloutSpec) { s.Gates.MaxFailureRate = ptr(1.5) }, "max_failure_rate 1.5"},
		{"negative bake", func(s *RolloutSpec) { s.Stages[0].Bake = -1 }, "must not be negative"},
		{"model", func(s *RolloutSpec) { s.Model = "" }, "model and version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok()
			tt.mod(&s)
			err := s.Validate()
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	s := ok()
	s.Bake, s.OnBreach = 0, ""
	require.NoError(t, s.Validate())
	assert.Equal(t, Duration(DefaultBake), s.Bake)
	assert.Equal(t, OnBreachPause, s.OnBreach)
	assert.Equal(t, "stage 1", s.Stages[0].Name)
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.yaml")
	require.NoError(t, err)
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &doc))
	assert.True(t, strings.HasPrefix(doc.OpenAPI, "3.0"), "openapi version %q", doc.OpenAPI)

	documented := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item {
			if method == "parameters" {
				continue
			}
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	served := map[string]bool{}
	for _, r := range Routes() {
		served[r.Key()] = true
	}
	assert.Equal(t, served, documented, "docs/openapi.yaml and api.Routes differ")
}

// TestRoleAllows: the ranked roles include the ones below; broker is a
// role apart that only admin includes.
func TestRoleAllows(t *testing.T) {
	need := []Role{RoleViewer, RoleOperator, RoleAdmin, RoleBroker}
	want := map[Role][]bool{
		RoleViewer:   {true, false, false, false},
		RoleOperator: {true, true, false, false},
		RoleAdmin:    {true, true, true, true},
		RoleBroker:   {false, false, false, true},
		Role("root"): {false, false, false, false},
	}
	for have, row := range want {
		for i, n := range need {
			assert.Equal(t, row[i], have.Allows(n), "%s.Allows(%s)", have, n)
		}
	}
	for _, r := range Roles() {
		got, err := ParseRole(string(r))
		require.NoError(t, err)
		assert.Equal(t, r, got)
	}
	_, err := ParseRole("root")
	assert.ErrorIs(t, err, ErrInvalid)
}

// TestOpenAPIDocumentsUploadParts keeps the upload's multipart parts in
// docs/openapi.yaml and the Part constants the server and client use in
// step.
func TestOpenAPIDocumentsUploadParts(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.yaml")
	require.NoError(t, err)
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &doc))
	var node any = doc.Paths[PathModelVersion]["post"]
	for _, key := range []string{"requestBody", "content", "multipart/form-data", "schema", "properties"} {
		m, ok := node.(map[any]any) // yaml.v2's maps
		require.True(t, ok, "docs/openapi.yaml: POST %s has no %s", PathModelVersion, key)
		node = m[key]
	}
	props, ok := node.(map[any]any)
	require.True(t, ok, "docs/openapi.yaml: the upload's multipart properties")
	var documented []string
	for p := range props {
		documented = append(documented, fmt.Sprint(p))
	}
	assert.ElementsMatch(t, []string{PartModel, PartMetadata, PartSamples, PartReference}, documented,
		"the upload parts in docs/openapi.yaml and the api.Part constants differ")
}

// FuzzParseWindow: rollout windows come from the API. No panic; an
// accepted window is two minute-of-day values.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"09:00-17:30", "22:00-06:00", "24:00-01:00", "9-5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		from, to, err := ParseWindow(s)
		if err == nil && (from < 0 || from >= 24*60 || to < 0 || to >= 24*60) {
			t.Fatalf("ParseWindow(%q) = %d, %d", s, from, to)
		}
	})
}
