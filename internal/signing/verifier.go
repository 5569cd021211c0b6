package signing

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Verifier holds what an agent trusts: the root key it was provisioned with
// and, once accepted, the newest trust bundle. It checks trust bundle
// updates, model manifests and desired-state documents against that.
// A Verifier is safe for concurrent use.
type Verifier struct {
	// provisionErr is set once by NewVerifier when the provisioned root key
	// is unusable; every check then fails with it. Immutable.
	provisionErr error

	// mu guards cur (the pointer). The trustState it points to is never
	// modified, so readers copy the pointer under RLock and verify without
	// holding the lock; updates hold the write lock from check to install so
	// two updates cannot both pass against the same old state.
	mu  sync.RWMutex
	cur *trustState

	// tickets remembers member tickets accepted under cur (see
	// VerifyMemberTicket).
	tickets ticketMemo
}

// trustState is one immutable generation of trust.
type trustState struct {
	roles   map[efpb.Role]*roleSet
	bundle  *efpb.TrustBundle // nil until a bundle is accepted
	env     *efpb.Envelope    // the envelope bundle came in
	payload []byte            // env.Payload, for the equal-version check
}

// NewVerifier returns a Verifier that trusts only root: the first trust
// bundle must be signed by it (threshold 1). Until a bundle is accepted,
// manifests and desired state are refused with ErrNoTrust.
func NewVerifier(root ed25519.PublicKey) *Verifier {
	v := &Verifier{cur: &trustState{roles: map[efpb.Role]*roleSet{}}}
	if len(root) != ed25519.PublicKeySize {
		v.provisionErr = fmt.Errorf("%w: provisioned root key has %d bytes, want %d", ErrMalformed, len(root), ed25519.PublicKeySize)
		return v
	}
	pub := ed25519.PublicKey(append([]byte(nil), root...))
	v.cur.roles[efpb.Role_ROLE_ROOT] = &roleSet{
		keys:      map[string]ed25519.PublicKey{KeyID(pub): pub},
		threshold: 1,
	}
	return v
}

// Bundle returns a copy of the newest accepted trust bundle, or nil.
func (v *Verifier) Bundle() *efpb.TrustBundle {
	st := v.state()
	if st.bundle == nil {
		return nil
	}
	return proto.Clone(st.bundle).(*efpb.TrustBundle)
}

// Version is the version of the newest accepted trust bundle, 0 before one
// is accepted.
func (v *Verifier) Version() uint64 { return v.state().bundle.GetVersion() }

// BundleEnvelope returns a copy of the signed envelope of the newest accepted
// trust bundle, or nil, so the caller can persist it and hand it to
// RestoreTrustBundle after a restart.
func (v *Verifier) BundleEnvelope() *efpb.Envelope {
	st := v.state()
	if st.env == nil {
		return nil
	}
	return proto.Clone(st.env).(*efpb.Envelope)
}

func (v *Verifier) state() *trustState {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cur
}

