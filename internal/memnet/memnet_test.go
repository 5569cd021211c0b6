package memnet

import (
	"context"
	"io"
	"net"
	"os"
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
	l := Listen("x")
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, _ := l.Accept()
		accepted <- s
	}()
	c, err := l.Dial(context.Background())
	require.NoError(t, err)
	defer c.Close()
	s := <-accepted
	defer s.Close()

	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = c.Read(make([]byte, 1))
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
