// Command fleet-sim will run many real agents against a real control plane
// from scenario files (see the fleet-sim issue). Today it only says so: the
// foundation ships the agent and control plane it will drive.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "fleet-sim: not built yet; the scenarios, faults and benchmarks are tracked in the fleet-sim issue")
	os.Exit(2)
}
