package deploytest

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestAgentTarballIsReproducible packages the same inputs twice, with the
// input files' times, the umask and the output directory changed between
// the two, and gets the same bytes: a release is checkable by rebuilding
// it.
func TestAgentTarballIsReproducible(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	in := t.TempDir()
	bin, lib := filepath.Join(in, "edgefleet-agent"), filepath.Join(in, "libonnxruntime.so.1")
	require.NoError(t, os.WriteFile(bin, []byte("not really a binary"), 0o755))
	require.NoError(t, os.WriteFile(lib, []byte("not really a library"), 0o644))
	pack := func(umask string) string {
		out := t.TempDir()
		cmd := exec.Command("sh", "-c", "umask "+umask+" && exec sh scripts/package-agent.sh 9.9.9 amd64 \"$0\" \"$1\" \"$2\"", bin, lib, out)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
		b, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", b)
		return sha256File(t, strings.TrimSpace(string(b)))
	}
	first := pack("022")
	later := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(bin, later, later))
	require.NoError(t, os.Chtimes(lib, later, later))
	assert.Equal(t, first, pack("077"), "the same inputs give the same archive")

	require.NoError(t, os.WriteFile(lib, []byte("another library"), 0o644))
	assert.NotEqual(t, first, pack("022"), "other content, another archive: the check can fail")
}

// TestImageIsReferencedConsistently: the Dockerfile builds the image the
// Makefile tags, and the Kubernetes and compose files run that image.
func TestImageIsReferencedConsistently(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+)$`).FindSubmatch(mk)
	require.NotNil(t, m, "the Makefile sets IMAGE ?= <repository>")
	image := string(m[1])

	df, err := os.ReadFile(filepath.Join(root, "deploy/image/Dockerfile"))
	require.NoError(t, err)
	dockerfile := string(df)
	for _, line := range strings.Split(dockerfile, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.EqualFold(f[0], "FROM") {
			assert.NotContains(t, f[1], ":latest", "base images are pinned: %s", line)
			assert.Contains(t, f[1], ":", "base images name a tag: %s", line)
		}
	}
	assert.Regexp(t, `(?m)^USER 10001(:10001)?$`, dockerfile, "the image runs as the user the Kubernetes manifest expects")
	assert.Contains(t, dockerfile, "internal/buildinfo.version=${VERSION}", "the image's binary is stamped with its version")
	assert.Regexp(t, `(?m)^HEALTHCHECK `, dockerfile)

	var kust struct {
		Images []struct {
			Name   string `yaml:"name"`
			NewTag string `yaml:"newTag"`
		} `yaml:"images"`
	}
	kb, err := os.ReadFile(filepath.Join(root, "deploy/k8s/kustomization.yaml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(kb, &kust))
	require.Len(t, kust.Images, 1, "kustomization pins the control plane image")
	assert.Equal(t, image, kust.Images[0].Name)
	assert.NotEmpty(t, kust.Images[0].NewTag)
	assert.NotEqual(t, "latest", kust.Images[0].NewTag)

	k8s, err := os.ReadFile(filepath.Join(root, "deploy/k8s/edgefleet.yaml"))
	require.NoError(t, err)
	assert.Regexp(t, `image: `+regexp.QuoteMeta(image)+`(\s|$)`, string(k8s), "the Deployment names the image kustomize pins")
	compose, err := os.ReadFile(filepath.Join(root, "deploy/compose/compose.yaml"))
	require.NoError(t, err)
	assert.Contains(t, string(compose), "image: "+image+":", "compose builds and tags the same image")
	assert.Contains(t, string(compose), "dockerfile: deploy/image/Dockerfile")
}

// TestControlPlaneTarball packages the control plane as `make dist` does
// (scripts/package-controlplane.sh) and checks it holds what
// docs/deploy.md's server section installs — both units, the mosquitto
// files — with modes that do not depend on the umask, byte-reproducibly.
func TestControlPlaneTarball(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	require.NoError(t, err)
	assert.Contains(t, string(mk), "sh scripts/package-controlplane.sh $(VERSION) $$arch", "make dist packages with the script this test runs")

	in := t.TempDir()
	bin, lib := filepath.Join(in, "edgefleet"), filepath.Join(in, "libonnxruntime.so.1")
	require.NoError(t, os.WriteFile(bin, []byte("not really a binary"), 0o700))
	require.NoError(t, os.WriteFile(lib, []byte("not really a library"), 0o600))
	pack := func(umask string) string {
		out := t.TempDir()
		cmd := exec.Command("sh", "-c", "umask "+umask+" && exec sh scripts/package-controlplane.sh 9.9.9 arm64 \"$0\" \"$1\" \"$2\"", bin, lib, out)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
		b, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", b)
		return strings.TrimSpace(string(b))
	}
	tarball := pack("022")
	assert.Equal(t, "edgefleet-9.9.9-linux-arm64.tar.gz", filepath.Base(tarball))
	assert.Equal(t, sha256File(t, tarball), sha256File(t, pack("077")), "the same inputs give the same archive")

	listing := run(t, "", "tar", "-tvzf", tarball)
	got := map[string]string{} // path → mode
	for line := range strings.SplitSeq(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		got[strings.TrimPrefix(f[len(f)-1], "edgefleet-9.9.9-linux-arm64/")] = f[0]
	}
	want := map[string]string{
		"bin/edgefleet":                         "-rwxr-xr-x",
		"lib/libonnxruntime.so.1":               "-rw-r--r--",
		"systemd/edgefleet.service":             "-rw-r--r--",
		"systemd/edgefleet-broker-sync.service": "-rw-r--r--",
	}
	mosq, err := filepath.Glob(filepath.Join(root, "deploy/mosquitto/*"))
	require.NoError(t, err)
	require.NotEmpty(t, mosq)
	for _, f := range mosq {
		want["mosquitto/"+filepath.Base(f)] = "-rw-r--r--"
	}
	for path, mode := range want {
		assert.Equal(t, mode, got[path], "%s in the control plane tarball", path)
	}
	for path := range got {
		if path != "" && !strings.HasSuffix(path, "/") {
			assert.Contains(t, want, path, "only what the docs install is packaged")
		}
	}
}
