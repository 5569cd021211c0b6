package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// sitesCmd prints each site's sharing and what each model version's
// download took over its WAN link.
func (a *app) sitesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sites",
		Short: "sites: sharing devices and WAN bytes per model version",
		Long: `Prints one block per site label: its devices, those that share the site's downloads
(peers.listen in the agent config) and how many of them found each other, then for each
model version the bytes the site's devices fetched from the broker (WAN) and from each
other (LAN), as their telemetry last reported them. WAN/MODEL is the WAN bytes over the
model's size: about 1 when the site shares one download, the number of devices when it
does not.`,
		Example: `  edgefleet sites`,
		Args:    noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Sites(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SITE\tDEVICES\tSHARING\tMEMBERS\tBAD CHUNKS\tMODEL\tWAN\tLAN\tWAN/MODEL")
			for _, s := range list {
				head := fmt.Sprintf("%s\t%d\t%d\t%d\t%d", s.Name, s.Devices, s.Sharing, s.Members, s.BadChunks)
				if len(s.Transfers) == 0 {
					fmt.Fprintf(tw, "%s\t-\t-\t-\t-\n", head)
				}
				for i, t := range s.Transfers {
					if i > 0 {
						head = "\t\t\t\t"
					}
					ratio := "-"
					if t.ModelBytes > 0 {
						ratio = fmt.Sprintf("%.2f", t.WANRatio)
					}
					fmt.Fprintf(tw, "%s\t%s@%s\t%s\t%s\t%s\n", head, t.Model, t.Version, sizeOf(t.WANBytes), sizeOf(t.PeerBytes), ratio)
				}
			}
			return tw.Flush()
		}),
	}
}

// siteCmd groups what is done to one site.
func (a *app) siteCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "site <command>",
		Short: "rotate a site's gossip key",
		Long:  `Acts on one site's sharing: site rotate-key gives it a new gossip key.`,
	}, a.siteRotateKeyCmd())
}

func (a *app) siteRotateKeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-key SITE",
		Short: "give a site a new gossip key",
		Long: `Generates a new gossip key for SITE and sends every sharing device of the site a new signed
site document with it; the previous key stays valid for an hour so the members that have it
and those that have the new one keep talking, then it is dropped. Prints the new key's id
(a digest, not the key).`,
		Example: `  edgefleet site rotate-key store-12`,
		Args:    oneArg("site"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.RotateSiteKey(cmd.Context(), pos[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "site %s: new gossip key %s\n", res.Site, res.KeyID)
			return nil
		}),
	}
}

// sizeOf prints a byte count in B, KiB, MiB or GiB.
func sizeOf(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
