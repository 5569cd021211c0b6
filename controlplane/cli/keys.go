package cli

import (
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func (a *app) keysRotateCmd() *cobra.Command {
	var (
		dir, role string
		ttl       time.Duration
	)
	c := &cobra.Command{
		Use:   "rotate --role release|control|root --dir DIR",
		Short: "replace a key; writes the next root-signed trust bundle",
		Long: `Replaces one key and writes trust bundle version N+1, signed by the current root (and by the
new root when the root rotates). The replaced private key is kept as <file>.v<N> and bundle N as
trust.bundle.v<N>: the bundles form the chain that a device which missed rotations walks to the
newest. Copy the new key (release.key or control.key; root.pub for the root, never root.key),
trust.bundle and every trust.bundle.v<N> to the control plane's <data-dir>/keys and restart it:
it publishes the chain and agents follow it; the old key's signatures are refused afterwards.
Several rotations may happen between two restarts.

Run it where root.key is kept.`,
		Example: `  edgefleet keys rotate --role release --dir ./keys
  edgefleet keys rotate --role root --dir ./keys --ttl 8760h`,
		Args: noArgs,
		RunE: a.runE(func(*cobra.Command, []string) error {
			if dir == "" {
				return usagef("keys rotate needs --dir")
			}
			var r efpb.Role
			switch role {
			case "release":
				r = efpb.Role_ROLE_RELEASE
			case "control":
				r = efpb.Role_ROLE_CONTROL
			case "root":
				r = efpb.Role_ROLE_ROOT
			default:
				return usagef("--role %q: want release, control or root", role)
			}
			if ttl <= 0 {
				return usagef("--ttl must be positive")
			}
			b, err := keys.Rotate(dir, r, time.Now(), ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated the %s key in %s: trust bundle version %d, valid until %s\n", role, dir,
				b.Version, time.Unix(b.ExpiresUnix, 0).UTC().Format(time.RFC3339))
			copyKey := map[efpb.Role]string{efpb.Role_ROLE_RELEASE: keys.ReleaseKeyFile, efpb.Role_ROLE_CONTROL: keys.ControlKeyFile,
				efpb.Role_ROLE_ROOT: keys.RootPubFile}[r]
			fmt.Fprintf(a.stdout, "Copy %s, %s and %s.v* to the control plane's <data-dir>/keys/ and restart it (never %s).\n",
				copyKey, keys.TrustBundleFile, keys.TrustBundleFile, keys.RootKeyFile)
			if r == efpb.Role_ROLE_ROOT {
				fmt.Fprintf(a.stdout, "New root public key (provision new devices with it; existing devices follow the bundle):\n%s",
					signing.EncodePublicKeyPEM(mustReadPub(filepath.Join(dir, keys.RootPubFile))))
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "keys `DIR` holding root.key and trust.bundle (required; run where root.key is kept)")
	f.StringVar(&role, "role", "", "`ROLE` of the key to replace: release, control or root")
	f.DurationVar(&ttl, "ttl", keys.DefaultTrustBundleTTL, "validity of the new trust bundle (`DURATION`)")
	enumFlag(c, "role", "release", "control", "root")
	return c
}

func mustReadPub(path string) ed25519.PublicKey {
	pub, err := signing.ReadPublicKeyFile(path)
	if err != nil {
		return nil
	}
	return pub
}
