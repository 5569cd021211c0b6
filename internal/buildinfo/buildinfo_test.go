package buildinfo

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStampedBinary builds testdata/stamped with the Makefile's -X flags and
// checks it reports them: the flags name the right variables.
func TestStampedBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "stamped")
	pkg := "github.com/edgefleet/edgefleet/internal/buildinfo"
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X "+pkg+".version=v9.8.7 -X "+pkg+".commit=0123456789abcdef0123456789abcdef01234567", "./testdata/stamped")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	got, err := exec.Command(bin).Output()
	require.NoError(t, err)
	assert.Equal(t, "v9.8.7 (commit 0123456789ab)", string(got))
}

func TestUnstamped(t *testing.T) {
	assert.NotEmpty(t, Version())
	assert.True(t, strings.HasPrefix(String(), Version()))
}
