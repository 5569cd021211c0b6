package deploytest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cli"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// docMarker comes right before each ```sh block of docs/deploy.md's server
// section that TestDeployDocServer runs.
const docMarker = "<!-- deploy-test: server -->\n"

// docSection is the heading of the section the marked blocks belong to.
const docSection = "## A server → control plane + mosquitto\n"

// docScript is the marked blocks of docs/deploy.md, in order, as one script.
func docScript(t *testing.T, doc string) string {
	t.Helper()
	i := strings.Index(doc, docSection)
	require.GreaterOrEqual(t, i, 0, "docs/deploy.md has the section %q", docSection)
	section := doc[i+len(docSection):]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	var blocks []string
	for rest := section; ; {
		k := strings.Index(rest, docMarker)
		if k < 0 {
			break
		}
		rest = rest[k+len(docMarker):]
		body, ok := strings.CutPrefix(rest, "```sh\n")
		require.True(t, ok, "a %q line is followed by a ```sh block", strings.TrimSpace(docMarker))
		end := strings.Index(body, "\n```\n")
		require.GreaterOrEqual(t, end, 0, "a marked block ends")
		blocks = append(blocks, body[:end+1])
		rest = body[end:]
	}
	require.Equal(t, strings.Count(doc, docMarker), len(blocks), "every marked block is in the server section")
	require.GreaterOrEqual(t, len(blocks), 6, "the server section's steps are marked")
	return strings.Join(blocks, "")
}

// A docSubstitution replaces the only doc text that cannot run as written.
type docSubstitution struct{ old, new, why string }

func docSubstitutions(version, arch string) []docSubstitution {
	return []docSubstitution{
		{"VERSION=1.4.0 ARCH=amd64 ", "VERSION=" + version + " ARCH=" + arch + " ",
			"the release is the tarball this test packaged, for this machine"},
		{"-h mqtt.example.com -p 8883 ", `-h 127.0.0.1 -p "$DEPLOYTEST_TLS_PORT" `,
			"mosquitto's TLS listener is on a free port of 127.0.0.1, the name the test's certificate has"},
	}
}

// substitute applies subs; each must match exactly once, or the docs
// drifted from what this test knows.
func substitute(script string, subs []docSubstitution) (string, error) {
	for _, s := range subs {
		if n := strings.Count(script, s.old); n != 1 {
			return "", fmt.Errorf("the docs changed: %q is there %d times, the test replaces it once (%s)", s.old, n, s.why)
		}
		script = strings.Replace(script, s.old, s.new, 1)
	}
	return script, nil
}

// hostPaths are absolute paths of the server, moved into the test's root.
var hostPaths = regexp.MustCompile(`(?m)(^|[\s=:'"(])(/(?:etc|var|usr/local|run)/)`)

// userMode says how the test handles useradd and file owners.
type userMode int

const (
	// usersReal: root in CI. useradd creates edgefleet (removed at the
	// end); every owner is real.
	usersReal userMode = iota
	// usersMapped: root elsewhere, a shared machine whose users the test
	// does not change. useradd is skipped and edgefleet stands in as root;
	// mosquitto (made by its package) is real.
	usersMapped
	// usersNone: not root. Owners are dropped: every file and process is
	// the test user's.
	usersNone
)

// docPrelude goes before the docs' blocks. It sets bash's strict mode and
// replaces the commands that cannot run here with functions:
//   - systemctl and apt-get ask the test (an HTTP hook on 127.0.0.1) to do
//     what they would: lay out Debian's mosquitto package, start mosquitto,
//     the control plane and broker sync; the answer may export variables
//     (EDGEFLEET_API, DEPLOYTEST_TLS_PORT: the free ports things run on);
//   - useradd, install and chown per userMode.
const docPrelude = `set -euo pipefail
deploytest_hook() {
	local reply
	reply=$(curl -sS --noproxy '*' --fail-with-body --data-urlencode "cmd=$1" --data-urlencode "args=${*:2}" "$DEPLOYTEST_HOOK") ||
		{ echo "deploytest: $*: $reply" >&2; return 1; }
	eval "$reply"
}
systemctl() { deploytest_hook systemctl "$@"; }
apt-get() { deploytest_hook apt-get "$@"; }
`

