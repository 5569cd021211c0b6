package deploytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// controlUser is the control plane's MQTT username in deploy/mosquitto.
const controlUser = "edgefleet-cp"

// mosquittoBin finds mosquitto and its clients, or skips the test.
func mosquittoBin(t *testing.T) string {
	t.Helper()
	bin := testkit.MosquittoBin(t)
	for _, c := range []string{"mosquitto_passwd", "mosquitto_sub", "mosquitto_pub"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not installed (Debian package mosquitto-clients)", c)
		}
	}
	return bin
}

// mosquittoProc is a mosquitto this test started, with the config from
// deploy/mosquitto/mosquitto-test.conf and the generated ACL.
type mosquittoProc struct {
	*testkit.Mosquitto
	t      *testing.T
	passwd string
}

func startMosquitto(t *testing.T, controlPassword string) *mosquittoProc {
	t.Helper()
	mosquittoBin(t)
	m := &mosquittoProc{Mosquitto: testkit.NewMosquitto(t), t: t}
	acl, err := topics.MosquittoACL(topics.Scheme{}, controlUser, 0)
	require.NoError(t, err)
	aclPath := filepath.Join(m.Dir, "edgefleet.acl")
	require.NoError(t, os.WriteFile(aclPath, []byte(acl), 0o644))
	m.passwd = filepath.Join(m.Dir, "edgefleet.passwd")
	run(t, "", "mosquitto_passwd", "-c", "-b", m.passwd, controlUser, controlPassword)
	require.NoError(t, os.Chmod(m.passwd, 0o644))
	tmpl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/mosquitto-test.conf"))
	require.NoError(t, err)
	m.Start(1, func(ports []int) string {
		return strings.NewReplacer("@PORT@", fmt.Sprint(ports[0]), "@PASSWD@", m.passwd, "@ACL@", aclPath).Replace(string(tmpl))
	})
	return m
}

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
	m.Reload()
	require.Eventually(m.t, func() bool {
		code, _ := m.sub(last, lastPw, topics.Scheme{}.Trust(), 2)
		return code == 0
	}, 15*time.Second, 100*time.Millisecond, "mosquitto did not accept %s after reloading its password file", last)
}

// sub reads one message from topic as user (mosquitto_sub -C 1) within
// wait seconds; it returns the exit status and what was printed.
func (m *mosquittoProc) sub(user, pw, topic string, wait int) (int, string) {
	m.t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(m.Ports[0]), "-t", topic, "-C", "1", "-W", fmt.Sprint(wait), "-q", "1"}
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
	return runCode(m.t, "mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.Ports[0]),
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
		o.MQTTURL, o.Username, o.Password = mq.URL(), controlUser, cpPassword
	})
	dir := t.TempDir()
	creds := map[string]string{}
	cfgs := map[string]*agent.Config{}
	for _, id := range []string{"dev-1", "dev-2"} {
		cfg, err := agent.LoadConfig(cp.provision(id, filepath.Join(dir, id)))
		require.NoError(t, err)
		assert.Equal(t, mq.URL(), cfg.BrokerURL, "devices are told the external broker")
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
	a := fleettest.RunAgent(t, opts)

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

// debianMainConf is Debian's /etc/mosquitto/mosquitto.conf (package
// mosquitto 2.0.11, bookworm), used where this machine has none.
const debianMainConf = `# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
`

// debianMosquittoRoot lays out root as Debian's mosquitto package and unit
// leave / before mosquitto starts: etc/mosquitto/mosquitto.conf (this
// machine's, else debianMainConf) with an empty conf.d and certs, and
// var/lib/mosquitto (the package), run/mosquitto and var/log/mosquitto
// (the unit's ExecStartPre) owned by the mosquitto user when the test runs
// as root — a mosquitto started as root drops to that user before it
// writes its pid file and reads keys, passwords and the ACL.
func debianMosquittoRoot(t *testing.T, root string) {
	t.Helper()
	main, err := os.ReadFile("/etc/mosquitto/mosquitto.conf")
	if err != nil {
		main = []byte(debianMainConf)
	}
	for _, d := range []string{"etc/mosquitto/conf.d", "etc/mosquitto/certs"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/mosquitto/mosquitto.conf"), main, 0o644))
	for _, d := range []string{"var/lib/mosquitto", "run/mosquitto", "var/log/mosquitto"} {
		p := filepath.Join(root, d)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.Mkdir(p, 0o750))
		chownAsRoot(t, p, "mosquitto", "mosquitto")
	}
}

// chownAsRoot gives path to user and group when the test runs as root;
// otherwise every process the test starts runs as the test's user and
// nothing needs changing.
func chownAsRoot(t *testing.T, path, user, group string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	u, err := osuser.Lookup(user)
	require.NoError(t, err, "user %s (the mosquitto package creates mosquitto)", user)
	g, err := osuser.LookupGroup(group)
	require.NoError(t, err, "group %s", group)
	require.NoError(t, os.Chown(path, atoi(t, u.Uid), atoi(t, g.Gid)))
}

// debianConfig is the main config of a Debian mosquitto under root, ready
// for mosquitto -c: every conf.d/*.conf is copied to dir/conf.d, and in
// all of them absolute paths under /etc/mosquitto, /var/lib/mosquitto,
// /run/mosquitto and /var/log/mosquitto point into root and the listeners,
// in order, move to ports on 127.0.0.1.
func debianConfig(t *testing.T, root, dir string, ports []int) string {
	t.Helper()
	next := 0
	rewrite := func(conf string) string {
		for _, p := range []string{"/etc/mosquitto/", "/var/lib/mosquitto/", "/run/mosquitto/", "/var/log/mosquitto/"} {
			conf = strings.ReplaceAll(conf, " "+p, " "+root+p)
		}
		return listenerLine.ReplaceAllStringFunc(conf, func(string) string {
			require.Less(t, next, len(ports), "more listeners than ports")
			next++
			return fmt.Sprintf("listener %d 127.0.0.1", ports[next-1])
		})
	}
	main, err := os.ReadFile(filepath.Join(root, "etc/mosquitto/mosquitto.conf"))
	require.NoError(t, err)
	require.Contains(t, string(main), "include_dir /etc/mosquitto/conf.d\n", "Debian's main file includes conf.d")
	confD := filepath.Join(dir, "conf.d")
	require.NoError(t, os.RemoveAll(confD))
	require.NoError(t, os.MkdirAll(confD, 0o755))
	dropIns, err := filepath.Glob(filepath.Join(root, "etc/mosquitto/conf.d/*.conf"))
	require.NoError(t, err)
	mainConf := rewrite(strings.Replace(string(main), "include_dir /etc/mosquitto/conf.d\n", "include_dir "+confD+"\n", 1))
	for _, f := range dropIns {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(confD, filepath.Base(f)), []byte(rewrite(string(b))), 0o644))
	}
	require.Equal(t, len(ports), next, "every port went to a listener")
	return mainConf
}

