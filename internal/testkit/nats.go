package testkit

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// NATSBin finds the nats-server binary `make nats-server` builds: the
// path in $EDGEFLEET_NATS_SERVER (the Makefile sets it), else bin/nats-server
// of the module the test runs in, else nats-server on PATH. Without one the
// test is skipped, and failed when CI is set (make test builds it).
func NATSBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("EDGEFLEET_NATS_SERVER"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if dir, err := os.Getwd(); err == nil {
		for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				if p := filepath.Join(dir, "bin", "nats-server"); fileExists(p) {
					return p
				}
				break
			}
		}
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("nats-server is not built, and CI must run the NATS cluster tests (make nats-server)")
	}
	t.Skip("nats-server is not built: run make nats-server (it builds the pinned NATS server into bin/)")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// NATSPorts are one node's ports.
type NATSPorts struct {
	MQTT, Cluster, Monitor int
}

// NATSCluster is a cluster of real nats-server processes on 127.0.0.1
// that the test started and stops at cleanup. Ports are free ports handed
// over in the config (routes must be known before the nodes start). With
// $EDGEFLEET_KEEP_NATS_LOGS set to a directory, the nodes' configs, logs
// and stores are copied there at cleanup (for a failure to study).
type NATSCluster struct {
	// Dir holds each node's config, store and log.
	Dir   string
	Ports []NATSPorts

	t      testing.TB
	bin    string
	config func(dir string, i int, ports []NATSPorts) string
	nodes  []*natsNode
}

type natsNode struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartNATSCluster starts n nodes with the configs config returns (node i
// of the cluster whose ports are ports; the file is written into dir,
// which a NATS include is relative to) and waits until every node is
// healthy (JetStream has a leader).
func StartNATSCluster(t testing.TB, n int, config func(dir string, i int, ports []NATSPorts) string) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t, bin: NATSBin(t), config: config, nodes: make([]*natsNode, n)}
	c.Dir = t.TempDir()
	t.Cleanup(func() {
		for i := range c.nodes {
			c.Kill(i)
		}
		if keep := os.Getenv("EDGEFLEET_KEEP_NATS_LOGS"); keep != "" {
			_ = exec.Command("cp", "-r", c.Dir, keep).Run()
		}
		if t.Failed() {
			for i := range c.nodes {
				b, _ := os.ReadFile(filepath.Join(c.Dir, fmt.Sprintf("n%d.log", i)))
				if len(b) > 8000 {
					b = b[len(b)-8000:]
				}
				t.Logf("nats node %d log (tail):\n%s", i, b)
			}
		}
	})
	for attempt := 1; ; attempt++ {
		free := FreePorts(t, 3*n)
		c.Ports = make([]NATSPorts, n)
		for i := range n {
			c.Ports[i] = NATSPorts{MQTT: free[3*i], Cluster: free[3*i+1], Monitor: free[3*i+2]}
		}
		ok := true
		for i := range n {
			if !c.start(i) {
				ok = false
				break
			}
		}
		if ok && c.healthy() {
			return c
		}
		for i := range c.nodes {
			c.Kill(i)
		}
		require.Less(t, attempt, 3, "the NATS cluster did not start (logs follow at the end of the test)")
	}
}

// MQTTURL is node i's MQTT URL.
func (c *NATSCluster) MQTTURL(i int) string {
	return fmt.Sprintf("tcp://127.0.0.1:%d", c.Ports[i].MQTT)
}

// MQTTURLs are every node's MQTT URL, node 0 first.
func (c *NATSCluster) MQTTURLs() []string {
	urls := make([]string, len(c.Ports))
	for i := range c.Ports {
		urls[i] = c.MQTTURL(i)
	}
	return urls
}

// start writes node i's config and starts it; false if it exited before
// its ports listened.
func (c *NATSCluster) start(i int) bool {
	conf := filepath.Join(c.Dir, fmt.Sprintf("n%d.conf", i))
	require.NoError(c.t, os.WriteFile(conf, []byte(c.config(c.Dir, i, c.Ports)), 0o600))
	logf, err := os.OpenFile(filepath.Join(c.Dir, fmt.Sprintf("n%d.log", i)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	require.NoError(c.t, err)
	defer logf.Close()
	cmd := exec.Command(c.bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test binary killed by -timeout runs no cleanup: the node must not
	// outlive it. Linux sends Pdeathsig when the thread that started the
	// child ends, not the process, and Go ends threads (the agent's
	// low-priority staging thread is one), so the node is started and
	// waited for on a thread locked for its lifetime: a node once died
	// silently when agents staged a model, taking the cluster's quorum.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(done)
	}()
	require.NoError(c.t, <-started)
	c.nodes[i] = &natsNode{cmd: cmd, done: done}
	return listening(done, []int{c.Ports[i].MQTT, c.Ports[i].Cluster, c.Ports[i].Monitor})
}

// healthy waits (up to a minute) until every running node answers 200 on
// /healthz: connected to its routes, with JetStream's meta leader known.
func (c *NATSCluster) healthy() bool {
	deadline := time.Now().Add(time.Minute)
	hc := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		up := 0
		for i, n := range c.nodes {
			if n == nil {
				up++
				continue
			}
			resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", c.Ports[i].Monitor))
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					up++
				}
			}
		}
		if up == len(c.nodes) {
			return true
		}
		time.Sleep(200 * time.Millisecond) // polling an external process's health endpoint
	}
	return false
}

// Kill ends node i at once (SIGKILL, as a crash) and waits for it.
func (c *NATSCluster) Kill(i int) {
	n := c.nodes[i]
	if n == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	c.nodes[i] = nil
}

// Restart starts node i again on its ports with its config rendered anew,
// and waits until the cluster is healthy.
func (c *NATSCluster) Restart(i int) {
	c.t.Helper()
	c.Kill(i)
	require.True(c.t, c.start(i), "nats node %d did not start again", i)
	require.True(c.t, c.healthy(), "the NATS cluster is not healthy after node %d restarted", i)
}

// Reload makes every running node reread its config (SIGHUP): new logins
// and permissions take effect, clients whose login is gone are closed.
func (c *NATSCluster) Reload() {
	c.t.Helper()
	for i, n := range c.nodes {
		if n != nil {
			require.NoError(c.t, n.cmd.Process.Signal(syscall.SIGHUP), "reload nats node %d", i)
		}
	}
}