// docUserFuncs are the prelude's useradd, install and chown per userMode.
// Where useradd does not run, the user edgefleet exists for install and
// chown only once the script called useradd, as on a real machine: a step
// that uses it first fails.
var docUserFuncs = map[userMode]string{
	usersReal: "",
	usersMapped: `useradd() { echo "deploytest: not run on a shared machine: useradd $*"; DT_EDGEFLEET=1; }
deploytest_map() {
	DT_ARGS=(); local a
	for a in "$@"; do
		case $a in edgefleet | edgefleet:*)
			[ -n "${DT_EDGEFLEET:-}" ] || { echo "deploytest: no user edgefleet yet (useradd comes later)" >&2; return 1; }
			a=${a//edgefleet/root} ;;
		esac
		DT_ARGS+=("$a")
	done
}
install() { deploytest_map "$@" && command install "${DT_ARGS[@]}"; }
chown() { deploytest_map "$@" && command chown "${DT_ARGS[@]}"; }
`,
	usersNone: `useradd() { echo "deploytest: not root: useradd $*"; DT_EDGEFLEET=1; }
deploytest_owner() { # deploytest_owner USER[:GROUP]: does the user exist (here)?
	case $1 in edgefleet | edgefleet:*) [ -n "${DT_EDGEFLEET:-}" ] || { echo "deploytest: no user edgefleet yet (useradd comes later)" >&2; return 1; } ;; esac
}
install() {
	DT_ARGS=()
	while [ $# -gt 0 ]; do
		case $1 in -o | -g) deploytest_owner "$2" || return 1; shift 2 ;; *) DT_ARGS+=("$1"); shift ;; esac
	done
	command install "${DT_ARGS[@]}"
}
chown() { deploytest_owner "$1" && echo "deploytest: not root: chown $*"; }
`,
}

// docRun is one run of the docs' server section in a temporary root.
type docRun struct {
	t          *testing.T
	root       string // stands for /
	work       string // the operator's directory: tarball, TLS files
	users      userMode
	userExists bool // usersReal, and edgefleet was there before the test

	installed          bool // apt-get install mosquitto ran
	mq                 *mosquittoProc
	tlsPort, plainPort int
	serve, sync        *cliDaemon
	api                string
}

// newDocRun prepares the root, the operator's directory with the control
// plane tarball (its bin/edgefleet runs this test binary as the CLI, see
// envRunCLI) and a self-signed certificate for 127.0.0.1 standing in for
// the operator's TLS files. Only one test may addUsers (usersReal): the
// user is the machine's.
func newDocRun(t *testing.T, addUsers bool) (*docRun, string) {
	t.Helper()
	for _, c := range []string{"bash", "curl", "openssl"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is needed to run the docs", c)
		}
	}
	mosquittoBin(t)
	d := &docRun{t: t, root: newRoot(t, false), work: t.TempDir(), users: usersNone}
	if os.Geteuid() == 0 {
		d.users = usersMapped
		if addUsers && os.Getenv("CI") != "" {
			d.users = usersReal
			lockHostUser(t)
			if _, err := osuser.Lookup("edgefleet"); err == nil {
				t.Log("user edgefleet exists already: useradd is not run")
				d.userExists = true
			} else {
				// --force: another `make test` beside this one may run an
				// image root's agent under the same uid, and a plain userdel
				// refuses a user with processes (it was left behind so).
				t.Cleanup(func() {
					if out, err := exec.Command("userdel", "--force", "edgefleet").CombinedOutput(); err != nil {
						t.Logf("userdel edgefleet: %v: %s", err, out)
					}
				})
			}
		}
	}
	// The directories a fresh Debian has, which the docs rely on.
	for _, dir := range []string{"usr/local/bin", "usr/local/lib", "etc/systemd/system", "var/lib", "run"} {
		require.NoError(t, os.MkdirAll(filepath.Join(d.root, dir), 0o755))
	}
	run(t, "", "cp", docTarball(t), d.work)
	selfSigned(t, filepath.Join(d.work, "server.crt"), filepath.Join(d.work, "server.key"))
	run(t, "", "cp", filepath.Join(d.work, "server.crt"), filepath.Join(d.work, "ca.crt"))

	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs/deploy.md"))
	require.NoError(t, err)
	script, err := substitute(docScript(t, string(b)), docSubstitutions(docVersion, runtime.GOARCH))
	require.NoError(t, err)
	return d, script
}

