package bench

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCostSmall runs `fleet-sim bench cost` at a small size on freshly
// built binaries: the control plane and the baseline broker are separate
// processes whose CPU is read from /proc, the rollout reaches every agent,
// every chunk reaches every raw subscriber, and no acknowledged report is
// lost on either side at a rate both keep up with.
func TestCostSmall(t *testing.T) {
	dir := t.TempDir()
	cpBin, simBin := filepath.Join(dir, "edgefleet"), filepath.Join(dir, "fleet-sim")
	for bin, pkg := range map[string]string{cpBin: "github.com/edgefleet/edgefleet/controlplane/cmd/edgefleet", simBin: "github.com/edgefleet/edgefleet/fleet-sim"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		require.NoError(t, err, "go build %s: %s", pkg, out)
	}
	var progress strings.Builder
	r, err := Cost(context.Background(), CostOptions{N: 12, ModelBytes: 1 << 20, Rollouts: 2, // 1 MiB: enough work that each rollout shows in /proc's 10 ms ticks
		ReportRate: 60, Reporters: 6,
		Duration: 2 * time.Second, Warmup: time.Second, ControlPlaneBin: cpBin, SimBin: simBin,
		ControlPlaneProfile: filepath.Join(dir, "cp.pprof"), ControlPlaneProfileWindow: true, BaselineProfile: filepath.Join(dir, "raw.pprof"), Dir: filepath.Join(dir, "work"), Progress: &progress})
	require.NoError(t, err, progress.String())

	ro := r.Rollout
	require.NotNil(t, ro)
	assert.NoDirExists(t, filepath.Join(dir, "work", "fleet", "agents"), "the agents' model files are removed once measured")
	assert.FileExists(t, filepath.Join(dir, "work", "cp", "controlplane.log"), "the logs stay")
	assert.Equal(t, 12, ro.N)
	assert.Positive(t, ro.Chunks)
	require.Len(t, ro.Runs, 2, "two rollouts, one new version each")
	cpu := make([]float64, len(ro.Runs))
	for i, run := range ro.Runs {
		assert.GreaterOrEqual(t, run.ChunkPublishes, float64(ro.Chunks), "rollout %d published every chunk", i+1)
		assert.Positive(t, run.CPUSeconds, "the control plane process worked during rollout %d", i+1)
		assert.Positive(t, run.AcksPerDevice, "rollout %d's status events were acknowledged", i+1)
		cpu[i] = run.CPUSeconds
	}
	assert.Equal(t, median(cpu), ro.CPUSeconds, "the ratio's numerator is the rollouts' median")
	assert.Contains(t, progress.String(), "rollout 2 of 2 (version 3)")
	assert.GreaterOrEqual(t, ro.CPUSeconds, ro.CPUNetSeconds)
	assert.Zero(t, ro.BaselineMissing, "every raw subscriber got every chunk, in every run")
	require.Len(t, ro.BaselineRunsCPU, 3, "the raw fan-out runs three times by default")
	assert.Equal(t, median(ro.BaselineRunsCPU), ro.BaselineCPUSeconds, "the ratio divides by the runs' median")
	// Each device at least sent its fetch and status events and got its
	// desired state, the manifest and the chunks; and acknowledgements.
	assert.GreaterOrEqual(t, ro.PacketsIn, 3.0)
	assert.GreaterOrEqual(t, ro.PacketsOut, 3.0)
	assert.Positive(t, ro.AcksPerDevice)
	assert.Positive(t, ro.RSSBefore)
	assert.Positive(t, ro.RSSAfter)
	assert.Positive(t, ro.BaselineSeconds)
	if ro.BaselineCPUSeconds > 0 { // /proc counts in 10 ms ticks: a tiny fan-out may show none
		assert.InDelta(t, ro.CPUSeconds/ro.BaselineCPUSeconds, ro.Ratio, 1e-9)
	}
	if ro.BaselineRunsCPU[0] > 0 {
		assert.InDelta(t, ro.Runs[0].CPUSeconds/ro.BaselineRunsCPU[0], ro.FirstRatio, 1e-9, "the first runs' ratio")
	} else {
		assert.Zero(t, ro.Ratio, "no ratio without a measured baseline")
	}

	te := r.Telemetry
	require.NotNil(t, te)
	assert.Greater(t, te.PayloadBytes, 200, "a report with a fraud monitoring report")
	assert.Positive(t, te.Ingested)
	assert.Zero(t, te.Lost, "every acknowledged report was aggregated")
	assert.Zero(t, te.Duplicates)
	assert.Positive(t, te.AcksSeen, "the control plane acknowledged the reports to the devices")
	assert.Positive(t, te.BaselineReceived)
	assert.Zero(t, te.BaselineLost, "every acknowledged raw publish reached the counting subscriber")
	assert.Positive(t, te.Ratio)
	assert.Contains(t, progress.String(), "rate ratio")

	// The control plane wrote the profile of the rollout's window (from
	// SIGUSR1 to SIGUSR2), the raw broker that of its fan-outs.
	for _, name := range []string{"cp.pprof", "raw.pprof"} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.Positive(t, st.Size(), name)
	}
}

