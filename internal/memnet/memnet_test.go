package memnet

import (
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDialAcceptRoundTrip(t *testing.T) {
	l := Listen("broker")
	defer l.Close()
	go func() {
		s, err := l.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		_, _ = io.Copy(s, s) // echo until the client closes
	}()

	c, err := l.Dial(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "broker", c.RemoteAddr().String())
	assert.Equal(t, "memnet", c.RemoteAddr().Network())

	big := make([]byte, 256<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	go func() { _, _ = c.Write(big) }()
	got := make([]byte, len(big))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	assert.Equal(t, big, got)

	assert.Equal(t, uint64(1), l.Dialled())
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return l.Open() == 0 }, 5*time.Second, time.Millisecond,
		"both ends closed: open = %d", l.Open())
	require.NoError(t, c.Close(), "closing twice is harmless")
	assert.Zero(t, l.Open(), "and counted once")
}

func TestDeadlines(t *testing.T) {
	c, s := pair(t)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err := c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "a quiet peer does not block a reader with a deadline")

	require.NoError(t, c.SetReadDeadline(time.Time{}))
	require.NoError(t, s.Close())
	_, err = c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "the peer's close ends reads")
}

func TestDialEnds(t *testing.T) {
	l := Listen("x")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := l.Dial(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "nobody accepts")
	assert.Zero(t, l.Open(), "an abandoned dial leaves nothing open")

	require.NoError(t, l.Close())
	_, err = l.Dial(context.Background())
	assert.ErrorIs(t, err, ErrClosed)
	_, err = l.Accept()
	assert.ErrorIs(t, err, ErrClosed)
	require.NoError(t, l.Close())
}

func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l := Listen("x")
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		s, _ := l.Accept()
		accepted <- s
	}()
	c, err := l.Dial(context.Background())
	require.NoError(t, err)
	s := <-accepted
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// Writes complete into the buffer while the peer is busy, as with a
// socket; only a full buffer makes the writer wait.
func TestWritesAreBuffered(t *testing.T) {
	c, s := pair(t)
	// Both ends write before either reads: with net.Pipe this deadlocks.
	msg := make([]byte, DefaultBuffer/2)
	for i := range msg {
		msg[i] = byte(i)
	}
	n, err := c.Write(msg)
	require.NoError(t, err)
	assert.Equal(t, len(msg), n)
	_, err = s.Write([]byte("ack"))
	require.NoError(t, err)

	// The buffer bounds what is in flight.
	_, err = c.Write(make([]byte, DefaultBuffer/2))
	require.NoError(t, err)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(20*time.Millisecond)))
	n, err = c.Write([]byte("more"))
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "full: the writer waits")
	assert.Zero(t, n)
	require.NoError(t, c.SetWriteDeadline(time.Time{}))

	got := make([]byte, len(msg))
	_, err = io.ReadFull(s, got)
	require.NoError(t, err)
	assert.Equal(t, msg, got)
	n, err = c.Write([]byte("more"))
	require.NoError(t, err, "room again once the peer read")
	assert.Equal(t, 4, n)
	ack := make([]byte, 3)
	_, err = io.ReadFull(c, ack)
	require.NoError(t, err)
	assert.Equal(t, "ack", string(ack))
}

func TestCloseSemantics(t *testing.T) {
	c, s := pair(t)
	_, err := c.Write([]byte("last words"))
	require.NoError(t, err)
	require.NoError(t, c.Close())

	got, err := io.ReadAll(s)
	require.NoError(t, err, "the peer reads what was written, then EOF")
	assert.Equal(t, "last words", string(got))
	_, err = s.Write([]byte("x"))
	assert.ErrorIs(t, err, io.ErrClosedPipe, "writing to a closed peer fails")
	_, err = c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, net.ErrClosed)
	_, err = c.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed)
	assert.ErrorIs(t, c.SetDeadline(time.Now()), net.ErrClosed)
}

