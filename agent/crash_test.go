package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/onnxbuild"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The crash tests run the agent in a child process (this test binary,
// re-executed) and kill it with SIGKILL: no deferred cleanup, no Close.

const (
	childConfigEnv = "EDGEFLEET_AGENT_CHILD_CONFIG"
	childCrashEnv  = "EDGEFLEET_AGENT_CHILD_CRASH_AT" // "point:n" — SIGKILL at the n-th time point is reached
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childConfigEnv); cfg != "" {
		os.Exit(agentChild(cfg))
	}
	os.Exit(m.Run())
}

func agentChild(cfgPath string) int {
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts, err := cfg.Options()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	opts.FetchRetryInterval = 200 * time.Millisecond
	fastCapture(&opts)
	a, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if spec := os.Getenv(childCrashEnv); spec != "" {
		point, nth, _ := strings.Cut(spec, ":")
		n, _ := strconv.Atoi(nth)
		seen := 0
		a.crashAt = func(name string) {
			if name != point {
				return
			}
			if seen++; seen >= n {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type child struct {
	cmd       *exec.Cmd
	done      chan error
	inference string
	stderr    *tailBuffer // what the child printed, for failure messages
}

// tailBuffer keeps the last 4 KiB written to it; safe for the exec
// package's copying goroutine and the test reading it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - 4096; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// writeChildConfig writes the agent config file a child reads.
func (h *harness) writeChildConfig(t *testing.T, id, dir string, extra ...string) (path, inference string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	inference = ln.Addr().String()
	require.NoError(t, ln.Close())
	cfg := fmt.Sprintf("device_id: %s\nbroker_url: %s\npassword: %s\ndata_dir: %s\ninference_listen: %s\nheartbeat_interval: 1s\nroot_public_key: |\n%s",
		id, h.broker.URL(), h.device(id), dir, inference, indent(string(signing.EncodePublicKeyPEM(h.root.Public))))
	for _, line := range extra {
		cfg += line + "\n"
	}
	path = filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o600))
	return path, inference
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func startChild(t *testing.T, cfgPath, inference, crashAt string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childConfigEnv+"="+cfgPath, childCrashEnv+"="+crashAt)
	c := &child{cmd: cmd, done: make(chan error, 1), inference: inference, stderr: &tailBuffer{}}
	cmd.Stderr = c.stderr
	if os.Getenv("EDGEFLEET_TEST_LOG") != "" {
		cmd.Stderr = io.MultiWriter(os.Stderr, c.stderr)
	}
	require.NoError(t, cmd.Start())
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		c.done <- nil
	})
	return c
}

// waitKilled waits for the child to die of SIGKILL (its own crash point or ours).
func (c *child) waitKilled(t *testing.T) {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		ws := ee.Sys().(syscall.WaitStatus)
		require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child ended with %v, want SIGKILL; its stderr:\n%s", err, c.stderr)
	case <-time.After(30 * time.Second):
		t.Fatal("child was not killed within 30s")
	}
}

func (c *child) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-c.done:
		c.done <- err
		require.NoError(t, err, "clean stop; the child's stderr:\n%s", c.stderr)
	case <-time.After(20 * time.Second):
		t.Fatal("child did not stop within 20s")
	}
}

func (h *harness) waitReported(t *testing.T, dev string, state efpb.ModelState, active string) {
	t.Helper()
	require.Eventually(t, func() bool {
		s := h.lastStatus(dev, "fraud")
		return s != nil && s.State == state && s.ActiveVersion == active
	}, 30*time.Second, 20*time.Millisecond, "want %s with %s active; last status %v", state, active, h.lastStatus(dev, "fraud"))
}

