package deploytest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
)

// newRoot is an empty image root: /etc/passwd and /etc/group with root only,
// and /usr/lib/systemd so install.sh sees a systemd image. It is world
// traversable so the agent can run from it as the edgefleet user.
func newRoot(t *testing.T, systemd bool) string {
	t.Helper()
	root, err := os.MkdirTemp("", "edgefleet-root-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	require.NoError(t, os.Chmod(root, 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644))
	if systemd {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755))
	}
	return root
}

// installSh runs deploy/agent/install.sh and returns its exit status and output.
func installSh(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return runCode(t, "sh", append([]string{filepath.Join(repoRoot(t), "deploy/agent/install.sh")}, args...)...)
}

// passwdEntry is the edgefleet line of root's /etc/passwd (nil if absent).
func passwdEntry(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Split(line, ":"); len(f) == 7 && f[0] == "edgefleet" {
			return f
		}
	}
	return nil
}

func TestInstallRunUpgradeUninstall(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the agent")
	}
	asRoot := os.Geteuid() == 0
	if !asRoot {
		t.Log("not root: user creation and file owners are not checked (CI runs as root)")
	}
	tarball := buildAgentTarball(t)
	root := newRoot(t, true)
	cp := startControlPlane(t, nil)
	bundle := cp.provision("dev-1", "/srv/elsewhere")

	code, out := installSh(t, "--root", root, "--tarball", tarball, "--config", bundle)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "installed edgefleet-agent 1.2.3-test")
	assert.Contains(t, out, "data_dir set to /var/lib/edgefleet-agent", "a bundle's data_dir outside the unit's ReadWritePaths is corrected, loudly")

	var uid, gid int
	if asRoot {
		pw := passwdEntry(t, root)
		require.NotNil(t, pw, "user edgefleet created in the image's /etc/passwd")
		assert.Equal(t, "/usr/sbin/nologin", pw[6])
		assert.Equal(t, "/var/lib/edgefleet-agent", pw[5])
		uid, gid = atoi(t, pw[2]), atoi(t, pw[3])
		assert.NotZero(t, uid)
		assert.Less(t, uid, 1000, "a system user")
	}
	files := []struct {
		path     string
		mode     os.FileMode
		uid, gid int // -1: root-owned; checked as root only
	}{
		{"opt/edgefleet-agent/bin/edgefleet-agent", 0o755, 0, 0},
		{"opt/edgefleet-agent/lib/libonnxruntime.so.1", 0o644, 0, 0},
		{"opt/edgefleet-agent/install.sh", 0o755, 0, 0},
		{"etc/systemd/system/edgefleet-agent.service", 0o644, 0, 0},
		{"etc/edgefleet/agent.yaml", 0o640, 0, gid},
		{"etc/edgefleet/agent.yaml.example", 0o644, 0, 0},
		{"var/lib/edgefleet-agent", os.ModeDir | 0o750, uid, gid},
		{"usr/lib/sysusers.d/edgefleet-agent.conf", 0o644, 0, 0},
		{"usr/lib/tmpfiles.d/edgefleet-agent.conf", 0o644, 0, 0},
	}
	for _, f := range files {
		fi, err := os.Lstat(filepath.Join(root, f.path))
		if !assert.NoError(t, err, "%s installed", f.path) {
			continue
		}
		assert.Equal(t, f.mode, fi.Mode(), "mode of %s", f.path)
		if asRoot {
			st := fi.Sys().(*syscall.Stat_t)
			assert.Equal(t, []int{f.uid, f.gid}, []int{int(st.Uid), int(st.Gid)}, "owner of %s", f.path)
		}
	}
	for link, target := range map[string]string{
		"usr/local/bin/edgefleet-agent":                                      "/opt/edgefleet-agent/bin/edgefleet-agent",
		"etc/systemd/system/multi-user.target.wants/edgefleet-agent.service": "/etc/systemd/system/edgefleet-agent.service",
	} {
		got, err := os.Readlink(filepath.Join(root, link))
		if assert.NoError(t, err, "%s is a symlink", link) {
			assert.Equal(t, target, got, "target of %s", link)
		}
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/edgefleet-agent.service"))
	require.NoError(t, err)
	want, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/systemd/edgefleet-agent.service"))
	require.NoError(t, err)
	assert.Equal(t, string(want), string(unit), "the unit installed is the one in deploy/systemd")
	verifyUnit(t, root, "edgefleet-agent.service", string(unit))

	installed := filepath.Join(root, "etc/edgefleet/agent.yaml")
	cfg, err := agent.LoadConfig(installed)
	require.NoError(t, err)
	orig, err := agent.LoadConfig(bundle)
	require.NoError(t, err)
	assert.Equal(t, "dev-1", cfg.DeviceID)
	assert.Equal(t, orig.Password, cfg.Password, "credentials come from the bundle")
	assert.Equal(t, "/var/lib/edgefleet-agent", cfg.DataDir)

	bin := filepath.Join(root, "opt/edgefleet-agent/bin/edgefleet-agent")
	assert.True(t, strings.HasPrefix(run(t, "", bin, "--version"), "edgefleet-agent 1.2.3-test"), "the stamped version")

	// Run the installed binary as the edgefleet user. The config is the
	// installed one with data_dir moved into the image root (the test
	// cannot chroot into a root without a libc).
	runCfg := runConfig(t, root, installed)
	var cred *syscall.Credential
	if asRoot {
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	p, addr := startAgentProc(t, cred, bin, "--config", runCfg)
	cp.pushAndDeploy("dev-1", "1.0.0")
	cp.waitActive("dev-1", "1.0.0", time.Minute)
	inferFraud(t, addr, "1.0.0")
	p.stop()

	// Upgrade in place: no --config, the config and the state stay.
	models, err := filepath.Glob(filepath.Join(root, "var/lib/edgefleet-agent/models/fraud/*.onnx"))
	require.NoError(t, err)
	require.NotEmpty(t, models, "the model is stored in the installed data dir")
	before, err := os.ReadFile(installed)
	require.NoError(t, err)
	code, out = installSh(t, "--root", root, "--tarball", tarball)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "upgraded edgefleet-agent 1.2.3-test")
	after, err := os.ReadFile(installed)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "an upgrade keeps the credentials")
	assert.FileExists(t, bin+".previous", "the previous binary is kept for a manual rollback")
	for _, m := range models {
		assert.FileExists(t, m, "an upgrade keeps the state")
	}
	// The upgraded agent serves the committed model at once, without the control plane.
	p, addr = startAgentProc(t, cred, bin, "--config", runCfg)
	inferFraud(t, addr, "1.0.0")
	p.stop()

	code, out = installSh(t, "--root", root, "--uninstall")
	require.Equal(t, 0, code, out)
	assert.NoFileExists(t, bin)
	assert.NoFileExists(t, filepath.Join(root, "etc/systemd/system/edgefleet-agent.service"))
	assert.FileExists(t, installed, "uninstall keeps the config")
	assert.DirExists(t, filepath.Join(root, "var/lib/edgefleet-agent"), "uninstall keeps the data")
	code, out = installSh(t, "--root", root, "--uninstall", "--purge")
	require.Equal(t, 0, code, out)
	assert.NoDirExists(t, filepath.Join(root, "etc/edgefleet"))
	assert.NoDirExists(t, filepath.Join(root, "var/lib/edgefleet-agent"))
	if asRoot {
		assert.Nil(t, passwdEntry(t, root), "--purge removes the user")
	}
}

