package signing

import (
	"bytes"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Bounds on a trust chain (the trust topic's efpb.TrustChain). Each is
// checked before what it bounds is read: the message size before it is
// decoded, the number of bundles and each envelope's size before any
// signature is checked.
const (
	// MaxTrustChainLinks bounds the bundles a chain carries before the
	// newest. A device further behind than that cannot catch up and must be
	// provisioned again; the control plane publishes only this many.
	MaxTrustChainLinks = 64
	// MaxTrustBundleSize bounds one encoded trust bundle envelope.
	MaxTrustBundleSize = 16 << 10
	// MaxTrustChainSize bounds the encoded chain message.
	MaxTrustChainSize = 256 << 10
)

// DecodeTrustChain decodes the message retained on the trust topic into its
// bundle envelopes, oldest first, the newest last. A bare Envelope (what a
// control plane before efpb.TrustChain publishes) decodes as a chain of one.
// It checks the bounds above, nothing else; UpdateTrustChain checks the rest.
func DecodeTrustChain(b []byte) ([]*efpb.Envelope, error) {
	const op = "decode trust chain"
	if len(b) > MaxTrustChainSize {
		return nil, fmt.Errorf("%s: %w: %d bytes, at most %d", op, ErrMalformed, len(b), MaxTrustChainSize)
	}
	tc := &efpb.TrustChain{}
	if err := proto.Unmarshal(b, tc); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", op, ErrMalformed, err)
	}
	if n := len(tc.Previous); n > MaxTrustChainLinks {
		return nil, fmt.Errorf("%s: %w: %d bundles before the newest, at most %d", op, ErrMalformed, n, MaxTrustChainLinks)
	}
	chain := make([]*efpb.Envelope, 0, len(tc.Previous)+1)
	chain = append(chain, tc.Previous...)
	chain = append(chain, &efpb.Envelope{PayloadType: tc.PayloadType, Payload: tc.Payload, Signatures: tc.Signatures})
	for i, env := range chain {
		if n := proto.Size(env); n > MaxTrustBundleSize {
			return nil, fmt.Errorf("%s: %w: bundle %d of %d has %d bytes, at most %d", op, ErrMalformed, i+1, len(chain), n, MaxTrustBundleSize)
		}
	}
	return chain, nil
}

// EncodeTrustChain encodes bundle envelopes, oldest first, as the trust
// topic's message: the newest in the envelope fields, the others in
// previous. It refuses what DecodeTrustChain would.
func EncodeTrustChain(chain []*efpb.Envelope) ([]byte, error) {
	const op = "encode trust chain"
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s: no bundles", op)
	}
	if n := len(chain) - 1; n > MaxTrustChainLinks {
		return nil, fmt.Errorf("%s: %d bundles before the newest, at most %d", op, n, MaxTrustChainLinks)
	}
	newest := chain[len(chain)-1]
	tc := &efpb.TrustChain{
		PayloadType: newest.GetPayloadType(),
		Payload:     newest.GetPayload(),
		Signatures:  newest.GetSignatures(),
		Previous:    chain[:len(chain)-1],
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if len(b) > MaxTrustChainSize {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", op, len(b), MaxTrustChainSize)
	}
	return b, nil
}

// link is one decoded, structurally checked bundle of a chain.
type link struct {
	env    *efpb.Envelope
	pae    []byte
	bundle *efpb.TrustBundle
	roles  map[efpb.Role]*roleSet
}

func parseLink(env *efpb.Envelope) (*link, error) {
	if err := checkEnvelope(env, efpb.PayloadTypeTrustBundle); err != nil {
		return nil, err
	}
	if n := proto.Size(env); n > MaxTrustBundleSize {
		return nil, fmt.Errorf("%w: envelope has %d bytes, at most %d", ErrMalformed, n, MaxTrustBundleSize)
	}
	b := &efpb.TrustBundle{}
	if err := proto.Unmarshal(env.Payload, b); err != nil {
		return nil, fmt.Errorf("%w: decode trust bundle: %v", ErrMalformed, err)
	}
	roles, err := parseBundle(b)
	if err != nil {
		return nil, err
	}
	return &link{env: env, pae: PAE(env.PayloadType, env.Payload), bundle: b, roles: roles}, nil
}

// UpdateTrustChain walks a chain of trust bundles, oldest first, from the
// bundle this Verifier trusts to the newest, as a TUF client walks root
// metadata, and trusts the newest. The rules:
//   - at most MaxTrustChainLinks bundles before the newest;
//   - each bundle is well formed (see parseBundle), and versions increase
//     by exactly one along the chain: a gap is ErrMissingLink, naming the
//     missing versions;
//   - bundles not newer than the trusted one are skipped; the newest equal
//     to the trusted one is a no-op success with the same payload bytes and
//     ErrRollback with other bytes, older is ErrRollback;
//   - the first bundle taken must be signed by the trusted root role (the
//     provisioned root key, threshold 1, before any bundle is trusted: then
//     the walk starts at the first bundle that key signs). Its version may
//     be more than one above the trusted version only if that root signed
//     it; else the versions in between are missing (ErrMissingLink);
//   - every following bundle is signed by its predecessor's root role;
//   - every bundle is signed by its own root role too;
//   - the newest has not expired at now. Bundles in between may have
//     expired: an expired bundle still authorises its successor.
//
// It changes nothing unless the whole walk succeeds. The returned error
// names the version that failed and the link it failed on.
func (v *Verifier) UpdateTrustChain(chain []*efpb.Envelope, now time.Time) (*efpb.TrustBundle, error) {
	const op = "update trust chain"
	if v.provisionErr != nil {
		return nil, fmt.Errorf("%s: %w", op, v.provisionErr)
	}
	switch n := len(chain); {
	case n == 0:
		return nil, fmt.Errorf("%s: %w: no bundles", op, ErrMalformed)
	case n-1 > MaxTrustChainLinks:
		return nil, fmt.Errorf("%s: %w: %d bundles before the newest, at most %d", op, ErrMalformed, n-1, MaxTrustChainLinks)
	}
	links := make([]*link, len(chain))
	for i, env := range chain {
		l, err := parseLink(env)
		if err != nil {
			return nil, fmt.Errorf("%s: bundle %d of %d: %w", op, i+1, len(chain), err)
		}
		if i > 0 {
			prev, ver := links[i-1].bundle.Version, l.bundle.Version
			if ver <= prev {
				return nil, fmt.Errorf("%s: %w: version %d follows version %d; versions must increase by one", op, ErrMalformed, ver, prev)
			}
			if ver != prev+1 {
				return nil, fmt.Errorf("%s: version %d follows version %d: %w: version %s", op, ver, prev, ErrMissingLink, versionRange(prev+1, ver-1))
			}
		}
		links[i] = l
	}
	newest := links[len(links)-1]

	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.cur
	start := 0
	if st.bundle != nil {
		trusted := st.bundle.Version
		switch {
		case newest.bundle.Version == trusted && bytes.Equal(newest.env.Payload, st.payload):
			return proto.Clone(st.bundle).(*efpb.TrustBundle), nil
		case newest.bundle.Version == trusted:
			return nil, fmt.Errorf("%s: %w: version %d is already trusted with different content", op, ErrRollback, trusted)
		case newest.bundle.Version < trusted:
			return nil, fmt.Errorf("%s: %w: newest version %d, trusted version is %d", op, ErrRollback, newest.bundle.Version, trusted)
		}
		for links[start].bundle.Version <= trusted {
			start++
		}
	} else {
		// Only the provisioned root key: start at the first bundle it
		// signed (a device provisioned before some root rotations starts
		// further back than one provisioned with the newest root).
		for start < len(links)-1 && verifyRole(links[start].env, links[start].pae, efpb.Role_ROLE_ROOT, st.roles[efpb.Role_ROLE_ROOT]) != nil {
			start++
		}
	}
	for _, l := range links[start:] {
		ver := l.bundle.Version
		if err := verifyRole(l.env, l.pae, efpb.Role_ROLE_ROOT, st.roles[efpb.Role_ROLE_ROOT]); err != nil {
			switch {
			case st.bundle == nil:
				return nil, fmt.Errorf("%s: version %d: not signed by the provisioned root key: %w", op, ver, err)
			case ver > st.bundle.Version+1:
				return nil, fmt.Errorf("%s: version %d does not link to trusted version %d: %w: version %s (the root of version %d did not sign version %d: %w)",
					op, ver, st.bundle.Version, ErrMissingLink, versionRange(st.bundle.Version+1, ver-1), st.bundle.Version, ver, err)
			default:
				return nil, fmt.Errorf("%s: version %d: not signed by the root of version %d: %w", op, ver, st.bundle.Version, err)
			}
		}
		if err := verifyRole(l.env, l.pae, efpb.Role_ROLE_ROOT, l.roles[efpb.Role_ROLE_ROOT]); err != nil {
			return nil, fmt.Errorf("%s: version %d: not signed by its own root: %w", op, ver, err)
		}
		st = newTrustState(l.roles, l.bundle, l.env)
	}
	if expired(newest.bundle.ExpiresUnix, now) {
		return nil, fmt.Errorf("%s: %w: trust bundle version %d expired at %s", op, ErrExpired, newest.bundle.Version, unixString(newest.bundle.ExpiresUnix))
	}
	v.cur = st
	return proto.Clone(st.bundle).(*efpb.TrustBundle), nil
}

// versionRange formats the versions from..to: "6" or "6 to 8".
func versionRange(from, to uint64) string {
	if from == to {
		return fmt.Sprint(from)
	}
	return fmt.Sprintf("%d to %d", from, to)
}
