package peers

import (
	"context"
	"crypto/rand"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingTransport is memberlist's own TCP/UDP transport on loopback,
// counting the bytes it writes to the streams it opens (chunks and
// push/pull) — what a member puts on the LAN.
type countingTransport struct {
	*memberlist.NetTransport
	streamed atomic.Int64
}

func newCountingTransport(t *testing.T) *countingTransport {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}})
	require.NoError(t, err)
	return &countingTransport{NetTransport: nt}
}

// DialAddressTimeout is what memberlist calls (NetTransport is node
// aware); DialTimeout is its older form.
func (c *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return c.DialTimeout(addr.Addr, timeout)
}

func (c *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := c.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, n: &c.streamed}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// TestServedChunkIsNotCompressed: a chunk of model weights (random bytes:
// float weights do not compress) crosses the LAN at its size plus the
// framing and the gossip key's seal. With memberlist's default LZW it took
// 1.37× its size, and both ends spent their CPU on it.
func TestServedChunkIsNotCompressed(t *testing.T) {
	chunk := make([]byte, 256<<10)
	_, err := rand.Read(chunk)
	require.NoError(t, err)
	var store chunkStore
	store.put(key, 0, chunk)
	tr := newCountingTransport(t)
	a := newNode(t, "a", "s1", &store, func(o *Options) {
		o.Tune = func(c *memberlist.Config) { fast(c); c.Transport = tr }
	})
	b := newNode(t, "b", "s1", nil, nil, a.Addr())
	waitMembers(t, a, 1)
	waitMembers(t, b, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	before := tr.streamed.Load()
	got, err := b.Fetch(ctx, "a", key, 0, 0)
	require.NoError(t, err)
	require.Equal(t, chunk, got)
	// The answer's stream is written before b's Fetch returns; a push/pull
	// of a's state in between would add a few hundred bytes at most.
	sent := tr.streamed.Load() - before
	assert.Less(t, sent, int64(len(chunk))+4096, "a wrote %d bytes for a chunk of %d", sent, len(chunk))
	assert.GreaterOrEqual(t, sent, int64(len(chunk)), "the count must include the chunk")
}

// TestCompressingMemberInteroperates: agents from before compression was
// turned off still compress; members of both kinds share chunks.
func TestCompressingMemberInteroperates(t *testing.T) {
	var oldStore, newStore chunkStore
	oldStore.put(key, 1, []byte("from the older agent"))
	newStore.put(key, 2, []byte("from the newer agent"))
	older := newNode(t, "older", "s1", &oldStore, func(o *Options) {
		o.Tune = func(c *memberlist.Config) { fast(c); c.EnableCompression = true }
	})
	newer := newNode(t, "newer", "s1", &newStore, nil, older.Addr())
	waitMembers(t, older, 1)
	waitMembers(t, newer, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got, err := newer.Fetch(ctx, "older", key, 1, 0)
	require.NoError(t, err)
	assert.Equal(t, []byte("from the older agent"), got)
	got, err = older.Fetch(ctx, "newer", key, 2, 0)
	require.NoError(t, err)
	assert.Equal(t, []byte("from the newer agent"), got)
}
