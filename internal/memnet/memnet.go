// Package memnet is an in-process network: a net.Listener whose connections
// are in-memory buffers. fleet-sim runs thousands of agents in one process;
// over memnet they and the embedded broker exchange the same MQTT bytes
// through the same code, without sockets. Imported by controlplane/broker
// and fleet-sim/sim.
package memnet

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by Dial and Accept once the listener is closed.
var ErrClosed = errors.New("memnet: listener closed")

// Addr is the address of an in-memory endpoint.
type Addr string

func (a Addr) Network() string { return "memnet" }
func (a Addr) String() string  { return string(a) }

// DefaultBuffer is how many bytes a connection buffers in each direction
// before Write blocks, like a socket's send and receive buffers. Without
// it (net.Pipe) a writer waits for the reader on every byte, and two peers
// that each write while the other's reader is busy handing off deadlock:
// mochi's writer blocked on paho's reader, paho's reader on its own
// writer's PUBACK, that writer on mochi's reader, which waits for mochi's
// write lock. Memory is only held while bytes are in flight.
const DefaultBuffer = 256 << 10

// Listener accepts connections made by Dial.
type Listener struct {
	addr    Addr
	accept  chan net.Conn
	closed  chan struct{}
	once    sync.Once
	dialled atomic.Uint64
	open    atomic.Int64
	bufs    sync.Pool // drained large buffers of its connections (pipe.go)
}

var _ net.Listener = (*Listener)(nil)

// Listen returns a listener named name (only used in addresses and logs).
func Listen(name string) *Listener {
	return &Listener{addr: Addr(name), accept: make(chan net.Conn), closed: make(chan struct{})}
}

// Dial connects to the listener. It blocks until Accept takes the
// connection, ctx ends or the listener closes.
func (l *Listener) Dial(ctx context.Context) (net.Conn, error) {
	c, s := newPair(l, Addr("client"), l.addr, DefaultBuffer)
	l.open.Add(2)
	select {
	case l.accept <- s:
		l.dialled.Add(1)
		return c, nil
	case <-ctx.Done():
		c.Close()
		s.Close()
		return nil, ctx.Err()
	case <-l.closed:
		c.Close()
		s.Close()
		return nil, ErrClosed
	}
}

// Accept waits for the next Dial.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, ErrClosed
	}
}

// Close stops Accept and Dial; connections already made stay open.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the listener's name.
func (l *Listener) Addr() net.Addr { return l.addr }

// Dialled is the number of connections made.
func (l *Listener) Dialled() uint64 { return l.dialled.Load() }

// Open is the number of connection ends (client and server side) not yet
// closed: 2 per live connection. A leak check compares it with zero.
func (l *Listener) Open() int64 { return l.open.Load() }
