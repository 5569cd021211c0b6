package deploytest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// controlUser is the control plane's MQTT username in deploy/mosquitto.
const controlUser = "edgefleet-cp"

// mosquittoBin finds mosquitto and its clients, or skips the test.
func mosquittoBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto is not installed (Debian packages mosquitto, mosquitto-clients; CI installs them)")
		}
		bin = "/usr/sbin/mosquitto"
	}
	for _, c := range []string{"mosquitto_passwd", "mosquitto_sub", "mosquitto_pub"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not installed (Debian package mosquitto-clients)", c)
		}
	}
	return bin
}

// freePort reserves a 127.0.0.1 port and releases it: mosquitto cannot
// listen on port 0 and report the port.
func freePort(t *testing.T) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts reserves n distinct free ports for a server that cannot bind
// port 0 (mosquitto). They are taken below the kernel's ephemeral range:
// a port from ":0" may still be in TIME_WAIT from an outgoing connection
// (a full test run makes thousands), which Go's listener tolerates but
// mosquitto's bind refuses with "Address already in use". All listeners
// stay open until every port is known.
func freePorts(t *testing.T, n int) []int {
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

// mosquittoProc is a mosquitto this test started, with the config from
// deploy/mosquitto/mosquitto-test.conf and the generated ACL.
type mosquittoProc struct {
	t            *testing.T
	bin, dir     string
	port         int
	passwd, conf string
	cmd          *exec.Cmd
}

func startMosquitto(t *testing.T, controlPassword string) *mosquittoProc {
	t.Helper()
	m := &mosquittoProc{t: t, bin: mosquittoBin(t), port: freePort(t)}
	var err error
	// World-readable: a mosquitto started as root drops to its own user.
	m.dir, err = os.MkdirTemp("", "edgefleet-mosquitto-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(m.dir) })
	require.NoError(t, os.Chmod(m.dir, 0o755))
	acl, err := topics.MosquittoACL(topics.Scheme{}, controlUser)
	require.NoError(t, err)
	aclPath := filepath.Join(m.dir, "edgefleet.acl")
	require.NoError(t, os.WriteFile(aclPath, []byte(acl), 0o644))
	m.passwd = filepath.Join(m.dir, "edgefleet.passwd")
	run(t, "", "mosquitto_passwd", "-c", "-b", m.passwd, controlUser, controlPassword)
	require.NoError(t, os.Chmod(m.passwd, 0o644))
	tmpl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/mosquitto-test.conf"))
	require.NoError(t, err)
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	logf, err := os.Create(filepath.Join(m.dir, "mosquitto.log"))
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("mosquitto log:\n%s", b)
		}
	})
	// mosquitto cannot listen on port 0: the free port is reserved and
	// handed over, and another test may take it in between; a start whose
	// process exits is retried on a new port.
	for attempt := 1; ; attempt++ {
		conf := strings.NewReplacer("@PORT@", fmt.Sprint(m.port), "@PASSWD@", m.passwd, "@ACL@", aclPath).Replace(string(tmpl))
		require.NoError(t, os.WriteFile(m.conf, []byte(conf), 0o644))
		cmd := exec.Command(m.bin, "-c", m.conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		require.NoError(t, cmd.Start())
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		if listeningOrExited(done, m.port) {
			m.cmd = cmd
			t.Cleanup(func() {
				_ = cmd.Process.Kill() // the mosquitto this test started, by pid
				<-done
			})
			return m
		}
		_ = cmd.Process.Kill()
		<-done
		require.Less(t, attempt, 3, "mosquitto did not start (its log follows)")
		m.port = freePort(t)
	}
}

