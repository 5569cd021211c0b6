package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

func (a *app) tokenCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "token <command>",
		Short: "create, list and revoke API tokens",
		Long: `Manages the control plane's API tokens. A token has a role, each including the ones before
it: viewer reads (not tokens, enrollments or the audit log); operator also uploads models,
deploys, runs rollouts and reads the audit log; admin also manages devices, enrollments,
tokens and keys. broker stands apart: it only reads what "edgefleet broker sync" writes for
an external mosquitto (password file and ACL).
"edgefleet serve" prints the first admin token at its first start.`,
	}, a.tokenCreateCmd(), a.tokenListCmd(), a.tokenRevokeCmd())
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var name, role string
	c := &cobra.Command{
		Use:   "create --name NAME --role viewer|operator|admin|broker",
		Short: "create an API token (shown once)",
		Long:  "Creates an API token and prints its secret, only this once. NAME says who uses it; the audit\nlog names it.",
		Example: `  edgefleet token create --name dashboard --role viewer
  edgefleet token create --name ci --role operator`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			if name == "" || role == "" {
				return usagef("token create needs --name and --role (viewer, operator, admin or broker)")
			}
			if _, err := api.ParseRole(role); err != nil {
				return usagef("--role: %v", err)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			tok, err := c.CreateToken(cmd.Context(), name, api.Role(role))
			if err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			fmt.Fprintf(a.stdout, "token %s (id %s, role %s) created; the secret is shown only this once:\n\n    %s\n\n", tok.Name, tok.ID, tok.Role, tok.Token)
			return nil
		}),
	}
	c.Flags().StringVar(&name, "name", "", "token `NAME` (who uses it; shown in the audit log)")
	c.Flags().StringVar(&role, "role", "", "the token's `ROLE`: viewer, operator, admin or broker")
	enumFlag(c, "role", string(api.RoleViewer), string(api.RoleOperator), string(api.RoleAdmin), string(api.RoleBroker))
	return c
}

func (a *app) tokenListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "list API tokens",
		Long:    "Lists the API tokens (never their secrets): id, name, role, when and by whom created.",
		Example: "  edgefleet token list",
		Args:    noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Tokens(cmd.Context())
			if err != nil {
				return fmt.Errorf("list tokens: %w", err)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tCREATED BY")
			for _, t := range list {
				by := t.CreatedBy
				if by == "" {
					by = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.Created.Format("2006-01-02 15:04"), by)
			}
			return tw.Flush()
		}),
	}
}

func (a *app) tokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID",
		Short:   "revoke an API token",
		Long:    "Revokes an API token at once: requests with it are refused from then on.",
		Example: "  edgefleet token revoke tok_5d1e2f3a4b5c",
		Args:    oneArg("token id"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			tok, err := c.RevokeToken(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("revoke token: %w", err)
			}
			fmt.Fprintf(a.stdout, "token %s (%s, role %s) revoked\n", tok.ID, tok.Name, tok.Role)
			return nil
		}),
	}
}
