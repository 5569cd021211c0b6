package memnet

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// buffer is one direction of a connection: bytes written by one end and
// not yet read by the other, at most max of them.
type buffer struct {
	mu       sync.Mutex
	pool     *sync.Pool // of *[]byte: drained buffers above keepCap, for the next large write
	buf      []byte     // buf[r:] is unread
	box      *[]byte    // the pool's box buf came in, reused to give it back
	r        int
	max      int
	eof      bool          // the writing end closed: reads drain, then io.EOF
	gone     bool          // the reading end closed: writes fail
	readable chan struct{} // signalled when data, eof or gone changes
	writable chan struct{} // signalled when room frees up or gone
}

func newBuffer(max int, pool *sync.Pool) *buffer {
	return &buffer{max: max, pool: pool, readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// keepCap is the largest drained buffer a connection keeps (small messages
// then cost no allocation); a larger one goes back to the listener's pool,
// so that an idle connection holds at most this much and the next large
// write on any connection (a model chunk, 64 KiB) reuses it instead of
// allocating: at 10,000 agents those allocations were 10 GiB per 1 MiB
// rollout for the garbage collector to follow.
const keepCap = 4 << 10

// read copies buffered bytes into p; ok is false when none are there.
func (b *buffer) read(p []byte) (n int, ok bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.r == len(b.buf) {
		if b.eof {
			return 0, true, io.EOF
		}
		return 0, false, nil
	}
	n = copy(p, b.buf[b.r:])
	b.r += n
	if b.r == len(b.buf) {
		b.r = 0
		b.release()
	} else {
		signal(b.readable) // another reader may wait too
	}
	signal(b.writable)
	return n, true, nil
}

// write appends as much of p as fits; ok is false when nothing fit.
func (b *buffer) write(p []byte) (n int, ok bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone {
		return 0, true, io.ErrClosedPipe
	}
	held := len(b.buf) - b.r
	room := b.max - held
	if room <= 0 {
		return 0, false, nil
	}
	n = min(room, len(p))
	if held == 0 && n > cap(b.buf) && b.pool != nil {
		if pb, _ := b.pool.Get().(*[]byte); pb != nil {
			b.buf, b.box, b.r = (*pb)[:0], pb, 0 // the small one, if any, is dropped
		}
	}
	if b.r > 0 && len(b.buf)+n > cap(b.buf) {
		// Move the unread bytes to the front rather than grow.
		copy(b.buf, b.buf[b.r:])
		b.buf = b.buf[:held]
		b.r = 0
	}
	b.buf = append(b.buf, p[:n]...)
	signal(b.readable)
	if held+n < b.max {
		signal(b.writable)
	}
	return n, true, nil
}

// release empties the drained buffer: kept if small, else given back to
// the pool (or to the garbage collector without one). b.mu is held.
func (b *buffer) release() {
	if cap(b.buf) <= keepCap {
		b.buf = b.buf[:0]
		return
	}
	if b.pool != nil {
		if b.box == nil {
			b.box = new([]byte)
		}
		*b.box = b.buf[:0]
		b.pool.Put(b.box)
	}
	b.buf, b.box = nil, nil
}

func (b *buffer) closeWriter() {
	b.mu.Lock()
	b.eof = true
	b.mu.Unlock()
	signal(b.readable)
}

func (b *buffer) closeReader() {
	b.mu.Lock()
	b.gone = true
	b.r = 0
	b.release() // unread bytes are dropped
	b.mu.Unlock()
	signal(b.writable)
}

// deadline is a settable point in time with a channel closed when it passes.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	passed chan struct{}
}

func newDeadline() *deadline { return &deadline{passed: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.passed // the timer fired: wait until it closed the channel
	}
	d.timer = nil
	closed := isClosed(d.passed)
	if t.IsZero() {
		if closed {
			d.passed = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.passed = make(chan struct{})
		}
		ch := d.passed
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !closed {
		close(d.passed)
	}
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.passed
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// conn is one end of an in-memory connection: it reads from in and writes
// to out, the other end the other way round.
type conn struct {
	l             *Listener
	local, remote Addr
	in, out       *buffer
	rd, wd        *deadline
	done          chan struct{} // closed by Close
	once          sync.Once
}

func newPair(l *Listener, clientAddr, serverAddr Addr, size int) (client, server *conn) {
	up, down := newBuffer(size, &l.bufs), newBuffer(size, &l.bufs)
	client = &conn{l: l, local: clientAddr, remote: serverAddr, in: down, out: up,
		rd: newDeadline(), wd: newDeadline(), done: make(chan struct{})}
	server = &conn{l: l, local: serverAddr, remote: clientAddr, in: up, out: down,
		rd: newDeadline(), wd: newDeadline(), done: make(chan struct{})}
	return client, server
}

var _ net.Conn = (*conn)(nil)

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if isClosed(c.done) {
			return 0, net.ErrClosed
		}
		if isClosed(c.rd.wait()) {
			return 0, os.ErrDeadlineExceeded
		}
		if n, ok, err := c.in.read(p); ok {
			return n, err
		}
		select {
		case <-c.in.readable:
		case <-c.rd.wait():
		case <-c.done:
		}
	}
}

func (c *conn) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if isClosed(c.done) {
			return total, net.ErrClosed
		}
		if isClosed(c.wd.wait()) {
			return total, os.ErrDeadlineExceeded
		}
		n, ok, err := c.out.write(p)
		if err != nil {
			return total, err
		}
		if ok {
			total += n
			p = p[n:]
			continue
		}
		select {
		case <-c.out.writable:
		case <-c.wd.wait():
		case <-c.done:
		}
	}
	return total, nil
}

// Close ends this side: the peer reads what was written, then io.EOF, and
// its writes fail.
func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.out.closeWriter()
		c.in.closeReader()
		c.l.open.Add(-1)
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.rd.set(t)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.wd.set(t)
	return nil
}
