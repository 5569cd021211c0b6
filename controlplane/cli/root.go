package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Command groups of the root help, in the order shown.
const (
	groupControlPlane = "control-plane"
	groupFleet        = "fleet"
	groupRollouts     = "rollouts"
	groupOther        = "other"
)

// newRoot builds the command tree of one invocation, its flags bound to a.
func (a *app) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "edgefleet [global flags] <command> [flags] [args]",
		Short: "control plane for signed ONNX model delivery to edge devices",
		Long: `edgefleet: control plane for signed ONNX model delivery to edge devices

"edgefleet serve" runs the control plane. The other commands are offline tools (keys,
model train, broker acl) or clients of its REST API: they find it with --api and
authenticate with --token or --token-file.`,
		Example: `  # In one terminal: the control plane; it writes the admin token to ./admin.token.
  edgefleet serve --data-dir ./edgefleet-data --token-file ./admin.token

  # In another: train a model, upload it, register a device and deploy to it.
  export EDGEFLEET_TOKEN_FILE=./admin.token
  edgefleet model train --out fraud.onnx
  edgefleet model push --name fraud --version 1.0.0 --file fraud.onnx
  edgefleet device add dev-1 --label site=berlin --config-out agent.yaml
  edgefleet deploy fraud@1.0.0 --selector site=berlin
  edgefleet devices`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a command: the help, on stderr, and exit status 2. An
		// unknown command never gets here (cobra reports it).
		RunE: func(cmd *cobra.Command, _ []string) error {
			writeHelp(a.stderr, cmd)
			return errNoCommand
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true // completionCmd replaces it
	pf := root.PersistentFlags()
	pf.StringVar(&a.api, "api", DefaultAPI, "control plane API `URL` (env "+EnvAPI+")")
	pf.StringVar(&a.token, "token", "", "`TOKEN` for the API (env "+EnvToken+"; edgefleet token create makes more)")
	pf.StringVar(&a.tokenFile, "token-file", "", "`FILE` holding the API token (env "+EnvTokenFile+"); serve writes it")

	root.AddGroup(
		&cobra.Group{ID: groupControlPlane, Title: "Control plane:"},
		&cobra.Group{ID: groupFleet, Title: "Models and devices:"},
		&cobra.Group{ID: groupRollouts, Title: "Rollouts and monitoring:"},
		&cobra.Group{ID: groupOther, Title: "Other:"},
	)
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add(groupControlPlane, a.serveCmd(), a.keysCmd(), a.tokenCmd(), a.brokerCmd())
	add(groupFleet, a.modelCmd(), a.modelsCmd(), a.deviceCmd(), a.devicesCmd(), a.siteCmd(), a.sitesCmd(), a.deployCmd())
	add(groupRollouts, a.rolloutCmd(), a.metricsCmd(), a.auditCmd())
	add(groupRollouts, a.dataCmd())    // field data capture and datasets (data.go)
	add(groupRollouts, a.retrainCmd()) // retraining (retrain.go)
	add(groupOther, a.demoCmd(), a.healthCmd(), a.completionCmd(), a.versionCmd())
	help := helpCmd()
	help.GroupID = groupOther
	root.SetHelpCommand(help)

	root.SetHelpFunc(func(c *cobra.Command, _ []string) { writeHelp(c.OutOrStdout(), c) })
	root.SetUsageFunc(func(c *cobra.Command) error {
		_, err := io.WriteString(c.OutOrStderr(), usage(c))
		return err
	})
	root.SetFlagErrorFunc(flagError)
	visit(root, func(c *cobra.Command) {
		// The help flag now, not at execution: longFlags looks flags up.
		c.InitDefaultHelpFlag()
		if c.ValidArgsFunction == nil && len(c.ValidArgs) == 0 {
			c.ValidArgsFunction = cobra.NoFileCompletions // ids and NAME@VERSION are not files
		}
	})
	return root
}

