package deploytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// TestMosquittoProductionConfig starts mosquitto with deploy/mosquitto/
// mosquitto.conf itself — TLS listener, persistence, limits — with only
// its paths and ports pointed at a temporary directory and a self-signed
// certificate, and checks that a TLS client with a device's password is
// accepted while a wrong password and plain MQTT on the TLS port are not.
func TestMosquittoProductionConfig(t *testing.T) {
	t.Parallel()
	mosquittoBin(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is needed for a test certificate")
	}
	mq := testkit.NewMosquitto(t)
	dir := mq.Dir
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
	mq.Start(2, func(ports []int) string {
		conf := strings.NewReplacer(
			"/etc/mosquitto/edgefleet.passwd", passwd,
			"/etc/mosquitto/edgefleet.acl", filepath.Join(dir, "acl"),
			"/etc/mosquitto/certs/server.crt", crt,
			"/etc/mosquitto/certs/server.key", key,
			"/etc/mosquitto/certs/ca.crt", crt,
			"/var/lib/mosquitto/", filepath.Join(dir, "data")+"/",
			"listener 8883\n", fmt.Sprintf("listener %d 127.0.0.1\n", ports[0]),
			"listener 1883 127.0.0.1\n", fmt.Sprintf("listener %d 127.0.0.1\n", ports[1]),
		).Replace(string(prod))
		for _, want := range []string{passwd, crt, key, fmt.Sprint(ports[0]), fmt.Sprint(ports[1]), filepath.Join(dir, "data")} {
			require.Contains(t, conf, want, "the production config changed shape: update this test's replacements")
		}
		return conf
	})
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
	select {
	case <-mq.Exited():
		t.Fatal("mosquitto exited with the production config (its log follows)")
	default:
	}
}
