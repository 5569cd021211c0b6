package sim

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"
)

// gcPercent is fleet-sim's garbage collector target when GOGC is not set:
// thousands of agents share one heap here (a device has its own), and at
// the default (100) a 10,000-agent rollout spent about a third of its CPU in the
// collector, scanning every agent's heap and 160,000 goroutine stacks per
// cycle. A memory limit (GOMEMLIMIT, or 60% of the memory available at
// start) keeps the larger target from outgrowing the machine.
const gcPercent = 400

// TuneGC sets the process's collector for a fleet in one process, unless
// GOGC is set: a gcPercent target, and a memory limit unless GOMEMLIMIT is
// set. fleet-sim's main calls it for scenario runs and benchmarks, not for
// the soak, whose resource-trend invariants were tuned with the default.
func TuneGC() {
	if os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(gcPercent)
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb); err == nil && kb > 0 {
				debug.SetMemoryLimit(kb << 10 * 6 / 10)
			}
		}
	}
}
