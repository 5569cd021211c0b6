package cli

import (
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// keysRotate runs `keys rotate --role release|control|root --dir KEYS`.
func (a *app) keysRotate(args []string) error {
	fs := a.flagSet("edgefleet keys rotate")
	dir := fs.String("dir", "", "keys directory holding root.key and trust.bundle (required; run where root.key is kept)")
	role := fs.String("role", "", "key to replace: release, control or root")
	ttl := fs.Duration("ttl", keys.DefaultTrustBundleTTL, "validity of the new trust bundle")
	fs.Usage = func() {
		fmt.Fprintln(a.stderr, "Usage: edgefleet keys rotate --role release|control|root --dir KEYS [--ttl D]\n\nReplaces one key and writes trust bundle version N+1, signed by the current root (and by the\nnew root when the root rotates). The replaced private key is kept as <file>.v<N>. Copy the new\nkey and trust.bundle to the control plane's <data-dir>/keys and restart it: it publishes the\nbundle and agents follow it; the old key's signatures are refused afterwards.\n\nFlags:")
		fs.PrintDefaults()
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("keys rotate takes no arguments, got %q", pos)
	}
	if *dir == "" {
		return usagef("keys rotate needs --dir")
	}
	var r efpb.Role
	switch *role {
	case "release":
		r = efpb.Role_ROLE_RELEASE
	case "control":
		r = efpb.Role_ROLE_CONTROL
	case "root":
		r = efpb.Role_ROLE_ROOT
	default:
		return usagef("--role %q: want release, control or root", *role)
	}
	if *ttl <= 0 {
		return usagef("--ttl must be positive")
	}
	b, err := keys.Rotate(*dir, r, time.Now(), *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "rotated the %s key in %s: trust bundle version %d, valid until %s\n", *role, *dir,
		b.Version, time.Unix(b.ExpiresUnix, 0).UTC().Format(time.RFC3339))
	if r == efpb.Role_ROLE_ROOT {
		fmt.Fprintf(a.stdout, "New root public key (provision new devices with it; existing devices follow the bundle):\n%s",
			signing.EncodePublicKeyPEM(mustReadPub(filepath.Join(*dir, keys.RootPubFile))))
	}
	return nil
}

func mustReadPub(path string) ed25519.PublicKey {
	pub, err := signing.ReadPublicKeyFile(path)
	if err != nil {
		return nil
	}
	return pub
}
