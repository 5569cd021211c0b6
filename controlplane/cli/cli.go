// Package cli is the edgefleet command line: `serve` runs the control plane
// in the foreground; the other commands are offline tools (keys, model
// train, broker acl) or clients of its REST API. The command tree is built
// with cobra for each invocation. Imported by controlplane/cmd/edgefleet.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Environment variables read by the CLI.
const (
	EnvAPI       = "EDGEFLEET_API"
	EnvToken     = "EDGEFLEET_TOKEN"
	EnvTokenFile = "EDGEFLEET_TOKEN_FILE"
	// EnvMQTTPassword is serve's password on an external broker.
	EnvMQTTPassword = "EDGEFLEET_MQTT_PASSWORD"
	// EnvWebhookSecretFile names serve's webhook signing-key file.
	EnvWebhookSecretFile = "EDGEFLEET_WEBHOOK_SECRET_FILE"
	DefaultAPI           = "http://127.0.0.1:8080"
)

// usageError is a command line mistake: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// runError is a command's own failure, once its command line was
// accepted: exit status 1.
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// errNoCommand reports a command line without a command; the help has
// been printed to stderr already.
var errNoCommand = errors.New("no command")

// env is the process environment, injectable for tests.
type env func(string) string

// app is one CLI invocation: the command tree's flags are bound to it.
type app struct {
	stdout, stderr io.Writer
	getenv         env

	// Global flags.
	api       string
	token     string
	tokenFile string
}

// Main runs the command line with args (without the program name) and
// returns the exit status: 0 success, 1 failure, 2 usage error. ctx ends
// long-running commands (serve) cleanly.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, args, os.Getenv, stdout, stderr)
}

func run(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	root := a.newRoot()
	cmd, err := a.execute(ctx, root, args)
	if cmd == nil {
		cmd = root
	}
	var re *runError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &re):
		fmt.Fprintf(stderr, "edgefleet: %s\n", oneLine(hint(re.err, a.api).Error()))
		return 1
	case errors.Is(err, errNoCommand):
		return 2
	default:
		// Everything else happened before a command ran: an unknown
		// command or flag, a bad flag value, wrong arguments.
		fmt.Fprintf(stderr, "edgefleet: %s\n", strings.TrimRight(err.Error(), "\n"))
		fmt.Fprintf(stderr, "Run %q for usage.\n", cmd.CommandPath()+" --help")
		return 2
	}
}

// stringList is a repeatable string flag: every use adds one value, and
// commas are not separators (a stage such as devices:a,b is one value).
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
func (l *stringList) Type() string       { return "strings" }

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