func TestAgentResumesDownloadAfterKill(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	model := onnxbuild.Pad(v1.ONNX, 200_000) // 4 chunks of 64 KiB
	m := h.manifestFor("fraud", "1.0.0", v1, model)
	require.Len(t, m.ChunkSha256, 4)

	h.mu.Lock()
	h.serveOnly = func(idx uint32) bool { return idx < 2 } // a link that dies halfway
	h.mu.Unlock()
	dir := t.TempDir()
	cfg, inference := h.writeChildConfig(t, "dev-1", dir)
	first := startChild(t, cfg, inference, "")
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, model, nil, nil)))

	// A fetch asking only for chunks 2 and 3 proves 0 and 1 are stored.
	require.Eventually(t, func() bool {
		for _, f := range h.fetchesFor("dev-1") {
			if slices.Equal(f.Missing, []uint32{2, 3}) {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, first.cmd.Process.Kill())
	first.waitKilled(t)

	seen := len(h.fetchesFor("dev-1"))
	h.mu.Lock()
	h.serveOnly = nil
	h.mu.Unlock()
	second := startChild(t, cfg, inference, "")
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	resumed := h.fetchesFor("dev-1")[seen]
	assert.Equal(t, []uint32{2, 3}, resumed.Missing, "after kill -9 the agent asks only for what it lacks")

	c := &oip.Client{BaseURL: "http://" + inference}
	md, err := c.Metadata(context.Background(), "fraud")
	require.NoError(t, err)
	assert.Equal(t, []string{"1.0.0"}, md.Versions)
	second.stop(t)
}

// TestAgentKilledDuringActivation kills the agent at each persisted step of
// activating v2 over v1; after a restart it always ends on one committed
// version (v2 here, as every step before the swap can be resumed).
func TestAgentKilledDuringActivation(t *testing.T) {
	v1, v2 := testModels(t)
	for _, point := range []string{"verified", "staged", "committed"} {
		t.Run(point, func(t *testing.T) {
			h := newHarness(t)
			dir := t.TempDir()
			cfg, inference := h.writeChildConfig(t, "dev-1", dir)
			// v1's activation passes each point once; v2's kills at it.
			first := startChild(t, cfg, inference, point+":2")
			m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
			h.desire("dev-1", assign(m1))
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")

			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
			first.waitKilled(t)

			second := startChild(t, cfg, inference, "")
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0")
			c := &oip.Client{BaseURL: "http://" + inference}
			resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{fp32(t, "features", []int64{1, 7}, make([]float32, 7))}})
			require.NoError(t, err)
			assert.Equal(t, "2.0.0", resp.ModelVersion)
			second.stop(t)

			entries, err := os.ReadDir(filepath.Join(dir, "models", "fraud"))
			require.NoError(t, err)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			assert.ElementsMatch(t, []string{sha256hex(v1.ONNX) + ".onnx", sha256hex(v2.ONNX) + ".onnx"}, names,
				"exactly the active and previous versions are on disk, no partial files")
		})
	}
}

// TestAgentAbandonsCrashLoopingVersion: a version that kills the agent each
// time it is staged is abandoned after MaxActivationAttempts and reported;
// the previous version serves.
func TestAgentAbandonsCrashLoopingVersion(t *testing.T) {
	v1, v2 := testModels(t)
	h := newHarness(t)
	cfg, inference := h.writeChildConfig(t, "dev-1", t.TempDir())
	c := startChild(t, cfg, inference, "staged:2")
	h.desire("dev-1", assign(h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)))
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
	h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
	c.waitKilled(t)
	for range 2 { // attempts 2 and 3 crash as well
		c = startChild(t, cfg, inference, "staged:1")
		c.waitKilled(t)
	}
	c = startChild(t, cfg, inference, "")
	h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_FAILED, "1.0.0")
	assert.Contains(t, h.lastStatus("dev-1", "fraud").Reason, "abandoned after 3 activation attempts")
	c.stop(t)
}

// TestAgentKilledDuringRollback kills the agent at each persisted step of
// reactivating the previous version from disk; after a restart it ends on
// that version, with no download.
func TestAgentKilledDuringRollback(t *testing.T) {
	v1, v2 := testModels(t)
	for _, point := range []string{"staged", "committed"} {
		t.Run(point, func(t *testing.T) {
			h := newHarness(t)
			dir := t.TempDir()
			cfg, inference := h.writeChildConfig(t, "dev-1", dir)
			// v1 and v2 pass the point once each; the rollback to v1 dies at it.
			first := startChild(t, cfg, inference, point+":3")
			m1 := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
			h.desire("dev-1", assign(m1))
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
			h.desire("dev-1", assign(h.publishModel("fraud", "2.0.0", v2, v2.ONNX, nil, nil)))
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "2.0.0")
			fetches := len(h.fetchesFor("dev-1"))

			h.desire("dev-1", assign(m1)) // rollback: a newer generation naming v1
			first.waitKilled(t)
			second := startChild(t, cfg, inference, "")
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")
			assert.Len(t, h.fetchesFor("dev-1"), fetches, "the rollback needed no download")
			c := &oip.Client{BaseURL: "http://" + inference}
			md, err := c.Metadata(context.Background(), "fraud")
			require.NoError(t, err)
			assert.Equal(t, []string{"1.0.0"}, md.Versions)
			second.stop(t)
		})
	}
}
