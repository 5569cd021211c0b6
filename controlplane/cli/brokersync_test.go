package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/mosquitto"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// TestBrokerSyncWritesMosquittoFiles runs broker sync --once against a
// control plane on an external broker: the include file's logins come
// first and win a name clash, the served devices and ACL follow, files and
// reload happen only on a change, and a broken include file or a failed
// reload is an error that leaves the written files alone.
func TestBrokerSyncWritesMosquittoFiles(t *testing.T) {
	mq := testkit.StartMosquitto(t) // anonymous: the control plane's login is not checked here
	sv := startServe(t, "--mqtt-url", mq.URL(), "--mqtt-username", "edgefleet-cp", "--mqtt-password", "cp-pw")
	code, _, stderr := cli(t, "--api", sv.api, "--token", sv.token, "device", "add", "dev-1")
	require.Equal(t, 0, code, stderr)
	code, out, stderr := cli(t, "--api", sv.api, "--token", sv.token, "token", "create", "--name", "mosquitto", "--role", "broker")
	require.Equal(t, 0, code, stderr)
	tok := regexp.MustCompile(`\n\s+(ef_\S+)\n`).FindStringSubmatch(out)
	require.NotNil(t, tok, out)

	dir := t.TempDir()
	include, passwd, acl, marker := filepath.Join(dir, "local"), filepath.Join(dir, "passwd"), filepath.Join(dir, "acl"), filepath.Join(dir, "reloads")
	cpHash, err := mosquitto.Hash("cp-pw")
	require.NoError(t, err)
	mine, err := mosquitto.Hash("mine")
	require.NoError(t, err)
	own := "edgefleet-cp:" + cpHash + "\ndev-1:" + mine + "\n"
	require.NoError(t, os.WriteFile(include, []byte(own), 0o600))
	sync := func(extra ...string) (int, string, string) {
		return cli(t, append([]string{"--api", sv.api, "--token", tok[1], "broker", "sync", "--once",
			"--include", include, "--passwd-file", passwd, "--acl-file", acl,
			"--reload-command", "echo reloaded >> " + marker}, extra...)...)
	}
	reloads := func() int {
		b, err := os.ReadFile(marker)
		if os.IsNotExist(err) {
			return 0
		}
		require.NoError(t, err)
		return strings.Count(string(b), "reloaded")
	}

	code, _, stderr = sync()
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "the include file's line wins", "dev-1 is in both")
	b, err := os.ReadFile(passwd)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(b), "# Written by edgefleet broker sync"))
	entries, err := mosquitto.ParsePasswd(b)
	require.NoError(t, err)
	require.Len(t, entries, 2, "%s", b)
	assert.Equal(t, mosquitto.Entry{User: "edgefleet-cp", Hash: cpHash}, entries[0])
	assert.Equal(t, mosquitto.Entry{User: "dev-1", Hash: mine}, entries[1], "the include file wins")
	fi, err := os.Stat(passwd)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm())
	gotACL, err := os.ReadFile(acl)
	require.NoError(t, err)
	wantACL, err := topics.MosquittoACL(topics.Scheme{}, "edgefleet-cp", 0)
	require.NoError(t, err)
	assert.Equal(t, wantACL, string(gotACL))
	assert.Equal(t, 1, reloads())

	// Nothing changed: nothing written, no reload.
	before := fi.ModTime()
	time.Sleep(10 * time.Millisecond)
	code, _, stderr = sync()
	require.Equal(t, 0, code, stderr)
	fi, err = os.Stat(passwd)
	require.NoError(t, err)
	assert.Equal(t, before, fi.ModTime())
	assert.Equal(t, 1, reloads())

	// The clash removed, the served dev-1 line is written.
	require.NoError(t, os.WriteFile(include, []byte("edgefleet-cp:"+cpHash+"\n"), 0o600))
	code, _, stderr = sync("--file-mode", "0600")
	require.Equal(t, 0, code, stderr)
	b, err = os.ReadFile(passwd)
	require.NoError(t, err)
	entries, err = mosquitto.ParsePasswd(b)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	assert.Equal(t, "dev-1", entries[1].User)
	assert.NotEqual(t, mine, entries[1].Hash)
	assert.Equal(t, 2, reloads())
	fi, err = os.Stat(passwd)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A broken include file: refused, the written file stays.
	require.NoError(t, os.WriteFile(include, []byte("edgefleet-cp has no colon\n"), 0o600))
	code, _, stderr = sync()
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "include file")
	after, err := os.ReadFile(passwd)
	require.NoError(t, err)
	assert.Equal(t, string(b), string(after))

	// A reload that fails is an error (the files are written).
	require.NoError(t, os.WriteFile(include, []byte("edgefleet-cp:"+cpHash+"\nops:"+mine+"\n"), 0o600))
	code, _, stderr = cli(t, "--api", sv.api, "--token", tok[1], "broker", "sync", "--once",
		"--include", include, "--passwd-file", passwd, "--reload-command", "echo no such broker >&2; exit 3")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "not reloaded")
	assert.Contains(t, stderr, "no such broker")

	// A broker token reads nothing else; a viewer token cannot sync.
	code, _, stderr = cli(t, "--api", sv.api, "--token", tok[1], "devices")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "needs viewer")
}

func TestBrokerSyncUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "needs --passwd-file"},
		{[]string{"--passwd-file", "p", "--pid-file", "x", "--reload-command", "y"}, "give one"},
		{[]string{"--passwd-file", "p", "--file-mode", "999"}, "--file-mode"},
		{[]string{"--passwd-file", "p", "--file-mode", "01777"}, "--file-mode"},
		{[]string{"--passwd-file", "p", "--poll", "2m"}, "--poll"},
		{[]string{"--nats-auth-file", "a", "--passwd-file", "p"}, "mosquitto's"},
		{[]string{"--nats-auth-file", "a", "--include", "i"}, "mosquitto's"},
	} {
		code, _, stderr := cli(t, append([]string{"--api", "http://127.0.0.1:1", "--token", "ef_x", "broker", "sync"}, tt.args...)...)
		assert.Equal(t, 2, code, "%v: %s", tt.args, stderr)
		assert.Contains(t, stderr, tt.want, "%v", tt.args)
	}
}

// TestBrokerSyncWaitsForItsToken: broker sync started before its token
// exists (the control plane that creates it needs mosquitto, which needs
// the password file) writes the include file alone and keeps running; it
// reads the token file once it is written, and again after the control
// plane refused the token it had (a revoked token replaced in the file).
func TestBrokerSyncWaitsForItsToken(t *testing.T) {
	mq := testkit.StartMosquitto(t)
	sv := startServe(t, "--mqtt-url", mq.URL(), "--mqtt-username", "edgefleet-cp", "--mqtt-password", "cp-pw")
	dir := t.TempDir()
	include, passwd, tokenFile := filepath.Join(dir, "local"), filepath.Join(dir, "passwd"), filepath.Join(dir, "token")
	cpHash, err := mosquitto.Hash("cp-pw")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(include, []byte("edgefleet-cp:"+cpHash+"\n"), 0o600))
	args := []string{"--api", sv.api, "--token-file", tokenFile, "broker", "sync",
		"--include", include, "--passwd-file", passwd, "--poll", "1s"}
	users := func() []string {
		b, err := os.ReadFile(passwd)
		require.NoError(t, err)
		entries, err := mosquitto.ParsePasswd(b)
		require.NoError(t, err)
		var out []string
		for _, e := range entries {
			out = append(out, e.User)
		}
		return out
	}

	code, _, stderr := cli(t, append(args, "--once")...)
	assert.Equal(t, 1, code, "no token, no answer: %s", stderr)
	assert.Contains(t, stderr, "no broker token yet")
	assert.Equal(t, []string{"edgefleet-cp"}, users(), "the include file alone, so mosquitto can start")

	out := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, noEnv, out, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			assert.Equal(t, 0, code, "broker sync exits 0 when stopped: %s", out)
		case <-time.After(30 * time.Second):
			t.Error("broker sync did not stop")
		}
	})
	admin := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := cli(t, append([]string{"--api", sv.api, "--token", sv.token}, args...)...)
		require.Equal(t, 0, code, stderr)
		return stdout
	}
	newToken := func() (id string) {
		t.Helper()
		m := regexp.MustCompile(`\(id (\S+),[^\n]*\n\s+(ef_\S+)\n`).FindStringSubmatch(admin("token", "create", "--name", "mosquitto", "--role", "broker"))
		require.NotNil(t, m)
		require.NoError(t, os.WriteFile(tokenFile, []byte(m[2]+"\n"), 0o600))
		return m[1]
	}
	admin("device", "add", "dev-1")
	id := newToken()
	require.Eventually(t, func() bool { return slices.Contains(users(), "dev-1") }, 30*time.Second, 50*time.Millisecond,
		"the token file written after the start was never read: %s", out)

	admin("token", "revoke", id)
	newToken()
	admin("device", "add", "dev-2")
	require.Eventually(t, func() bool { return slices.Contains(users(), "dev-2") }, 30*time.Second, 50*time.Millisecond,
		"a refused token was not replaced by the token file's new one: %s", out)
	assert.Equal(t, "edgefleet-cp", users()[0])
}

func TestBrokerNATSConfigUsage(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(pw, []byte("secret\n"), 0o600))
	bad := filepath.Join(dir, "bad")
	require.NoError(t, os.WriteFile(bad, []byte("a@b"), 0o600))
	base := []string{"broker", "nats-config", "--control-password-file", pw, "--route-password-file", pw, "--out-dir", dir}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{base, "--node NAME=HOST"},
		{append(base, "--node", "n0"), "want NAME=HOST"},
		{append(base, "--node", "n0=a", "--node", "n0=b"), "each name once"},
		{append(base, "--node", "n0=a", "--replicas", "3"), "has 1 nodes"},
		{[]string{"broker", "nats-config", "--node", "n0=a", "--out-dir", dir}, "--control-password-file"},
		{append(base, "--node", "n0=a", "--route-password-file", bad), "route password"},
	} {
		code, _, stderr := cli(t, tt.args...)
		assert.Equal(t, 2, code, "%v: %s", tt.args, stderr)
		assert.Contains(t, stderr, tt.want, "%v", tt.args)
	}
	code, stdout, stderr := cli(t, append(base, "--node", "n0=a", "--node", "n1=b")...)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "wrote 2 node configs")
	for _, f := range []string{"n0.conf", "n1.conf", NATSAuthFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "%s holds secrets", f)
	}
}
