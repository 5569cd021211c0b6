// Command edgefleet-agent runs the edgefleet device agent: flags and the
// config file become agent.Options, signals become cancellation.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "enroll" {
		return runEnroll(os.Args[2:])
	}
	fs := flag.NewFlagSet("edgefleet-agent", flag.ContinueOnError)
	configPath := fs.String("config", "/etc/edgefleet/agent.yaml", "agent config file (YAML)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("edgefleet-agent", buildinfo.String())
		return 0
	}
	cfg, err := agent.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err)
		return 1
	}
	opts, err := cfg.Options()
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err)
		return 1
	}
	if limit, _ := cfg.GoMemoryLimit(); limit > 0 { // checked by Options
		debug.SetMemoryLimit(limit)
	}
	var level slog.Level
	if cfg.LogLevel != "" {
		if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
			fmt.Fprintf(os.Stderr, "edgefleet-agent: log_level %q: %v\n", cfg.LogLevel, err)
			return 1
		}
	}
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts.Version = buildinfo.Version()

	a, err := agent.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err)
		return 1
	}
	return 0
}