// docVersion is the release of the tarball docTarball packages.
const docVersion = "9.9.9-docs"

// The control plane tarball of the docs test is packaged once per test
// binary (removed by TestMain).
var docTarballOnce struct {
	sync.Once
	dir, path string
	err       error
}

// docTarball packages the control plane as make dist does
// (scripts/package-controlplane.sh) with a bin/edgefleet that runs this
// test binary as the CLI (envRunCLI) and this machine's onnxruntime.
func docTarball(t *testing.T) string {
	t.Helper()
	root, ort := repoRoot(t), hostORT(t)
	o := &docTarballOnce
	o.Do(func() {
		var self string
		if self, o.err = os.Executable(); o.err != nil {
			return
		}
		if o.dir, o.err = os.MkdirTemp("", "edgefleet-doc-tarball-"); o.err != nil {
			return
		}
		bin := filepath.Join(o.dir, "edgefleet")
		if o.err = os.WriteFile(bin, []byte(fmt.Sprintf("#!/bin/sh\n%s=1 exec '%s' \"$@\"\n", envRunCLI, self)), 0o755); o.err != nil {
			return
		}
		cmd := exec.Command("sh", "scripts/package-controlplane.sh", docVersion, runtime.GOARCH, bin, ort, filepath.Join(o.dir, "dist"))
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			o.err = fmt.Errorf("package-controlplane.sh: %w", err)
			return
		}
		o.path = strings.TrimSpace(string(out))
	})
	require.NoError(t, o.err)
	return o.path
}

// rooted moves the server's absolute paths in s into the root.
func (d *docRun) rooted(s string) string { return hostPaths.ReplaceAllString(s, "${1}"+d.root+"${2}") }