// execute runs the command line args on root and returns the command that
// ran or was meant to.
func (a *app) execute(ctx context.Context, root *cobra.Command, args []string) (*cobra.Command, error) {
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	// Never nil: cobra would read os.Args instead.
	root.SetArgs(append([]string{}, longFlags(root, args)...))
	return root.ExecuteContextC(ctx)
}

// visit calls f on c and every command below it.
func visit(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		visit(sub, f)
	}
}

// longFlags rewrites -name and -name=value to --name... where name is a
// long flag of the command the arguments are for. Until the CLI moved to
// cobra, its flags were parsed by the standard flag package, where one dash
// is enough; pflag reads -name as the shorthands n, a, m, e. Shell
// completion requests are left alone.
func longFlags(root *cobra.Command, args []string) []string {
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		return args
	}
	out := make([]string, 0, len(args))
	cmd, descend := root, true
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return append(out, args[i:]...)
		}
		if len(arg) < 2 || arg[0] != '-' {
			// A positional argument: a subcommand while cobra would take it
			// for one.
			if descend {
				if sub := subcommand(cmd, arg); sub != nil {
					cmd = sub
				} else {
					descend = false
				}
			}
			out = append(out, arg)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(arg[1:], "-"), "=")
		f := cmd.Flags().Lookup(name)
		if f == nil {
			f = inherited(cmd, name)
		}
		if f != nil && !strings.HasPrefix(arg, "--") {
			arg = "-" + arg
		}
		out = append(out, arg)
		if f != nil && !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
			i++
			out = append(out, args[i]) // the flag's value, even if it starts with -
		}
	}
	return out
}

func subcommand(c *cobra.Command, name string) *cobra.Command {
	for _, sub := range c.Commands() {
		if sub.Name() == name || sub.HasAlias(name) {
			return sub
		}
	}
	return nil
}

// inherited looks name up in the persistent flags of c's ancestors.
func inherited(c *cobra.Command, name string) *pflag.Flag {
	for p := c.Parent(); p != nil; p = p.Parent() {
		if f := p.PersistentFlags().Lookup(name); f != nil {
			return f
		}
	}
	return nil
}

// flagError turns pflag's errors into usage errors; an unknown flag is
// reported in the words the CLI always used.
func flagError(_ *cobra.Command, err error) error {
	var ne *pflag.NotExistError
	if errors.As(err, &ne) {
		name := ne.GetSpecifiedShortnames()
		if name == "" {
			name = ne.GetSpecifiedName()
		}
		return usagef("flag provided but not defined: -%s", name)
	}
	return usagef("%v", err)
}

// runE adapts a command's work to cobra: a usage error keeps exit status 2,
// any other error is the command's own failure (exit status 1). It applies
// $EDGEFLEET_API when --api was not given.
func (a *app) runE(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if !cmd.Flags().Changed("api") {
			if v := a.getenv(EnvAPI); v != "" {
				a.api = v
			}
		}
		err := f(cmd, args)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return &runError{err: err}
	}
}

// group makes c a command that only holds subcommands: run alone or with
// an unknown subcommand, it is a usage error naming the subcommands.
func group(c *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	c.AddCommand(subs...)
	c.RunE = func(cmd *cobra.Command, args []string) error {
		var names []string
		for _, s := range cmd.Commands() {
			if s.IsAvailableCommand() {
				names = append(names, s.Name())
			}
		}
		if len(args) == 0 {
			return usagef("%s needs a subcommand: %s", cmd.Name(), orList(names))
		}
		for i, n := range names {
			names[i] = cmd.Name() + " " + n
		}
		return usagef("unknown command %q (want %s)", cmd.Name()+" "+args[0], orList(names))
	}
	return c
}

// orList joins "a", "a or b", "a, b or c".
func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// cmdName is the command's path without the program name: "rollout get".
func cmdName(c *cobra.Command) string {
	return strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")
}

// noArgs is cobra.NoArgs in the CLI's words.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmdName(c), args)
	}
	return nil
}

// oneArg wants exactly one positional argument, described by what.
func oneArg(what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("%s takes one %s, got %d arguments", cmdName(c), what, len(args))
		}
		return nil
	}
}

