package deploytest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// repoRoot is the module root (tests run in deploy/deploytest).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "go.mod"))
	return root
}

// hostORT is the onnxruntime library for this machine.
func hostORT(t *testing.T) string {
	t.Helper()
	lib, err := infer.FindLibrary("")
	require.NoError(t, err, "run make deps")
	return lib
}

// controlPlane is a real in-process control plane on 127.0.0.1 port 0,
// driven through the same CLI an operator types.
type controlPlane struct {
	t     *testing.T
	srv   *controlplane.Server
	rt    *infer.Runtime // shared with in-process agents
	token string
	dir   string
}

func startControlPlane(t *testing.T, adjust func(*controlplane.Options)) *controlPlane {
	t.Helper()
	lib := hostORT(t)
	rt, err := infer.NewRuntime(lib, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	dir := t.TempDir()
	cp := fleettest.StartControlPlane(t, rt, func(o *controlplane.Options) {
		o.DataDir = filepath.Join(dir, "cp")
		if adjust != nil {
			adjust(o)
		}
	})
	return &controlPlane{t: t, srv: cp.Server, rt: rt, token: cp.Token, dir: dir}
}

// cli runs an edgefleet command against the control plane.
func (c *controlPlane) cli(args ...string) string {
	c.t.Helper()
	var out, errOut bytes.Buffer
	all := append([]string{"--api", c.srv.APIURL(), "--token", c.token}, args...)
	code := cli.Main(context.Background(), all, &out, &errOut)
	require.Equal(c.t, 0, code, "edgefleet %s: %s%s", strings.Join(args, " "), out.String(), errOut.String())
	return out.String()
}

// provision registers a device and returns the provisioning bundle (agent
// config) `edgefleet device add --config-out` wrote.
func (c *controlPlane) provision(id, dataDir string) string {
	c.t.Helper()
	cfg := filepath.Join(c.dir, id+".yaml")
	c.cli("device", "add", id, "--label", "site=test", "--config-out", cfg,
		"--data-dir", dataDir, "--inference-listen", "127.0.0.1:0")
	return cfg
}

// pushAndDeploy trains the fraud example, uploads it as fraud@version and
// deploys it to the device.
func (c *controlPlane) pushAndDeploy(device, version string) {
	c.t.Helper()
	model := filepath.Join(c.dir, "fraud-"+version+".onnx")
	c.cli("model", "train", "--out", model, "--seed", "1", "--rows", "4000")
	c.cli("model", "push", "--name", "fraud", "--version", version, "--file", model)
	c.cli("deploy", "fraud@"+version, "--device", device)
}

// waitActive waits until the device reports fraud@version active.
func (c *controlPlane) waitActive(device, version string, within time.Duration) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		d, err := c.srv.Device(device)
		if err != nil {
			return false
		}
		rep := d.Reported["fraud"]
		return rep != nil && rep.State == api.ModelActive && rep.ActiveVersion == version
	}, within, 50*time.Millisecond, "device %s never reported fraud@%s active", device, version)
}

// inferFraud scores a coffee and a 3am electronics purchase abroad.
func inferFraud(t *testing.T, addr, version string) {
	t.Helper()
	in, err := oip.NewFP32Input("features", []int64{2, 7}, []float32{4.5, 8, 0.05, 1.2, 1, 0, 1400, 1450, 3, 0.9, 2400, 6, 1, 12})
	require.NoError(t, err)
	c := &oip.Client{BaseURL: "http://" + addr}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := c.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}})
	require.NoError(t, err)
	assert.Equal(t, version, resp.ModelVersion)
	require.Len(t, resp.Outputs, 1)
	probs, err := resp.Outputs[0].FP32()
	require.NoError(t, err)
	require.Len(t, probs, 2)
	assert.Less(t, probs[0], float32(0.5), "a coffee is not fraud")
	assert.Greater(t, probs[1], float32(0.5), "3am electronics abroad is")
}

// agentProc is an edgefleet-agent process started by a test.
type agentProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	mu  sync.Mutex
	log bytes.Buffer // guarded by mu
}