// run runs script with bash in the operator's directory and serves the
// hook on this goroutine until bash ends. It returns bash's output and
// its error (nil: exit status 0).
func (d *docRun) run(script string) (string, error) {
	t := d.t
	type reply struct {
		shell string
		err   error
	}
	type request struct {
		cmd   string
		args  []string
		reply chan reply
	}
	reqs, stopped := make(chan request), make(chan struct{})
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := request{cmd: r.FormValue("cmd"), args: strings.Fields(r.FormValue("args")), reply: make(chan reply, 1)}
		select {
		case reqs <- req:
		case <-stopped:
			http.Error(w, "the test has ended", http.StatusInternalServerError)
			return
		}
		select {
		case rep := <-req.reply:
			if rep.err != nil {
				http.Error(w, rep.err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, rep.shell)
		case <-stopped:
			http.Error(w, "the test has ended", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(hook.Close)
	t.Cleanup(func() { close(stopped) }) // before hook.Close, which waits for handlers

	path := filepath.Join(d.work, "deploy-doc.sh")
	users := docUserFuncs[d.users]
	if d.userExists {
		users = `useradd() { echo "deploytest: user edgefleet exists already: useradd $*"; }` + "\n"
	}
	require.NoError(t, os.WriteFile(path, []byte(docPrelude+users+d.rooted(script)), 0o644))
	cmd := exec.Command("bash", path)
	cmd.Dir = d.work
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGEFLEET_") && !strings.HasPrefix(kv, "PATH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PATH="+filepath.Join(d.root, "usr/local/bin")+":"+os.Getenv("PATH"), "DEPLOYTEST_HOOK="+hook.URL)
	out := &testkit.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	var err error
	go func() { err = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // bash and what it started, by its group id
			<-exited
		}
	})
	deadline := time.After(5 * time.Minute)
	for {
		select {
		case req := <-reqs:
			shell, err := d.handle(req.cmd, req.args)
			req.reply <- reply{shell, err}
		case <-exited:
			return out.String(), err
		case <-deadline:
			t.Fatalf("the docs' steps did not finish within 5 min:\n%s", out)
		}
	}
}

// handle does what systemctl or apt-get would do here, on the test's
// goroutine; the shell text it returns is evaluated by the script.
func (d *docRun) handle(cmd string, args []string) (string, error) {
	d.t.Helper()
	switch cmd {
	case "apt-get":
		if len(args) < 2 || args[0] != "install" || !slices.Contains(args, "mosquitto") {
			return "", fmt.Errorf("apt-get %v: the test knows apt-get install mosquitto", args)
		}
		debianMosquittoRoot(d.t, d.root) // what the package installs; mosquittoBin checked the binaries
		d.installed = true
		return "", nil
	case "systemctl":
	default:
		return "", fmt.Errorf("%s: not a command the test stands in for", cmd)
	}
	var verb string
	var units []string
	now := false
	for _, a := range args {
		switch {
		case a == "--now":
			now = true
		case strings.HasPrefix(a, "-"): // --no-pager and the like
		case verb == "":
			verb = a
		default:
			units = append(units, strings.TrimSuffix(a, ".service"))
		}
	}
	var shell strings.Builder
	for _, u := range units {
		switch verb {
		case "start", "restart":
			d.stop(u)
			s, err := d.start(u)
			if err != nil {
				return "", err
			}
			shell.WriteString(s)
		case "enable":
			if now {
				s, err := d.start(u)
				if err != nil {
					return "", err
				}
				shell.WriteString(s)
			}
		case "stop":
			d.stop(u)
		case "status":
			if !d.running(u) {
				return "", fmt.Errorf("systemctl status: %s is not running", u)
			}
		default:
			return "", fmt.Errorf("systemctl %s %s: not a step the test knows", verb, u)
		}
	}
	if verb == "daemon-reload" && len(units) == 0 {
		return "", nil
	}
	if len(units) == 0 {
		return "", fmt.Errorf("systemctl %v: not a step the test knows", args)
	}
	return shell.String(), nil
}

func (d *docRun) running(unit string) bool {
	switch unit {
	case "mosquitto":
		if d.mq == nil {
			return false
		}
		select {
		case <-d.mq.Exited():
			return false
		default:
			return true
		}
	case "edgefleet":
		return d.serve != nil && !d.serve.Exited()
	case "edgefleet-broker-sync":
		return d.sync != nil && !d.sync.Exited()
	}
	return false
}

func (d *docRun) stop(unit string) {
	switch unit {
	case "mosquitto":
		if d.mq != nil {
			d.mq.Stop()
		}
	case "edgefleet":
		if d.serve != nil {
			d.serve.Stop()
		}
	case "edgefleet-broker-sync":
		if d.sync != nil {
			d.sync.Stop()
		}
	}
}

// start starts a unit the way systemd would, from the files the docs
// installed; it returns shell text exporting where it runs.
func (d *docRun) start(unit string) (string, error) {
	t := d.t
	switch unit {
	case "mosquitto":
		if !d.installed {
			return "", errors.New("systemctl: mosquitto is not installed")
		}
		if d.mq != nil {
			d.mq.Restart()
		} else {
			d.mq = startDebianMosquitto(t, d.root)
		}
		require.Equal(t, []string{"8883", "1883"}, listenerPorts(t, d.root), "the drop-in's listeners: TLS for devices, loopback for the control plane")
		d.tlsPort, d.plainPort = d.mq.Ports[0], d.mq.Ports[1]
		return fmt.Sprintf("export DEPLOYTEST_TLS_PORT=%d\n", d.tlsPort), nil

	case "edgefleet":
		if d.mq == nil {
			return "", errors.New("systemctl: edgefleet needs mosquitto running")
		}
		u := d.unit(unit)
		args := u.args
		// serve listens where the test can: 127.0.0.1 port 0 for the API,
		// mosquitto's free ports; one process loads one onnxruntime, so
		// serve (in this process) gets the one the tests loaded, once the
		// installed copy is checked to be the same file.
		d.replaceFlag(args, "--listen", "127.0.0.1:8080", "127.0.0.1:0")
		d.replaceFlag(args, "--mqtt-url", "tcp://127.0.0.1:1883", fmt.Sprintf("tcp://127.0.0.1:%d", d.plainPort))
		d.replaceFlag(args, "--public-mqtt-url", "tls://mqtt.example.com:8883", fmt.Sprintf("tls://127.0.0.1:%d", d.tlsPort))
		ort := d.root + "/usr/local/lib/edgefleet/libonnxruntime.so.1"
		assert.Equal(t, sha256File(t, hostORT(t)), sha256File(t, ort), "the installed onnxruntime")
		d.replaceFlag(args, "--ort-lib", ort, hostORT(t))
		// The environment, as the flag it stands for (tests running in
		// parallel cannot set this process's environment).
		pw := u.env[cli.EnvMQTTPassword]
		require.NotEmpty(t, pw, "%s is set by the environment file", cli.EnvMQTTPassword)
		d.serve = startCLI(t, append(args, "--mqtt-password", pw)...)
		ready := regexp.MustCompile(`ready: API (http://\S+),`)
		require.Eventually(t, func() bool { return d.serve.Exited() || ready.MatchString(d.serve.out.String()) },
			time.Minute, 20*time.Millisecond, "serve did not get ready: %s", d.serve.out)
		require.False(t, d.serve.Exited(), "serve exited: %s", d.serve.out)
		d.api = ready.FindStringSubmatch(d.serve.out.String())[1]
		return "export EDGEFLEET_API=" + d.api + "\n", nil

	case "edgefleet-broker-sync":
		if d.api == "" {
			return "", errors.New("systemctl: broker sync before the control plane runs: its token cannot exist yet")
		}
		u := d.unit(unit)
		require.Equal(t, "http://127.0.0.1:8080", u.env[cli.EnvAPI], "the unit's API: the control plane's --listen")
		args := append([]string{"--api", d.api, "--token-file", d.rooted(u.env[cli.EnvTokenFile])}, u.args...)
		if os.Geteuid() == 0 {
			// The unit runs as mosquitto and writes files mosquitto owns;
			// here broker sync runs in this process as root, so its files
			// must be readable by others.
			args = append(args, "--file-mode", "0644")
		}
		d.sync = startCLI(t, append(args, "--log-level", "debug")...)
		return "", nil
	}
	return "", fmt.Errorf("systemctl: unit %s is not one the docs install", unit)
}

// replaceFlag replaces the value of "--name value" in args, which must be want.
func (d *docRun) replaceFlag(args []string, name, want, with string) {
	d.t.Helper()
	i := slices.Index(args, name)
	require.True(d.t, i >= 0 && i+1 < len(args), "the unit and its environment pass %s: %v", name, args)
	require.Equal(d.t, want, args[i+1], "%s as the docs set it", name)
	args[i+1] = with
}

// unitExec is what systemd would run for a unit: the environment
// (Environment=, then EnvironmentFile= over it) and ExecStart's
// arguments after the binary, with $VAR split into words as systemd does
// and every server path moved into the root.
type unitExec struct {
	env  map[string]string
	args []string
}

func (d *docRun) unit(name string) unitExec {
	t := d.t
	t.Helper()
	text := readFile(t, filepath.Join(d.root, "etc/systemd/system", name+".service"))
	env, fromFiles := map[string]string{}, map[string]string{}
	var execStart string
	for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(key, "#") {
			continue
		}
		switch key {
		case "Environment":
			k, v, _ := strings.Cut(strings.Trim(val, `"`), "=")
			env[k] = v
		case "EnvironmentFile":
			file, optional := strings.CutPrefix(val, "-")
			b, err := os.ReadFile(d.rooted(file))
			if optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			require.NoError(t, err, "%s's EnvironmentFile", name)
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && !strings.HasPrefix(k, "#") {
					fromFiles[k] = v
				}
			}
		case "ExecStart":
			execStart = val
		}
	}
	for k, v := range fromFiles {
		env[k] = v
	}
	var argv []string
	for _, w := range strings.Fields(execStart) {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			argv = append(argv, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$"):
			argv = append(argv, strings.Fields(env[w[1:]])...)
		default:
			argv = append(argv, w)
		}
	}
	require.NotEmpty(t, argv, "%s has an ExecStart", name)
	require.Equal(t, "/usr/local/bin/edgefleet", argv[0], "%s runs the installed binary", name)
	fi, err := os.Stat(d.rooted(argv[0]))
	require.NoError(t, err, "%s's binary is installed", name)
	require.NotZero(t, fi.Mode()&0o111, "%s's binary is executable", name)
	for i, a := range argv[1:] {
		argv[1+i] = d.rooted(a)
	}
	return unitExec{env: env, args: argv[1:]}
}

