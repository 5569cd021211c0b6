// Package bench runs fleet-sim's benchmarks: rollout fan-out against a raw
// MQTT baseline through a broker of the same code and settings, per-agent
// memory and goroutines at scale, telemetry ingest against raw publishers,
// the control plane's CPU per rollout and per report with the control
// plane in its own process (cost.go), and one real agent process's memory,
// binary size and a large model swap under load (agent.go). Imported by
// fleet-sim.
package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// Main runs `fleet-sim bench fanout|scale|telemetry [flags]` and returns
// the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "rawbroker" {
		// The cost benchmark's baseline broker, a child of `bench cost`.
		if err := RawBroker(ctx, os.Stdin, stdout); err != nil {
			fmt.Fprintf(stderr, "fleet-sim bench rawbroker: %v\n", err)
			return 1
		}
		return 0
	}
	if len(args) == 0 || (args[0] != "fanout" && args[0] != "scale" && args[0] != "telemetry" && args[0] != "agent" && args[0] != "cost") {
		fmt.Fprintln(stderr, "usage: fleet-sim bench fanout|scale|telemetry|agent|cost [--n 100,1000] [--model-bytes N] [--duration 30s] [--work-dir D] [--report FILE]")
		return 2
	}
	fs := flag.NewFlagSet("fleet-sim bench "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	ns := fs.String("n", "100,1000", "fleet sizes, comma separated")
	modelBytes := fs.Int("model-bytes", 1<<20, "fanout: model size in bytes (a fraud model padded with an ONNX doc_string)")
	proxyMax := fs.Int("proxy-max", 2000, "fanout: count bytes on the wire through the proxy up to this N (it doubles the sockets)")
	fetchRetry := fs.Duration("fetch-retry", 2*time.Second, "fanout, cost: the agents' fetch retry interval")
	transport := fs.String("transport", "memory", "how agents (and the baseline's subscribers) reach the broker: memory or tcp")
	workDir := fs.String("work-dir", "", "state directory (default: a temporary one)")
	ortLib := fs.String("ort-lib", "", "path of libonnxruntime.so.1")
	heapProfile := fs.String("heap-profile", "", "scale: write a heap profile at the largest N to this file")
	report := fs.String("report", "", "also write the results as JSON to this file")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile of the whole run to this file")
	profileWindow := fs.Bool("cpu-profile-window", false, "fanout: --cpu-profile covers the last fleet size's rollout only (deploy to every agent serving)")
	duration := fs.Duration("duration", 30*time.Second, "telemetry: measured window once every agent reports")
	rate := fs.Float64("rate", 2, "telemetry: inferences per device per second (so reports carry monitoring)")
	agentDir := fs.String("agent-dir", "", "fanout, cost: where the agents' model files go (default: under --work-dir; removed after), e.g. /dev/shm: one machine's disk otherwise takes every simulated device's downloads and fsyncs")
	diskStore := fs.Bool("agent-store-on-disk", false, "telemetry, fanout: the agents' shared store (their state and outboxes) in badger on disk with synced commits, not in memory")
	agentBin := fs.String("agent-bin", "", "agent: the edgefleet-agent binary to run and measure")
	agentExec := fs.String("agent-exec", "", "agent: run the binary through this command, e.g. \"qemu-aarch64 -L /usr/aarch64-linux-gnu\"")
	agentORT := fs.String("agent-ort-lib", "", "agent: the agent's onnxruntime_library (default: next to its binary, then $EDGEFLEET_ORT_LIB)")
	memLimit := fs.String("memory-limit", "", "agent: the agent's memory_limit, e.g. 24MiB (empty: unset)")
	inferences := fs.Int("inferences", 10000, "agent: inferences before the serving figure")
	swapBytes := fs.Int("swap-model-bytes", 100<<20, "agent: size of the two large models swapped under load")
	skipSwap := fs.Bool("skip-swap", false, "agent: measure idle and serving only")
	clients := fs.Int("clients", 8, "agent: clients during the swap (one sends --big-batch rows a request)")
	bigBatch := fs.Int("big-batch", 1024, "agent: rows in each request of the large-batch client")
	steady := fs.Duration("steady", 10*time.Second, "agent: steady-state window before and after the swap")
	cpBin := fs.String("cp-bin", "", "cost: the edgefleet binary, run as `edgefleet serve` in its own process")
	simBin := fs.String("sim-bin", "", "cost: the fleet-sim binary run as the baseline broker (default: this one)")
	reportRate := fs.Int("report-rate", 10000, "cost: telemetry reports per second offered")
	reporters := fs.Int("reporters", 1000, "cost: raw device clients sending them")
	cpProfile := fs.String("cp-cpu-profile", "", "cost: the control plane process writes a CPU profile of its run to this file")
	rawProfile := fs.String("raw-cpu-profile", "", "cost: the raw broker process writes a CPU profile of its fan-outs to this file")
	cpProfileWindow := fs.Bool("cp-cpu-profile-window", false, "cost: --cp-cpu-profile covers the rollout's measured window only")
	rollouts := fs.Int("rollouts", 3, "cost: rollouts of a new version, one after another; the ratio takes their median")
	baselineRuns := fs.Int("baseline-runs", 3, "cost: raw fan-outs after them; the ratio divides by their median")
	skipRollout := fs.Bool("skip-rollout", false, "cost: measure telemetry ingest only")
	skipTelemetry := fs.Bool("skip-telemetry", false, "cost: measure the rollout only")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *profileWindow && (args[0] != "fanout" || *cpuProfile == "") {
		fmt.Fprintln(stderr, "fleet-sim bench: --cpu-profile-window needs fanout and --cpu-profile")
		return 2
	}
	if *cpuProfile != "" && !*profileWindow {
		stop, err := StartCPUProfile(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "fleet-sim bench: %v\n", err)
			return 2
		}
		defer func() {
			if err := stop(); err != nil {
				fmt.Fprintf(stderr, "fleet-sim bench: %v\n", err)
			}
		}()
	}
	var sizes []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "fleet-sim bench: --n: %q is not a positive number\n", s)
			return 2
		}
		sizes = append(sizes, n)
	}
	dir := *workDir
	if dir == "" {
		d, err := os.MkdirTemp("", "fleet-sim-bench-*")
		if err != nil {
			fmt.Fprintf(stderr, "fleet-sim bench: %v\n", err)
			return 2
		}
		defer os.RemoveAll(d)
		dir = d
	}
	var results any
	var err error
	switch args[0] {
	case "agent":
		results, err = Agent(ctx, AgentOptions{AgentBin: *agentBin, ExecPrefix: strings.Fields(*agentExec), AgentORTLibrary: *agentORT, MemoryLimit: *memLimit,
			ORTLibrary: *ortLib, Inferences: *inferences, SwapModelBytes: *swapBytes, SkipSwap: *skipSwap, Clients: *clients,
			BigBatch: *bigBatch, Steady: *steady, Dir: dir, Progress: stdout})
	case "fanout":
		o := FanoutOptions{Sizes: sizes, ModelBytes: *modelBytes, ProxyMax: *proxyMax, FetchRetry: *fetchRetry, StoreOnDisk: *diskStore, Transport: *transport,
			AgentDir: *agentDir, Dir: dir, ORTLibrary: *ortLib, Progress: stdout}
		if *profileWindow {
			o.RolloutProfile = *cpuProfile
		}
		results, err = Fanout(ctx, o)
	case "scale":
		results, err = Scale(ctx, ScaleOptions{Sizes: sizes, Transport: *transport, HeapProfile: *heapProfile, Dir: dir, ORTLibrary: *ortLib, Progress: stdout})
	case "cost":
		if !flagSet(fs, "n") {
			sizes = []int{1000}
		}
		if len(sizes) != 1 {
			fmt.Fprintln(stderr, "fleet-sim bench cost: --n takes one fleet size")
			return 2
		}
		d := *duration
		if !flagSet(fs, "duration") {
			d = 20 * time.Second
		}
		results, err = Cost(ctx, CostOptions{N: sizes[0], ModelBytes: *modelBytes, FetchRetry: *fetchRetry, ReportRate: *reportRate, Reporters: *reporters, Duration: d,
			Rollouts: *rollouts, BaselineRuns: *baselineRuns, AgentDir: *agentDir,
			ControlPlaneBin: *cpBin, ControlPlaneProfile: *cpProfile, ControlPlaneProfileWindow: *cpProfileWindow, BaselineProfile: *rawProfile, SimBin: *simBin, SkipRollout: *skipRollout, SkipTelemetry: *skipTelemetry, Dir: dir, ORTLibrary: *ortLib, Progress: stdout})
	case "telemetry":
		results, err = Telemetry(ctx, TelemetryOptions{Sizes: sizes, Duration: *duration, Rate: *rate, StoreOnDisk: *diskStore, Transport: *transport,
			Dir: dir, ORTLibrary: *ortLib, Progress: stdout})
	}
	if err != nil {
		fmt.Fprintf(stderr, "fleet-sim bench: %v\n", err)
		return 1
	}
	if *report != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "fleet-sim bench: %v\n", err)
			return 1
		}
	}
	return 0
}

// flagSet reports whether the command line set flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// StartCPUProfile profiles the process into path until the returned stop
// is called; stop flushes and closes the file. fleet-sim's bench and run
// commands share it (--cpu-profile).
func StartCPUProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		return nil
	}, nil
}