// enumFlag completes a flag's value from a fixed list.
func enumFlag(c *cobra.Command, name string, values ...string) {
	_ = c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

func (a *app) completionCmd() *cobra.Command {
	shells := []string{"bash", "zsh", "fish"}
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "print a bash, zsh or fish completion script",
		Long: `Prints the completion script for bash, zsh or fish. It completes commands, flags and the
values of flags with a fixed set (roles, --on-breach, --by, ...) by asking edgefleet itself,
so it stays current when edgefleet is updated.

bash needs the bash-completion package. zsh needs "autoload -U compinit; compinit" in ~/.zshrc.`,
		Example: `  # bash, this shell only; or write it to /etc/bash_completion.d/edgefleet
  source <(edgefleet completion bash)

  # zsh
  edgefleet completion zsh > "${fpath[1]}/_edgefleet"

  # fish
  edgefleet completion fish > ~/.config/fish/completions/edgefleet.fish`,
		ValidArgs:             shells,
		DisableFlagsInUseLine: true,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 || !slices.Contains(shells, args[0]) {
				return usagef("completion takes one shell: bash, zsh or fish")
			}
			return nil
		},
		RunE: a.runE(func(c *cobra.Command, args []string) error {
			root := c.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			default:
				return root.GenFishCompletion(a.stdout, true)
			}
		}),
	}
}

// helpCmd is cobra's help command, except that an unknown topic is a
// usage error.
func helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "print the help of a command",
		Long:  `Prints the help of a command: "edgefleet help rollout create" is "edgefleet rollout create --help".`,
		Example: `  edgefleet help
  edgefleet help rollout create`,
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var comps []cobra.Completion
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					comps = append(comps, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return comps, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usagef("unknown help topic %q", strings.Join(args, " "))
			}
			writeHelp(c.OutOrStdout(), cmd)
			return nil
		},
	}
}

// writeHelp writes c's help: its description, then its usage.
func writeHelp(w io.Writer, c *cobra.Command) {
	desc := c.Long
	if desc == "" {
		desc = c.Short
	}
	fmt.Fprintf(w, "%s\n\n%s", strings.TrimRight(desc, "\n"), usage(c))
}

// usage renders c's synopsis, examples, subcommands and flags.
func usage(c *cobra.Command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n", c.UseLine())
	if c.HasExample() {
		fmt.Fprintf(&b, "\nExamples:\n%s\n", strings.TrimRight(c.Example, "\n"))
	}
	if c.HasAvailableSubCommands() {
		subs := slices.SortedFunc(slices.Values(c.Commands()), func(x, y *cobra.Command) int {
			return strings.Compare(x.Name(), y.Name())
		})
		shown := func(s *cobra.Command) bool { return s.IsAvailableCommand() || s.Name() == "help" }
		pad := 0
		for _, s := range subs {
			if shown(s) {
				pad = max(pad, len(s.Name()))
			}
		}
		list := func(title, id string) {
			var lines []string
			for _, s := range subs {
				if s.GroupID == id && shown(s) {
					lines = append(lines, fmt.Sprintf("  %-*s  %s\n", pad, s.Name(), s.Short))
				}
			}
			if len(lines) > 0 {
				fmt.Fprintf(&b, "\n%s\n%s", title, strings.Join(lines, ""))
			}
		}
		for _, g := range c.Groups() {
			list(g.Title, g.ID)
		}
		list("Commands:", "")
	}
	if c.HasAvailableLocalFlags() {
		title := "Flags:"
		if !c.HasParent() {
			title = "Global flags (also accepted after the command):"
		}
		fmt.Fprintf(&b, "\n%s\n%s\n", title, strings.TrimRight(c.LocalFlags().FlagUsages(), " \n"))
	}
	if c.HasAvailableInheritedFlags() {
		fmt.Fprintf(&b, "\nGlobal flags:\n%s\n", strings.TrimRight(c.InheritedFlags().FlagUsages(), " \n"))
	}
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "\nRun \"%s <command> --help\" for the flags of a command.\n", c.CommandPath())
	}
	return b.String()
}
