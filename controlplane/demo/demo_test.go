package demo

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo builds the real binaries and runs the whole demo: what `make
// demo` does on a user's machine, minus the Makefile.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs processes")
	}
	bin := t.TempDir()
	for pkg, name := range map[string]string{
		"github.com/edgefleet/edgefleet/controlplane/cmd/edgefleet": "edgefleet",
		"github.com/edgefleet/edgefleet/agent/cmd/edgefleet-agent":  "edgefleet-agent",
	} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg).CombinedOutput()
		require.NoError(t, err, "go build %s: %s", pkg, out)
	}
	var out bytes.Buffer
	work := filepath.Join(t.TempDir(), "demo")
	err := Run(context.Background(), Options{BinDir: bin, WorkDir: work, Out: &out})
	require.NoError(t, err, "demo output:\n%s\nthe control plane's log, last lines:\n%s", out.String(), tail(filepath.Join(work, "controlplane.log"), 80))
	text := out.String()
	assert.Contains(t, text, "all 3 devices report fraud@1.0.0 active")
	assert.Contains(t, text, "all 3 devices report fraud@2.0.0 active")
	assert.Regexp(t, `\d+ inference requests during the switch, 0 failed`, text)
	assert.Regexp(t, `electronics, 3am, risky merchant, abroad\s+fraud probability (0\.9\d\d|1\.000)\s+FRAUD`, text)
	assert.Regexp(t, `coffee, 8am, local shop, old card\s+fraud probability 0\.0\d\d\s+ok`, text)
	// The MLOps loop: the alert of the drifted site only, a job that
	// publishes a better candidate, its shadow rollout, the lineage.
	assert.Regexp(t, `monitor\.alert\.low_accuracy\s+fraud@2\.0\.0`, text)
	assert.Contains(t, text, "trigger: alert:low_accuracy site=plant-2; parent 2.0.0; trainer builtin:fraud; rows of site plant-2 only")
	assert.Contains(t, text, "published 2.0.1 and started rollout")
	assert.Regexp(t, `rollout r-\w+\s+fraud@2\.0\.1\s+selector fleet=demo,site=plant-2\s+state:\s+completed`, text)
	assert.Regexp(t, `plant-2 accuracy on new traffic: 2\.0\.0 0\.\d+ → 2\.0\.1 0\.\d+`, text)
	assert.Contains(t, text, "fraud 2.0.1")
	assert.Contains(t, text, "trigger: alert:low_accuracy site=plant-2 (job j-")
	assert.Contains(t, text, "Demo finished in")
}

// tail is the last n lines of the file at path, or why there are none:
// the demo's work directory goes with the test, and a failure (its retrain
// step once waited 90 s in vain under heavy load) needs the control
// plane's side.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