func TestMedian(t *testing.T) {
	assert.Zero(t, median(nil))
	assert.Equal(t, 2.0, median([]float64{3.8, 1.6, 2.0}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	v := []float64{3, 1, 2}
	median(v)
	assert.Equal(t, []float64{3, 1, 2}, v, "the input is not sorted in place")
}

// TestProcCPU reads this process's CPU and write syscalls while it
// spends some of each: /proc counts CPU in 10 ms ticks, and a test run
// alone may not have used one yet (it failed so before).
func TestProcCPU(t *testing.T) {
	v0, err := procCPU(os.Getpid())
	require.NoError(t, err)
	w0, err := procWrites(os.Getpid())
	require.NoError(t, err)
	sum := sha256.Sum256(nil)
	v1 := v0
	for start := time.Now(); v1 <= v0 && time.Since(start) < 30*time.Second; { // a busy machine may give this process little
		for range 10000 {
			sum = sha256.Sum256(sum[:])
		}
		v1, err = procCPU(os.Getpid())
		require.NoError(t, err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "w"))
	require.NoError(t, err)
	for range 3 {
		_, err = f.Write(sum[:])
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	w1, err := procWrites(os.Getpid())
	require.NoError(t, err)
	assert.Greater(t, v1, v0, "hashing shows as CPU")
	assert.GreaterOrEqual(t, w1-w0, uint64(3), "three writes")
	_, err = procCPU(-1)
	assert.Error(t, err)
	_, err = procWrites(-1)
	assert.Error(t, err)
}

func TestRawBrokerCommands(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- RawBroker(context.Background(), inR, outW); _ = outW.Close() }()
	lines := make(chan string, 8)
	go func() {
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := outR.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(30 * time.Second):
			t.Fatal("no answer from RawBroker")
			return ""
		}
	}
	assert.True(t, strings.HasPrefix(next(), "ready tcp://127.0.0.1:"))
	for _, tt := range []struct{ cmd, want string }{
		{"count", "ok"},
		{"stats", "ok 0 0"},
		{"unacked", "ok 0"},
		{"profile-stop", "error: no profile running"},
		{"chunks /nonexistent 1024 fraud 2", "error: "},
		{"chunks x 0", "error: chunks FILE"},
		{"frobnicate", `error: unknown command "frobnicate"`},
	} {
		_, err := io.WriteString(inW, tt.cmd+"\n")
		require.NoError(t, err)
		assert.Contains(t, next(), tt.want, "RawBroker(%q)", tt.cmd)
	}
	require.NoError(t, inW.Close())
	select {
	case err := <-done:
		assert.NoError(t, err, "EOF ends it")
	case <-time.After(30 * time.Second):
		t.Fatal("RawBroker did not return at EOF")
	}
}
