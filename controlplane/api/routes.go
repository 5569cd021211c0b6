package api

import (
	"fmt"
	"net/url"
	"strings"
)

// Path patterns of the REST API, in http.ServeMux syntax. Path fills one in.
const (
	PathHealth        = "/healthz"
	PathMetrics       = "/metrics"
	PathDevices       = "/api/v1/devices"
	PathDevice        = "/api/v1/devices/{id}"
	PathDeviceRevoke  = "/api/v1/devices/{id}/revoke"
	PathModels        = "/api/v1/models"
	PathModelVersion  = "/api/v1/models/{name}/versions/{version}"
	PathModelMetrics  = "/api/v1/models/{name}/versions/{version}/metrics"
	PathDeployments   = "/api/v1/deployments"
	PathEnrollments   = "/api/v1/enrollments"
	PathEnroll        = "/api/v1/enroll"
	PathTokens        = "/api/v1/tokens"
	PathToken         = "/api/v1/tokens/{id}"
	PathAudit         = "/api/v1/audit"
	PathRollouts      = "/api/v1/rollouts"
	PathRollout       = "/api/v1/rollouts/{id}"
	PathBrokerMosq    = "/api/v1/broker/mosquitto"
	PathBrokerNATS    = "/api/v1/broker/nats"
	PathBrokerAuthn   = "/api/v1/broker/authenticate"
	PathBrokerAuthz   = "/api/v1/broker/authorize"
	PathSites         = "/api/v1/sites"
	PathSiteRotateKey = "/api/v1/sites/{site}/rotate-key"
	pathRolloutAction = "/api/v1/rollouts/{id}/"
)

// PathRolloutAction is the pattern of a rollout action's route.
func PathRolloutAction(a RolloutAction) string { return pathRolloutAction + string(a) }

// Path fills the {placeholders} of pattern, in order, with args (escaped).
// It panics when the counts differ: that is a programming error.
func Path(pattern string, args ...string) string {
	var b strings.Builder
	rest := pattern
	for _, a := range args {
		i := strings.IndexByte(rest, '{')
		j := strings.IndexByte(rest, '}')
		if i < 0 || j < i {
			panic(fmt.Sprintf("api.Path(%q): %d arguments for fewer placeholders", pattern, len(args)))
		}
		b.WriteString(rest[:i])
		b.WriteString(url.PathEscape(a))
		rest = rest[j+1:]
	}
	if strings.IndexByte(rest, '{') >= 0 {
		panic(fmt.Sprintf("api.Path(%q): %d arguments for more placeholders", pattern, len(args)))
	}
	b.WriteString(rest)
	return b.String()
}

// Route is one endpoint of the REST API: docs/openapi.yaml documents
// exactly these, the server serves exactly these (tests keep all three in
// step), and Role is what a token needs to call it.
type Route struct {
	Method  string
	Pattern string
	// Role is the least role allowed; empty only for Public routes.
	Role Role
	// Public routes take no API token: the health check, and the
	// enrollment exchange (its one-time token is the credential).
	Public bool
	// Query marks a POST that changes nothing (a broker's login and ACL
	// checks, one per connection): it is not written to the audit log.
	Query bool
	// Summary says what the route does, in a few words.
	Summary string
}

// Key is the route's ServeMux pattern: "GET /api/v1/devices".
func (r Route) Key() string { return r.Method + " " + r.Pattern }

// Routes returns the route table. Reading needs viewer, except tokens and
// enrollments (admin) and the audit log (operator); registering and
// revoking devices and anything under enrollments and tokens needs admin;
// every other change (deployments, models, rollouts) needs operator.
func Routes() []Route {
	rs := []Route{
		{Method: "GET", Pattern: PathHealth, Public: true, Summary: "liveness check"},
		{Method: "GET", Pattern: PathMetrics, Role: RoleViewer, Summary: "Prometheus metrics"},
		{Method: "POST", Pattern: PathDevices, Role: RoleAdmin, Summary: "register a device"},
		{Method: "GET", Pattern: PathDevices, Role: RoleViewer, Summary: "list devices"},
		{Method: "GET", Pattern: PathDevice, Role: RoleViewer, Summary: "get a device"},
		{Method: "POST", Pattern: PathDeviceRevoke, Role: RoleAdmin, Summary: "revoke a device's credentials"},
		{Method: "GET", Pattern: PathModels, Role: RoleViewer, Summary: "list model versions"},
		{Method: "POST", Pattern: PathModelVersion, Role: RoleOperator, Summary: "upload a model version"},
		{Method: "GET", Pattern: PathModelVersion, Role: RoleViewer, Summary: "get a model version with its manifest"},
		{Method: "GET", Pattern: PathModelMetrics, Role: RoleViewer, Summary: "a model version's field quality"},
		{Method: "POST", Pattern: PathDeployments, Role: RoleOperator, Summary: "deploy a model version"},
		{Method: "POST", Pattern: PathEnrollments, Role: RoleAdmin, Summary: "issue a one-time enrollment token"},
		{Method: "POST", Pattern: PathEnroll, Public: true, Summary: "exchange an enrollment token for credentials"},
		{Method: "POST", Pattern: PathTokens, Role: RoleAdmin, Summary: "create an API token"},
		{Method: "GET", Pattern: PathTokens, Role: RoleAdmin, Summary: "list API tokens"},
		{Method: "DELETE", Pattern: PathToken, Role: RoleAdmin, Summary: "revoke an API token"},
		{Method: "GET", Pattern: PathAudit, Role: RoleOperator, Summary: "read the audit log"},
		{Method: "POST", Pattern: PathRollouts, Role: RoleOperator, Summary: "create a rollout"},
		{Method: "GET", Pattern: PathRollouts, Role: RoleViewer, Summary: "list rollouts"},
		{Method: "GET", Pattern: PathRollout, Role: RoleViewer, Summary: "get a rollout"},
		{Method: "GET", Pattern: PathBrokerMosq, Role: RoleBroker, Summary: "mosquitto's password file and ACL"},
		{Method: "GET", Pattern: PathBrokerNATS, Role: RoleBroker, Summary: "a NATS cluster's authorization file"},
		{Method: "POST", Pattern: PathBrokerAuthn, Role: RoleBroker, Query: true, Summary: "a broker's login check (EMQX HTTP authentication)"},
		{Method: "POST", Pattern: PathBrokerAuthz, Role: RoleBroker, Query: true, Summary: "a broker's ACL check (EMQX HTTP authorization)"},
		{Method: "GET", Pattern: PathSites, Role: RoleViewer, Summary: "sites: sharing devices and WAN bytes per model version"},
		{Method: "POST", Pattern: PathSiteRotateKey, Role: RoleAdmin, Summary: "rotate a site's gossip key"},
	}
	for _, a := range RolloutActions() {
		rs = append(rs, Route{Method: "POST", Pattern: PathRolloutAction(a), Role: RoleOperator, Summary: string(a) + " a rollout"})
	}
	rs = append(rs, dataRoutes()...)    // field data capture and datasets (data.go)
	rs = append(rs, retrainRoutes()...) // retraining and lineage (retrain.go)
	return rs
}
