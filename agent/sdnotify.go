package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// systemd service notification (sd_notify) without libsystemd: a datagram
// to the unix socket named by $NOTIFY_SOCKET. The unit file
// deploy/systemd/edgefleet-agent.service runs the agent as Type=notify with
// a WatchdogSec, so the agent sends READY=1 once Ready is closed, WATCHDOG=1
// at half the interval systemd gives in $WATCHDOG_USEC, and STOPPING=1 when
// Run ends. Outside systemd (no NOTIFY_SOCKET) nothing is sent.

// sdNotifier sends notifications to one socket.
type sdNotifier struct {
	conn *net.UnixConn
	// watchdog is the ping interval (half of WATCHDOG_USEC); 0: no watchdog.
	watchdog time.Duration
}

// newSDNotifier reads the systemd environment through getenv. It returns
// nil, nil when the process was not started by systemd with NotifyAccess.
func newSDNotifier(getenv func(string) string) (*sdNotifier, error) {
	path := getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return nil, fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is neither a path nor an abstract socket", path)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("sd_notify: %w", err)
	}
	n := &sdNotifier{conn: conn}
	n.watchdog, err = watchdogInterval(getenv, os.Getpid())
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return n, nil
}

// watchdogInterval is half of $WATCHDOG_USEC, or 0 when systemd asked for no
// watchdog or asked another process ($WATCHDOG_PID).
func watchdogInterval(getenv func(string) string, pid int) (time.Duration, error) {
	usec := getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0, nil
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("sd_notify: WATCHDOG_USEC %q is not a positive number of microseconds", usec)
	}
	return time.Duration(n) * time.Microsecond / 2, nil
}

func (n *sdNotifier) notify(state string) error {
	if _, err := n.conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", state, err)
	}
	return nil
}

// run sends READY=1 once ready is closed, pings the watchdog until ctx ends,
// then sends STOPPING=1 and closes the socket.
func (n *sdNotifier) run(ctx context.Context, ready <-chan struct{}, logf func(msg string, err error)) {
	defer n.conn.Close()
	select {
	case <-ready:
	case <-ctx.Done():
		return
	}
	if err := n.notify("READY=1"); err != nil {
		logf("systemd notify failed", err)
	}
	var tick <-chan time.Time
	if n.watchdog > 0 {
		t := time.NewTicker(n.watchdog)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			if err := n.notify("STOPPING=1"); err != nil && !errors.Is(err, net.ErrClosed) {
				logf("systemd notify failed", err)
			}
			return
		case <-tick:
			if err := n.notify("WATCHDOG=1"); err != nil {
				logf("systemd watchdog ping failed", err)
			}
		}
	}
}

// startSystemdNotify starts the notifier for Run when the agent runs under
// systemd; wg owns the goroutine.
func (a *Agent) startSystemdNotify(ctx context.Context, goFn func(func())) {
	n, err := newSDNotifier(os.Getenv)
	if err != nil {
		a.log.Warn("systemd notification disabled", "err", err)
		return
	}
	if n == nil {
		return
	}
	goFn(func() {
		n.run(ctx, a.ready, func(msg string, err error) { a.log.Warn(msg, "err", err) })
	})
}
