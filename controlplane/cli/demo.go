package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgefleet/edgefleet/controlplane/demo"
)

// demoCmd runs the end-to-end demo with the binaries next to this one.
func (a *app) demoCmd(ctx context.Context, args []string) error {
	fs := a.flagSet("edgefleet demo")
	bin := fs.String("bin", "", "directory holding edgefleet and edgefleet-agent (default: this binary's directory)")
	workDir := fs.String("work-dir", ".demo", "directory for the demo's state and logs (wiped first)")
	devices := fs.Int("devices", 3, "number of agent processes")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("demo takes no arguments, got %q", pos)
	}
	if *devices < 1 || *devices > 50 {
		return usagef("--devices %d: want 1 to 50", *devices)
	}
	if *bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the binaries: %w (pass --bin)", err)
		}
		*bin = filepath.Dir(exe)
	}
	for _, name := range []string{"edgefleet", "edgefleet-agent"} {
		if _, err := os.Stat(filepath.Join(*bin, name)); err != nil {
			return fmt.Errorf("demo needs %s in %s: run make build (or pass --bin)", name, *bin)
		}
	}
	return demo.Run(ctx, demo.Options{BinDir: *bin, WorkDir: *workDir, Devices: *devices, Out: a.stdout})
}