var listenerLine = regexp.MustCompile(`(?m)^listener [0-9]+( \S+)?$`)

// countListeners counts the listener lines of root's conf.d.
func countListeners(t *testing.T, root string) int {
	t.Helper()
	dropIns, err := filepath.Glob(filepath.Join(root, "etc/mosquitto/conf.d/*.conf"))
	require.NoError(t, err)
	n := 0
	for _, f := range dropIns {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		n += len(listenerLine.FindAll(b, -1))
	}
	return n
}

// startDebianMosquitto starts mosquitto as Debian's unit does (mosquitto
// -c /etc/mosquitto/mosquitto.conf, as root where the test is root) with
// root standing for /, after debianMosquittoRoot and the files the
// drop-ins name are in place. Ports[i] is the i-th listener of conf.d.
// mosquitto's own log file (Debian's log_dest) is shown when the test fails.
func startDebianMosquitto(t *testing.T, root string) *mosquittoProc {
	t.Helper()
	mosquittoBin(t)
	m := &mosquittoProc{Mosquitto: testkit.NewMosquitto(t), t: t}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(root, "var/log/mosquitto/mosquitto.log"))
			t.Logf("mosquitto's log file:\n%s", b)
		}
	})
	m.Start(countListeners(t, root), func(ports []int) string { return debianConfig(t, root, m.Dir, ports) })
	return m
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, crt, key string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is needed for a test certificate")
	}
	run(t, "", "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
		"-keyout", key, "-out", crt)
}

