package deploytest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAgentRSSWithPeers runs the real agent binary three times at one
// site: one without sharing, two sharing (peers.listen), all serving the
// same model, and compares their resident memory: what site-local
// sharing costs a device (docs/benchmarks.md; goal ≤ 4 MiB).
func TestAgentRSSWithPeers(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	cp := startControlPlane(t, nil)
	dir := t.TempDir()
	bin := buildPlainAgent(t, dir)
	ids := []string{"rss-plain", "rss-peer-1", "rss-peer-2"}
	pids := map[string]int{}
	for _, id := range ids {
		cfg := cp.provision(id, filepath.Join(dir, id))
		if id != "rss-plain" {
			f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteString("peers:\n  listen: 127.0.0.1:0\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}
		p, _ := startAgentProc(t, nil, bin, "--config", cfg)
		pids[id] = p.cmd.Process.Pid
	}
	require.Eventually(t, func() bool {
		for _, id := range ids[1:] {
			d, err := cp.srv.Device(id)
			if err != nil || d.Telemetry == nil || d.Telemetry.Peers == nil || d.Telemetry.Peers.Members != 1 {
				return false
			}
		}
		return true
	}, time.Minute, 50*time.Millisecond, "the sharing agents never found each other")

	model := filepath.Join(cp.dir, "fraud.onnx")
	cp.cli("model", "train", "--out", model, "--seed", "1", "--rows", "4000")
	cp.cli("model", "push", "--name", "fraud", "--version", "1.0.0", "--file", model)
	for _, id := range ids {
		cp.cli("deploy", "fraud@1.0.0", "--device", id)
	}
	for _, id := range ids {
		cp.waitActive(id, "1.0.0", 2*time.Minute)
	}
	time.Sleep(3 * time.Second) // settled: the download's buffers are garbage
	median := func(id string) int64 {
		var xs []int64
		for range 9 {
			xs = append(xs, rssBytes(t, pids[id]))
			time.Sleep(250 * time.Millisecond)
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	plain := median("rss-plain")
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	for _, id := range ids[1:] {
		rss := median(id)
		t.Logf("agent RSS serving fraud@1.0.0: without sharing %s, sharing (%s) %s: %+.1f MiB", mib(plain), id, mib(rss), float64(rss-plain)/(1<<20))
		assert.Less(t, rss-plain, int64(6<<20), "sharing costs %s more", mib(rss-plain))
	}
}
