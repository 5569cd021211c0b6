// Command fleet-sim runs many real edgefleet agents in one process against
// a real control plane: `fleet-sim run scenario.yaml` runs a scenario file
// and exits non-zero when an assertion fails; `fleet-sim bench fanout|scale`
// runs the fleet benchmarks; `fleet-sim soak` runs the chaos soak. The work
// is done by packages sim, scenario, bench and soak.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/edgefleet/edgefleet/fleet-sim/bench"
	"github.com/edgefleet/edgefleet/fleet-sim/scenario"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

const usage = `usage:
  fleet-sim run SCENARIO.yaml [--report DIR] [--work-dir DIR] [--api URL --token T] [--speed N] [--quiet] [--log-level L] [--agent-log-level L]
  fleet-sim bench fanout [--n 100,1000] [--model-bytes 1048576] [--report FILE]
  fleet-sim bench scale  [--n 100,1000] [--report FILE]
  fleet-sim bench telemetry [--n 100,1000] [--duration 30s] [--rate 2] [--agent-store-on-disk] [--report FILE]
  fleet-sim soak [--agents 200] [--duration 3m] [--seed 1] [--report DIR] [--work-dir DIR] [--agent-store-on-disk] [--quiet]
  fleet-sim bench cost --cp-bin bin/edgefleet [--n 1000] [--report-rate 10000] [--reporters 1000] [--duration 20s] [--rollouts 3] [--baseline-runs 3] [--agent-dir DIR] [--cp-cpu-profile FILE] [--raw-cpu-profile FILE] [--skip-rollout|--skip-telemetry]
  fleet-sim bench agent --agent-bin bin/edgefleet-agent [--agent-exec "qemu-aarch64 -L /usr/aarch64-linux-gnu"] [--skip-swap] [--report FILE]
  fleet-sim actions      (lists scenario actions and assertions)
exit codes: 0 passed, 1 a step or assertion failed, 2 usage or setup error`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		sim.TuneGC()
		return runScenario(ctx, args[1:], stdout, stderr)
	case "bench":
		// The cost benchmark's baseline broker (`bench rawbroker`, a child
		// of `bench cost`) keeps the Go defaults the control plane runs
		// with: a broker collecting four times less often is not the same
		// broker.
		if len(args) < 2 || args[1] != "rawbroker" {
			sim.TuneGC()
		}
		return bench.Main(ctx, args[1:], stdout, stderr)
	case "soak":
		return runSoak(ctx, args[1:], stdout, stderr)
	case "actions":
		reg := scenario.NewRegistry()
		fmt.Fprintf(stdout, "actions: %s\nassertions: %s\n", strings.Join(reg.ActionNames(), ", "), strings.Join(reg.AssertionNames(), ", "))
		return 0
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "fleet-sim: unknown command %q\n%s\n", args[0], usage)
	return 2
}

func runScenario(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleet-sim run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	reportDir := fs.String("report", "", "directory for report.json and chart.svg (default fleet-sim-report/<scenario>)")
	workDir := fs.String("work-dir", "", "fleet state directory (default: a temporary one, removed afterwards)")
	api := fs.String("api", "", "external control plane API URL (default: one in-process)")
	token := fs.String("token", os.Getenv("EDGEFLEET_TOKEN"), "external control plane API token (env EDGEFLEET_TOKEN)")
	ortLib := fs.String("ort-lib", "", "path of libonnxruntime.so.1 (default: searched)")
	quiet := fs.Bool("quiet", false, "no progress output")
	logLevel := fs.String("log-level", "", "log the simulator and control plane at this level to stderr (debug, info, warn, error)")
	agentLogLevel := fs.String("agent-log-level", "", "log every agent at this level to stderr, each line with its device (debug, info, warn, error)")
	speed := fs.Float64("speed", 0, "simulated clock speed, 1 to 3600 simulated seconds per real second (default: the scenario's clock: {speed: N}, else 1)")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile of the whole run (agents, control plane and broker) to this file")
	// Flags may follow the scenario file.
	var file string
	rest := args
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		if file != "" {
			fmt.Fprintf(stderr, "fleet-sim run: one scenario file, got %q and %q\n", file, fs.Arg(0))
			return 2
		}
		file, rest = fs.Arg(0), fs.Args()[1:]
	}
	if file == "" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	sc, err := scenario.Load(file, scenario.NewRegistry())
	if err != nil {
		fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
		return 2
	}
	if *speed != 0 {
		if err := sc.SetSpeed(*speed); err != nil {
			fmt.Fprintf(stderr, "fleet-sim: %s: --speed: %v\n", file, err)
			return 2
		}
	}
	opts := scenario.RunOptions{WorkDir: *workDir, ORTLibrary: *ortLib, Progress: stdout}
	if *quiet {
		opts.Progress = nil
	}
	var ok bool
	if opts.Logger, ok = levelLogger("log-level", *logLevel, stderr); !ok {
		return 2
	}
	if opts.AgentLogger, ok = levelLogger("agent-log-level", *agentLogLevel, stderr); !ok {
		return 2
	}
	if *api != "" {
		if *token == "" {
			fmt.Fprintln(stderr, "fleet-sim: --api needs --token (or EDGEFLEET_TOKEN)")
			return 2
		}
		opts.Remote = &sim.RemoteControlPlane{APIURL: *api, Token: *token}
	}
	if *cpuProfile != "" {
		stop, err := bench.StartCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
			return 2
		}
		defer func() {
			if err := stop(); err != nil {
				fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
			}
		}()
	}
	rep, err := scenario.Run(ctx, sc, opts)
	if err != nil {
		fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
		return 2
	}
	dir := *reportDir
	if dir == "" {
		dir = filepath.Join("fleet-sim-report", sc.Name)
	}
	if err := rep.WriteFiles(dir); err != nil {
		fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
		return 2
	}
	rep.Summary(stdout)
	fmt.Fprintf(stdout, "report: %s, chart: %s\n", filepath.Join(dir, "report.json"), filepath.Join(dir, "chart.svg"))
	if !rep.Passed {
		return 1
	}
	return 0
}

// levelLogger is a text logger to stderr at the level named by the value of
// flag name, nil for none (""); false after telling stderr the level is bad.
func levelLogger(name, level string, stderr io.Writer) (*slog.Logger, bool) {
	if level == "" {
		return nil, true
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		fmt.Fprintf(stderr, "fleet-sim: --%s: %v\n", name, err)
		return nil, false
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), true
}
