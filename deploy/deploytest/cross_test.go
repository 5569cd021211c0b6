package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// EnvCrossTarball names the arm64 agent tarball `make test-cross` built;
// TestCrossArm64UnderQemu runs only when it is set.
const EnvCrossTarball = "EDGEFLEET_CROSS_TARBALL"

// TestCrossArm64UnderQemu proves the arm64 package really runs: the agent
// from the tarball, under qemu user emulation with the cross toolchain's
// arm64 libc, prints its version, loads the packaged arm64 onnxruntime,
// activates a model pushed by a control plane on this host and answers an
// inference over its OIP API.
func TestCrossArm64UnderQemu(t *testing.T) {
	tarball := os.Getenv(EnvCrossTarball)
	if tarball == "" {
		t.Skipf("set %s to an arm64 agent tarball (make test-cross does)", EnvCrossTarball)
	}
	qemu, err := exec.LookPath("qemu-aarch64")
	if err != nil {
		qemu, err = exec.LookPath("qemu-aarch64-static")
	}
	require.NoError(t, err, "qemu user emulation is needed (Debian qemu-user; sh scripts/install-cross.sh)")
	const sysroot = "/usr/aarch64-linux-gnu"
	require.DirExists(t, sysroot, "the arm64 libc is needed (Debian libc6-dev-arm64-cross)")

	dir := t.TempDir()
	run(t, "", "tar", "-xzf", tarball, "-C", dir)
	pkgs, err := filepath.Glob(filepath.Join(dir, "edgefleet-agent-*-linux-arm64"))
	require.NoError(t, err)
	require.Len(t, pkgs, 1, "one package directory in %s", tarball)
	pkg := pkgs[0]
	meta, err := os.ReadFile(filepath.Join(pkg, "PACKAGE"))
	require.NoError(t, err)
	assert.Contains(t, string(meta), "arch=arm64\n")
	version := strings.TrimPrefix(strings.TrimSuffix(filepath.Base(pkg), "-linux-arm64"), "edgefleet-agent-")

	bin := filepath.Join(pkg, "bin/edgefleet-agent")
	out := run(t, "", "file", "-L", bin)
	assert.Contains(t, out, "ARM aarch64", "the packaged binary is arm64")
	out = run(t, "", "file", "-L", filepath.Join(pkg, "lib/libonnxruntime.so.1"))
	assert.Contains(t, out, "ARM aarch64", "the packaged onnxruntime is arm64")

	assert.True(t, strings.HasPrefix(run(t, "", qemu, "-L", sysroot, bin, "--version"), "edgefleet-agent "+version+" (commit "), "the stamped version and commit")

	cp := startControlPlane(t, nil)
	cfg := cp.provision("arm-1", filepath.Join(dir, "data"))
	start := time.Now()
	_, addr := startAgentProc(t, nil, qemu, "-L", sysroot, bin, "--config", cfg)
	t.Logf("arm64 agent serving under qemu after %v", time.Since(start).Round(time.Millisecond))
	cp.pushAndDeploy("arm-1", "1.0.0")
	cp.waitActive("arm-1", "1.0.0", 3*time.Minute)
	t.Logf("model active on the arm64 agent after %v", time.Since(start).Round(time.Millisecond))
	d, err := cp.srv.Device("arm-1")
	require.NoError(t, err)
	assert.Equal(t, version, d.AgentVersion, "the control plane sees the stamped version")
	inferFraud(t, addr, "1.0.0")
}
