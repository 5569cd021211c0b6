// Package keys manages the fleet's signing keys on disk: it creates them
// (Init), rotates one role's key into the next root-signed trust bundle
// (Rotate), and loads the set the control plane signs and publishes with
// (Load). Imported by controlplane, controlplane/cli (keys commands),
// controlplane/fleet and controlplane/models.
package keys

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/atomicfile"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Files of a keys directory (DataDir/keys for serve, any directory for
// `edgefleet keys init`).
const (
	RootKeyFile     = "root.key"     // PKCS#8 PEM, 0600; belongs offline
	RootPubFile     = "root.pub"     // PKIX PEM; what devices are provisioned with
	ReleaseKeyFile  = "release.key"  // PKCS#8 PEM, 0600; signs manifests
	ControlKeyFile  = "control.key"  // PKCS#8 PEM, 0600; signs desired states
	TrustBundleFile = "trust.bundle" // root-signed envelope, protobuf bytes
)

// DefaultTrustBundleTTL is how long a generated trust bundle is valid.
const DefaultTrustBundleTTL = 2 * 365 * 24 * time.Hour

// maxTrustBundleFile bounds the trust bundle file read at start.
const maxTrustBundleFile = 1 << 20

// Init creates a fleet's keys in dir: root, release and control key
// pairs, root.pub, and trust.bundle (version 1, signed by root, valid from
// now for ttl; ttl <= 0 means DefaultTrustBundleTTL). It refuses to replace
// any existing key file. In production run it on an offline machine and
// copy only release.key, control.key, root.pub and trust.bundle to the
// control plane's DataDir/keys; root.key stays offline.
func Init(dir string, now time.Time, ttl time.Duration) (rootPub ed25519.PublicKey, err error) {
	if ttl <= 0 {
		ttl = DefaultTrustBundleTTL
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init keys: %w", err)
	}
	for _, name := range []string{RootKeyFile, RootPubFile, ReleaseKeyFile, ControlKeyFile, TrustBundleFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return nil, fmt.Errorf("init keys: %s already exists in %s; refusing to replace keys", name, dir)
		}
	}
	var pairs [3]*signing.KeyPair
	for i := range pairs {
		if pairs[i], err = signing.GenerateKey(nil); err != nil {
			return nil, fmt.Errorf("init keys: %w", err)
		}
	}
	root, release, control := pairs[0], pairs[1], pairs[2]
	b := signing.NewTrustBundle(1, now, now.Add(ttl),
		[]ed25519.PublicKey{root.Public}, []ed25519.PublicKey{release.Public}, []ed25519.PublicKey{control.Public})
	env, err := signing.SignTrustBundle(b, root)
	if err != nil {
		return nil, fmt.Errorf("init keys: %w", err)
	}
	envBytes, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("init keys: encode trust bundle: %w", err)
	}
	// The trust bundle goes last: its presence marks a complete directory.
	for _, f := range []struct {
		name string
		key  *signing.KeyPair
	}{{RootKeyFile, root}, {ReleaseKeyFile, release}, {ControlKeyFile, control}} {
		if err := signing.WritePrivateKeyFile(filepath.Join(dir, f.name), f.key); err != nil {
			return nil, fmt.Errorf("init keys: %w", err)
		}
	}
	if err := signing.WritePublicKeyFile(filepath.Join(dir, RootPubFile), root.Public); err != nil {
		return nil, fmt.Errorf("init keys: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, TrustBundleFile), envBytes, 0o644); err != nil {
		return nil, fmt.Errorf("init keys: %w", err)
	}
	return root.Public, nil
}

// Set is what the control plane signs and publishes with. Immutable after
// Load.
type Set struct {
	RootPub ed25519.PublicKey
	RootPEM string
	Release *signing.KeyPair
	Control *signing.KeyPair
	// BundleBytes is the trust bundle envelope as published; Bundle is its
	// payload.
	BundleBytes []byte
	Bundle      *efpb.TrustBundle
	// Verifier trusts RootPub and the bundle; the control plane checks what
	// it signs with it before publishing, as an agent would.
	Verifier *signing.Verifier
}