// Close wakes a blocked reader and a blocked writer on the same end.
func TestCloseWakesBlockedCalls(t *testing.T) {
	c, _ := pair(t)
	_, err := c.Write(make([]byte, DefaultBuffer))
	require.NoError(t, err)
	errs := make(chan error, 2)
	go func() { _, err := c.Read(make([]byte, 1)); errs <- err }()
	go func() { _, err := c.Write([]byte("x")); errs <- err }()
	waitParked(t, "memnet.(*conn).Read", "memnet.(*conn).Write")
	require.NoError(t, c.Close())
	for range 2 {
		select {
		case err := <-errs:
			assert.ErrorIs(t, err, net.ErrClosed)
		case <-time.After(5 * time.Second):
			t.Fatal("a blocked call did not return after Close")
		}
	}
}

// Both directions at once, in random-sized writes and reads.
func TestConcurrentStreams(t *testing.T) {
	c, s := pair(t)
	const size = 3 << 20
	src := make([]byte, size)
	for i := range src {
		src[i] = byte(i*31 + i>>8)
	}
	stream := func(w net.Conn, r net.Conn) error {
		errc := make(chan error, 1)
		go func() {
			rest := src
			for step := 1; len(rest) > 0; step = step*7%65521 + 1 {
				n := min(step, len(rest))
				if _, err := w.Write(rest[:n]); err != nil {
					errc <- err
					return
				}
				rest = rest[n:]
			}
			errc <- nil
		}()
		got := make([]byte, size)
		if _, err := io.ReadFull(r, got); err != nil {
			return err
		}
		if err := <-errc; err != nil {
			return err
		}
		if string(got) != string(src) {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	done := make(chan error, 2)
	go func() { done <- stream(c, s) }()
	go func() { done <- stream(s, c) }()
	for range 2 {
		require.NoError(t, <-done)
	}
}

// Small messages reuse the buffer: a write and its read allocate nothing
// once the buffer exists; a large one is released when drained.
func TestBufferReuse(t *testing.T) {
	b := newBuffer(DefaultBuffer, nil)
	msg, out := make([]byte, 200), make([]byte, 200)
	// Interleaved partial reads move the read offset; writes compact.
	_, _, _ = b.write(msg)
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _ = b.write(msg)
		_, _, _ = b.read(out[:150])
		_, _, _ = b.read(out[:50])
	})
	assert.Zero(t, allocs)
	_, _, _ = b.read(out) // drain
	big := make([]byte, 64<<10)
	_, _, _ = b.write(big)
	for {
		if _, ok, _ := b.read(big); !ok {
			break
		}
	}
	assert.Nil(t, b.buf, "a drained large buffer is released")
}

// A drained large buffer goes to the listener's pool and the next large
// write, on any of its connections, reuses it: relaying model chunks
// allocates nothing once warm (at 10,000 agents each chunk delivery
// allocated 64 KiB here).
func TestLargeBuffersAreReusedAcrossConnections(t *testing.T) {
	var pool sync.Pool
	a, b := newBuffer(DefaultBuffer, &pool), newBuffer(DefaultBuffer, &pool)
	chunk, out := make([]byte, 64<<10+20), make([]byte, 64<<10+20)
	relay := func(x *buffer) {
		if n, ok, err := x.write(chunk); !ok || err != nil || n != len(chunk) {
			t.Fatalf("write: %d, %v, %v", n, ok, err)
		}
		if n, ok, err := x.read(out); !ok || err != nil || n != len(chunk) {
			t.Fatalf("read: %d, %v, %v", n, ok, err)
		}
	}
	relay(a) // warm: one buffer allocated, then pooled
	allocs := testing.AllocsPerRun(100, func() {
		relay(a)
		relay(b)
	})
	// Without reuse each relay allocates one buffer: 2 per run.
	if raceEnabled {
		assert.Less(t, allocs, 2.0, "a large write allocates a new buffer")
	} else {
		assert.Zero(t, allocs, "a large write allocates a new buffer")
	}
	assert.Nil(t, a.buf, "a drained connection holds no large buffer")
	assert.Nil(t, b.buf)
}

// waitParked polls the goroutine dump until, for each of funcs, a parked
// goroutine (waiting in a select or on a channel) runs it.
func waitParked(t *testing.T, funcs ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		dump := string(buf[:runtime.Stack(buf, true)])
		for _, f := range funcs {
			found := false
			for _, g := range strings.Split(dump, "\n\n") {
				head, _, _ := strings.Cut(g, "\n")
				if strings.Contains(g, f) && (strings.Contains(head, "[select") || strings.Contains(head, "[chan ")) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond, "goroutines parked in %v", funcs)
}