// UpdateTrustBundle accepts a new trust bundle and returns it. The rules
// (TUF's root update, kept small):
//   - the payload type is efpb.PayloadTypeTrustBundle;
//   - it carries enough valid signatures by the root role of the currently
//     trusted bundle (at first: the provisioned root key, threshold 1);
//   - it decodes and is structurally sound (see parseBundle);
//   - its version is greater than the trusted one; the same version with the
//     same payload bytes is a no-op success, with other bytes ErrRollback;
//   - it carries enough valid signatures by its own root role too. This is
//     always checked; it only differs from the first check when the bundle
//     rotates root keys or raises the root threshold;
//   - it has not expired at now. The trusted bundle may have expired: an
//     expired bundle still authorises its successor.
func (v *Verifier) UpdateTrustBundle(env *efpb.Envelope, now time.Time) (*efpb.TrustBundle, error) {
	const op = "update trust bundle"
	if v.provisionErr != nil {
		return nil, fmt.Errorf("%s: %w", op, v.provisionErr)
	}
	if err := checkEnvelope(env, efpb.PayloadTypeTrustBundle); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	cur := v.cur
	pae := PAE(env.PayloadType, env.Payload)
	if err := verifyRole(env, pae, efpb.Role_ROLE_ROOT, cur.roles[efpb.Role_ROLE_ROOT]); err != nil {
		return nil, fmt.Errorf("%s: trusted root: %w", op, err)
	}
	b := &efpb.TrustBundle{}
	if err := proto.Unmarshal(env.Payload, b); err != nil {
		return nil, fmt.Errorf("%s: %w: decode trust bundle: %v", op, ErrMalformed, err)
	}
	roles, err := parseBundle(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	curVersion := cur.bundle.GetVersion()
	sameVersion := cur.bundle != nil && b.Version == curVersion
	switch {
	case sameVersion && !bytes.Equal(env.Payload, cur.payload):
		return nil, fmt.Errorf("%s: %w: version %d is already trusted with different content", op, ErrRollback, b.Version)
	case !sameVersion && b.Version <= curVersion:
		return nil, fmt.Errorf("%s: %w: version %d, trusted version is %d", op, ErrRollback, b.Version, curVersion)
	}
	if err := verifyRole(env, pae, efpb.Role_ROLE_ROOT, roles[efpb.Role_ROLE_ROOT]); err != nil {
		return nil, fmt.Errorf("%s: new root: %w", op, err)
	}
	if expired(b.ExpiresUnix, now) {
		return nil, fmt.Errorf("%s: %w: trust bundle version %d expired at %s", op, ErrExpired, b.Version, unixString(b.ExpiresUnix))
	}
	if sameVersion {
		return proto.Clone(cur.bundle).(*efpb.TrustBundle), nil
	}
	v.cur = newTrustState(roles, b, env)
	return proto.Clone(b).(*efpb.TrustBundle), nil
}

// RestoreTrustBundle reinstalls a bundle envelope that this Verifier (or an
// earlier one on the same device) accepted and the caller persisted, e.g.
// from BundleEnvelope. After root rotations the provisioned root key can no
// longer verify the newest bundle, so this does not ask for it: it trusts
// local storage, and checks only that the envelope is well formed and signed
// by its own root role, and that it is not older than the trusted bundle.
// Expiry is not checked (an expired bundle still authorises its successor;
// VerifyManifest and VerifyDesired refuse while it is expired). Never call it
// with bytes that came over the network. A device re-provisioned with a
// different root key must discard its persisted bundle.
func (v *Verifier) RestoreTrustBundle(env *efpb.Envelope) (*efpb.TrustBundle, error) {
	const op = "restore trust bundle"
	if v.provisionErr != nil {
		return nil, fmt.Errorf("%s: %w", op, v.provisionErr)
	}
	if err := checkEnvelope(env, efpb.PayloadTypeTrustBundle); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	b := &efpb.TrustBundle{}
	if err := proto.Unmarshal(env.Payload, b); err != nil {
		return nil, fmt.Errorf("%s: %w: decode trust bundle: %v", op, ErrMalformed, err)
	}
	roles, err := parseBundle(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := verifyRole(env, PAE(env.PayloadType, env.Payload), efpb.Role_ROLE_ROOT, roles[efpb.Role_ROLE_ROOT]); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	cur := v.cur
	if cur.bundle != nil {
		switch {
		case b.Version == cur.bundle.Version && bytes.Equal(env.Payload, cur.payload):
			return proto.Clone(cur.bundle).(*efpb.TrustBundle), nil
		case b.Version <= cur.bundle.Version:
			return nil, fmt.Errorf("%s: %w: version %d, trusted version is %d", op, ErrRollback, b.Version, cur.bundle.Version)
		}
	}
	v.cur = newTrustState(roles, b, env)
	return proto.Clone(b).(*efpb.TrustBundle), nil
}

func newTrustState(roles map[efpb.Role]*roleSet, b *efpb.TrustBundle, env *efpb.Envelope) *trustState {
	env = proto.Clone(env).(*efpb.Envelope)
	return &trustState{roles: roles, bundle: b, env: env, payload: env.Payload}
}

// VerifyManifest checks a signed model manifest and returns it decoded:
// payload type efpb.PayloadTypeManifest; a trust bundle accepted and not
// expired at now; enough valid signatures by the release role; decodes;
// expires_unix set and not passed at now; protocol_version not newer than
// efpb.ProtocolVersion. It does not check the manifest's content (names,
// sizes, chunk hashes): that is transfer.ValidateManifest.
func (v *Verifier) VerifyManifest(env *efpb.Envelope, now time.Time) (*efpb.Manifest, error) {
	const op = "verify manifest"
	m := &efpb.Manifest{}
	if err := v.verifyDocument(env, now, efpb.PayloadTypeManifest, efpb.Role_ROLE_RELEASE, m); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkDocument("manifest", m.ProtocolVersion, m.ExpiresUnix, now); err != nil {
		return nil, fmt.Errorf("%s: %s %s: %w", op, m.Name, m.Version, err)
	}
	return m, nil
}

// VerifyDesired checks a signed desired-state document like VerifyManifest,
// but with payload type efpb.PayloadTypeDesired and the control role. The
// generation (replay) check is the caller's: it alone knows the highest
// generation it accepted.
func (v *Verifier) VerifyDesired(env *efpb.Envelope, now time.Time) (*efpb.DesiredState, error) {
	const op = "verify desired state"
	d := &efpb.DesiredState{}
	if err := v.verifyDocument(env, now, efpb.PayloadTypeDesired, efpb.Role_ROLE_CONTROL, d); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkDocument("desired state", d.ProtocolVersion, d.ExpiresUnix, now); err != nil {
		return nil, fmt.Errorf("%s: device %s generation %d: %w", op, d.DeviceId, d.Generation, err)
	}
	return d, nil
}

// VerifySitePeers checks a signed site document (payload type
// efpb.PayloadTypeSitePeers, control role) like VerifyDesired. The version
// (replay) check is the caller's, as is the device id.
func (v *Verifier) VerifySitePeers(env *efpb.Envelope, now time.Time) (*efpb.SitePeers, error) {
	const op = "verify site document"
	d := &efpb.SitePeers{}
	if err := v.verifyDocument(env, now, efpb.PayloadTypeSitePeers, efpb.Role_ROLE_CONTROL, d); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkDocument("site document", d.ProtocolVersion, d.ExpiresUnix, now); err != nil {
		return nil, fmt.Errorf("%s: device %s version %d: %w", op, d.DeviceId, d.Version, err)
	}
	return d, nil
}

// VerifyMemberTicket checks a member ticket (payload type
// efpb.PayloadTypeMemberTicket, control role) like VerifyDesired. Whether
// it names the member that shows it and the right site is the caller's
// check.
//
// Every member of a site shows its ticket in each alive message and each
// push/pull of the site's gossip, so the same few tickets come back
// constantly (at a site of 50, a member's push/pull carries 50). A ticket
// whose exact signed bytes were accepted under the trust bundle still in
// force is not checked against its signatures again; its expiry and the
// bundle's are, on every call. A new trust bundle forgets them all.
func (v *Verifier) VerifyMemberTicket(env *efpb.Envelope, now time.Time) (*efpb.MemberTicket, error) {
	const op = "verify member ticket"
	st := v.state()
	key := ticketKey(env)
	m := v.tickets.get(st, key)
	remembered := m != nil
	if !remembered {
		m = &efpb.MemberTicket{}
		if err := v.verifyDocumentIn(st, env, now, efpb.PayloadTypeMemberTicket, efpb.Role_ROLE_CONTROL, m); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	} else if expired(st.bundle.ExpiresUnix, now) {
		return nil, fmt.Errorf("%s: %w: trust bundle version %d expired at %s", op, ErrExpired, st.bundle.Version, unixString(st.bundle.ExpiresUnix))
	}
	if err := checkDocument("member ticket", m.ProtocolVersion, m.ExpiresUnix, now); err != nil {
		return nil, fmt.Errorf("%s: device %s: %w", op, m.DeviceId, err)
	}
	if !remembered {
		v.tickets.put(st, key, m)
	}
	return proto.Clone(m).(*efpb.MemberTicket), nil
}

// verifyDocument checks env against role of the trusted bundle and decodes
// its payload into m. The payload is decoded only after the signatures check.
func (v *Verifier) verifyDocument(env *efpb.Envelope, now time.Time, payloadType string, role efpb.Role, m proto.Message) error {
	return v.verifyDocumentIn(v.state(), env, now, payloadType, role, m)
}

// verifyDocumentIn is verifyDocument under the trust state st.
func (v *Verifier) verifyDocumentIn(st *trustState, env *efpb.Envelope, now time.Time, payloadType string, role efpb.Role, m proto.Message) error {
	if v.provisionErr != nil {
		return v.provisionErr
	}
	if err := checkEnvelope(env, payloadType); err != nil {
		return err
	}
	if st.bundle == nil {
		return ErrNoTrust
	}
	if expired(st.bundle.ExpiresUnix, now) {
		return fmt.Errorf("%w: trust bundle version %d expired at %s", ErrExpired, st.bundle.Version, unixString(st.bundle.ExpiresUnix))
	}
	if err := verifyRole(env, PAE(env.PayloadType, env.Payload), role, st.roles[role]); err != nil {
		return err
	}
	if err := proto.Unmarshal(env.Payload, m); err != nil {
		return fmt.Errorf("%w: decode payload: %v", ErrMalformed, err)
	}
	return nil
}

// checkDocument applies the checks shared by manifests and desired state.
func checkDocument(what string, protocolVersion uint32, expiresUnix int64, now time.Time) error {
	if protocolVersion > efpb.ProtocolVersion {
		return fmt.Errorf("%w: %s protocol_version %d, this build speaks %d", ErrProtocolVersion, what, protocolVersion, efpb.ProtocolVersion)
	}
	if expiresUnix == 0 {
		return fmt.Errorf("%w: %s expires_unix is not set", ErrMalformed, what)
	}
	if expired(expiresUnix, now) {
		return fmt.Errorf("%w: %s expired at %s", ErrExpired, what, unixString(expiresUnix))
	}
	return nil
}

// checkEnvelope checks what can be checked before any signature.
func checkEnvelope(env *efpb.Envelope, payloadType string) error {
	if env == nil {
		return fmt.Errorf("%w: envelope is nil", ErrMalformed)
	}
	if env.PayloadType != payloadType {
		return fmt.Errorf("%w: %q, want %q", ErrWrongPayloadType, env.PayloadType, payloadType)
	}
	if len(env.Signatures) == 0 {
		return ErrUnsigned
	}
	if len(env.Signatures) > MaxSignatures {
		return fmt.Errorf("%w: %d signatures, at most %d allowed", ErrMalformed, len(env.Signatures), MaxSignatures)
	}
	return nil
}

// verifyRole counts distinct keyids of rs with a valid signature over pae.
// Signatures by other keys are ignored; a keyid counts once however often it
// signs. Fewer than the threshold is a *ThresholdError.
func verifyRole(env *efpb.Envelope, pae []byte, role efpb.Role, rs *roleSet) error {
	if rs == nil || len(rs.keys) == 0 {
		return &ThresholdError{Role: role, Need: 1}
	}
	counted := make(map[string]bool, len(rs.keys))
	for _, s := range env.Signatures {
		id := s.GetKeyid()
		pub, ok := rs.keys[id]
		if !ok || counted[id] {
			continue
		}
		if ed25519.Verify(pub, pae, s.GetSig()) {
			counted[id] = true
		}
	}
	if len(counted) < rs.threshold {
		return &ThresholdError{Role: role, Need: rs.threshold, Valid: len(counted)}
	}
	return nil
}

// expired reports whether now is at or past expiresUnix.
func expired(expiresUnix int64, now time.Time) bool {
	return now.Unix() >= expiresUnix
}

func unixString(sec int64) string {
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}
