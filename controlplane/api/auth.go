package api

import "time"

// Role is what an API token may do. Each role includes the ones before it.
type Role string

// The API roles.
const (
	// RoleViewer reads: every GET endpoint except tokens, enrollments and
	// the audit log.
	RoleViewer Role = "viewer"
	// RoleOperator also deploys, uploads models, runs rollouts and reads
	// the audit log.
	RoleOperator Role = "operator"
	// RoleAdmin also manages devices, enrollments, credentials, tokens and keys.
	RoleAdmin Role = "admin"
	// RoleBroker reads only what an external broker needs to let devices
	// in (the token of `edgefleet broker sync`, which runs next to the
	// broker). It is outside the ranking: only admin includes it.
	RoleBroker Role = "broker"
)

func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Roles lists every role, the ranked ones in rank order.
func Roles() []Role { return []Role{RoleViewer, RoleOperator, RoleAdmin, RoleBroker} }

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", Errorf(ErrInvalid, "role %q: want viewer, operator, admin or broker", s)
	}
	return r, nil
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r.rank() > 0 || r == RoleBroker }

// Allows reports whether a token of role r may act where need is required.
// A broker token may only do what needs broker; admin may do that too.
func (r Role) Allows(need Role) bool {
	if r == RoleBroker || need == RoleBroker {
		return need == RoleBroker && (r == RoleBroker || r == RoleAdmin)
	}
	return r.rank() >= need.rank() && r.rank() > 0
}

// TokenPrefix starts every API token, so a leaked token is easy to
// recognise in logs and secret scanners.
const TokenPrefix = "ef_"

// InitialTokenName names the admin token generated at the first start.
const InitialTokenName = "initial"

// APIToken describes an API token; the secret is never stored or listed.
type APIToken struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Created time.Time `json:"created"`
	// CreatedBy is the name of the token that created it ("" for initial).
	CreatedBy string `json:"created_by,omitempty"`
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// CreatedToken is the answer to a token creation: the secret is shown once.
type CreatedToken struct {
	APIToken
	Token string `json:"token"`
}

// Enrollment token lifetimes and format.
const (
	DefaultEnrollmentTTL = time.Hour
	MinEnrollmentTTL     = time.Minute
	MaxEnrollmentTTL     = 7 * 24 * time.Hour
	// EnrollTokenPrefix starts every enrollment token (64 hex digits follow).
	EnrollTokenPrefix = "efe_"
)

// EnrollmentRequest is the body of POST /api/v1/enrollments.
type EnrollmentRequest struct {
	DeviceID string            `json:"device_id"`
	Labels   map[string]string `json:"labels,omitempty"`
	// TTL is how long the token may be used, as a Go duration ("1h");
	// default 1h, 1m..168h.
	TTL string `json:"ttl,omitempty"`
}

// Enrollment is the answer to POST /api/v1/enrollments: a one-time token,
// shown once; only its sha256 is stored.
type Enrollment struct {
	DeviceID string    `json:"device_id"`
	Token    string    `json:"token"`
	Expires  time.Time `json:"expires"`
	// Reenroll is true when the device exists: the exchange replaces its
	// credentials (the old password stops working).
	Reenroll bool `json:"reenroll,omitempty"`
}

// EnrollRequest is the body of POST /api/v1/enroll, sent by the agent.
type EnrollRequest struct {
	Token string `json:"token"`
}
