package broker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/topics"
)

// mosquittoClient runs mosquitto_sub or mosquitto_pub (Debian
// mosquitto-clients) as device d1 against b, with a deadline, and returns
// its exit status and output.
func mosquittoClient(t *testing.T, b *Broker, tool string, args ...string) (int, string) {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found (CI installs mosquitto-clients)", tool)
		}
		t.Skipf("%s not installed (apt-get install mosquitto-clients)", tool)
	}
	host, port, ok := strings.Cut(b.Addr(), ":")
	require.True(t, ok)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base := []string{"-h", host, "-p", port, "-V", "mqttv311", "-i", "d1", "-u", "d1", "-P", testDevices["d1"]}
	cmd := exec.CommandContext(ctx, path, append(base, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	require.NoError(t, ctx.Err(), "%s %v did not finish", tool, args)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, out.String()
}

// TestMosquittoClientsCannotEscapeACL uses the stock mosquitto command-line
// clients — not our code — as a device trying what a device must not do.
func TestMosquittoClientsCannotEscapeACL(t *testing.T) {
	var s topics.Scheme
	b := newTestBroker(t, func(o *Options) { o.MaxPacketSize = 4 << 10 })
	require.NoError(t, b.Publish(s.Desired("d2"), []byte("d2's desired state"), true, 1))
	require.NoError(t, b.Publish(s.Desired("d1"), []byte("d1's desired state"), true, 1))
	rec := record(t, b, "ef/v1/#")

	t.Run("subscribe", func(t *testing.T) {
		for _, filter := range []string{"#", "+/v1/dev/d2/desired", "ef/v1/dev/+/desired", "ef/v1/dev/d2/#", "ef/v1/#", "$SYS/#"} {
			code, out := mosquittoClient(t, b, "mosquitto_sub", "-t", filter, "-C", "1", "-W", "2", "-v")
			t.Logf("mosquitto_sub -t %q: exit %d %s", filter, code, strings.TrimSpace(out))
			assert.NotContains(t, out, "d2's desired state", "filter %q", filter)
			assert.Contains(t, out, "All subscription requests were denied", "filter %q", filter)
		}
		// Its own subtree works (the control run).
		code, out := mosquittoClient(t, b, "mosquitto_sub", "-t", s.Desired("d1"), "-C", "1", "-W", "5", "-v")
		assert.Zero(t, code, out)
		assert.Contains(t, out, "d1's desired state")
	})

	t.Run("publish", func(t *testing.T) {
		big := filepath.Join(t.TempDir(), "big")
		require.NoError(t, os.WriteFile(big, bytes.Repeat([]byte("x"), 8<<10), 0o600))
		attempts := []struct {
			name string
			args []string
		}{
			{"another device's status, qos 1", []string{"-t", s.Status("d2"), "-q", "1", "-m", "forged"}},
			{"another device's status, qos 0", []string{"-t", s.Status("d2"), "-q", "0", "-m", "forged"}},
			{"another device's desired state", []string{"-t", s.Desired("d2"), "-q", "1", "-m", "forged"}},
			{"own desired state", []string{"-t", s.Desired("d1"), "-q", "1", "-m", "forged"}},
			{"a manifest", []string{"-t", s.Manifest("fraud", "9"), "-q", "1", "-m", "forged"}},
			{"a chunk topic", []string{"-t", s.Chunks("fraud", "9"), "-q", "1", "-m", "forged"}},
			{"the trust bundle", []string{"-t", s.Trust(), "-q", "1", "-m", "forged"}},
			{"retained to own status", []string{"-t", s.Status("d1"), "-q", "1", "-r", "-m", "forged"}},
			{"oversized to own status", []string{"-t", s.Status("d1"), "-q", "1", "-f", big}},
		}
		for _, a := range attempts {
			code, out := mosquittoClient(t, b, "mosquitto_pub", a.args...)
			t.Logf("%s: exit %d %s", a.name, code, strings.TrimSpace(out))
			if a.args[3] == "1" { // a refused QoS 1 publish ends the connection
				assert.NotZero(t, code, "%s: the broker accepted it: %s", a.name, out)
			}
		}
		// The control run: an allowed publish arrives, and it is the only
		// message from d1. The broker acknowledges a QoS 1 publish before it
		// fans it out, so wait for the allowed message itself as well as for
		// the marker published after it: every attempt before them has been
		// handled by then (each ran on a connection that had ended).
		code, out := mosquittoClient(t, b, "mosquitto_pub", "-t", s.Status("d1"), "-q", "1", "-m", "allowed")
		require.Zero(t, code, out)
		require.NoError(t, b.Publish(s.Trust(), []byte("marker"), false, 1))
		require.Eventually(t, func() bool {
			seen := map[string]bool{}
			for _, m := range rec.get() {
				seen[m.payload] = true
			}
			return seen["marker"] && seen["allowed"]
		}, waitFor, 5*time.Millisecond)
		var fromD1 []string
		for _, m := range rec.get() {
			if m.client == "d1" {
				fromD1 = append(fromD1, m.topic+" "+m.payload)
			}
		}
		assert.Equal(t, []string{s.Status("d1") + " allowed"}, fromD1, "only the allowed publish got through")

		// Nothing was retained: a late subscriber to d2's status and to
		// d1's status sees nothing old.
		late := record(t, b, "ef/v1/dev/+/status")
		require.NoError(t, b.Publish(s.Status("d2"), []byte("fresh"), false, 1))
		assert.Equal(t, "fresh", late.waitLen(t, 1)[0].payload)
	})
}
