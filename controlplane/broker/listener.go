package broker

import (
	"crypto/tls"
	"log/slog"
	"net"
	"sync"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is a mochi listener that owns its connection goroutines.
//
// mochi's own TCP listener starts one goroutine per accepted connection and
// forgets it; that goroutine calls ClientsWg.Add only once it runs, so a
// Server.Close racing with a connection still in its (TLS) handshake calls
// ClientsWg.Wait concurrently with that Add, which the race detector reports
// and which can let Close return with a connection goroutine still alive.
// This listener counts each goroutine before starting it, closes every
// connection it accepted when it is closed, and waits for their goroutines,
// so that by the time mochi waits on ClientsWg nothing can Add to it.
type tcpListener struct {
	id, addr string
	tlsConf  *tls.Config

	log    *slog.Logger
	ln     net.Listener
	served chan struct{} // closed when Serve returns

	mu      sync.Mutex
	closed  bool
	serving bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup // connection goroutines
}

var _ listeners.Listener = (*tcpListener)(nil)

func newTCPListener(id, addr string, tlsConf *tls.Config) *tcpListener {
	return &tcpListener{id: id, addr: addr, tlsConf: tlsConf, served: make(chan struct{}), conns: map[net.Conn]struct{}{}}
}

func (l *tcpListener) ID() string       { return l.id }
func (l *tcpListener) Protocol() string { return "tcp" }

// Address is the bound address once Init has run.
func (l *tcpListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	if l.tlsConf != nil {
		ln = tls.NewListener(ln, l.tlsConf)
	}
	l.ln = ln
	return nil
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
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

// Close disconnects the listener's clients, stops accepting, closes the
// connections still being established and waits for all their goroutines.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	serving := l.serving
	l.mu.Unlock()

	closeClients(l.id)
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
