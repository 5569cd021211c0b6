package keys

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/atomicfile"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Rotate replaces the key of role in a keys directory (as written by
// Init) and writes the next trust bundle version, valid
// from now for ttl, signed by the current root key (and the new one when
// role is root). It checks that an agent trusting the current bundle
// accepts the new one before anything is replaced. The old private key is
// kept as <file>.v<old version>, and the old bundle as
// trust.bundle.v<old version> (ArchivedBundleFile): the bundles form the
// chain a device that missed some rotations walks to the newest.
func Rotate(dir string, role efpb.Role, now time.Time, ttl time.Duration) (*efpb.TrustBundle, error) {
	const op = "rotate keys"
	rootPath := filepath.Join(dir, RootKeyFile)
	root, err := signing.ReadPrivateKeyFile(rootPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %s is not in %s: run this where the root key is kept (offline)", op, RootKeyFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	bundlePath := filepath.Join(dir, TrustBundleFile)
	raw, err := readFileMax(bundlePath, maxTrustBundleFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	oldEnv := &efpb.Envelope{}
	if err := proto.Unmarshal(raw, oldEnv); err != nil {
		return nil, fmt.Errorf("%s: %s is not a trust bundle envelope: %w", op, bundlePath, err)
	}
	// The current bundle must be one the current root signed (it may have
	// expired: rotating is how a frozen fleet recovers).
	check := signing.NewVerifier(root.Public)
	old, err := check.RestoreTrustBundle(oldEnv)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", op, bundlePath, err)
	}
	keys := map[string]ed25519.PublicKey{}
	for _, k := range old.Keys {
		keys[k.Keyid] = ed25519.PublicKey(k.PublicKey)
	}
	current := map[efpb.Role][]ed25519.PublicKey{}
	thresholds := map[efpb.Role]uint32{}
	for _, rk := range old.Roles {
		thresholds[rk.Role] = rk.Threshold
		for _, id := range rk.Keyids {
			current[rk.Role] = append(current[rk.Role], keys[id])
		}
	}
	fresh, err := signing.GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	current[role] = []ed25519.PublicKey{fresh.Public}
	thresholds[role] = 1
	var opts []signing.BundleOption
	for r, k := range thresholds {
		if k > 1 {
			opts = append(opts, signing.WithThreshold(r, k))
		}
	}
	next := signing.NewTrustBundle(old.Version+1, now, now.Add(ttl),
		current[efpb.Role_ROLE_ROOT], current[efpb.Role_ROLE_RELEASE], current[efpb.Role_ROLE_CONTROL], opts...)
	signers := []*signing.KeyPair{root}
	if role == efpb.Role_ROLE_ROOT {
		signers = append(signers, fresh)
	}
	env, err := signing.SignTrustBundle(next, signers...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if _, err := check.UpdateTrustBundle(env, now); err != nil {
		return nil, fmt.Errorf("%s: an agent trusting version %d would refuse the new bundle: %w", op, old.Version, err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}

	file := map[efpb.Role]string{
		efpb.Role_ROLE_ROOT:    RootKeyFile,
		efpb.Role_ROLE_RELEASE: ReleaseKeyFile,
		efpb.Role_ROLE_CONTROL: ControlKeyFile,
	}[role]
	keyPath := filepath.Join(dir, file)
	archived := fmt.Sprintf("%s.v%d", keyPath, old.Version)
	if _, err := os.Lstat(archived); err == nil {
		return nil, fmt.Errorf("%s: %s exists; move it away first", op, archived)
	}
	// The old bundle is kept first: it is a link of the chain, and a crash
	// after this leaves the directory as it was plus a copy (an identical
	// copy from an interrupted run is fine).
	bundleArchive := filepath.Join(dir, ArchivedBundleFile(old.Version))
	switch prev, err := readFileMax(bundleArchive, maxTrustBundleFile); {
	case err == nil && !bytes.Equal(prev, raw):
		return nil, fmt.Errorf("%s: %s exists with other content than %s version %d; move it away first", op, bundleArchive, TrustBundleFile, old.Version)
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if err := atomicfile.Write(bundleArchive, raw, 0o644); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	default:
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	// New files first under temporary names, then renames: a crash leaves
	// either the old set or the new one usable (the bundle goes last).
	if err := signing.WritePrivateKeyFile(keyPath+".new", fresh); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := atomicfile.Write(bundlePath+".new", envBytes, 0o644); err != nil {
		_ = os.Remove(keyPath + ".new")
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := os.Rename(keyPath, archived); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := os.Rename(keyPath+".new", keyPath); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if role == efpb.Role_ROLE_ROOT {
		if err := signing.WritePublicKeyFile(filepath.Join(dir, RootPubFile), fresh.Public); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
	}
	if err := os.Rename(bundlePath+".new", bundlePath); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return next, nil
}

// SignedBy reports whether a stored envelope carries a signature by keyID.
// After a key rotation, documents signed by the rotated-out key are
// re-signed (see renew): agents following the new trust bundle refuse them.
func SignedBy(envBytes []byte, keyID string) bool {
	env := &efpb.Envelope{}
	if proto.Unmarshal(envBytes, env) != nil {
		return false
	}
	for _, sig := range env.Signatures {
		if sig.Keyid == keyID {
			return true
		}
	}
	return false
}
