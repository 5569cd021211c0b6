package deploytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
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

// containerKit is how a container deploy path (compose, Kubernetes) runs
// mosquitto with broker sync beside it. Every path is as the containers
// see it.
type containerKit struct {
	conf       string            // mosquitto.conf
	confPath   string            // where the mosquitto container sees it
	script     string            // the mosquitto container's start script (sh -c)
	syncArgs   []string          // broker sync's command line, "broker", "sync", …
	env        map[string]string // broker sync's environment
	syncVolume string            // the volume both containers mount for the written files
	// mount path → volume, of each container
	mosquittoMounts, syncMounts map[string]string
}

// option is the value of a mosquitto.conf option ("" if unset).
func (k containerKit) option(name string) string {
	for _, l := range confLines(k.conf) {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// flag is the value of a --name=value argument of broker sync.
func (k containerKit) flag(name string) string {
	for _, a := range k.syncArgs {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// mountOf is the volume of mounts that holds file: mounted at file
// itself, or at a directory above it ("" if none).
func mountOf(mounts map[string]string, file string) string {
	for at, vol := range mounts {
		if file == at || strings.HasPrefix(file, strings.TrimSuffix(at, "/")+"/") {
			return vol
		}
	}
	return ""
}

// Start script parts: seeding the ACL, waiting for the password file,
// starting mosquitto.
var (
	scriptSeed = regexp.MustCompile(`\[ -f (\S+) \] \|\| cp (\S+) (\S+)\n`)
	scriptWait = regexp.MustCompile(`until \[ -f (\S+) \]; do [^\n]*sleep [0-9]+; done\n`)
	scriptExec = regexp.MustCompile(`exec mosquitto -c (\S+)\n`)
)

// checkKit checks that the pieces of a container kit name the same files:
// mosquitto's password file, ACL and pid file are where broker sync writes
// and signals, on the volume both mount; the include file and the token
// are mounted into broker sync; the start script waits for the password
// file, seeds the ACL and starts mosquitto with its config.
func checkKit(t *testing.T, k containerKit) {
	t.Helper()
	passwd, acl, pid := k.option("password_file"), k.option("acl_file"), k.option("pid_file")
	require.NotEmpty(t, passwd)
	for opt, file := range map[string]string{"password_file": passwd, "acl_file": acl, "pid_file": pid} {
		assert.Equal(t, k.syncVolume, mountOf(k.mosquittoMounts, file), "mosquitto's %s %s is on the shared volume", opt, file)
		assert.Equal(t, k.syncVolume, mountOf(k.syncMounts, file), "broker sync sees mosquitto's %s %s", opt, file)
	}
	assert.Equal(t, []string{"broker", "sync"}, k.syncArgs[:2])
	assert.Equal(t, passwd, k.flag("passwd-file"), "broker sync writes mosquitto's password_file")
	assert.Equal(t, acl, k.flag("acl-file"), "broker sync writes mosquitto's acl_file")
	assert.Equal(t, pid, k.flag("pid-file"), "broker sync signals the process of mosquitto's pid_file")
	for what, file := range map[string]string{"--include": k.flag("include"), cli.EnvTokenFile: k.env[cli.EnvTokenFile]} {
		vol := mountOf(k.syncMounts, file)
		assert.NotEmpty(t, vol, "broker sync's %s %s is mounted", what, file)
		assert.NotEqual(t, k.syncVolume, vol, "broker sync's %s %s is a secret, not a written file", what, file)
	}

	seed := scriptSeed.FindStringSubmatch(k.script)
	if assert.NotNil(t, seed, "the start script seeds the ACL:\n%s", k.script) {
		assert.Equal(t, []string{acl, acl}, []string{seed[1], seed[3]}, "the start script seeds mosquitto's acl_file")
		assert.NotEmpty(t, mountOf(k.mosquittoMounts, seed[2]), "the seed %s is mounted into mosquitto", seed[2])
	}
	wait := scriptWait.FindStringSubmatch(k.script)
	if assert.NotNil(t, wait, "the start script waits for the password file:\n%s", k.script) {
		assert.Equal(t, passwd, wait[1])
	}
	run := scriptExec.FindStringSubmatch(k.script)
	if assert.NotNil(t, run, "the start script starts mosquitto:\n%s", k.script) {
		assert.Equal(t, k.confPath, run[1])
	}
	assert.Equal(t, len(k.script), len(scriptSeed.FindString(k.script))+len(scriptWait.FindString(k.script))+len(scriptExec.FindString(k.script)),
		"the start script is the three lines this test knows:\n%s", k.script)
}

// composeKit reads deploy/compose's mosquitto and broker-sync services.
func composeKit(t *testing.T) containerKit {
	t.Helper()
	var c composeFile
	require.NoError(t, decodeStrict(deployFile(t, "compose/compose.yaml"), &c))
	mq, bs := c.Services["mosquitto"], c.Services["broker-sync"]
	mounts := func(s composeService) map[string]string {
		m := map[string]string{}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			m[parts[1]] = parts[0]
		}
		for _, sec := range s.Secrets {
			m["/run/secrets/"+sec] = "secret " + sec
		}
		return m
	}
	k := containerKit{
		conf: string(deployFile(t, "compose/mosquitto.conf")), confPath: "/mosquitto/config/mosquitto.conf",
		syncArgs: bs.Command, mosquittoMounts: mounts(mq), syncMounts: mounts(bs),
	}
	require.Len(t, mq.Entrypoint, 3, "mosquitto's entrypoint is /bin/sh -c SCRIPT")
	assert.Equal(t, []string{"/bin/sh", "-c"}, mq.Entrypoint[:2])
	k.script = mq.Entrypoint[2]
	assert.Equal(t, "./mosquitto.conf", k.mosquittoMounts[k.confPath], "the config compose mounts")
	assert.Equal(t, "../mosquitto/acl.conf", k.mosquittoMounts["/mosquitto/config/edgefleet.acl"], "the ACL seed is the shipped one")
	k.syncVolume = mountOf(k.mosquittoMounts, k.option("password_file"))
	assert.Contains(t, c.Volumes, k.syncVolume, "the shared volume is a named volume")
	// Compose has the API in a flag, the token file in the environment.
	k.env = map[string]string{cli.EnvTokenFile: bs.Environment[cli.EnvTokenFile], cli.EnvAPI: k.flag("api")}
	return k
}

// k8sKit reads deploy/k8s/mosquitto.yaml's ConfigMap and StatefulSet.
func k8sKit(t *testing.T) containerKit {
	t.Helper()
	var k containerKit
	var set *k8sStatefulSet
	for _, obj := range k8sObjects(t, "mosquitto.yaml") {
		switch obj.Kind {
		case "ConfigMap":
			var cm k8sConfigMap
			require.NoError(t, decodeStrict(obj.raw, &cm))
			k.conf = cm.Data["mosquitto.conf"]
		case "StatefulSet":
			set = &k8sStatefulSet{}
			require.NoError(t, decodeStrict(obj.raw, set))
		}
	}
	require.NotNil(t, set)
	require.NotEmpty(t, k.conf)
	pod := set.Spec.Template.Spec
	assert.True(t, pod.ShareProcessNamespace, "broker sync signals mosquitto: one pid namespace")
	vols := map[string]k8sVolume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	containers := map[string]k8sContainer{}
	for _, c := range pod.Containers {
		containers[c.Name] = c
	}
	require.Contains(t, containers, "mosquitto")
	require.Contains(t, containers, "broker-sync")
	mounts := func(c k8sContainer) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = vm.Name
		}
		return m
	}
	mq, bs := containers["mosquitto"], containers["broker-sync"]
	k.mosquittoMounts, k.syncMounts = mounts(mq), mounts(bs)
	assert.Equal(t, []string{"/bin/sh", "-c"}, mq.Command)
	require.Len(t, mq.Args, 1)
	k.script = mq.Args[0]
	run := scriptExec.FindStringSubmatch(k.script)
	require.NotNil(t, run)
	k.confPath = run[1]
	assert.Equal(t, "config", mountOf(k.mosquittoMounts, k.confPath), "mosquitto's config is the ConfigMap's")
	assert.Equal(t, "edgefleet/edgefleet", bs.Image, "broker sync is the edgefleet image")
	k.syncArgs = bs.Args
	k.env = map[string]string{}
	for _, e := range bs.Env {
		k.env[e.Name] = e.Value
	}
	k.syncVolume = mountOf(k.mosquittoMounts, k.option("password_file"))
	if v := vols[k.syncVolume]; assert.NotNil(t, v.EmptyDir, "the written files are on an emptyDir") {
		assert.Equal(t, "Memory", v.EmptyDir.Medium)
	}
	token := vols[mountOf(k.syncMounts, k.env[cli.EnvTokenFile])]
	if assert.NotNil(t, token.Secret, "the token is a Secret") {
		assert.True(t, token.Secret.Optional, "the pod starts before the token exists (the control plane makes it)")
	}
	return k
}

// TestContainerKitsAgree: compose and Kubernetes run mosquitto and broker
// sync with the same start script and the same files.
func TestContainerKitsAgree(t *testing.T) {
	compose, k8s := composeKit(t), k8sKit(t)
	checkKit(t, compose)
	checkKit(t, k8s)
	assert.Equal(t, compose.script, k8s.script, "one start script for both")
	for _, f := range []string{"passwd-file", "acl-file", "pid-file"} {
		assert.Equal(t, compose.flag(f), k8s.flag(f), "--%s", f)
	}
}

// TestBrokerSyncInContainers runs each container kit's mosquitto and broker
// sync as its files say, with the containers' paths moved into a temporary
// directory: the start script seeds the ACL and waits; broker sync, with no
// token yet and no control plane, writes the include file's logins alone;
// the script then starts mosquitto with the kit's config (here a fake
// mosquitto records how, and the test starts the real one so), which
// admits the control plane's login; the control plane starts, its broker
// token is written to the token file broker sync waits for, and a device
// enrolled afterwards logs in over TLS — broker sync wrote the files and
// reloaded mosquitto through the kit's pid file.
func TestBrokerSyncInContainers(t *testing.T) {
	t.Parallel()
	mosquittoBin(t)
	for name, kit := range map[string]func(*testing.T) containerKit{"compose": composeKit, "kubernetes": k8sKit} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runKit(t, kit(t))
		})
	}
}