// listenerPorts are the ports of root's conf.d listener lines, in the
// order startDebianMosquitto hands out its ports.
func listenerPorts(t *testing.T, root string) []string {
	t.Helper()
	dropIns, err := filepath.Glob(filepath.Join(root, "etc/mosquitto/conf.d/*.conf"))
	require.NoError(t, err)
	var ports []string
	for _, f := range dropIns {
		for _, l := range listenerLine.FindAllString(readFile(t, f), -1) {
			ports = append(ports, strings.Fields(l)[1])
		}
	}
	return ports
}

// docTable is the "where everything lives" table of the server section:
// path → owner and mode.
func docTable(t *testing.T, doc string) map[string][2]string {
	t.Helper()
	row := regexp.MustCompile("(?m)^\\| `(/[^`]+)` \\| ([a-z:]+) \\| (0[0-7]{3}) \\|")
	section := doc[strings.Index(doc, docSection):]
	out := map[string][2]string{}
	for _, m := range row.FindAllStringSubmatch(section[:strings.Index(section, docMarker)], -1) {
		out[m[1]] = [2]string{m[2], m[3]}
	}
	require.GreaterOrEqual(t, len(out), 10, "the table of files")
	return out
}

// TestDeployDocServer follows docs/deploy.md's server section line by
// line: its marked blocks run as one bash script in a temporary root, with
// the real mosquitto, the control plane tarball as make dist packages it
// and the real CLI. What cannot run here is substituted (see
// docSubstitutions, docPrelude, docUserFuncs, hostPaths, docRun.start):
// server paths move into the root, apt-get lays out Debian's package,
// systemctl starts mosquitto with Debian's main config and the drop-in and
// serve and broker sync from the installed units on free 127.0.0.1 ports,
// useradd runs only as root in CI. Then it checks what the section claims:
// the files of its table with their owners and modes, the check step's
// OK, mosquitto's harmless ACL warnings, that the debug login never took
// the control plane's session, and that a device enrolled afterwards logs
// in over TLS with nothing added to mosquitto by hand, and is refused once
// revoked.
func TestDeployDocServer(t *testing.T) {
	t.Parallel()
	d, script := newDocRun(t, true)
	out, err := d.run(script)
	require.NoError(t, err, "the docs' steps failed (a substitution is named deploytest:):\n%s", out)
	assert.Contains(t, out, "mosquitto, TLS and the control plane: OK")
	t.Logf("the docs' steps said:\n%s", out)

	doc := readFile(t, filepath.Join(repoRoot(t), "docs/deploy.md"))
	for path, want := range docTable(t, doc) {
		fi, err := os.Stat(d.rooted(path))
		if !assert.NoError(t, err, "%s, in the docs' table, was made", path) {
			continue
		}
		if path == "/etc/mosquitto/edgefleet/passwd" || path == "/etc/mosquitto/edgefleet/acl" {
			if os.Geteuid() == 0 {
				continue // written by broker sync, here as root with --file-mode 0644 (docRun.start)
			}
		}
		assert.Equal(t, want[1], fmt.Sprintf("%04o", fi.Mode().Perm()), "mode of %s", path)
		if d.users == usersNone {
			continue
		}
		owner, group, ok := strings.Cut(want[0], ":")
		if !ok {
			group = owner
		}
		if d.users == usersMapped {
			owner, group = strings.ReplaceAll(owner, "edgefleet", "root"), strings.ReplaceAll(group, "edgefleet", "root")
		}
		u, err := osuser.Lookup(owner)
		require.NoError(t, err)
		g, err := osuser.LookupGroup(group)
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		assert.Equal(t, []string{u.Uid, g.Gid}, []string{fmt.Sprint(st.Uid), fmt.Sprint(st.Gid)}, "owner of %s: %s", path, want[0])
	}

	mosqLog := readFile(t, filepath.Join(d.root, "var/log/mosquitto/mosquitto.log"))
	for _, p := range []string{"ef/v1/trust", "ef/v1/models/+/+/+"} {
		assert.Contains(t, mosqLog, "ACL pattern '"+p+"' does not contain '%c' or '%u'", "the warning the docs call harmless")
	}
	assert.NotContains(t, d.serve.out.String(), "connection lost", "nothing took the control plane's MQTT session")

	// A device: enrolled, it logs in over TLS; revoked, it is refused.
	tokenFile := d.root + "/var/lib/edgefleet/admin.token"
	cliOut := func(args ...string) string {
		t.Helper()
		var out testkit.Buffer
		code := cli.Main(context.Background(), append([]string{"--api", d.api, "--token-file", tokenFile}, args...), &out, &out)
		require.Equal(t, 0, code, "edgefleet %v: %s", args, &out)
		return out.String()
	}
	m := regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cliOut("device", "enroll", "dev-17", "--label", "site=plant-1"))
	require.NotNil(t, m)
	ca := d.root + "/etc/mosquitto/certs/ca.crt"
	cfg, err := agent.Enroll(context.Background(), agent.EnrollOptions{ControlPlane: d.api, Token: m[1],
		DataDir: t.TempDir(), InferenceListen: "127.0.0.1:0", TLSCAFile: ca})
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("tls://127.0.0.1:%d", d.tlsPort), cfg.BrokerURL, "devices are told the public TLS address")
	login := func() (int, string) {
		return runCode(t, "mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(d.tlsPort), "--cafile", ca,
			"-u", "dev-17", "-P", cfg.Password, "-t", topics.Scheme{}.Trust(), "-C", "1", "-W", "5")
	}
	require.Eventually(t, func() bool { code, _ := login(); return code == 0 }, time.Minute, 200*time.Millisecond,
		"the enrolled device never logged in: %s", d.sync.out)
	cliOut("device", "revoke", "dev-17")
	require.Eventually(t, func() bool { code, _ := login(); return code != 0 && code != 27 }, time.Minute, 200*time.Millisecond,
		"the revoked device still logs in")
	wantACL, err := topics.MosquittoACL(topics.Scheme{}, controlUser, 0)
	require.NoError(t, err)
	assert.Equal(t, wantACL, readFile(t, d.root+"/etc/mosquitto/edgefleet/acl"), "broker sync keeps the served ACL")
	select {
	case <-d.mq.Exited():
		t.Error("mosquitto exited")
	default:
	}
}

