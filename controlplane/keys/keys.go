// Package keys manages the fleet's signing keys on disk: it creates them
// (Init), rotates one role's key into the next root-signed trust bundle,
// keeping every earlier bundle (Rotate), and loads the set the control plane
// signs with and the bundle chain it publishes (Load). Imported by
// controlplane, controlplane/cli (keys commands), controlplane/fleet,
// controlplane/models and controlplane/sites.
package keys

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// ArchivedBundleFile is the file name under which Rotate keeps trust bundle
// version v once a newer one replaces it: trust.bundle.v<v>. The newest
// bundle and these files are the chain the control plane publishes, so a
// device at any earlier version can walk to the newest.
func ArchivedBundleFile(v uint64) string { return fmt.Sprintf("%s.v%d", TrustBundleFile, v) }

// DefaultTrustBundleTTL is how long a generated trust bundle is valid.
const DefaultTrustBundleTTL = 2 * 365 * 24 * time.Hour

// maxTrustBundleFile bounds the trust bundle file read at start.
const maxTrustBundleFile = 1 << 20

// Init creates a fleet's keys in dir: root, release and control key
// pairs, root.pub, and trust.bundle (version 1, signed by root, valid from
// now for ttl; ttl <= 0 means DefaultTrustBundleTTL). It refuses to replace
// any existing key file. In production run it on an offline machine and
// copy only release.key, control.key, root.pub and trust.bundle (later also
// every trust.bundle.v<N>) to the control plane's DataDir/keys; root.key
// stays offline.
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
	// Dir is the keys directory it was loaded from.
	Dir     string
	RootPub ed25519.PublicKey
	RootPEM string
	Release *signing.KeyPair
	Control *signing.KeyPair
	// BundleBytes is the newest trust bundle's envelope (trust.bundle);
	// Bundle is its payload.
	BundleBytes []byte
	Bundle      *efpb.TrustBundle
	// Chain is the bundle chain the control plane publishes, oldest first,
	// ending with the newest: trust.bundle.v<N> for the versions before the
	// newest, as many as fit a chain message (signing.MaxTrustChainLinks),
	// each signed by its predecessor's root. ChainBytes is its encoding,
	// retained on the trust topic.
	Chain      []*efpb.Envelope
	ChainBytes []byte
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

	ks := &Set{Dir: dir}
	rootFile := RootPubFile
	var err error
	if present[RootKeyFile] || len(present) == 0 {
		rootFile = RootKeyFile
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
	env, payload, err := decodeBundleFile(ks.BundleBytes)
	if err != nil {
		return nil, fmt.Errorf("load keys: %s is not a trust bundle envelope: %w", TrustBundleFile, err)
	}
	// Devices are provisioned with the root public key: a stale one (the
	// root rotated since) would be handed to every new device.
	if !listsRoot(payload, signing.KeyID(ks.RootPub)) {
		return nil, fmt.Errorf("load keys: %s (key id %s) is not a root key of %s version %d (root key ids %s): "+
			"it is a retired root or another fleet's; copy %s from where `edgefleet keys rotate --role root` ran "+
			"(new devices are provisioned with it)",
			rootFile, signing.KeyID(ks.RootPub), TrustBundleFile, payload.GetVersion(), strings.Join(rootKeyIDs(payload), ", "), RootPubFile)
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
	if err := ks.loadChain(env, now, log); err != nil {
		return nil, fmt.Errorf("load keys: %w", err)
	}
	if left := time.Unix(ks.Bundle.ExpiresUnix, 0).Sub(now); left < 30*24*time.Hour {
		log.Warn("trust bundle expires soon; devices will refuse new manifests and desired states after that",
			"expires", time.Unix(ks.Bundle.ExpiresUnix, 0).UTC(), "left", left.Round(time.Hour))
	}
	return ks, nil
}

// loadChain reads the archived bundles before the newest (newest is the
// trust.bundle envelope), as many as a chain message carries, and checks
// that they link: versions one apart, each signed by its predecessor's root
// and its own. A version missing below one that is present is an error (it
// would strand every device older than it); the chain may start anywhere.
func (ks *Set) loadChain(newest *efpb.Envelope, now time.Time, log *slog.Logger) error {
	chain := []*efpb.Envelope{newest}
	oldestPresent, err := ks.oldestArchived()
	if err != nil {
		return err
	}
	for v := ks.Bundle.Version - 1; v >= 1 && len(chain) <= signing.MaxTrustChainLinks; v-- {
		name := ArchivedBundleFile(v)
		raw, err := readFileMax(filepath.Join(ks.Dir, name), signing.MaxTrustBundleSize)
		if errors.Is(err, fs.ErrNotExist) {
			if oldestPresent != 0 && oldestPresent < v {
				return fmt.Errorf("%s is missing from %s, which holds %s: the bundle chain has a gap, and devices that trust version %d or older "+
					"could not follow it; copy every %s.v* from where `edgefleet keys rotate` ran",
					name, ks.Dir, ArchivedBundleFile(oldestPresent), v-1, TrustBundleFile)
			}
			break
		}
		if err != nil {
			return err
		}
		env, b, err := decodeBundleFile(raw)
		if err != nil {
			return fmt.Errorf("%s is not a trust bundle envelope: %w", name, err)
		}
		if b.GetVersion() != v {
			return fmt.Errorf("%s holds trust bundle version %d, not %d", name, b.GetVersion(), v)
		}
		chain = append(chain, env)
	}
	slices.Reverse(chain)
	// Fit the chain message: the oldest bundles go first.
	for {
		b, err := signing.EncodeTrustChain(chain)
		if err == nil {
			ks.ChainBytes = b
			break
		}
		if len(chain) == 1 {
			return err
		}
		chain = chain[1:]
	}
	if first := bundleVersion(chain[0]); first > 1 && oldestPresent != 0 && oldestPresent < first {
		log.Warn("the trust bundle chain is longer than a chain message carries: devices that trust an older version cannot follow it and must be provisioned again",
			"published_from", first, "oldest_on_disk", oldestPresent, "max_links", signing.MaxTrustChainLinks)
	}
	// The chain must link as a device walks it, from its oldest bundle
	// (trusted as stored) to the newest.
	check := signing.NewVerifier(ks.RootPub)
	if _, err := check.RestoreTrustBundle(chain[0]); err != nil {
		return fmt.Errorf("the bundle chain in %s: version %d: %w", ks.Dir, bundleVersion(chain[0]), err)
	}
	if _, err := check.UpdateTrustChain(chain, now); err != nil {
		return fmt.Errorf("the bundle chain in %s does not link: %w", ks.Dir, err)
	}
	ks.Chain = chain
	return nil
}

// oldestArchived is the lowest version N of a trust.bundle.v<N> file in the
// keys directory, 0 if there is none.
func (ks *Set) oldestArchived() (uint64, error) {
	entries, err := os.ReadDir(ks.Dir)
	if err != nil {
		return 0, err
	}
	var oldest uint64
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), TrustBundleFile+".v")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(rest, 10, 64)
		if err != nil || v == 0 || v >= ks.Bundle.Version {
			continue
		}
		if oldest == 0 || v < oldest {
			oldest = v
		}
	}
	return oldest, nil
}

