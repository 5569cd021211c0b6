package cli

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCLITokensEnrollRevoke drives token create/list/revoke and device
// enroll/revoke against a real `serve`.
func TestCLITokensEnrollRevoke(t *testing.T) {
	sv := startServe(t)
	admin := []string{"--api", sv.api, "--token-file", sv.tokenFile}
	c := func(args ...string) (int, string, string) {
		t.Helper()
		return cli(t, append(args, admin...)...)
	}

	code, out, stderr := c("token", "create", "--name", "dashboard", "--role", "viewer")
	require.Equal(t, 0, code, stderr)
	secret := regexp.MustCompile(`ef_[0-9a-f]{64}`).FindString(out)
	require.NotEmpty(t, secret, out)
	id := regexp.MustCompile(`id (tok_[0-9a-f]+)`).FindStringSubmatch(out)
	require.Len(t, id, 2, out)

	code, out, stderr = c("token", "list")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `initial\s+admin`, out)
	assert.Regexp(t, `dashboard\s+viewer\s+\S+ \S+\s+initial`, out)
	assert.NotContains(t, out, secret)

	viewer := []string{"--api", sv.api, "--token", secret}
	code, _, stderr = cli(t, append([]string{"devices"}, viewer...)...)
	assert.Equal(t, 0, code, stderr)
	code, _, stderr = cli(t, append([]string{"device", "enroll", "cam-1"}, viewer...)...)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, `role viewer; POST /api/v1/enrollments needs admin (HTTP 403)`)

	code, _, stderr = c("token", "create", "--name", "x", "--role", "god")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "viewer, operator, admin or broker")

	code, out, stderr = c("device", "enroll", "cam-1", "--label", "site=oslo", "--ttl", "10m")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `efe_[0-9a-f]{64}`, out)
	assert.Contains(t, out, "edgefleet-agent enroll --token efe_")
	assert.NotContains(t, out, "--tls-ca-file")
	code, out, stderr = c("device", "enroll", "cam-2", "--tls-ca-file", "/etc/edgefleet/tls/ca.crt")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "--config-out /etc/edgefleet/agent.yaml --tls-ca-file /etc/edgefleet/tls/ca.crt\n", "the device's enroll command carries the CA")

	code, out, stderr = c("token", "revoke", id[1])
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "revoked")
	code, _, stderr = cli(t, append([]string{"devices"}, viewer...)...)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "invalid API token")

	code, _, stderr = c("device", "add", "cam-2")
	require.Equal(t, 0, code, stderr)
	code, out, stderr = c("device", "revoke", "cam-2")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "credentials revoked")
	code, out, stderr = c("devices")
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `(?m)^cam-2\s.*\srevoked\s`, out, "the table shows the device revoked")
	code, _, stderr = c("device", "revoke", "ghost")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "not registered")
}
