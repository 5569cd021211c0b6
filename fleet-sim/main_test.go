package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRunRefusesAnUnwritableCPUProfile(t *testing.T) {
	var out, errOut strings.Builder
	code := runScenario(t.Context(), []string{"--cpu-profile", filepath.Join(t.TempDir(), "missing", "p"), "scenarios/site-sharing.yaml"}, &out, &errOut)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut.String(), "cpu profile")
}