// listeningOrExited waits until every port accepts connections (true) or
// the process exits or 10 s pass (false).
func listeningOrExited(exited <-chan struct{}, ports ...int) bool {
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
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func (m *mosquittoProc) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

// addUsers writes device credentials into the password file and makes
// mosquitto reload it (SIGHUP), waiting until the last user can log in.
func (m *mosquittoProc) addUsers(creds map[string]string) {
	m.t.Helper()
	var last, lastPw string
	for user, pw := range creds {
		run(m.t, "", "mosquitto_passwd", "-b", m.passwd, user, pw)
		last, lastPw = user, pw
	}
	require.NoError(m.t, os.Chmod(m.passwd, 0o644))
	require.NoError(m.t, m.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(m.t, func() bool {
		code, _ := m.sub(last, lastPw, topics.Scheme{}.Trust(), 2)
		return code == 0
	}, 15*time.Second, 100*time.Millisecond, "mosquitto did not accept %s after reloading its password file", last)
}

// sub reads one message from topic as user (mosquitto_sub -C 1) within
// wait seconds; it returns the exit status and what was printed.
func (m *mosquittoProc) sub(user, pw, topic string, wait int) (int, string) {
	m.t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-t", topic, "-C", "1", "-W", fmt.Sprint(wait), "-q", "1"}
	if user != "" {
		args = append(args, "-u", user, "-P", pw)
	}
	return runCode(m.t, "mosquitto_sub", args...)
}

// pub publishes payload (a file) on topic as user with QoS 1.
func (m *mosquittoProc) pub(user, pw, topic string, payload []byte) (int, string) {
	m.t.Helper()
	f := filepath.Join(m.t.TempDir(), "payload")
	require.NoError(m.t, os.WriteFile(f, payload, 0o644))
	return runCode(m.t, "mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port),
		"-u", user, "-P", pw, "-t", topic, "-f", f, "-q", "1")
}

// TestMosquittoEndToEnd runs the control plane against a real mosquitto
// configured like deploy/mosquitto (password file, the generated ACL,
// use_username_as_clientid) with a real agent: a model is pushed, activated
// and inferred on the agent, telemetry arrives; then mosquitto's clients
// with one device's credentials try to read and write another's topics.
func TestMosquittoEndToEnd(t *testing.T) {
	t.Parallel()
	cpPassword := "cp-secret-" + fmt.Sprint(time.Now().UnixNano())
	mq := startMosquitto(t, cpPassword)
	cp := startControlPlane(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password = mq.url(), controlUser, cpPassword
	})
	dir := t.TempDir()
	creds := map[string]string{}
	cfgs := map[string]*agent.Config{}
	for _, id := range []string{"dev-1", "dev-2"} {
		cfg, err := agent.LoadConfig(cp.provision(id, filepath.Join(dir, id)))
		require.NoError(t, err)
		assert.Equal(t, mq.url(), cfg.BrokerURL, "devices are told the external broker")
		creds[id], cfgs[id] = cfg.Password, cfg
	}
	mq.addUsers(creds)

	// Anonymous clients and wrong passwords are refused.
	code, out := mq.sub("", "", topics.Scheme{}.Trust(), 2)
	assert.NotEqual(t, 0, code, "anonymous login refused: %s", out)
	code, out = mq.sub("dev-1", "wrong", topics.Scheme{}.Trust(), 2)
	assert.NotEqual(t, 0, code, "wrong password refused: %s", out)

	opts, err := cfgs["dev-1"].Options()
	require.NoError(t, err)
	opts.Runtime = cp.rt
	opts.HeartbeatInterval = 300 * time.Millisecond
	opts.FetchRetryInterval = 300 * time.Millisecond
	a, err := agent.New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop within 20s")
		}
	})
	<-a.Ready()

	cp.pushAndDeploy("dev-1", "1.0.0")
	cp.waitActive("dev-1", "1.0.0", time.Minute)
	inferFraud(t, a.InferenceAddr(), "1.0.0")
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device("dev-1")
		return err == nil && d.Telemetry != nil && d.Telemetry.Seq > 0 && d.Online
	}, 30*time.Second, 50*time.Millisecond, "no telemetry from dev-1 through mosquitto")

	sc := topics.Scheme{}
	// Reads: dev-1 gets its retained desired state; dev-2 does not.
	code, out = mq.sub("dev-1", creds["dev-1"], sc.Desired("dev-1"), 5)
	require.Equal(t, 0, code, "dev-1 reads its own desired state: %s", out)
	assert.NotEmpty(t, out)
	code, out = mq.sub("dev-2", creds["dev-2"], sc.Desired("dev-1"), 2)
	assert.NotEqual(t, 0, code, "dev-2 must not read dev-1's desired state")
	assert.NotContains(t, out, "fraud", "dev-2 must not see dev-1's desired state")
	code, out = mq.sub("dev-2", creds["dev-2"], sc.Trust(), 5)
	assert.Equal(t, 0, code, "every device reads the trust bundle: %s", out)

	// Writes: a status forged by dev-2 on dev-1's topic never reaches the
	// control plane; the marker dev-2 sends on its own topic afterwards does.
	forged, err := proto.Marshal(&efpb.StatusEvent{DeviceId: "dev-1", ModelName: "forged", ModelVersion: "6.6.6", State: efpb.ModelState_MODEL_STATE_FAILED})
	require.NoError(t, err)
	code, out = mq.pub("dev-2", creds["dev-2"], sc.Status("dev-1"), forged)
	require.Equal(t, 0, code, "mosquitto drops a denied publish silently: %s", out)
	marker, err := proto.Marshal(&efpb.StatusEvent{DeviceId: "dev-2", ModelName: "marker", ModelVersion: "1.0.0", ActiveVersion: "1.0.0", State: efpb.ModelState_MODEL_STATE_ACTIVE})
	require.NoError(t, err)
	code, out = mq.pub("dev-2", creds["dev-2"], sc.Status("dev-2"), marker)
	require.Equal(t, 0, code, out)
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device("dev-2")
		return err == nil && d.Reported["marker"] != nil
	}, 15*time.Second, 20*time.Millisecond, "dev-2's own status reaches the control plane")
	d1, err := cp.srv.Device("dev-1")
	require.NoError(t, err)
	assert.Nil(t, d1.Reported["forged"], "the ACL stopped dev-2 writing dev-1's status")
	assert.Equal(t, api.ModelActive, d1.Reported["fraud"].State)
}

