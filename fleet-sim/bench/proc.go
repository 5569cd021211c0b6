package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports (the kernel's ABI).
const clockTicks = 100

// procCPU returns a process's user+system CPU seconds from
// /proc/<pid>/stat (fields 14 and 15, counted after the command name,
// which may hold spaces and parentheses).
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu of pid %d: malformed stat %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu of pid %d: stat has %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// procWrites returns how many write syscalls a process made so far
// (syscw in /proc/<pid>/io): a broker writing a message to a slow reader
// takes several.
func procWrites(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, fmt.Errorf("writes of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("writes of pid %d: no syscw in /proc/%d/io", pid, pid)
}

// loadAvg is the host's 1-minute load average now (-1 if unknown).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// freeAddr returns a free 127.0.0.1 port (closed again: a child process
// binds it next).
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// child is a process the benchmark started; stop ends it and waits.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // after done
	once sync.Once
}

func startChild(name, logPath string, stdin io.Reader, stdout io.Writer, bin string, args ...string) (*child, error) {
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	cmd.Stdout = logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.Stdin = stdin
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) cpu() (float64, error) { return procCPU(c.pid()) }

// usage is the process's CPU seconds and write syscalls so far.
func (c *child) usage() (cpu float64, writes uint64, err error) {
	if cpu, err = c.cpu(); err != nil {
		return 0, 0, err
	}
	writes, err = procWrites(c.pid())
	return cpu, writes, err
}

// profileWindow starts (SIGUSR1) or ends (SIGUSR2) the CPU profile of a
// control plane started with --cpu-profile-on-signal.
func (c *child) profileWindow(start bool) error {
	sig := syscall.SIGUSR2
	if start {
		sig = syscall.SIGUSR1
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: cpu profile window: %w", c.name, err)
	}
	return nil
}

// rss is the process's resident set size in bytes (0 if unknown).
func (c *child) rss() uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// stop sends SIGTERM, then SIGKILL after 20 s, and waits for the process.
func (c *child) stop() {
	c.once.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
}

// cpProcess is `edgefleet serve` run as its own process: its embedded
// broker on a loopback port, its REST API on another.
type cpProcess struct {
	*child
	remote *sim.RemoteControlPlane
	log    string
}

// startControlPlaneProcess runs `bin serve` with its state in dir and
// waits until its API answers and its admin token is written.
// With profileWindow the profile covers only what profileWindow brackets.
func startControlPlaneProcess(ctx context.Context, bin, dir, ortLib, cpuProfile string, profileWindow bool) (*cpProcess, error) {
	apiAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	mqttAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "admin.token")
	args := []string{"serve", "--data-dir", filepath.Join(dir, "data"), "--listen", apiAddr, "--mqtt-listen", mqttAddr,
		"--token-file", tokenFile, "--log-level", "warn"}
	if ortLib != "" {
		args = append(args, "--ort-lib", ortLib)
	}
	if cpuProfile != "" {
		args = append(args, "--cpu-profile", cpuProfile)
		if profileWindow {
			args = append(args, "--cpu-profile-on-signal")
		}
	}
	logPath := filepath.Join(dir, "controlplane.log")
	c, err := startChild("control plane", logPath, nil, nil, bin, args...)
	if err != nil {
		return nil, err
	}
	apiURL := "http://" + apiAddr
	health, err := client.New(apiURL, client.Options{})
	if err != nil {
		c.stop()
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if health.Health(ctx) == nil {
			if tok, err := os.ReadFile(tokenFile); err == nil && len(strings.TrimSpace(string(tok))) > 0 {
				return &cpProcess{child: c, log: logPath, remote: &sim.RemoteControlPlane{APIURL: apiURL, Token: strings.TrimSpace(string(tok))}}, nil
			}
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("control plane exited: %v (see %s)", c.err, logPath)
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling: the process has no readiness pipe
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("control plane not healthy after 60s (see %s)", logPath)
		}
	}
}

// rawBrokerProcess is `fleet-sim bench rawbroker` (RawBroker) run as its
// own process, driven line by line over its stdin and stdout.
type rawBrokerProcess struct {
	*child
	url string
	in  io.WriteCloser
	out *bufio.Scanner

	mu sync.Mutex // serialises commands
}

func startRawBrokerProcess(bin, dir string) (*rawBrokerProcess, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c, err := startChild("raw broker", filepath.Join(dir, "rawbroker.log"), inR, outW, bin, "bench", "rawbroker")
	_ = inR.Close()
	_ = outW.Close()
	if err != nil {
		_ = inW.Close()
		_ = outR.Close()
		return nil, err
	}
	go func() { <-c.done; _ = outR.Close() }()
	p := &rawBrokerProcess{child: c, in: inW, out: bufio.NewScanner(outR)}
	line, err := p.read()
	if err != nil {
		p.stop()
		return nil, err
	}
	url, ok := strings.CutPrefix(line, "ready ")
	if !ok {
		p.stop()
		return nil, fmt.Errorf("raw broker said %q, want ready URL", line)
	}
	p.url = url
	return p, nil
}

func (p *rawBrokerProcess) read() (string, error) {
	type res struct {
		line string
		ok   bool
	}
	ch := make(chan res, 1)
	go func() { ok := p.out.Scan(); ch <- res{p.out.Text(), ok} }()
	select {
	case r := <-ch:
		if !r.ok {
			return "", fmt.Errorf("raw broker exited: %v", p.out.Err())
		}
		return r.line, nil
	case <-time.After(2 * time.Minute):
		return "", errors.New("raw broker did not answer within 2m")
	}
}

// do sends one command line and returns the answer's fields after "ok".
func (p *rawBrokerProcess) do(cmd string) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return nil, fmt.Errorf("raw broker %q: %w", cmd, err)
	}
	line, err := p.read()
	if err != nil {
		return nil, err
	}
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != "ok" {
		return nil, fmt.Errorf("raw broker %q: %s", cmd, line)
	}
	return f[1:], nil
}

func (p *rawBrokerProcess) close() {
	_ = p.in.Close() // EOF: the child closes its broker and exits
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	p.stop()
}
