package cli

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the command table in README.md from the command tree")

const (
	readmePath = "../../README.md"
	tableBegin = "<!-- BEGIN generated from the command tree: go test ./controlplane/cli -run TestREADMECommandTable -update -->\n"
	tableEnd   = "<!-- END generated -->\n"
)

// TestREADMECommandTable checks that the README's table of commands is
// the command tree's: every command with its arguments and flags, and no
// other. With -update it rewrites the table.
func TestREADMECommandTable(t *testing.T) {
	b, err := os.ReadFile(readmePath)
	require.NoError(t, err)
	readme := string(b)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	require.True(t, i >= 0 && j > i, "README.md has no %q ... %q block", tableBegin, tableEnd)
	got, want := readme[i+len(tableBegin):j], commandTable(tree())
	if *update && got != want {
		readme = readme[:i+len(tableBegin)] + want + readme[j:]
		require.NoError(t, os.WriteFile(readmePath, []byte(readme), 0o644))
		t.Log("rewrote the command table in README.md")
		got = want
	}
	if got != want {
		gotRows, wantRows := strings.Split(got, "\n"), strings.Split(want, "\n")
		var msg strings.Builder
		for _, r := range wantRows {
			if !slices.Contains(gotRows, r) {
				fmt.Fprintf(&msg, "missing or different in README.md:\n  %s\n", r)
			}
		}
		for _, r := range gotRows {
			if !slices.Contains(wantRows, r) {
				fmt.Fprintf(&msg, "in README.md but not in the command tree:\n  %s\n", r)
			}
		}
		t.Errorf("README.md's command table is not the command tree's; run\n"+
			"  go test ./controlplane/cli -run TestREADMECommandTable -update\n%s", msg.String())
	}

	// The global flags are described above the table.
	section := readme[strings.Index(readme, "## CLI reference"):i]
	tree().PersistentFlags().VisitAll(func(f *pflag.Flag) {
		assert.Contains(t, section, "`--"+f.Name, "README.md's CLI reference describes --%s", f.Name)
	})
}

// commandTable renders a Markdown table of root's commands: one row per
// command that runs (not the groups), in the order of the help.
func commandTable(root *cobra.Command) string {
	var b strings.Builder
	b.WriteString("| command | flags | what it does |\n| --- | --- | --- |\n")
	var rows func(c *cobra.Command)
	rows = func(c *cobra.Command) {
		if !c.HasAvailableSubCommands() {
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", cell(synopsis(c)), cell(flagList(c)), cell(c.Short))
			return
		}
		for _, sub := range sortedCommands(c) {
			if sub.IsAvailableCommand() && sub.Name() != "help" {
				rows(sub)
			}
		}
	}
	var groups []string
	for _, g := range root.Groups() {
		groups = append(groups, g.ID)
	}
	top := sortedCommands(root)
	slices.SortStableFunc(top, func(x, y *cobra.Command) int {
		return slices.Index(groups, x.GroupID) - slices.Index(groups, y.GroupID)
	})
	for _, c := range top {
		if c.IsAvailableCommand() && c.Name() != "help" {
			rows(c)
		}
	}
	return b.String()
}

func sortedCommands(c *cobra.Command) []*cobra.Command {
	return slices.SortedFunc(slices.Values(c.Commands()), func(x, y *cobra.Command) int {
		return strings.Compare(x.Name(), y.Name())
	})
}

// synopsis is the command's path and Use line without the program name.
func synopsis(c *cobra.Command) string {
	return strings.TrimPrefix(c.Parent().CommandPath()+" "+c.Use, c.Root().Name()+" ")
}

// flagList lists the command's own flags with the name of their value;
// "…" marks a flag that may be repeated.
func flagList(c *cobra.Command) string {
	var flags []string
	c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Hidden {
			return
		}
		s := "--" + f.Name
		if name, _ := pflag.UnquoteUsage(f); name != "" {
			if !strings.Contains(f.Usage, "`") {
				name = strings.ToUpper(name) // a type name: int, duration
			}
			s += " " + name
		}
		if _, repeatable := f.Value.(*stringList); repeatable {
			s += " …"
		}
		flags = append(flags, "`"+s+"`")
	})
	return strings.Join(flags, " ")
}

// cell escapes a table cell's pipes (also within code spans).
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