// TestMosquittoProductionConfig starts mosquitto the Debian way — Debian's
// main mosquitto.conf including deploy/mosquitto/mosquitto.conf as a
// conf.d drop-in, TLS listener, limits — with only paths and ports pointed
// into a temporary root and a self-signed certificate whose key has the
// owner and mode docs/deploy.md gives it, and checks that a TLS client with
// a device's password is accepted while a wrong password and plain MQTT on
// the TLS port are not. A drop-in that repeats an option of Debian's main
// file makes mosquitto exit 3 (the check can fail).
func TestMosquittoProductionConfig(t *testing.T) {
	t.Parallel()
	mosquittoBin(t)
	root := newRoot(t, false)
	debianMosquittoRoot(t, root)
	etc := filepath.Join(root, "etc/mosquitto")
	crt, key := filepath.Join(etc, "certs/server.crt"), filepath.Join(etc, "certs/server.key")
	selfSigned(t, crt, key)
	require.NoError(t, os.Chmod(key, 0o640))
	chownAsRoot(t, key, "root", "mosquitto")
	run(t, "", "cp", crt, filepath.Join(etc, "certs/ca.crt"))
	synced := filepath.Join(etc, "edgefleet")
	require.NoError(t, os.Mkdir(synced, 0o750))
	chownAsRoot(t, synced, "mosquitto", "mosquitto")
	run(t, "", "mosquitto_passwd", "-c", "-b", filepath.Join(synced, "passwd"), "dev-1", "pw-1")
	require.NoError(t, os.WriteFile(filepath.Join(synced, "acl"), deployFile(t, "mosquitto/acl.conf"), 0o640))
	for _, f := range []string{"passwd", "acl"} {
		require.NoError(t, os.Chmod(filepath.Join(synced, f), 0o640))
		chownAsRoot(t, filepath.Join(synced, f), "mosquitto", "mosquitto")
	}
	prod := deployFile(t, "mosquitto/mosquitto.conf")
	require.NoError(t, os.WriteFile(filepath.Join(etc, "conf.d/edgefleet.conf"), prod, 0o644))
	for _, p := range []string{"/etc/mosquitto/edgefleet/passwd", "/etc/mosquitto/edgefleet/acl", "/etc/mosquitto/certs/server.key"} {
		require.Contains(t, string(prod), " "+p+"\n", "the production config changed shape: update this test's files")
	}

	mq := startDebianMosquitto(t, root)
	tlsPort := mq.Ports[0]
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
	pid, err := os.ReadFile(filepath.Join(root, "run/mosquitto/mosquitto.pid"))
	require.NoError(t, err, "mosquitto wrote Debian's pid file, which broker sync signals")
	comm, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/comm")
	require.NoError(t, err, "the pid file names a running process")
	assert.Equal(t, "mosquitto\n", string(comm))
	select {
	case <-mq.Exited():
		t.Fatal("mosquitto exited with the production config (its log follows)")
	default:
	}

	// The drop-in as it was: repeating Debian's persistence_location.
	require.NoError(t, os.WriteFile(filepath.Join(etc, "conf.d/edgefleet.conf"),
		append(slices.Clone(prod), "persistence_location /var/lib/mosquitto/\n"...), 0o644))
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	require.NoError(t, os.WriteFile(conf, []byte(debianConfig(t, root, dir, testkit.FreePorts(t, 2))), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, mosquittoBin(t), "-c", conf).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "mosquitto must refuse the repeated option: %s", out)
	assert.Equal(t, 3, ee.ExitCode(), "%s", out)
	assert.Contains(t, string(out), "Duplicate persistence_location")
}

// TestMosquittoRetainedFromDevice pins what docs/security.md says of
// mosquitto: its ACL file has no rule for the retain flag, so a device's
// retained publish on its own status topic is kept (the embedded broker
// refuses it), while one on another device's topic is dropped.
func TestMosquittoRetainedFromDevice(t *testing.T) {
	t.Parallel()
	cpPassword := fmt.Sprintf("cp-%d", time.Now().UnixNano())
	mq := startMosquitto(t, cpPassword)
	run(t, "", "mosquitto_passwd", "-b", mq.passwd, "dev-1", "pw-1")
	require.NoError(t, os.Chmod(mq.passwd, 0o644))
	mq.Reload()
	sc := topics.Scheme{}
	retain := func(topic string) bool {
		code, _ := runCode(t, "mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(mq.Ports[0]),
			"-u", "dev-1", "-P", "pw-1", "-t", topic, "-m", "retained by dev-1", "-q", "1", "-r")
		return code == 0 // a denied publish is dropped silently; a refused login fails
	}
	require.Eventually(t, func() bool { return retain(sc.Status("dev-1")) }, 15*time.Second, 100*time.Millisecond,
		"mosquitto never let dev-1 in after the reload")
	require.True(t, retain(sc.Status("dev-2")))
	code, out := mq.sub(controlUser, cpPassword, sc.Status("dev-1"), 5)
	assert.Equal(t, 0, code, "a device's retained status is kept on mosquitto: %s", out)
	assert.Contains(t, out, "retained by dev-1")
	code, out = mq.sub(controlUser, cpPassword, sc.Status("dev-2"), 2)
	assert.Equal(t, 27, code, "nothing retained on another device's topic: %s", out)
}
