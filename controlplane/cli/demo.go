package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/demo"
)

// demoCmd runs the end-to-end demo with the binaries next to this one.
func (a *app) demoCmd() *cobra.Command {
	var (
		bin, workDir string
		devices      int
		keep         bool
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "run the end-to-end demo (control plane, agents, two model versions)",
		Long: `Runs edgefleet's main job end to end with the real binaries, on this machine: a control plane,
--devices agent processes, a model trained, pushed, deployed and served, then a second
version deployed while inference keeps running. Every CLI command it runs is printed with
its output. It needs edgefleet and edgefleet-agent in one directory ("make build" puts them
in bin/), and stops everything it started when it ends or is interrupted. It prints the web
console's address and a login link; with --keep the control plane and agents stay up for it
until interrupted.`,
		Example: `  edgefleet demo
  edgefleet demo --bin ./bin --work-dir .demo --devices 5
  edgefleet demo --keep   # then open the printed login link`,
		Args: noArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			if devices < 1 || devices > 50 {
				return usagef("--devices %d: want 1 to 50", devices)
			}
			if bin == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the binaries: %w (pass --bin)", err)
				}
				bin = filepath.Dir(exe)
			}
			for _, name := range []string{"edgefleet", "edgefleet-agent"} {
				if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
					return fmt.Errorf("demo needs %s in %s: run make build (or pass --bin)", name, bin)
				}
			}
			return demo.Run(cmd.Context(), demo.Options{BinDir: bin, WorkDir: workDir, Devices: devices, Keep: keep, Out: a.stdout})
		}),
	}
	f := c.Flags()
	f.StringVar(&bin, "bin", "", "`DIR` holding edgefleet and edgefleet-agent (default: this binary's directory)")
	f.StringVar(&workDir, "work-dir", ".demo", "`DIR` for the demo's state and logs (wiped first)")
	f.IntVar(&devices, "devices", 3, "`N` agent processes")
	f.BoolVar(&keep, "keep", false, "keep the control plane and agents running after the demo (for the web console) until interrupted")
	return c
}