// Load reads dir, generating a complete key set first when dir holds no
// keys at all (and warning that root.key belongs offline).
func Load(dir string, now time.Time, log *slog.Logger) (*Set, error) {
	present := map[string]bool{}
	for _, name := range []string{RootKeyFile, RootPubFile, ReleaseKeyFile, ControlKeyFile, TrustBundleFile} {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			present[name] = true
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("load keys: %w", err)
		}
	}
	if len(present) == 0 {
		if _, err := Init(dir, now, DefaultTrustBundleTTL); err != nil {
			return nil, fmt.Errorf("load keys: %w", err)
		}
		log.Warn("generated a new fleet key set; root.key belongs offline: move it off this machine once devices are provisioned (edgefleet keys init creates keys on another machine)",
			"dir", dir, "root_key", filepath.Join(dir, RootKeyFile))
	} else {
		var missing []string
		for _, name := range []string{ReleaseKeyFile, ControlKeyFile, TrustBundleFile} {
			if !present[name] {
				missing = append(missing, name)
			}
		}
		if !present[RootKeyFile] && !present[RootPubFile] {
			missing = append(missing, RootPubFile+" (or "+RootKeyFile+")")
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("load keys: %s is incomplete: missing %s (copy them from where `edgefleet keys init` ran)", dir, strings.Join(missing, ", "))
		}
	}

	ks := &Set{}
	var err error
	if present[RootKeyFile] || len(present) == 0 {
		root, err := signing.ReadPrivateKeyFile(filepath.Join(dir, RootKeyFile))
		if err != nil {
			return nil, fmt.Errorf("load keys: %w", err)
		}
		ks.RootPub = root.Public
	} else if ks.RootPub, err = signing.ReadPublicKeyFile(filepath.Join(dir, RootPubFile)); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	ks.RootPEM = string(signing.EncodePublicKeyPEM(ks.RootPub))
	if ks.Release, err = signing.ReadPrivateKeyFile(filepath.Join(dir, ReleaseKeyFile)); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	if ks.Control, err = signing.ReadPrivateKeyFile(filepath.Join(dir, ControlKeyFile)); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	if ks.BundleBytes, err = readFileMax(filepath.Join(dir, TrustBundleFile), maxTrustBundleFile); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(ks.BundleBytes, env); err != nil {
		return nil, fmt.Errorf("load keys: %s is not a trust bundle envelope: %w", TrustBundleFile, err)
	}
	ks.Verifier = signing.NewVerifier(ks.RootPub)
	if ks.Bundle, err = ks.Verifier.UpdateTrustBundle(env, now); err != nil {
		return nil, fmt.Errorf("load keys: %s does not verify with the root public key: %w", TrustBundleFile, err)
	}
	if err := ks.checkRole(efpb.Role_ROLE_RELEASE, ks.Release, ReleaseKeyFile); err != nil {
		return nil, err
	}
	if err := ks.checkRole(efpb.Role_ROLE_CONTROL, ks.Control, ControlKeyFile); err != nil {
		return nil, err
	}
	if left := time.Unix(ks.Bundle.ExpiresUnix, 0).Sub(now); left < 30*24*time.Hour {
		log.Warn("trust bundle expires soon; devices will refuse new manifests and desired states after that",
			"expires", time.Unix(ks.Bundle.ExpiresUnix, 0).UTC(), "left", left.Round(time.Hour))
	}
	return ks, nil
}

// checkRole makes sure the trust bundle lists key under role: otherwise
// every agent would refuse what the control plane signs.
func (ks *Set) checkRole(role efpb.Role, key *signing.KeyPair, file string) error {
	for _, r := range ks.Bundle.Roles {
		if r.Role == role && slices.Contains(r.Keyids, key.ID) {
			if r.Threshold > 1 {
				return fmt.Errorf("load keys: the trust bundle requires %d %s signatures; the control plane signs with one key", r.Threshold, role)
			}
			return nil
		}
	}
	return fmt.Errorf("load keys: %s (key id %s) is not listed for %s in %s", file, key.ID, role, TrustBundleFile)
}

// readFileMax reads path, refusing files larger than limit.
func readFileMax(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, limit)
	}
	return data, nil
}
