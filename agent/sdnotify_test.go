package agent

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// listenNotify plays systemd: a unixgram socket collecting notifications.
func listenNotify(t *testing.T, name string) (string, <-chan string) {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	require.NoError(t, err)
	got := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { _ = conn.Close(); <-done })
	return name, got
}

func recvNotify(t *testing.T, got <-chan string, want string) {
	t.Helper()
	select {
	case s := <-got:
		assert.Equal(t, want, s)
	case <-time.After(10 * time.Second):
		t.Fatalf("no %q notification within 10s", want)
	}
}

func TestSDNotifyLifecycle(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify.sock"),
		"@edgefleet-test-" + strconv.FormatInt(time.Now().UnixNano(), 36), // abstract namespace
	} {
		t.Run(name[:1], func(t *testing.T) {
			path, got := listenNotify(t, name)
			env := map[string]string{"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"} // 40ms → ping every 20ms
			n, err := newSDNotifier(func(k string) string { return env[k] })
			require.NoError(t, err)
			require.NotNil(t, n)
			assert.Equal(t, 20*time.Millisecond, n.watchdog)

			ready := make(chan struct{})
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { n.run(ctx, ready, func(msg string, err error) { t.Errorf("%s: %v", msg, err) }) })
			select {
			case s := <-got:
				t.Fatalf("notification %q before the agent was ready", s)
			case <-time.After(60 * time.Millisecond): // three watchdog periods: nothing may be sent yet
			}
			close(ready)
			recvNotify(t, got, "READY=1")
			recvNotify(t, got, "WATCHDOG=1")
			recvNotify(t, got, "WATCHDOG=1")
			cancel()
			wg.Wait()
			// Drain pings sent before the cancel; the last message is STOPPING=1.
			var last string
			for len(got) > 0 || last == "" {
				select {
				case last = <-got:
				case <-time.After(10 * time.Second):
					t.Fatal("no STOPPING=1 notification")
				}
			}
			assert.Equal(t, "STOPPING=1", last)
		})
	}
}

func TestSDNotifyEnvironment(t *testing.T) {
	sock, _ := listenNotify(t, filepath.Join(t.TempDir(), "n.sock"))
	pid := strconv.Itoa(12345)
	tests := []struct {
		name     string
		env      map[string]string
		want     time.Duration
		wantNil  bool
		errMatch string
	}{
		{name: "not under systemd", env: map[string]string{}, wantNil: true},
		{name: "no watchdog", env: map[string]string{"NOTIFY_SOCKET": sock}, want: 0},
		{name: "watchdog 30s", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30000000"}, want: 15 * time.Second},
		{name: "watchdog for another pid", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}, want: 0},
		{name: "bad usec", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "soon"}, errMatch: `WATCHDOG_USEC "soon"`},
		{name: "relative socket", env: map[string]string{"NOTIFY_SOCKET": "run/notify"}, errMatch: "neither a path nor an abstract socket"},
		{name: "missing socket", env: map[string]string{"NOTIFY_SOCKET": filepath.Join(t.TempDir(), "absent")}, errMatch: "sd_notify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := newSDNotifier(func(k string) string { return tt.env[k] })
			if tt.errMatch != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.errMatch)
				return
			}
			require.NoError(t, err)
			if tt.wantNil {
				assert.Nil(t, n)
				return
			}
			require.NotNil(t, n)
			t.Cleanup(func() { _ = n.conn.Close() })
			assert.Equal(t, tt.want, n.watchdog, "watchdog interval for %v", tt.env)
		})
	}
}
