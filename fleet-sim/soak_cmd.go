package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edgefleet/edgefleet/fleet-sim/soak"
)

// runSoak is `fleet-sim soak`: the chaos soak (package soak).
func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleet-sim soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agents := fs.Int("agents", 200, "number of agents")
	duration := fs.Duration("duration", 3*time.Minute, "how long the chaos runs (convergence and the final checks follow)")
	seed := fs.Uint64("seed", 1, "seed of the schedule, picks and traffic")
	reportDir := fs.String("report", "", "directory for report.json, report.txt and chart.svg (default soak-report/<UTC time>)")
	workDir := fs.String("work-dir", "", "fleet state directory (default: a temporary one, removed afterwards)")
	ortLib := fs.String("ort-lib", "", "path of libonnxruntime.so.1 (default: searched)")
	onDisk := fs.Bool("agent-store-on-disk", false, "keep the agents' shared state in a badger on disk with synced commits (default: in memory)")
	quiet := fs.Bool("quiet", false, "no progress output")
	logLevel := fs.String("log-level", "", "log the simulator and control plane at this level to stderr (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleet-sim soak: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	dir := *workDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fleet-sim-soak-")
		if err != nil {
			fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
			return 2
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	out := *reportDir
	if out == "" {
		out = filepath.Join("soak-report", time.Now().UTC().Format("20060102T150405Z"))
	}
	opts := soak.Options{Agents: *agents, Duration: *duration, Seed: *seed, Dir: dir, ReportDir: out, ORTLibrary: *ortLib, Progress: stdout,
		AgentStoreOnDisk: *onDisk}
	if *quiet {
		opts.Progress = nil
	}
	var ok bool
	if opts.Logger, ok = levelLogger("log-level", *logLevel, stderr); !ok {
		return 2
	}
	rep, err := soak.Run(ctx, opts)
	if rep == nil {
		fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
		return 2
	}
	rep.WriteText(stdout)
	if err != nil {
		fmt.Fprintf(stderr, "fleet-sim: %v\n", err)
		return 2
	}
	fmt.Fprintf(stdout, "report: %s, chart: %s\n", filepath.Join(out, "report.json"), filepath.Join(out, "chart.svg"))
	if !rep.Passed {
		return 1
	}
	return 0
}
