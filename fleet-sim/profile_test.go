package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCPUProfileIsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	stop, err := startCPUProfile(path)
	require.NoError(t, err)
	require.NoError(t, stop())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 2)
	assert.Equal(t, []byte{0x1f, 0x8b}, b[:2], "a pprof profile is gzipped protobuf")

	_, err = startCPUProfile(filepath.Join(t.TempDir(), "missing", "cpu.pprof"))
	assert.ErrorContains(t, err, "cpu profile")
}

func TestRunRefusesAnUnwritableCPUProfile(t *testing.T) {
	var out, errOut strings.Builder
	code := runScenario(t.Context(), []string{"--cpu-profile", filepath.Join(t.TempDir(), "missing", "p"), "scenarios/site-sharing.yaml"}, &out, &errOut)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut.String(), "cpu profile")
}
