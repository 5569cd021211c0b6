package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// connListener is a mochi listener over any net.Listener (TCP, TLS, or
// memnet) that owns its connection goroutines.
//
// mochi's own TCP listener starts one goroutine per accepted connection and
// forgets it; that goroutine calls ClientsWg.Add only once it runs, so a
// Server.Close racing with a connection still in its (TLS) handshake calls
// ClientsWg.Wait concurrently with that Add, which the race detector reports
// and which can let Close return with a connection goroutine still alive.
// This listener counts each goroutine before starting it, closes every
// connection it accepted when it is closed, and waits for their goroutines,
// so that by the time mochi waits on ClientsWg nothing can Add to it.
type connListener struct {
	id     string
	listen func() (net.Listener, error)

	log    *slog.Logger
	ln     net.Listener
	served chan struct{} // closed when Serve returns

	mu      sync.Mutex
	closed  bool
	serving bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup // connection goroutines
}

var _ listeners.Listener = (*connListener)(nil)

// newConnListener makes a listener that opens its net.Listener with listen
// when mochi initialises it.
func newConnListener(id string, listen func() (net.Listener, error)) *connListener {
	return &connListener{id: id, listen: listen, served: make(chan struct{}), conns: map[net.Conn]struct{}{}}
}

// tcpListen listens on addr, with TLS when conf is set; wrap (the stall
// watch) goes below TLS, whose connections cannot go on after a write
// deadline passed.
func tcpListen(addr string, conf *tls.Config, wrap func(net.Listener) net.Listener) func() (net.Listener, error) {
	return func() (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		ln = wrap(ln)
		if conf != nil {
			ln = tls.NewListener(ln, conf)
		}
		return ln, nil
	}
}

func (l *connListener) ID() string { return l.id }

func (l *connListener) Protocol() string {
	if l.ln != nil {
		return l.ln.Addr().Network()
	}
	return "tcp"
}

// Address is the bound address once Init has run.
func (l *connListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return ""
}

func (l *connListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := l.listen()
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

func (l *connListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.serving = true
	l.mu.Unlock()
	defer close(l.served)
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = conn.Close()
			return
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			// The error is the client's: bad credentials, a failed
			// handshake, a dropped connection.
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
			l.mu.Lock()
			delete(l.conns, conn)
			l.mu.Unlock()
			_ = conn.Close()
		}()
	}
}

// Close stops accepting, closes every connection the listener accepted
// (clients and connections still being established) and waits for all
// their goroutines.
func (l *connListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	serving := l.serving
	l.mu.Unlock()

	// mochi's closeClients callback is not called: it lists clients
	// through Clients.GetByListener, which takes the clients' read lock
	// twice, and a client disconnecting meanwhile (a writer waiting
	// between the two) deadlocks the shutdown. Closing every connection
	// this listener accepted ends those clients the same way, through
	// their own read loops.
	_ = closeClients
	if l.ln != nil {
		_ = l.ln.Close()
	}
	if serving {
		<-l.served
	}
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// stallListener hands out stallConns.
type stallListener struct {
	net.Listener
	stall   time.Duration
	stalled func(net.Conn) // called once per connection closed for a stall
}

func (l *stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, stall: l.stall, stalled: l.stalled}, nil
}

// errStalled is a write to a client that accepted no byte for the stall time.
var errStalled = errors.New("broker: client stalled")

// stallConn closes itself when a write accepts no byte for stall, and
// gives a write that progresses, however slowly, all the time it needs.
// mochi writes to a client holding that client's lock, which its
// publishers take too; closed, the client's read loop ends and mochi
// drops it (the device reconnects and resumes). Writes come from one
// goroutine at a time (mochi's, under the lock).
type stallConn struct {
	net.Conn
	stall   time.Duration
	stalled func(net.Conn)
}

func (c *stallConn) Write(p []byte) (int, error) {
	written := 0
	for {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.stall)); err != nil {
			return written, err
		}
		n, err := c.Conn.Write(p[written:])
		written += n
		switch {
		case err == nil:
			return written, nil
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return written, err
		case n > 0:
			continue // slow, not stuck: the rest gets a new deadline
		}
		_ = c.Conn.Close()
		c.stalled(c.Conn)
		return written, fmt.Errorf("%w: no byte accepted in %v", errStalled, c.stall)
	}
}
