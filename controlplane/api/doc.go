// Package api is the control plane's REST contract: the wire types of every
// request and answer (views, not storage records), the state names devices
// and rollouts report, the route table with each route's role, and the
// error kinds every status code maps to. It depends on no server code:
// the control plane, its typed client (controlplane/client), the CLI,
// fleet-sim, the demo and the agent's enrollment all import it.
package api
