// Command edgefleet is the control plane binary: `edgefleet serve` runs it,
// the other subcommands manage keys, models, devices and deployments. All
// logic lives in controlplane/cli; this main only turns signals into
// context cancellation.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/edgefleet/edgefleet/controlplane/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