// inferenceListen is the installed config's local API address line.
var inferenceListen = regexp.MustCompile(`(?m)^inference_listen:.*$`)

// runConfig writes a copy of the installed config whose data_dir is inside
// root and whose local API listens on a port of the system's choosing (the
// installed one, 127.0.0.1:8081, is taken when two install tests run their
// agents at once, in this process or another `make test`), with the same
// mode and owner.
func runConfig(t *testing.T, root, installed string) string {
	t.Helper()
	b, err := os.ReadFile(installed)
	require.NoError(t, err)
	fi, err := os.Stat(installed)
	require.NoError(t, err)
	b = bytes.Replace(b, []byte("data_dir: /var/lib/edgefleet-agent"), []byte("data_dir: "+filepath.Join(root, "var/lib/edgefleet-agent")), 1)
	require.True(t, inferenceListen.Match(b), "the installed config sets inference_listen")
	b = inferenceListen.ReplaceAll(b, []byte("inference_listen: 127.0.0.1:0"))
	path := filepath.Join(root, "etc/edgefleet/agent-test.yaml")
	require.NoError(t, os.WriteFile(path, b, 0o640))
	st := fi.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chown(path, int(st.Uid), int(st.Gid)))
	}
	return path
}

// verifyUnit runs systemd-analyze verify on a unit, with its /opt and
// /usr/local paths pointed into root (verify checks the binaries exist).
func verifyUnit(t *testing.T, root, name, unit string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed (Debian package systemd): unit not verified")
		return
	}
	unit = strings.ReplaceAll(unit, "ExecStart=/", "ExecStart="+root+"/")
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(unit), 0o644))
	code, out := runCode(t, sa, "verify", path)
	assert.Equal(t, 0, code, "systemd-analyze verify %s:\n%s", name, out)
	assert.Empty(t, strings.TrimSpace(out), "systemd-analyze verify %s warns", name)
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// fakeELF writes root/bin/sh as an ELF header for machine (e_machine, little endian).
func fakeELF(t *testing.T, root string, machine uint16) {
	t.Helper()
	hdr := make([]byte, 64)
	copy(hdr, "\x7fELF\x02\x01\x01")
	hdr[18], hdr[19] = byte(machine), byte(machine>>8)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "bin/sh"), hdr, 0o755))
}

