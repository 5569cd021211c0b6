package signing

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// algorithmEd25519 is the only key algorithm a trust bundle may name.
const algorithmEd25519 = "ed25519"

// BundleOption adjusts a trust bundle built by NewTrustBundle.
type BundleOption func(*efpb.TrustBundle)

// WithThreshold makes role need k distinct valid signatures (k-of-n).
// SignTrustBundle and the Verifier refuse k larger than the role's key count.
func WithThreshold(role efpb.Role, k uint32) BundleOption {
	return func(b *efpb.TrustBundle) {
		for _, r := range b.Roles {
			if r.Role == role {
				r.Threshold = k
			}
		}
	}
}

// NewTrustBundle builds a trust bundle naming the root, release and control
// keys, each role with threshold 1 unless an option says otherwise. A key may
// appear in several roles; it is listed once in Keys.
func NewTrustBundle(version uint64, created, expires time.Time, root, release, control []ed25519.PublicKey, opts ...BundleOption) *efpb.TrustBundle {
	b := &efpb.TrustBundle{
		ProtocolVersion: efpb.ProtocolVersion1, // the bundle is unchanged since version 1: old agents read it
		Version:         version,
		CreatedUnix:     created.Unix(),
		ExpiresUnix:     expires.Unix(),
	}
	listed := make(map[string]bool)
	addRole := func(role efpb.Role, pubs []ed25519.PublicKey) {
		rk := &efpb.RoleKeys{Role: role, Threshold: 1}
		for _, pub := range pubs {
			id := KeyID(pub)
			rk.Keyids = append(rk.Keyids, id)
			if !listed[id] {
				listed[id] = true
				b.Keys = append(b.Keys, &efpb.PublicKey{
					Keyid:     id,
					Algorithm: algorithmEd25519,
					PublicKey: append([]byte(nil), pub...),
				})
			}
		}
		b.Roles = append(b.Roles, rk)
	}
	addRole(efpb.Role_ROLE_ROOT, root)
	addRole(efpb.Role_ROLE_RELEASE, release)
	addRole(efpb.Role_ROLE_CONTROL, control)
	for _, o := range opts {
		o(b)
	}
	return b
}

// SignTrustBundle checks that b is a bundle a Verifier would accept (as far
// as its own content goes) and signs it with the root keys. For a rotation,
// pass the previous bundle's root keys and the new ones.
func SignTrustBundle(b *efpb.TrustBundle, rootKeys ...*KeyPair) (*efpb.Envelope, error) {
	if _, err := parseBundle(b); err != nil {
		return nil, fmt.Errorf("sign trust bundle: %w", err)
	}
	env, err := SignMessage(efpb.PayloadTypeTrustBundle, b, rootKeys...)
	if err != nil {
		return nil, fmt.Errorf("sign trust bundle: %w", err)
	}
	return env, nil
}

// roleSet is one role's keys and threshold, ready for verification.
type roleSet struct {
	keys      map[string]ed25519.PublicKey // keyid → key; every key is 32 bytes
	threshold int
}

