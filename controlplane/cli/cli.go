// Package cli is the edgefleet command line: `serve` runs the control plane
// in the foreground; the other commands (keys, model, models, device,
// devices, deploy, version) are offline tools or clients of its REST API.
// Only controlplane/cmd/edgefleet imports it; tests drive Main directly.
package cli

import (
	"context"
	"errors"
	"flag"
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

const usageText = `edgefleet: control plane for signed ONNX model delivery to edge devices

Usage: edgefleet [global flags] <command> [flags] [args]

Commands:
  serve                     run the control plane (API, embedded MQTT broker)
  keys init --dir DIR       create root, release and control keys and a trust bundle
  keys rotate --role release|control|root --dir DIR
                            replace a key; writes the next root-signed trust bundle
  model train --out F       train the fraud example model (writes F and F.meta.json)
  model push --name N --version V --file F [--meta M] [--force]
                            upload a model version
  models                    list model versions
  device add ID [--label k=v ...] [--config-out agent.yaml]
                            register a device and print its credentials once
  device enroll ID [--label k=v ...] [--ttl 1h]
                            issue a one-time enrollment token for edgefleet-agent enroll
  device revoke ID          revoke a device's credentials and disconnect it
  token create --name N --role viewer|operator|admin
                            create an API token (shown once)
  token list                list API tokens
  token revoke ID           revoke an API token
  devices [--selector S]    list devices and their state
  deploy NAME@VERSION (--device ID ... | --selector k=v[,k!=v])
                            issue signed desired states
  rollout create NAME@VERSION --selector S --stage canary:N|percent:P|devices:A,B|group:k=v ...
         [--bake 30s] [--max-failure-rate F] [--max-offline F] [--max-accuracy-drop D]
         [--max-drift X] [--on-breach pause|rollback] [--auto-promote]
         [--start-at T] [--window HH:MM-HH:MM ...] [--max-per-minute N]
                            start a staged rollout
  rollout get ID | list     per-stage progress and gate figures
  rollout pause|resume|promote|abort ID
  rollout rollback ID [--selector S | --device D]
                            roll back the rollout, one label group or one device
  audit [--action A] [--target T] [--limit N]
                            read the audit log
  metrics NAME@VERSION [--by site|cohort|device] [--since 24h]
                            accuracy, drift and latency in the field, with sparklines
  broker acl [--out F]      print the deny-by-default mosquitto ACL for an external broker
  demo [--work-dir D]       run the end-to-end demo (control plane, 3 agents, 2 model versions)
  version                   print the version

Global flags (also accepted after the command):
  --api URL          control plane API (env EDGEFLEET_API, default http://127.0.0.1:8080)
  --token TOKEN      API token (env EDGEFLEET_TOKEN; edgefleet token create makes more)
  --token-file PATH  file holding the token (env EDGEFLEET_TOKEN_FILE); serve writes it

Run "edgefleet <command> -h" for the flags of a command.
`

// usageError is a command line mistake: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// env is the process environment, injectable for tests.
type env func(string) string

// app is one CLI invocation.
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
	fs := a.flagSet("edgefleet")
	fs.Usage = func() { fmt.Fprint(stderr, usageText) }
	a.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	err := a.dispatch(ctx, rest[0], rest[1:])
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "edgefleet: %v\n", err)
		fmt.Fprintln(stderr, `Run "edgefleet -h" for usage.`)
		return 2
	case errors.Is(err, errFlagParse):
		return 2 // the flag package already printed the problem and usage
	default:
		fmt.Fprintf(stderr, "edgefleet: %s\n", oneLine(hint(err, a.api).Error()))
		return 1
	}
}

// errFlagParse marks a flag error the flag package has already reported.
var errFlagParse = errors.New("flag parse error")

func (a *app) dispatch(ctx context.Context, cmd string, args []string) error {
	sub := func() (string, []string, error) {
		if len(args) == 0 || strings.HasPrefix(args[0], "-") {
			return "", nil, usagef("%s needs a subcommand", cmd)
		}
		return args[0], args[1:], nil
	}
	switch cmd {
	case "serve":
		return a.serve(ctx, args)
	case "keys":
		s, rest, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "init":
			return a.keysInit(rest)
		case "rotate":
			return a.keysRotate(rest)
		}
		return usagef("unknown command \"keys %s\" (want keys init or keys rotate)", s)
	case "model":
		s, rest, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "train":
			return a.modelTrain(rest)
		case "push":
			return a.modelPush(ctx, rest)
		}
		return usagef("unknown command \"model %s\" (want model train or model push)", s)
	case "models":
		return a.models(ctx, args)
	case "device":
		s, rest, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "add":
			return a.deviceAdd(ctx, rest)
		case "enroll":
			return a.deviceEnroll(ctx, rest)
		case "revoke":
			return a.deviceRevoke(ctx, rest)
		}
		return usagef("unknown command \"device %s\" (want device add, enroll or revoke)", s)
	case "token":
		s, rest, err := sub()
		if err != nil {
			return err
		}
		return a.tokenCmd(ctx, s, rest)
	case "devices":
		return a.devices(ctx, args)
	case "rollout":
		return a.rollout(ctx, args)
	case "audit":
		return a.auditCmd(ctx, args)
	case "metrics":
		return a.metricsCmd(ctx, args)
	case "deploy":
		return a.deploy(ctx, args)
	case "version":
		return a.version(args)
	case "demo":
		return a.demoCmd(ctx, args)
	case "broker":
		s, rest, err := sub()
		if err != nil {
			return err
		}
		if s != "acl" {
			return usagef("unknown command \"broker %s\" (want broker acl)", s)
		}
		return a.brokerACL(rest)
	case "help":
		fmt.Fprint(a.stdout, usageText)
		return nil
	}
	return usagef("unknown command %q", cmd)
}

func (a *app) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	return fs
}

// globalFlags registers --api, --token and --token-file on fs; commands
// register them again so they may follow the command name.
func (a *app) globalFlags(fs *flag.FlagSet) {
	if a.api == "" {
		a.api = a.getenv(EnvAPI)
		if a.api == "" {
			a.api = DefaultAPI
		}
	}
	fs.StringVar(&a.api, "api", a.api, "control plane API URL (env "+EnvAPI+")")
	fs.StringVar(&a.token, "token", a.token, "API token (env "+EnvToken+")")
	fs.StringVar(&a.tokenFile, "token-file", a.tokenFile, "file holding the API token (env "+EnvTokenFile+")")
}

// parse parses a command's flags, allowing flags and positional arguments
// in any order (up to a "--"), and returns the positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errFlagParse
		}
		consumed := len(args) - fs.NArg()
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, fs.Args()...), nil
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