func TestInstallErrors(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the agent")
	}
	tarball := buildAgentTarball(t)
	arch := goarch(t)
	other, otherMachine := "arm64", uint16(0xb7)
	if arch == "arm64" {
		other, otherMachine = "amd64", 0x3e
	}
	good := filepath.Join(t.TempDir(), "good.yaml")
	require.NoError(t, os.WriteFile(good, []byte("device_id: dev-1\nbroker_url: tcp://cp:1883\nroot_public_key: |\n  x\n"), 0o600))
	noRoot := filepath.Join(t.TempDir(), "noroot.yaml")
	require.NoError(t, os.WriteFile(noRoot, []byte("device_id: dev-1\nbroker_url: tcp://cp:1883\n"), 0o600))

	tests := []struct {
		name    string
		prepare func(root string)
		args    []string
		code    int
		want    string
	}{
		{name: "no provisioning", args: nil, code: 5, want: "no provisioning: give --config FILE"},
		{name: "token without control plane", args: []string{"--enroll-token", "tok"}, code: 5, want: "--enroll-token needs --control-plane"},
		{name: "control plane without token", args: []string{"--control-plane", "http://127.0.0.1:1"}, code: 5, want: "--control-plane needs --enroll-token"},
		{name: "enrollment refused", args: []string{"--enroll-token", "tok", "--control-plane", "http://127.0.0.1:1"}, code: 5, want: "enroll"},
		{name: "bundle without root key", args: []string{"--config", noRoot}, code: 5, want: "no root_public_key"},
		{name: "missing bundle", args: []string{"--config", "/nonexistent.yaml"}, code: 5, want: "cannot read it"},
		{name: "unknown flag", args: []string{"--frobnicate"}, code: 2, want: "unknown argument: --frobnicate"},
		{
			name: "wrong architecture", prepare: func(root string) { fakeELF(t, root, otherMachine) },
			args: []string{"--config", good}, code: 3, want: "this package is for linux/" + arch + " but",
		},
		{
			name: "32-bit ARM", prepare: func(root string) { fakeELF(t, root, 0x28) },
			args: []string{"--config", good}, code: 3, want: "32-bit ARM is not supported",
		},
		{
			name: "no systemd in the image", prepare: func(root string) { _ = os.RemoveAll(filepath.Join(root, "usr/lib/systemd")) },
			args: []string{"--config", good}, code: 0, want: "has no systemd: the unit is installed but not enabled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t, true)
			if tt.prepare != nil {
				tt.prepare(root)
			}
			code, out := installSh(t, append([]string{"--root", root, "--tarball", tarball}, tt.args...)...)
			assert.Equal(t, tt.code, code, "install.sh %s: exit status\n%s", strings.Join(tt.args, " "), out)
			assert.Contains(t, out, tt.want)
			if tt.code != 0 {
				assert.NoFileExists(t, filepath.Join(root, "opt/edgefleet-agent/bin/edgefleet-agent"), "a refused install writes nothing")
			}
		})
	}
	t.Run("wrong package for the image names the right one", func(t *testing.T) {
		root := newRoot(t, true)
		fakeELF(t, root, otherMachine)
		_, out := installSh(t, "--root", root, "--tarball", tarball, "--config", good)
		assert.Contains(t, out, "use edgefleet-agent-1.2.3-test-linux-"+other+".tar.gz")
	})
	t.Run("no systemd on this machine", func(t *testing.T) {
		if _, err := os.Stat("/run/systemd/system"); err == nil {
			t.Skip("systemd runs here: this case would install into /")
		}
		code, out := installSh(t, "--tarball", tarball, "--config", good)
		assert.Equal(t, 4, code, out)
		assert.Contains(t, out, "systemd is not running here; pass --no-start")
	})
}