// TestDeployDocServerDrift: the docs test fails when the docs drift — a
// line it substitutes changed, or a step no longer works as written (here
// a misspelt flag).
func TestDeployDocServerDrift(t *testing.T) {
	t.Parallel()
	doc := readFile(t, filepath.Join(repoRoot(t), "docs/deploy.md"))
	_, err := substitute(docScript(t, strings.Replace(doc, "VERSION=1.4.0 ARCH=amd64 ", "VERSION=1.5.0 ARCH=amd64 ", 1)), docSubstitutions("x", "y"))
	assert.ErrorContains(t, err, `"VERSION=1.4.0 ARCH=amd64 " is there 0 times`)

	d, script := newDocRun(t, false)
	bad := strings.Replace(script, "broker acl --control-user", "broker acl --control-usr", 1)
	require.NotEqual(t, script, bad)
	out, err := d.run(bad)
	assert.Error(t, err, "a misspelt flag fails the docs' steps:\n%s", out)
	assert.Contains(t, out, "flag provided but not defined: -control-usr")
}

// docBlockAfter is the first ```sh block after heading in doc.
func docBlockAfter(t *testing.T, doc, heading string) string {
	t.Helper()
	i := strings.Index(doc, heading)
	require.GreaterOrEqual(t, i, 0, "docs/deploy.md has %q", heading)
	rest := doc[i:]
	j := strings.Index(rest, "```sh\n")
	require.GreaterOrEqual(t, j, 0)
	rest = rest[j+len("```sh\n"):]
	return rest[:strings.Index(rest, "\n```\n")+1]
}

