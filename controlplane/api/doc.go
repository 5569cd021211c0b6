// Package api is the control plane's REST contract: the wire types of every
// request and answer (views, not storage records), the state names devices
// and rollouts report, the route table with each route's role, and the error
// kinds every status code maps to. It depends on no server code. Imported by
// agent, controlplane/..., fleet-sim/... and internal/fleettest.
package api