// TestInstallEnroll installs with a one-time enrollment token instead of a
// bundle: install.sh runs `edgefleet-agent enroll` against a real control
// plane, installs the config it writes, and the installed agent activates
// a model.
func TestInstallEnroll(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the agent")
	}
	tarball := buildAgentTarball(t)
	dir := t.TempDir()
	run(t, "", "tar", "-xzf", tarball, "-C", dir)
	bins, err := filepath.Glob(filepath.Join(dir, "*/bin/edgefleet-agent"))
	require.NoError(t, err)
	require.Len(t, bins, 1)
	if b, err := os.ReadFile(bins[0]); err != nil || !bytes.Contains(b, []byte("edgefleet-agent enroll")) {
		t.Skip("this agent has no enroll command yet")
	}
	cp := startControlPlane(t, nil)
	m := regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cp.cli("device", "enroll", "dev-9"))
	require.NotNil(t, m, "edgefleet device enroll prints a token")
	root := newRoot(t, true)
	code, out := installSh(t, "--root", root, "--tarball", tarball, "--enroll-token", m[1], "--control-plane", cp.srv.APIURL())
	require.Equal(t, 0, code, out)
	installed := filepath.Join(root, "etc/edgefleet/agent.yaml")
	cfg, err := agent.LoadConfig(installed)
	require.NoError(t, err)
	assert.Equal(t, "dev-9", cfg.DeviceID)
	assert.Equal(t, "/var/lib/edgefleet-agent", cfg.DataDir)
	fi, err := os.Stat(installed)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode(), "the enrolled config holds a password")

	code, out = installSh(t, "--root", root, "--tarball", tarball, "--enroll-token", m[1], "--control-plane", cp.srv.APIURL())
	assert.Equal(t, 5, code, "a used token is refused: %s", out)
	after, err := agent.LoadConfig(installed)
	require.NoError(t, err)
	assert.Equal(t, cfg.Password, after.Password, "a failed enrollment leaves the installed config alone")

	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		pw := passwdEntry(t, root)
		require.NotNil(t, pw)
		cred = &syscall.Credential{Uid: uint32(atoi(t, pw[2])), Gid: uint32(atoi(t, pw[3]))}
	}
	bin := filepath.Join(root, "opt/edgefleet-agent/bin/edgefleet-agent")
	_, addr := startAgentProc(t, cred, bin, "--config", runConfig(t, root, installed))
	cp.pushAndDeploy("dev-9", "1.0.0")
	cp.waitActive("dev-9", "1.0.0", time.Minute)
	inferFraud(t, addr, "1.0.0")
}

