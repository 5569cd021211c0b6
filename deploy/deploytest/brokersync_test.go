package deploytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// cliDaemon is an edgefleet command that runs until stopped (serve, broker
// sync), in this process: until Stop or the end of the test, when it must
// exit 0.
type cliDaemon struct {
	t      *testing.T
	out    *testkit.Buffer // stdout and stderr
	cancel context.CancelFunc
	done   chan struct{}
	code   int // set before done is closed
	stop   sync.Once
}

// startCLI runs `edgefleet args…` in this process until Stop or the end of
// the test.
func startCLI(t *testing.T, args ...string) *cliDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &cliDaemon{t: t, out: &testkit.Buffer{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		d.code = cli.Main(ctx, args, d.out, d.out)
		close(d.done)
	}()
	t.Cleanup(d.Stop)
	return d
}

// Exited reports whether the command has ended (by itself or stopped).
func (d *cliDaemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Stop cancels the command and waits for it; it must exit 0.
func (d *cliDaemon) Stop() {
	d.stop.Do(func() {
		d.cancel()
		select {
		case <-d.done:
			assert.Equal(d.t, 0, d.code, "edgefleet exits 0 when stopped: %s", d.out)
		case <-time.After(30 * time.Second):
			d.t.Error("edgefleet did not stop 30s after it was cancelled")
		}
		if d.t.Failed() {
			d.t.Logf("edgefleet output:\n%s", d.out)
		}
	})
}

// brokerSync runs `edgefleet broker sync` in process until the test ends.
func brokerSync(t *testing.T, args ...string) *testkit.Buffer {
	t.Helper()
	return startCLI(t, append(args, "--log-level", "debug")...).out
}

// TestMosquittoZeroTouch follows docs/deploy.md's external-mosquitto path
// with nothing added to mosquitto by hand but the control plane's own
// login: broker sync bootstraps the password file while the control plane
// is not up, mosquitto starts, the control plane starts with ingest
// connections under use_username_as_clientid, broker sync fills in the
// ingest logins and the ACL; a device enrolled with a one-time token logs
// in and serves a model; a revoked one is disconnected and refused, without
// restarting mosquitto.
func TestMosquittoZeroTouch(t *testing.T) {
	t.Parallel()
	mosquittoBin(t)
	mq := testkit.NewMosquitto(t)
	dir := mq.Dir
	include := filepath.Join(dir, "edgefleet-local.passwd")
	passwd := filepath.Join(dir, "edgefleet.passwd")
	acl := filepath.Join(dir, "edgefleet.acl")
	pidFile := filepath.Join(dir, "mosquitto.pid")
	cpPassword := fmt.Sprintf("cp-%d", time.Now().UnixNano())

	// The operator's part: the control plane's login and the shipped ACL.
	run(t, "", "mosquitto_passwd", "-c", "-b", include, controlUser, cpPassword)
	shipped, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/acl.conf"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(acl, shipped, 0o644))

	// Bootstrap: the control plane is not up, so broker sync writes the
	// include file's logins alone, and says the fetch failed.
	unreachable := fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePorts(t, 1)[0])
	syncArgs := func(api, token string) []string {
		return []string{"--api", api, "--token", token, "broker", "sync",
			"--include", include, "--passwd-file", passwd, "--acl-file", acl,
			"--pid-file", pidFile, "--file-mode", "0644", "--poll", "5s"}
	}
	var bootOut testkit.Buffer
	code := cli.Main(context.Background(), append(syncArgs(unreachable, "ef_unused"), "--once"), &bootOut, &bootOut)
	assert.Equal(t, 1, code, "the fetch failed: %s", bootOut.String())
	assert.Contains(t, bootOut.String(), "cannot reach the control plane")
	boot, err := os.ReadFile(passwd)
	require.NoError(t, err, "bootstrap wrote the password file: %s", bootOut.String())
	assert.Contains(t, string(boot), controlUser+":$7$")
	assert.Equal(t, 1, strings.Count(string(boot), ":$7$"), "only the include file's login")

	tmpl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/mosquitto/mosquitto-test.conf"))
	require.NoError(t, err)
	mq.Start(1, func(ports []int) string {
		return strings.NewReplacer("@PORT@", fmt.Sprint(ports[0]), "@PASSWD@", passwd, "@ACL@", acl).Replace(string(tmpl)) +
			"pid_file " + pidFile + "\n"
	})

	// The control plane starts although mosquitto refuses its ingest
	// logins for now: the main connection stands in.
	cp := startControlPlane(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password, o.IngestConnections = mq.URL(), controlUser, cpPassword, 2
	})
	admin, err := client.New(cp.srv.APIURL(), client.Options{Token: cp.token})
	require.NoError(t, err)
	ingestReady := func() bool {
		m, err := admin.Metrics(context.Background())
		require.NoError(t, err)
		return strings.Contains(m, "\nedgefleet_mqtt_ingest_ready 1\n")
	}
	assert.False(t, ingestReady(), "mosquitto does not know the ingest logins yet")

	tok := regexp.MustCompile(`\n\s+(ef_\S+)\n`).FindStringSubmatch(cp.cli("token", "create", "--name", "mosquitto", "--role", "broker"))
	require.NotNil(t, tok)
	syncOut := brokerSync(t, syncArgs(cp.srv.APIURL(), tok[1])...)
	require.Eventually(t, ingestReady, time.Minute, 100*time.Millisecond,
		"the ingest connections never came up after broker sync wrote their logins")
	written, err := os.ReadFile(acl)
	require.NoError(t, err)
	wantACL, err := topics.MosquittoACL(topics.Scheme{}, controlUser, 2)
	require.NoError(t, err)
	assert.Equal(t, wantACL, string(written), "broker sync wrote the served ACL")

	// Zero-touch enrollment: nothing is added to mosquitto by hand.
	m := regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cp.cli("device", "enroll", "dev-1"))
	require.NotNil(t, m, "edgefleet device enroll prints a token")
	cfg, err := agent.Enroll(context.Background(), agent.EnrollOptions{
		ControlPlane: cp.srv.APIURL(), Token: m[1], DataDir: t.TempDir(), InferenceListen: "127.0.0.1:0"})
	require.NoError(t, err)
	assert.Equal(t, mq.URL(), cfg.BrokerURL)
	opts, err := cfg.Options()
	require.NoError(t, err)
	opts.Runtime = cp.rt
	opts.HeartbeatInterval = 300 * time.Millisecond
	opts.FetchRetryInterval = 300 * time.Millisecond
	a := fleettest.RunAgent(t, opts)
	cp.pushAndDeploy("dev-1", "1.0.0")
	cp.waitActive("dev-1", "1.0.0", time.Minute)
	inferFraud(t, a.InferenceAddr(), "1.0.0")
	var seq uint64
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device("dev-1")
		if err == nil && d.Telemetry != nil {
			seq = d.Telemetry.Seq
		}
		return seq > 0 && d.Online
	}, 30*time.Second, 50*time.Millisecond, "no telemetry over the ingest connections")
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device("dev-1")
		return err == nil && d.Telemetry != nil && d.Telemetry.Seq > seq+2
	}, 30*time.Second, 50*time.Millisecond, "telemetry keeps arriving")

	// Revocation takes effect without restarting mosquitto: a second
	// enrolled device holds a live session (mosquitto_sub) when it is
	// revoked; mosquitto closes it, refuses its password from then on, and
	// keeps dev-1's session.
	m = regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cp.cli("device", "enroll", "dev-2"))
	require.NotNil(t, m)
	cfg2, err := agent.Enroll(context.Background(), agent.EnrollOptions{
		ControlPlane: cp.srv.APIURL(), Token: m[1], DataDir: t.TempDir(), InferenceListen: "127.0.0.1:0"})
	require.NoError(t, err)
	mp := &mosquittoProc{Mosquitto: mq, t: t}
	require.Eventually(t, func() bool {
		code, _ := mp.sub("dev-2", cfg2.Password, topics.Scheme{}.Trust(), 2)
		return code == 0
	}, 30*time.Second, 100*time.Millisecond, "dev-2 was never let in")
	live := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(mq.Ports[0]),
		"-u", "dev-2", "-P", cfg2.Password, "-t", topics.Scheme{}.Trust(), "-q", "1")
	liveOut := &testkit.Buffer{}
	live.Stdout, live.Stderr = liveOut, liveOut
	require.NoError(t, live.Start())
	exited := make(chan error, 1)
	go func() { exited <- live.Wait() }()
	t.Cleanup(func() { _ = live.Process.Kill() })
	require.Eventually(t, func() bool { return liveOut.String() != "" },
		10*time.Second, 50*time.Millisecond, "dev-2's session never received the retained trust bundle")
	before, err := cp.srv.Device("dev-1")
	require.NoError(t, err)

	cp.cli("device", "revoke", "dev-2")
	select {
	case err := <-exited:
		assert.Error(t, err, "mosquitto_sub ends refused: %s", liveOut)
	case <-time.After(30 * time.Second):
		t.Fatalf("mosquitto did not close the revoked device's live session: %s", liveOut)
	}
	code, out := mp.sub("dev-2", cfg2.Password, topics.Scheme{}.Trust(), 2)
	assert.NotEqual(t, 0, code, "a revoked password is refused: %s", out)
	assert.NotEqual(t, 27, code, "refused at login, not timed out after it: %s", out)
	require.Eventually(t, func() bool {
		d, err := cp.srv.Device("dev-1")
		return err == nil && d.Online && d.Telemetry.Seq > before.Telemetry.Seq+2
	}, 30*time.Second, 50*time.Millisecond, "dev-1 kept its session through the reload")
	select {
	case <-mq.Exited():
		t.Fatal("mosquitto exited")
	default:
	}
	assert.Contains(t, syncOut.String(), "mosquitto files written and reloaded")

}