// parseBundle checks the structural rules of a trust bundle and returns its
// role sets. Rules: protocol version known; version ≥ 1; expires_unix set and
// not before created_unix; every key ed25519, 32 bytes, keyid matching the
// key, listed once; root, release and control roles each present once, with
// at least one key, only listed keyids, no keyid twice, and a threshold no
// larger than the key count (0 means 1). Roles this build does not know are
// ignored (they grant nothing); ROLE_UNSPECIFIED is refused.
func parseBundle(b *efpb.TrustBundle) (map[efpb.Role]*roleSet, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: trust bundle is nil", ErrMalformed)
	}
	if b.ProtocolVersion > efpb.ProtocolVersion {
		return nil, fmt.Errorf("%w: trust bundle protocol_version %d, this build speaks %d", ErrProtocolVersion, b.ProtocolVersion, efpb.ProtocolVersion)
	}
	if b.Version == 0 {
		return nil, fmt.Errorf("%w: trust bundle version must be at least 1", ErrMalformed)
	}
	if b.ExpiresUnix == 0 {
		return nil, fmt.Errorf("%w: trust bundle expires_unix is not set", ErrMalformed)
	}
	if b.ExpiresUnix < b.CreatedUnix {
		return nil, fmt.Errorf("%w: trust bundle expires_unix %d is before created_unix %d", ErrMalformed, b.ExpiresUnix, b.CreatedUnix)
	}
	keys := make(map[string]ed25519.PublicKey, len(b.Keys))
	for i, k := range b.Keys {
		if k.GetAlgorithm() != algorithmEd25519 {
			return nil, fmt.Errorf("%w: trust bundle keys[%d]: algorithm %q, want %q", ErrMalformed, i, k.GetAlgorithm(), algorithmEd25519)
		}
		if len(k.GetPublicKey()) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: trust bundle keys[%d]: public_key has %d bytes, want %d", ErrMalformed, i, len(k.GetPublicKey()), ed25519.PublicKeySize)
		}
		pub := ed25519.PublicKey(append([]byte(nil), k.GetPublicKey()...))
		if k.GetKeyid() != KeyID(pub) {
			return nil, fmt.Errorf("%w: trust bundle keys[%d]: keyid %q does not match the public key", ErrMalformed, i, k.GetKeyid())
		}
		if _, dup := keys[k.GetKeyid()]; dup {
			return nil, fmt.Errorf("%w: trust bundle keys[%d]: keyid %s listed twice", ErrMalformed, i, k.GetKeyid())
		}
		keys[k.GetKeyid()] = pub
	}
	roles := make(map[efpb.Role]*roleSet, 3)
	for i, r := range b.Roles {
		role := r.GetRole()
		switch role {
		case efpb.Role_ROLE_UNSPECIFIED:
			return nil, fmt.Errorf("%w: trust bundle roles[%d]: role is unspecified", ErrMalformed, i)
		case efpb.Role_ROLE_ROOT, efpb.Role_ROLE_RELEASE, efpb.Role_ROLE_CONTROL:
		default:
			continue // a role from a newer protocol; grants nothing here
		}
		if _, dup := roles[role]; dup {
			return nil, fmt.Errorf("%w: trust bundle roles[%d]: %s role listed twice", ErrMalformed, i, roleName(role))
		}
		if len(r.GetKeyids()) == 0 {
			return nil, fmt.Errorf("%w: trust bundle %s role has no keys", ErrMalformed, roleName(role))
		}
		// Compare in uint64 before converting: on 32-bit devices a large
		// uint32 threshold would turn negative as an int and always be met.
		if uint64(r.GetThreshold()) > uint64(len(r.GetKeyids())) {
			return nil, fmt.Errorf("%w: trust bundle %s role threshold %d exceeds its %d key(s)", ErrMalformed, roleName(role), r.GetThreshold(), len(r.GetKeyids()))
		}
		rs := &roleSet{keys: make(map[string]ed25519.PublicKey, len(r.GetKeyids())), threshold: int(r.GetThreshold())}
		for _, id := range r.GetKeyids() {
			pub, ok := keys[id]
			if !ok {
				return nil, fmt.Errorf("%w: trust bundle %s role names keyid %q that is not in keys", ErrMalformed, roleName(role), id)
			}
			if _, dup := rs.keys[id]; dup {
				return nil, fmt.Errorf("%w: trust bundle %s role names keyid %s twice", ErrMalformed, roleName(role), id)
			}
			rs.keys[id] = pub
		}
		if rs.threshold == 0 {
			rs.threshold = 1
		}
		roles[role] = rs
	}
	for _, role := range []efpb.Role{efpb.Role_ROLE_ROOT, efpb.Role_ROLE_RELEASE, efpb.Role_ROLE_CONTROL} {
		if roles[role] == nil {
			return nil, fmt.Errorf("%w: trust bundle has no %s role", ErrMalformed, roleName(role))
		}
	}
	return roles, nil
}