// TestMosquittoProductionConfig starts mosquitto with deploy/mosquitto/
// mosquitto.conf itself — TLS listener, persistence, limits — with only
// its paths and ports pointed at a temporary directory and a self-signed
// certificate, and checks that a TLS client with a device's password is
// accepted while a wrong password and plain MQTT on the TLS port are not.
func TestMosquittoProductionConfig(t *testing.T) {
	t.Parallel()
	bin := mosquittoBin(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is needed for a test certificate")
	}
	dir, err := os.MkdirTemp("", "edgefleet-mosquitto-prod-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777))
	key, crt := filepath.Join(dir, "server.key"), filepath.Join(dir, "server.crt")
	run(t, "", "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
		"-keyout", key, "-out", crt)
	require.NoError(t, os.Chmod(key, 0o644))
	passwd := filepath.Join(dir, "passwd")
	run(t, "", "mosquitto_passwd", "-c", "-b", passwd, "dev-1", "pw-1")
	require.NoError(t, os.Chmod(passwd, 0o644))
	acl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/acl.conf"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "acl"), acl, 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o777))

	prod, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/mosquitto.conf"))
	require.NoError(t, err)
	// mosquitto cannot listen on port 0: free ports are reserved, released
	// and handed over, and a test in another package may take one in
	// between. A start whose process exits is retried on new ports.
	var tlsPort, plainPort int
	var exited chan struct{}
	var out *strings.Builder
	for attempt := 1; ; attempt++ {
		ps := freePorts(t, 2)
		tlsPort, plainPort = ps[0], ps[1]
		conf := strings.NewReplacer(
			"/etc/mosquitto/edgefleet.passwd", passwd,
			"/etc/mosquitto/edgefleet.acl", filepath.Join(dir, "acl"),
			"/etc/mosquitto/certs/server.crt", crt,
			"/etc/mosquitto/certs/server.key", key,
			"/etc/mosquitto/certs/ca.crt", crt,
			"/var/lib/mosquitto/", filepath.Join(dir, "data")+"/",
			"listener 8883\n", fmt.Sprintf("listener %d 127.0.0.1\n", tlsPort),
			"listener 1883 127.0.0.1\n", fmt.Sprintf("listener %d 127.0.0.1\n", plainPort),
		).Replace(string(prod))
		for _, want := range []string{passwd, crt, key, fmt.Sprint(tlsPort), fmt.Sprint(plainPort), filepath.Join(dir, "data")} {
			require.Contains(t, conf, want, "the production config changed shape: update this test's replacements")
		}
		confPath := filepath.Join(dir, "mosquitto.conf")
		require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o644))

		cmd := exec.Command(bin, "-c", confPath)
		out = &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		require.NoError(t, cmd.Start())
		done := make(chan struct{})
		exited = done
		go func() { _ = cmd.Wait(); close(done) }()
		if listeningOrExited(done, tlsPort, plainPort) {
			t.Cleanup(func() {
				_ = cmd.Process.Kill() // the mosquitto this test started, by pid
				<-done
			})
			break
		}
		_ = cmd.Process.Kill()
		<-done
		require.Less(t, attempt, 3, "mosquitto with the production config did not start:\n%s", out.String())
		ss, _ := exec.Command("ss", "-ltnp").CombinedOutput() // who holds what, for the log
		t.Logf("mosquitto attempt %d on ports %d and %d did not start (retrying on new ports):\n%s\nlistening sockets:\n%s\nconfig:\n%s",
			attempt, tlsPort, plainPort, out.String(), ss, conf)
	}

	// No control plane publishes here, so a subscription that was accepted
	// times out (mosquitto_sub exits 27); a refused login or a TLS failure
	// exits otherwise.
	tlsArgs := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(tlsPort), "--cafile", crt, "-t", "ef/v1/trust", "-C", "1", "-W", "1"}
	code, o := runCode(t, "mosquitto_sub", append(tlsArgs, "-u", "dev-1", "-P", "pw-1")...)
	assert.Equal(t, 27, code, "TLS login with a device password is accepted (then times out): %s", o)
	code, o = runCode(t, "mosquitto_sub", append(tlsArgs, "-u", "dev-1", "-P", "nope")...)
	assert.NotEqual(t, 27, code, "a wrong password is refused: %s", o)
	assert.NotEqual(t, 0, code)
	code, o = runCode(t, "mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(tlsPort), "-u", "dev-1", "-P", "pw-1", "-t", "x", "-C", "1", "-W", "1")
	assert.NotEqual(t, 27, code, "plain MQTT on the TLS listener fails: %s", o)
	select {
	case <-exited:
		t.Fatalf("mosquitto exited with the production config:\n%s", out.String())
	default:
	}
}