func runKit(t *testing.T, k containerKit) {
	mq := testkit.NewMosquitto(t)
	base := filepath.Join(mq.Dir, "ctr") // the containers' / (mq.Dir is world-readable)
	host := func(p string) string {
		require.True(t, path.IsAbs(p), "%s is a container path", p)
		return base + p
	}
	// Every absolute path in the script, the config and the arguments is
	// a container path: each gets base in front.
	abs := regexp.MustCompile(`(^|[ =])(/[A-Za-z0-9._-][A-Za-z0-9._/-]*)`)
	move := func(s string) string { return abs.ReplaceAllString(s, "${1}"+base+"${2}") }
	mkdir := func(dir string, mode os.FileMode, owner string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(dir), 0o755))
		require.NoError(t, os.MkdirAll(dir, mode))
		require.NoError(t, os.Chmod(dir, mode))
		if owner != "" {
			chownAsRoot(t, dir, owner, owner)
		}
	}
	put := func(p string, data []byte, mode os.FileMode) {
		mkdir(filepath.Dir(p), 0o755, "")
		require.NoError(t, os.WriteFile(p, data, mode))
		require.NoError(t, os.Chmod(p, mode))
	}

	// What the images, volumes and secrets provide. mosquitto runs as the
	// mosquitto user where the test is root (the containers' uid 1883).
	passwd, acl, pid := k.option("password_file"), k.option("acl_file"), k.option("pid_file")
	mkdir(host(path.Dir(passwd)), 0o750, "mosquitto") // compose: tmpfs uid=1883; k8s: emptyDir
	mkdir(host(k.option("persistence_location")), 0o750, "mosquitto")
	put(host(k.confPath), []byte("(written at start)"), 0o644)
	seed := scriptSeed.FindStringSubmatch(k.script)
	require.NotNil(t, seed)
	put(host(seed[2]), deployFile(t, "mosquitto/acl.conf"), 0o644)
	crt, key := host(k.option("certfile")), host(k.option("keyfile"))
	mkdir(filepath.Dir(crt), 0o755, "")
	selfSigned(t, crt, key)
	require.NoError(t, os.Chmod(key, 0o640))
	chownAsRoot(t, key, "root", "mosquitto")
	include := host(k.flag("include"))
	mkdir(filepath.Dir(include), 0o755, "")
	cpPassword := fmt.Sprintf("cp-%d", time.Now().UnixNano())
	run(t, "", "mosquitto_passwd", "-c", "-b", include, controlUser, cpPassword)
	require.NoError(t, os.Chmod(include, 0o644))
	tokenFile := host(k.env[cli.EnvTokenFile])
	put(tokenFile, nil, 0o644) // empty until the control plane made the token (docs/deploy.md)

	// The start script, with a fake mosquitto that records its arguments.
	fake := filepath.Join(mq.Dir, "fakebin")
	calls := filepath.Join(mq.Dir, "mosquitto-called")
	put(filepath.Join(fake, "mosquitto"), []byte("#!/bin/sh\necho \"$@\" > "+calls+"\n"), 0o755)
	script := exec.Command("/bin/sh", "-c", move(k.script))
	script.Env = append(os.Environ(), "PATH="+fake+":"+os.Getenv("PATH"))
	scriptOut := &testkit.Buffer{}
	script.Stdout, script.Stderr = scriptOut, scriptOut
	script.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, script.Start())
	exited := make(chan struct{})
	var scriptErr error
	go func() { scriptErr = script.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-script.Process.Pid, syscall.SIGKILL) // the script and its sleep, by group id
			<-exited
		}
	})
	require.Eventually(t, func() bool { _, err := os.Stat(host(acl)); return err == nil }, 10*time.Second, 20*time.Millisecond,
		"the start script seeds the ACL: %s", scriptOut)
	assert.Equal(t, string(deployFile(t, "mosquitto/acl.conf")), readFile(t, host(acl)))
	assert.NoFileExists(t, calls, "mosquitto is not started without a password file")
	select {
	case <-exited:
		t.Fatalf("the start script ended without a password file: %v\n%s", scriptErr, scriptOut)
	default:
	}

	// broker sync's bootstrap: no token, no control plane.
	syncArgs := func(api string) []string {
		args := []string{"--api", api, "--token-file", tokenFile} // its environment, as the flags it stands for
		for _, a := range k.syncArgs {
			if !strings.HasPrefix(a, "--api=") {
				args = append(args, move(a))
			}
		}
		if os.Geteuid() == 0 {
			// In the containers broker sync runs as mosquitto's uid and
			// writes files mosquitto owns; here it runs in this process,
			// as root, so its files must be readable by others.
			args = append(args, "--file-mode", "0644")
		}
		return args
	}
	unreachable := fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePorts(t, 1)[0])
	var boot testkit.Buffer
	code := cli.Main(context.Background(), append(syncArgs(unreachable), "--once"), &boot, &boot)
	assert.Equal(t, 1, code, "no answer yet: %s", &boot)
	assert.Contains(t, boot.String(), "no broker token yet")
	assert.Contains(t, readFile(t, host(passwd)), controlUser+":$7$", "bootstrap: the include file's logins")
	select {
	case <-exited:
		require.NoError(t, scriptErr, "the start script: %s", scriptOut)
	case <-time.After(30 * time.Second):
		t.Fatalf("the start script did not start mosquitto once the password file was there: %s", scriptOut)
	}
	assert.Equal(t, "-c "+host(k.confPath)+"\n", readFile(t, calls), "the script starts mosquitto with the kit's config")

	// The real mosquitto, started as the script does, with the kit's config.
	var tlsPort, plainPort int
	mq.Start(2, func(ports []int) string {
		next := 0
		conf := listenerLine.ReplaceAllStringFunc(move(k.conf), func(l string) string {
			require.Less(t, next, 2)
			switch strings.Fields(l)[1] {
			case "8883":
				tlsPort = ports[next]
			case "1883":
				plainPort = ports[next]
			}
			next++
			return fmt.Sprintf("listener %d 127.0.0.1", ports[next-1])
		})
		require.Equal(t, 2, next, "the kit's two listeners, 8883 (TLS) and 1883")
		return conf
	})
	require.NotZero(t, tlsPort)
	require.NotZero(t, plainPort)
	pidOf := strings.TrimSpace(readFile(t, host(pid)))
	comm, err := os.ReadFile("/proc/" + pidOf + "/comm")
	require.NoError(t, err, "mosquitto wrote its pid file where broker sync looks")
	assert.Equal(t, "mosquitto\n", string(comm))

	// The control plane, then its broker token, which broker sync picks up.
	cp := startControlPlane(t, func(o *controlplane.Options) {
		o.MQTTURL, o.Username, o.Password = fmt.Sprintf("tcp://127.0.0.1:%d", plainPort), controlUser, cpPassword
		o.PublicMQTTURL = fmt.Sprintf("tls://127.0.0.1:%d", tlsPort)
	})
	syncOut := brokerSync(t, syncArgs(cp.srv.APIURL())...)
	tok := regexp.MustCompile(`\n\s+(ef_\S+)\n`).FindStringSubmatch(cp.cli("token", "create", "--name", "mosquitto", "--role", "broker"))
	require.NotNil(t, tok)
	require.NoError(t, os.WriteFile(tokenFile, []byte(tok[1]+"\n"), 0o644))
	m := regexp.MustCompile(`--token (\S+)`).FindStringSubmatch(cp.cli("device", "enroll", "dev-1"))
	require.NotNil(t, m)
	cfg, err := agent.Enroll(context.Background(), agent.EnrollOptions{ControlPlane: cp.srv.APIURL(), Token: m[1],
		DataDir: t.TempDir(), InferenceListen: "127.0.0.1:0", TLSCAFile: crt})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		code, _ := runCode(t, "mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(tlsPort), "--cafile", crt,
			"-u", "dev-1", "-P", cfg.Password, "-t", topics.Scheme{}.Trust(), "-C", "1", "-W", "2")
		return code == 0
	}, time.Minute, 200*time.Millisecond, "the enrolled device never read the trust chain over TLS: %s", syncOut)
	wantACL, err := topics.MosquittoACL(topics.Scheme{}, controlUser, 0)
	require.NoError(t, err)
	assert.Equal(t, wantACL, readFile(t, host(acl)), "broker sync replaced the seed with the served ACL")
	assert.Contains(t, syncOut.String(), "mosquitto files written and reloaded")
}

// readFile is a file's content; it must exist.
func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(b)
}
