package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// tokenCmd runs `token create|list|revoke`.
func (a *app) tokenCmd(ctx context.Context, sub string, args []string) error {
	fs := a.flagSet("edgefleet token " + sub)
	a.globalFlags(fs)
	var name, role *string
	if sub == "create" {
		name = fs.String("name", "", "token name (who uses it; shown in the audit log)")
		role = fs.String("role", "", "viewer, operator or admin")
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		if len(pos) != 0 {
			return usagef("token create takes no arguments, got %q", pos)
		}
		if *name == "" || *role == "" {
			return usagef("token create needs --name and --role (viewer, operator or admin)")
		}
		if _, err := api.ParseRole(*role); err != nil {
			return usagef("--role: %v", err)
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		tok, err := c.CreateToken(ctx, *name, api.Role(*role))
		if err != nil {
			return fmt.Errorf("create token: %w", err)
		}
		fmt.Fprintf(a.stdout, "token %s (id %s, role %s) created; the secret is shown only this once:\n\n    %s\n\n", tok.Name, tok.ID, tok.Role, tok.Token)
		return nil
	case "list":
		if len(pos) != 0 {
			return usagef("token list takes no arguments, got %q", pos)
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		list, err := c.Tokens(ctx)
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
	case "revoke":
		if len(pos) != 1 {
			return usagef("token revoke takes one token id, got %d arguments", len(pos))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		tok, err := c.RevokeToken(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		fmt.Fprintf(a.stdout, "token %s (%s, role %s) revoked\n", tok.ID, tok.Name, tok.Role)
		return nil
	}
	return usagef("unknown command \"token %s\" (want token create, list or revoke)", sub)
}