// TestDeployDocContainerRunbooks checks the compose and Kubernetes
// runbooks of docs/deploy.md, which cannot run here, against the files
// they set up: every secret file and Secret the kit mounts is made, owned
// by the uid of the container that reads it, and the tokens are created
// after the first start; and the broker acl default the docs warn about is
// the real one.
func TestDeployDocContainerRunbooks(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot(t), "docs/deploy.md"))
	assert.Contains(t, doc, "`"+controlplane.DefaultMQTTClientID+"`", "the docs name broker acl's --control-user default")
	assert.NotEqual(t, controlUser, controlplane.DefaultMQTTClientID, "the default the docs warn about differs from the shipped files' user")

	compose := docBlockAfter(t, doc, "### docker compose\n")
	var c composeFile
	require.NoError(t, decodeStrict(deployFile(t, "compose/compose.yaml"), &c))
	uid := func(service string) string {
		u := c.Services[service].User
		if u == "" { // the image's USER
			m := regexp.MustCompile(`(?m)^USER ([0-9]+:[0-9]+)$`).FindStringSubmatch(string(deployFile(t, "image/Dockerfile")))
			require.NotNil(t, m)
			u = m[1]
		}
		return u
	}
	readers := map[string]string{} // secret file → the uid:gid reading it
	for name, svc := range c.Services {
		for _, sec := range svc.Secrets {
			readers[strings.TrimPrefix(c.Secrets[sec].File, "./")] = uid(name)
		}
	}
	readers["certs/server.key"] = uid("mosquitto")
	readers["keys"] = uid("edgefleet")
	readers["secrets/metrics.token"] = "65534:65534" // prom/prometheus runs as nobody
	for file, owner := range readers {
		assert.Regexp(t, `(?m)^chown (-R )?`+regexp.QuoteMeta(owner)+` .*\b`+regexp.QuoteMeta(file)+`\b`, compose,
			"the compose runbook gives %s to %s, the container user reading it", file, owner)
		if strings.HasPrefix(file, "secrets/") {
			assert.Contains(t, compose, file, "the compose runbook makes %s", file)
		}
	}
	up := strings.Index(compose, "docker compose up")
	require.Greater(t, up, 0)
	for _, tok := range []string{"secrets/broker.token", "secrets/metrics.token"} {
		assert.Contains(t, compose[:up], ": > "+tok, "%s exists (empty) before up: compose refuses a missing secret file", tok)
		assert.Contains(t, compose[up:], "> "+tok, "%s is written after the first start, in place", tok)
	}

	k8s := docBlockAfter(t, doc, "### Kubernetes\n")
	made := map[string]bool{}
	for _, m := range regexp.MustCompile(`create secret (?:generic|tls) ([a-z0-9-]+)`).FindAllStringSubmatch(k8s, -1) {
		made[m[1]] = true
	}
	for _, file := range []string{"mosquitto.yaml", "edgefleet.yaml"} {
		for _, obj := range k8sObjects(t, file) {
			if obj.Kind != "StatefulSet" {
				continue
			}
			var s k8sStatefulSet
			require.NoError(t, decodeStrict(obj.raw, &s))
			for _, v := range s.Spec.Template.Spec.Volumes {
				if v.Secret != nil {
					assert.True(t, made[v.Secret.SecretName], "the Kubernetes runbook creates Secret %s (%s)", v.Secret.SecretName, file)
				}
			}
			for _, c := range s.Spec.Template.Spec.Containers {
				for _, e := range c.Env {
					if e.ValueFrom != nil {
						assert.True(t, made[e.ValueFrom.SecretKeyRef.Name], "the Kubernetes runbook creates Secret %s", e.ValueFrom.SecretKeyRef.Name)
					}
				}
			}
		}
	}
	apply := strings.Index(k8s, "kubectl apply -k")
	require.Greater(t, apply, 0)
	assert.Greater(t, strings.Index(k8s, "create secret generic edgefleet-broker-token"), apply,
		"broker sync's token is created once the control plane runs")
}

// lockHostUser makes the tests that add the host's user edgefleet take
// turns across processes until t ends: another `make test` on the same
// machine (the load rehearsal runs two or three) found the user present,
// skipped useradd, and lost it to the first run's userdel halfway through.
func lockHostUser(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "edgefleet-deploytest-user.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
	t.Cleanup(func() { _ = f.Close() }) // registered first: runs after the userdel
}