// TestInstallTLSFiles: install.sh places the broker's CA and a client
// certificate and key into the root — /etc/edgefleet/tls, certificates
// 0644 and the key 0640, owned root:edgefleet — and the installed config
// names them there, whether it came from a bundle or an enrollment. A
// wrong path is refused before the enrollment token is spent, and an
// upgrade can replace a certificate. As root, the edgefleet user can read
// the key and another user cannot.
func TestInstallTLSFiles(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the agent")
	}
	tarball := buildAgentTarball(t)
	src := t.TempDir()
	ca, crt, key := filepath.Join(src, "fleet-ca.pem"), filepath.Join(src, "dev.crt"), filepath.Join(src, "dev.key")
	selfSigned(t, ca, filepath.Join(src, "ca.key"))
	selfSigned(t, crt, key)
	require.NoError(t, os.Chmod(key, 0o600))
	cp := startControlPlane(t, nil)
	tlsArgs := []string{"--tls-ca-file", ca, "--tls-cert-file", crt, "--tls-key-file", key}
	const dir = "/etc/edgefleet/tls"

	// checkInstalled checks the files and the config of an install into root.
	checkInstalled := func(t *testing.T, root, caSrc string) {
		t.Helper()
		gid := -1
		if os.Geteuid() == 0 {
			pw := passwdEntry(t, root)
			require.NotNil(t, pw)
			gid = atoi(t, pw[3])
		}
		for _, f := range []struct {
			path, src string
			mode      os.FileMode
		}{
			{dir, "", os.ModeDir | 0o750},
			{dir + "/ca.crt", caSrc, 0o644},
			{dir + "/client.crt", crt, 0o644},
			{dir + "/client.key", key, 0o640},
		} {
			p := filepath.Join(root, f.path)
			fi, err := os.Stat(p)
			if !assert.NoError(t, err, "%s installed", f.path) {
				continue
			}
			assert.Equal(t, f.mode, fi.Mode(), "mode of %s", f.path)
			if gid >= 0 {
				st := fi.Sys().(*syscall.Stat_t)
				assert.Equal(t, []int{0, gid}, []int{int(st.Uid), int(st.Gid)}, "owner of %s: root:edgefleet", f.path)
			}
			if f.src != "" {
				want, err := os.ReadFile(f.src)
				require.NoError(t, err)
				got, err := os.ReadFile(p)
				require.NoError(t, err)
				assert.Equal(t, string(want), string(got), "%s is a copy of %s", f.path, f.src)
			}
		}
		installed := filepath.Join(root, "etc/edgefleet/agent.yaml")
		cfg, err := agent.LoadConfig(installed)
		require.NoError(t, err)
		assert.Equal(t, []string{dir + "/ca.crt", dir + "/client.crt", dir + "/client.key"},
			[]string{cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile}, "the config names the installed files, as the device sees them")
		// With the device's paths pointed into the root, the agent loads them.
		cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = root+cfg.TLSCAFile, root+cfg.TLSCertFile, root+cfg.TLSKeyFile
		cfg.DataDir = t.TempDir()
		_, err = cfg.Options()
		assert.NoError(t, err, "the installed certificates load")
		if gid >= 0 {
			pw := passwdEntry(t, root)
			asUser := func(uid, gid int) error {
				cmd := exec.Command("cat", filepath.Join(root, dir, "client.key"))
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
				return cmd.Run()
			}
			assert.NoError(t, asUser(atoi(t, pw[2]), atoi(t, pw[3])), "the edgefleet user reads the key")
			assert.Error(t, asUser(65534, 65534), "nobody else reads the key")
		}
	}

	t.Run("bundle", func(t *testing.T) {
		root := newRoot(t, true)
		bundle := cp.provision("dev-tls-1", "/var/lib/edgefleet-agent")
		code, out := installSh(t, append([]string{"--root", root, "--tarball", tarball, "--config", bundle}, tlsArgs...)...)
		require.Equal(t, 0, code, out)
		checkInstalled(t, root, ca)

		// An upgrade that brings a new CA replaces it and keeps the rest.
		ca2 := filepath.Join(t.TempDir(), "new-ca.pem")
		selfSigned(t, ca2, filepath.Join(t.TempDir(), "new-ca.key"))
		before, err := agent.LoadConfig(filepath.Join(root, "etc/edgefleet/agent.yaml"))
		require.NoError(t, err)
		code, out = installSh(t, "--root", root, "--tarball", tarball, "--tls-ca-file", ca2)
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "upgraded")
		checkInstalled(t, root, ca2)
		after, err := agent.LoadConfig(filepath.Join(root, "etc/edgefleet/agent.yaml"))
		require.NoError(t, err)
		assert.Equal(t, before, after, "the same config: the paths did not change")
	})

	t.Run("enrollment", func(t *testing.T) {
		m := regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cp.cli("device", "enroll", "dev-tls-2"))
		require.NotNil(t, m)
		root := newRoot(t, true)
		base := []string{"--root", root, "--tarball", tarball, "--enroll-token", m[1], "--control-plane", cp.srv.APIURL()}

		code, out := installSh(t, append(base, "--tls-ca-file", filepath.Join(src, "typo.pem"), "--tls-cert-file", crt, "--tls-key-file", key)...)
		assert.Equal(t, 5, code, out)
		assert.Contains(t, out, "--tls-ca-file "+filepath.Join(src, "typo.pem")+": cannot read it")
		code, out = installSh(t, append(base, "--tls-ca-file", ca, "--tls-cert-file", crt, "--tls-key-file", crt)...)
		assert.Equal(t, 5, code, out)
		assert.Contains(t, out, "no PEM private key")
		assert.NoFileExists(t, filepath.Join(root, "opt/edgefleet-agent/bin/edgefleet-agent"), "a refused install writes nothing")

		code, out = installSh(t, append(base, tlsArgs...)...)
		require.Equal(t, 0, code, "the token survived the refused attempts: %s", out)
		checkInstalled(t, root, ca)
	})

	t.Run("refusals", func(t *testing.T) {
		root := newRoot(t, true)
		bundle := cp.provision("dev-tls-3", "/var/lib/edgefleet-agent")
		for _, tt := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"--config", bundle, "--tls-cert-file", crt}, 2, "--tls-cert-file and --tls-key-file go together"},
			{[]string{"--config", bundle, "--tls-key-file", key}, 2, "--tls-cert-file and --tls-key-file go together"},
			{[]string{"--config", bundle, "--tls-ca-file", key}, 5, "no PEM certificate"},
			{[]string{"--tls-ca-file", ca}, 5, "no provisioning"},
		} {
			code, out := installSh(t, append([]string{"--root", root, "--tarball", tarball}, tt.args...)...)
			assert.Equal(t, tt.code, code, "install.sh %v: %s", tt.args, out)
			assert.Contains(t, out, tt.want, "install.sh %v", tt.args)
		}
		assert.NoDirExists(t, filepath.Join(root, "etc/edgefleet"), "a refused install writes nothing")
	})
}
