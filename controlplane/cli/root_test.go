package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tree builds the command tree as Main does.
func tree() *cobra.Command {
	a := &app{stdout: &strings.Builder{}, stderr: &strings.Builder{}, getenv: noEnv}
	return a.newRoot()
}

// commands lists every command below root, with help.
func commands(root *cobra.Command) []*cobra.Command {
	var all []*cobra.Command
	visit(root, func(c *cobra.Command) {
		if c != root {
			all = append(all, c)
		}
	})
	return all
}

func TestCompletionScripts(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_edgefleet",
		"zsh":  "#compdef edgefleet",
		"fish": "complete -c edgefleet",
	} {
		code, stdout, stderr := cli(t, "completion", shell)
		require.Equal(t, 0, code, "completion %s: %s", shell, stderr)
		assert.Contains(t, stdout, marker, "completion %s", shell)
		// The scripts ask the binary for the words: edgefleet __complete.
		assert.Contains(t, stdout, "__complete", "completion %s", shell)
	}
}

// TestCompletionWords checks what the completion scripts get from
// `edgefleet __complete`: the commands of the tree, subcommands, flags and
// the fixed values of some flags.
func TestCompletionWords(t *testing.T) {
	words := func(args ...string) []string {
		t.Helper()
		code, stdout, stderr := cli(t, append([]string{"__completeNoDesc"}, args...)...)
		require.Equal(t, 0, code, stderr)
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		require.NotEmpty(t, lines)
		require.True(t, strings.HasPrefix(lines[len(lines)-1], ":"), "the directive ends the output: %q", stdout)
		return lines[:len(lines)-1]
	}
	var top []string
	for _, c := range tree().Commands() {
		if c.IsAvailableCommand() {
			top = append(top, c.Name())
		}
	}
	got := words("")
	for _, name := range append(top, "help") {
		assert.Contains(t, got, name)
	}
	assert.Subset(t, words("rollout", ""), []string{"create", "get", "list", "pause", "resume", "promote", "abort", "rollback"})
	assert.Subset(t, words("device", ""), []string{"add", "enroll", "revoke"})
	assert.Subset(t, words("rollout", "create", "--"), []string{"--selector", "--stage", "--on-breach", "--api", "--token"})
	assert.Equal(t, []string{"viewer", "operator", "admin", "broker"}, words("token", "create", "--role", ""))
	assert.Equal(t, []string{"pause", "rollback"}, words("rollout", "create", "--on-breach", ""))
	assert.Equal(t, []string{"bash", "zsh", "fish"}, words("completion", ""))
}

func TestHelpOfEveryCommand(t *testing.T) {
	for _, c := range commands(tree()) {
		path := strings.Fields(c.CommandPath())[1:]
		t.Run(strings.Join(path, "_"), func(t *testing.T) {
			assert.NotEmpty(t, c.Short)
			code, stdout, stderr := cli(t, append(path, "--help")...)
			assert.Equal(t, 0, code, stderr)
			assert.Contains(t, stdout, "Usage: "+c.CommandPath())
			assert.Empty(t, stderr)
			if !c.HasSubCommands() && c.Name() != "help" {
				assert.Contains(t, c.Example, c.CommandPath(), "every command has an example")
			}
		})
	}
}

// TestExamplesParse runs the command line of every example through the
// tree's parsing, up to the point where the command would run: each names
// a real command, real flags with valid values and the right arguments.
func TestExamplesParse(t *testing.T) {
	all := append(commands(tree()), tree())
	for _, c := range all {
		for _, line := range exampleLines(c.Example) {
			t.Run(line, func(t *testing.T) {
				root := tree()
				args := longFlags(root, strings.Fields(line)[1:])
				cmd, rest, err := root.Find(args)
				require.NoError(t, err)
				require.NoError(t, cmd.ParseFlags(rest))
				require.NoError(t, cmd.ValidateArgs(cmd.Flags().Args()))
			})
		}
	}
}

