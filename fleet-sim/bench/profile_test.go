package bench

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCPUProfileIsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	stop, err := StartCPUProfile(path)
	require.NoError(t, err)
	require.NoError(t, stop())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 2)
	assert.Equal(t, []byte{0x1f, 0x8b}, b[:2], "a pprof profile is gzipped protobuf")

	_, err = StartCPUProfile(filepath.Join(t.TempDir(), "missing", "cpu.pprof"))
	assert.ErrorContains(t, err, "cpu profile")
}
