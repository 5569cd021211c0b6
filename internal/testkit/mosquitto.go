package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Mosquitto is a real mosquitto process the test started and stops at
// cleanup. mosquitto cannot listen on port 0 and report the port, so free
// ports are reserved, released and handed over in its config; a start
// whose process exits (another process took a port in between) is retried
// on new ports.
type Mosquitto struct {
	// Dir is a world-readable directory for the config and the files it
	// names: a mosquitto started as root drops to its own user.
	Dir string
	// Ports are the ports handed over, Ports[0] the one URL names.
	Ports []int

	t      testing.TB
	bin    string
	config func(ports []int) string
	log    *os.File
	cmd    *exec.Cmd
	done   chan struct{}
}

// MosquittoBin finds mosquitto, or skips the test when it is not installed
// (and fails it when CI is set: .ci/run installs mosquitto).
func MosquittoBin(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("mosquitto is not installed, and CI must run the external-broker tests (.ci/run installs it)")
	}
	t.Skip("mosquitto is not installed (Debian package mosquitto)")
	return ""
}

// NewMosquitto prepares a mosquitto (its Dir exists; nothing runs yet).
func NewMosquitto(t testing.TB) *Mosquitto {
	t.Helper()
	m := &Mosquitto{t: t, bin: MosquittoBin(t)}
	dir, err := os.MkdirTemp("", "edgefleet-mosquitto-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777))
	m.Dir = dir
	m.log, err = os.Create(filepath.Join(dir, "mosquitto.log"))
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = m.log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(m.log.Name())
			t.Logf("mosquitto log:\n%s", b)
		}
	})
	t.Cleanup(m.Stop)
	return m
}

// StartMosquitto starts a mosquitto listening on 127.0.0.1 only, with
// anonymous access and no persistence: the plain broker tests talk to.
func StartMosquitto(t testing.TB) *Mosquitto {
	t.Helper()
	m := NewMosquitto(t)
	m.Start(1, func(ports []int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", ports[0])
	})
	return m
}

// URL is the broker URL of Ports[0].
func (m *Mosquitto) URL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.Ports[0]) }

// Start runs mosquitto with the config config returns for n free ports,
// and waits until every port accepts connections.
func (m *Mosquitto) Start(n int, config func(ports []int) string) {
	m.t.Helper()
	m.config = config
	for attempt := 1; ; attempt++ {
		m.Ports = FreePorts(m.t, n)
		if m.run() {
			return
		}
		ss, _ := exec.Command("ss", "-ltn").CombinedOutput()
		require.Less(m.t, attempt, 3, "mosquitto did not start (its log follows); listening sockets:\n%s", ss)
	}
}

// Restart stops mosquitto and starts it again on the same ports and
// config (as after a crash or an upgrade).
func (m *Mosquitto) Restart() {
	m.t.Helper()
	m.Stop()
	require.True(m.t, m.run(), "mosquitto did not start again on its ports")
}

// Reload makes mosquitto reread its password and ACL files (SIGHUP).
func (m *Mosquitto) Reload() {
	m.t.Helper()
	require.NoError(m.t, m.cmd.Process.Signal(syscall.SIGHUP))
}

// Exited is closed when the running mosquitto exits.
func (m *Mosquitto) Exited() <-chan struct{} { return m.done }

// Stop ends the mosquitto this test started (by its pid) and waits.
func (m *Mosquitto) Stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// run starts mosquitto on m.Ports; false when it exited before listening.
func (m *Mosquitto) run() bool {
	conf := filepath.Join(m.Dir, "mosquitto.conf")
	require.NoError(m.t, os.WriteFile(conf, []byte(m.config(m.Ports)), 0o644))
	cmd := exec.Command(m.bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	require.NoError(m.t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	if listening(done, m.Ports) {
		m.cmd, m.done = cmd, done
		return true
	}
	_ = cmd.Process.Kill()
	<-done
	return false
}

// listening waits until every port accepts connections (true), or the
// process exits or 10 s pass (false).
func listening(exited <-chan struct{}, ports []int) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		up := 0
		for _, p := range ports {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				_ = c.Close()
				up++
			}
		}
		if up == len(ports) {
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return false
}

// FreePorts reserves n distinct free 127.0.0.1 ports and releases them,
// for a server that cannot bind port 0. They are taken below the kernel's
// ephemeral range: a port from ":0" may still be in TIME_WAIT from an
// outgoing connection (a full test run makes thousands), which Go's
// listener tolerates but mosquitto's bind refuses. All listeners stay
// open until every port is known.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		require.Less(t, tries, 1000, "no free port below the ephemeral range")
		p := 20000 + rand.IntN(12000) // 20000-31999, under Linux's default 32768
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, p)
	}
	return ports
}