// exampleLines returns the edgefleet command lines of an Example text,
// continuation lines joined, without comments or shell around them.
func exampleLines(example string) []string {
	var lines []string
	var cur string
	for _, l := range strings.Split(example, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasSuffix(l, `\`) {
			cur += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		l, cur = cur+l, ""
		if strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.Index(l, "edgefleet ")
		if i < 0 {
			continue
		}
		l = l[i:]
		if j := strings.IndexAny(l, ")>|#"); j >= 0 {
			l = l[:j]
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

func TestExitStatusAndMessages(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantCode  int
		wantOut   string // in stdout
		wantErr   string // in stderr
		wantHint  string // the --help hint of a usage error
		emptyOut  bool
		oneErrLn  bool
		wantNoErr bool
	}{
		{name: "help flag", args: []string{"--help"}, wantCode: 0, wantOut: "Usage: edgefleet", wantNoErr: true},
		{name: "one-dash help", args: []string{"-help"}, wantCode: 0, wantOut: "Usage: edgefleet", wantNoErr: true},
		{name: "help command", args: []string{"help", "rollout", "create"}, wantCode: 0, wantOut: "Usage: edgefleet rollout create", wantNoErr: true},
		{name: "command help", args: []string{"rollout", "create", "-h"}, wantCode: 0, wantOut: "--max-failure-rate", wantNoErr: true},
		{name: "no command", args: []string{"--api", "http://x"}, wantCode: 2, wantErr: "Run \"edgefleet <command> --help\"", emptyOut: true},
		{name: "unknown command", args: []string{"nope"}, wantCode: 2, wantErr: `unknown command "nope"`, wantHint: `Run "edgefleet --help" for usage.`},
		{name: "unknown help topic", args: []string{"help", "nope"}, wantCode: 2, wantErr: `unknown help topic "nope"`},
		{name: "unknown subcommand", args: []string{"token", "burn"}, wantCode: 2, wantErr: "want token create, token list or token revoke", wantHint: `Run "edgefleet token --help" for usage.`},
		{name: "unknown flag", args: []string{"rollout", "list", "--bogus"}, wantCode: 2, wantErr: "flag provided but not defined: -bogus", wantHint: `Run "edgefleet rollout list --help" for usage.`},
		{name: "bad flag value", args: []string{"metrics", "fraud@1", "--since", "soon"}, wantCode: 2, wantErr: `invalid argument "soon" for "--since" flag`},
		{name: "flag without value", args: []string{"devices", "--selector"}, wantCode: 2, wantErr: "flag needs an argument: --selector"},
		{name: "wrong argument count", args: []string{"token", "revoke"}, wantCode: 2, wantErr: "token revoke takes one token id, got 0 arguments"},
		{name: "extra argument", args: []string{"models", "fraud"}, wantCode: 2, wantErr: `models takes no arguments, got ["fraud"]`},
		{name: "no shell", args: []string{"completion", "tcsh"}, wantCode: 2, wantErr: "bash, zsh or fish"},
		{name: "runtime error", args: []string{"devices", "--api", "http://127.0.0.1:1", "--token", "t"}, wantCode: 1, wantErr: "is `edgefleet serve` running at http://127.0.0.1:1?", oneErrLn: true},
		{name: "one-dash global flags", args: []string{"-api", "http://127.0.0.1:1", "-token=t", "devices", "-selector", "a=b"}, wantCode: 1, wantErr: "cannot reach the control plane at http://127.0.0.1:1", oneErrLn: true},
		{name: "flag value that starts with a dash", args: []string{"serve", "-alert-max-psi", "-1"}, wantCode: 2, wantErr: "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cli(t, tt.args...)
			assert.Equal(t, tt.wantCode, code, "stdout %q stderr %q", stdout, stderr)
			assert.Contains(t, stdout, tt.wantOut)
			assert.Contains(t, stderr, tt.wantErr)
			if tt.wantCode == 2 && !tt.emptyOut {
				assert.True(t, strings.HasPrefix(stderr, "edgefleet: "), stderr)
				assert.Regexp(t, `\nRun "edgefleet[a-z ]* --help" for usage.\n$`, stderr)
			}
			if tt.wantHint != "" {
				assert.Contains(t, stderr, tt.wantHint)
			}
			if tt.emptyOut {
				assert.Empty(t, stdout)
			}
			if tt.oneErrLn {
				assert.True(t, strings.HasPrefix(stderr, "edgefleet: "), stderr)
				assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
			}
			if tt.wantNoErr {
				assert.Empty(t, stderr)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	envs := map[string]string{EnvAPI: "http://127.0.0.1:1", EnvToken: "t", EnvMQTTPassword: "s3cret-pw"}
	getenv := func(k string) string { return envs[k] }

	code, _, stderr := cliEnv(t, getenv, "devices")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "at http://127.0.0.1:1", "EDGEFLEET_API applies without --api")

	code, _, stderr = cliEnv(t, getenv, "devices", "--api", "http://127.0.0.1:2")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "at http://127.0.0.1:2", "--api wins over EDGEFLEET_API")

	code, stdout, stderr := cliEnv(t, getenv, "serve", "--help")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "--mqtt-password")
	assert.NotContains(t, stdout, "s3cret-pw", "help never shows a password from the environment")
	assert.Contains(t, stdout, `(default "`+DefaultAPI+`")`)
}

func TestOrList(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"a"}, "a"},
		{[]string{"a", "b"}, "a or b"},
		{[]string{"a", "b", "c"}, "a, b or c"},
	}
	for _, tt := range tests {
		if got := orList(tt.in); got != tt.want {
			t.Errorf("orList(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