var inferenceAddr = regexp.MustCompile(`msg="agent started" .*inference=(127\.0\.0\.1:[0-9]+)`)

// startAgentProc runs argv (the agent binary, maybe behind qemu) with
// EDGEFLEET_ORT_LIB removed from the environment, so the agent must find
// the onnxruntime library of its own installation. It returns once the
// agent logs its inference address. The process is stopped with SIGTERM at
// cleanup and must exit cleanly.
func startAgentProc(t *testing.T, cred *syscall.Credential, argv ...string) (*agentProc, string) {
	t.Helper()
	p := &agentProc{t: t, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, infer.EnvLibrary+"=") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	if cred != nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	require.NoError(t, p.cmd.Start())
	addrCh := make(chan string, 1)
	var readers sync.WaitGroup
	readers.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := inferenceAddr.FindStringSubmatch(line); m != nil {
				select {
				case addrCh <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	})
	go func() {
		p.err = p.cmd.Wait()
		_ = pw.Close()
		readers.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", p.logs())
		}
	})
	select {
	case addr := <-addrCh:
		return p, addr
	case <-p.done:
		t.Fatalf("agent exited before it served: %v\n%s", p.err, p.logs())
	case <-time.After(3 * time.Minute):
		t.Fatalf("agent did not start serving within 3 min:\n%s", p.logs())
	}
	return nil, ""
}

func (p *agentProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop sends SIGTERM to the process this test started and requires a clean exit.
func (p *agentProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		assert.NoError(p.t, p.err, "the agent must exit 0 on SIGTERM")
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.t.Error("agent did not stop within 30s of SIGTERM")
	}
}

// The agent tarball is built once per test binary (see TestMain).
var tarballOnce struct {
	sync.Once
	dir  string // removed by TestMain
	path string
	err  error
}

// envRunCLI makes this test binary the edgefleet CLI (cli.Main with its
// arguments) instead of running tests: the stand-in for bin/edgefleet in
// the control plane tarball the docs test installs, so shell steps run
// the real CLI without building another binary.
const envRunCLI = "EDGEFLEET_DEPLOYTEST_RUN_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(envRunCLI) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	code := m.Run()
	for _, dir := range []string{tarballOnce.dir, docTarballOnce.dir} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// tarballVersion is stamped into the agent the tests build.
const tarballVersion = "1.2.3-test"

// buildAgentTarball builds the agent for this machine and packages it with
// scripts/package-agent.sh, exactly as make cross does (without -s -w, and
// with -race under make test so the build shares its cache). Built once.
func buildAgentTarball(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	arch := goarch(t)
	ort := hostORT(t)
	o := &tarballOnce
	o.Do(func() {
		if o.dir, o.err = os.MkdirTemp("", "edgefleet-tarball-"); o.err != nil {
			return
		}
		bin := filepath.Join(o.dir, "edgefleet-agent")
		args := []string{"build", "-o", bin, "-ldflags", "-X github.com/edgefleet/edgefleet/internal/buildinfo.version=" + tarballVersion}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./agent/cmd/edgefleet-agent")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			o.err = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		cmd = exec.Command("sh", "scripts/package-agent.sh", tarballVersion, arch, bin, ort, filepath.Join(o.dir, "dist"))
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			o.err = fmt.Errorf("package-agent.sh: %w", err)
			return
		}
		o.path = strings.TrimSpace(string(out))
	})
	require.NoError(t, o.err)
	require.FileExists(t, o.path)
	return o.path
}

func goarch(t *testing.T) string {
	t.Helper()
	out := strings.TrimSpace(run(t, "", "go", "env", "GOARCH"))
	if out != "amd64" && out != "arm64" {
		t.Skipf("agent packages exist for amd64 and arm64, not %s", out)
	}
	return out
}

// run runs a command and requires success; it returns stdout.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	require.NoError(t, cmd.Run(), "%s %s:\n%s%s", name, strings.Join(args, " "), out.String(), errOut.String())
	return out.String()
}

// runCode runs a command and returns its exit status and combined output.
func runCode(t *testing.T, name string, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err == nil {
		return 0, string(out)
	}
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s: %s", name, out)
	return ee.ExitCode(), string(out)
}
