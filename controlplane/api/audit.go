package api

import "time"

// AuditEntry is one audited event: an API call that may change state, an
// automatic rollout decision or a monitoring alert.
type AuditEntry struct {
	// Seq orders entries.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Actor is who acted: a token's name, "system" for automatic
	// decisions, or a device id.
	Actor string `json:"actor"`
	// Action names what was done, e.g. "api.POST /api/v1/deployments",
	// "rollout.pause", "rollout.gate_breached", "monitor.alert".
	Action string `json:"action"`
	// Target is what it was done to, e.g. "fraud@2.0.0" or a rollout id.
	Target string `json:"target,omitempty"`
	// Result is "ok" or the error a user saw.
	Result string `json:"result"`
	// Details carries the figures behind a decision.
	Details map[string]any `json:"details,omitempty"`
}

// AuditQuery are the query parameters of GET /api/v1/audit; zero fields
// select everything.
type AuditQuery struct {
	Since time.Time
	// Action is an exact action, or a prefix ending in "." ("rollout.").
	Action string
	Target string
	// Limit keeps the newest Limit entries (1..10000); 0 means 1000.
	Limit int
}
