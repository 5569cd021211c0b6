package signing

import (
	"errors"
	"fmt"
	"strings"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Sentinel errors for branching with errors.Is. Returned errors wrap one of
// them with context, e.g. "verify manifest: ...: signature threshold not met".
var (
	// ErrUnsigned: the envelope carries no signatures at all.
	ErrUnsigned = errors.New("envelope is unsigned")
	// ErrWrongPayloadType: the envelope holds another kind of document.
	ErrWrongPayloadType = errors.New("wrong payload type")
	// ErrThreshold: not enough distinct valid signatures by the role's keys.
	// The concrete error is a *ThresholdError.
	ErrThreshold = errors.New("signature threshold not met")
	// ErrExpired: the bundle, manifest or desired state is past its expiry,
	// or the trusted bundle used to check it is.
	ErrExpired = errors.New("expired")
	// ErrRollback: a trust bundle whose version is not newer than the
	// trusted one.
	ErrRollback = errors.New("trust bundle version is not newer")
	// ErrMissingLink: a trust chain lacks the bundle versions between two
	// bundles (or between the trusted one and the first it carries), so
	// the newest cannot be reached by signatures; the error names them.
	ErrMissingLink = errors.New("trust chain link missing")
	// ErrNoTrust: no trust bundle has been accepted yet.
	ErrNoTrust = errors.New("no trust bundle accepted yet")
	// ErrMalformed: the envelope, document or key does not decode or breaks
	// a structural rule.
	ErrMalformed = errors.New("malformed")
	// ErrProtocolVersion: the document needs a newer protocol version than
	// this build speaks (efpb.ProtocolVersion); the agent must be upgraded.
	ErrProtocolVersion = errors.New("unsupported protocol version")
)

// ThresholdError says which role needed how many distinct valid signatures
// and how many it got. errors.Is(err, ErrThreshold) is true for it.
type ThresholdError struct {
	Role  efpb.Role
	Need  int // distinct valid signatures required
	Valid int // distinct valid signatures found
}

func (e *ThresholdError) Error() string {
	return fmt.Sprintf("%s role needs %d valid signature(s), got %d: %v", roleName(e.Role), e.Need, e.Valid, ErrThreshold)
}

// Is makes errors.Is(err, ErrThreshold) true.
func (e *ThresholdError) Is(target error) bool { return target == ErrThreshold }

// roleName turns efpb.Role_ROLE_RELEASE into "release".
func roleName(r efpb.Role) string {
	name, ok := efpb.Role_name[int32(r)]
	if !ok {
		return fmt.Sprintf("role(%d)", int32(r))
	}
	return strings.ToLower(strings.TrimPrefix(name, "ROLE_"))
}