// ContinuesFrom checks that the chain links from prev, the newest bundle
// envelope this control plane published before (nil: none yet), as every
// agent that accepted prev will walk it: the newest is not older, and each
// bundle after prev is signed by its predecessor's root. The error says
// which version and which link failed.
func (ks *Set) ContinuesFrom(prev []byte, now time.Time) error {
	if prev == nil {
		return nil
	}
	env, b, err := decodeBundleFile(prev)
	if err != nil {
		return fmt.Errorf("the trust bundle this control plane published last does not decode: %w", err)
	}
	pv, newest := b.GetVersion(), ks.Bundle.Version
	switch {
	case pv > newest:
		return fmt.Errorf("%s in %s is version %d, older than version %d, which this control plane already published: agents refuse older bundles; "+
			"copy the newest %s and every %s.v* from where `edgefleet keys rotate` ran", TrustBundleFile, ks.Dir, newest, pv, TrustBundleFile, TrustBundleFile)
	case pv == newest:
		if !bytes.Equal(env.Payload, ks.Chain[len(ks.Chain)-1].Payload) {
			return fmt.Errorf("%s in %s is version %d but not the version %d this control plane published: agents refuse a bundle version they trust with other content; "+
				"restore the keys directory from where `edgefleet keys rotate` ran", TrustBundleFile, ks.Dir, newest, pv)
		}
		return nil
	}
	check := signing.NewVerifier(ks.RootPub)
	if _, err := check.RestoreTrustBundle(env); err != nil {
		return fmt.Errorf("the trust bundle this control plane published last (version %d): %w", pv, err)
	}
	if _, err := check.UpdateTrustChain(ks.Chain, now); err != nil {
		return fmt.Errorf("the trust bundle chain in %s (versions %d to %d) does not continue from version %d, the last one this control plane published, "+
			"so agents that trust it would refuse the newest: %w", ks.Dir, bundleVersion(ks.Chain[0]), newest, pv, err)
	}
	return nil
}

// decodeBundleFile decodes a stored trust bundle envelope and, unverified,
// its payload.
func decodeBundleFile(raw []byte) (*efpb.Envelope, *efpb.TrustBundle, error) {
	env := &efpb.Envelope{}
	if err := proto.Unmarshal(raw, env); err != nil {
		return nil, nil, err
	}
	b := &efpb.TrustBundle{}
	if err := proto.Unmarshal(env.Payload, b); err != nil {
		return nil, nil, fmt.Errorf("payload: %w", err)
	}
	return env, b, nil
}

// bundleVersion is the version of a bundle envelope loadChain decoded.
func bundleVersion(env *efpb.Envelope) uint64 {
	b := &efpb.TrustBundle{}
	_ = proto.Unmarshal(env.Payload, b)
	return b.GetVersion()
}

// listsRoot reports whether b's root role lists keyID.
func listsRoot(b *efpb.TrustBundle, keyID string) bool {
	return slices.Contains(rootKeyIDs(b), keyID)
}

func rootKeyIDs(b *efpb.TrustBundle) []string {
	for _, r := range b.GetRoles() {
		if r.GetRole() == efpb.Role_ROLE_ROOT {
			return r.GetKeyids()
		}
	}
	return nil
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
