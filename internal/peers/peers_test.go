package peers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const key = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// chunkStore is a ChunkProvider backed by a map.
type chunkStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *chunkStore) put(k string, i uint32, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[fmt.Sprint(k, i)] = b
}

func (s *chunkStore) get(k string, i uint32) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[fmt.Sprint(k, i)]
	return b, ok
}

func newNode(t *testing.T, name, site string, store *chunkStore, join ...string) *Node {
	t.Helper()
	opts := Options{Name: name, Site: site, Join: join}
	if store != nil {
		opts.ChunkProvider = store.get
	}
	n, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	return n
}

func waitMembers(t *testing.T, n *Node, want int) {
	t.Helper()
	require.Eventually(t, func() bool { return len(n.Members()) == want },
		10*time.Second, 20*time.Millisecond, "%s members = %v, want %d others", n.Name(), n.Members(), want)
}

func TestAnnounceReachesPeersViaRelay(t *testing.T) {
	a := newNode(t, "a", "s1", nil)
	b := newNode(t, "b", "s1", nil, a.Addr())
	// c knows only b; a's announcement must reach c even if it only hears it from b.
	c := newNode(t, "c", "s1", nil, b.Addr())
	waitMembers(t, a, 2)
	waitMembers(t, c, 2)

	a.Announce(key, []uint32{0, 3, 9})
	for _, n := range []*Node{b, c} {
		require.Eventually(t, func() bool { return len(n.Holders(key, 3)) == 1 },
			10*time.Second, 20*time.Millisecond, "%s never learned a holds chunk 3", n.Name())
		assert.Equal(t, []string{"a"}, n.Holders(key, 9))
		assert.Empty(t, n.Holders(key, 1), "chunk 1 was not announced")
		assert.Empty(t, n.Holders("other", 3))
	}
	require.Eventually(t, func() bool { return b.Stats().Relayed+c.Stats().Relayed >= 2 },
		5*time.Second, 20*time.Millisecond)

	// Freshest holder first.
	b.Announce(key, []uint32{3})
	require.Eventually(t, func() bool { h := c.Holders(key, 3); return len(h) == 2 && h[0] == "b" },
		10*time.Second, 20*time.Millisecond, "c holders = %v", c.Holders(key, 3))
}

func TestRelayExplicit(t *testing.T) {
	// c never gets a's broadcast directly: b's relay is the only path. Verify by
	// queueing a's announcement on b only (as if b received it), then checking c.
	a := newNode(t, "a", "s1", nil)
	b := newNode(t, "b", "s1", nil, a.Addr())
	c := newNode(t, "c", "s1", nil, b.Addr())
	waitMembers(t, c, 2)

	buf, err := encode(kindAnnounce, announceMsg{Origin: "a", Site: "s1", Seq: 1, Key: key, Bits: []byte{0x01}})
	require.NoError(t, err)
	b.handle(buf) // b receives it; a's queue never holds it
	require.Eventually(t, func() bool { return len(c.Holders(key, 0)) == 1 },
		10*time.Second, 20*time.Millisecond, "c did not get a's announcement relayed by b")
	assert.Equal(t, uint64(1), b.Stats().Relayed)

	// A duplicate is not relayed again.
	b.handle(buf)
	assert.Equal(t, uint64(1), b.Stats().Relayed)
}

func TestFetch(t *testing.T) {
	var store chunkStore
	store.put(key, 2, []byte("chunk-two"))
	a := newNode(t, "a", "s1", &store)
	b := newNode(t, "b", "s1", nil, a.Addr())
	// Both views: a answers only members it knows, and b's Join can return
	// before a has merged b's state.
	waitMembers(t, b, 1)
	waitMembers(t, a, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	got, err := b.Fetch(ctx, "a", key, 2)
	require.NoError(t, err)
	assert.Equal(t, []byte("chunk-two"), got)
	require.Eventually(t, func() bool { return a.Stats().Served == 1 }, 5*time.Second, 10*time.Millisecond)

	_, err = b.Fetch(ctx, "a", key, 5)
	assert.ErrorIs(t, err, ErrNotFound)
	assert.ErrorContains(t, err, "chunk 5")

	_, err = b.Fetch(ctx, "nobody", key, 2)
	assert.ErrorIs(t, err, ErrUnknownPeer)

	// A peer without a provider answers not found.
	_, err = a.Fetch(ctx, "b", key, 2)
	assert.ErrorIs(t, err, ErrNotFound)

	// Large chunk (1 MiB) round-trips.
	big := make([]byte, MaxChunkBytes)
	for i := range big {
		big[i] = byte(i)
	}
	store.put(key, 7, big)
	got, err = b.Fetch(ctx, "a", key, 7)
	require.NoError(t, err)
	assert.Equal(t, big, got)

	// Cancelled context.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	_, err = b.Fetch(cctx, "a", key, 2)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestMalformedDropped(t *testing.T) {
	a := newNode(t, "a", "s1", nil)
	b := newNode(t, "b", "s1", nil, a.Addr())
	waitMembers(t, b, 1)
	target := memberByName(t, b, "a")

	bad := [][]byte{
		{},
		{'A'},
		[]byte("A{not json"),
		[]byte(`A{"o":"","s":"s1","q":1,"k":"x"}`), // no origin
		[]byte(`A{"o":"x","s":"s1","q":1,"k":""}`), // no key
		[]byte(`A{"o":"x","s":"s1","q":1,"k":"k","b":"` + base64.StdEncoding.EncodeToString(make([]byte, MaxIndex/8+1)) + `"}`), // bitmap over MaxIndex
		[]byte("Q[1,2]"),
		[]byte("R{\"i\":\"x\"}"),
		[]byte("Zwhatever"),
	}
	for i, m := range bad {
		require.NoError(t, b.ml.SendReliable(target, m), "message %d", i)
	}
	// Also through gossip.
	b.bq.QueueBroadcast(broadcast("A]]"))
	require.Eventually(t, func() bool { return a.Stats().Malformed >= uint64(len(bad)) },
		10*time.Second, 20*time.Millisecond, "a malformed = %d, want >= %d", a.Stats().Malformed, len(bad))
	assert.Empty(t, a.Holders("k", 0))
	assert.Empty(t, a.Holders("x", 0))
	assert.Len(t, a.Members(), 1, "a survives garbage")
}

func memberByName(t *testing.T, n *Node, name string) *memberlist.Node {
	t.Helper()
	for _, m := range n.ml.Members() {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("%s has no member %s", n.Name(), name)
	return nil
}

func TestOtherSiteIgnored(t *testing.T) {
	var store chunkStore
	store.put(key, 0, []byte("secret"))
	a := newNode(t, "a", "s1", &store)
	b := newNode(t, "b", "s1", nil, a.Addr())
	waitMembers(t, a, 1)

	// A node of another site cannot join.
	x, err := New(Options{Name: "x", Site: "s2"})
	require.NoError(t, err)
	t.Cleanup(func() { x.Close() })
	_ = x.Join([]string{a.Addr()}) // may or may not report the refusal
	assert.Never(t, func() bool { return len(a.Members()) != 1 || len(x.Members()) != 0 },
		time.Second, 50*time.Millisecond, "site s2 node joined site s1: a=%v x=%v", a.Members(), x.Members())

	// Messages it sends directly are dropped.
	to := &memberlist.Node{Name: "a", Addr: a.ml.LocalNode().Addr, Port: a.ml.LocalNode().Port}
	before := a.Stats().ForeignMsg
	buf, err := encode(kindAnnounce, announceMsg{Origin: "x", Site: "s2", Seq: 1, Key: key, Bits: []byte{1}})
	require.NoError(t, err)
	require.NoError(t, x.ml.SendReliable(to, buf))
	req, err := encode(kindRequest, request{ID: 1, From: "x", Site: "s2", Key: key, Index: 0})
	require.NoError(t, err)
	require.NoError(t, x.ml.SendReliable(to, req))
	require.Eventually(t, func() bool { return a.Stats().ForeignMsg >= before+2 },
		5*time.Second, 20*time.Millisecond)
	assert.Empty(t, a.Holders(key, 0))
	assert.Zero(t, a.Stats().Served)
	assert.Equal(t, []string{"a"}, b.Members(), "b still sees only a")
}

func TestOptionsValidation(t *testing.T) {
	_, err := New(Options{Site: "s"})
	assert.ErrorContains(t, err, "name")
	_, err = New(Options{Name: "n"})
	assert.ErrorContains(t, err, "site")
	_, err = New(Options{Name: "n", Site: "s", SecretKey: []byte("short")})
	assert.Error(t, err)
}

func TestEncrypted(t *testing.T) {
	k := []byte("0123456789abcdef")
	a, err := New(Options{Name: "a", Site: "s", SecretKey: k})
	require.NoError(t, err)
	defer a.Close()
	b, err := New(Options{Name: "b", Site: "s", SecretKey: k, Join: []string{a.Addr()}})
	require.NoError(t, err)
	defer b.Close()
	waitMembers(t, a, 1)
	a.Announce(key, []uint32{1})
	require.Eventually(t, func() bool { return len(b.Holders(key, 1)) == 1 }, 10*time.Second, 20*time.Millisecond)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	var store chunkStore
	store.put(key, 0, []byte("x"))
	nodes := make([]*Node, 3)
	var err error
	nodes[0], err = New(Options{Name: "a", Site: "s", ChunkProvider: store.get})
	require.NoError(t, err)
	for i, name := range []string{"b", "c"} {
		nodes[i+1], err = New(Options{Name: name, Site: "s", Join: []string{nodes[0].Addr()}})
		require.NoError(t, err)
	}
	waitMembers(t, nodes[0], 2)
	nodes[0].Announce(key, []uint32{0})
	_, err = nodes[2].Fetch(context.Background(), "a", key, 0)
	require.NoError(t, err)
	for _, n := range nodes {
		require.NoError(t, n.Close())
		require.NoError(t, n.Close(), "second Close")
	}
	_, err = nodes[1].Fetch(context.Background(), "a", key, 0)
	assert.True(t, errors.Is(err, ErrClosed) || errors.Is(err, ErrUnknownPeer), "fetch after close: %v", err)
	// Poll inline: require.Eventually runs its condition in an extra goroutine.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), base, "goroutines left after Close:\n%s", stacks())
}

func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

func TestRequestFromNonMemberIsNotAnswered(t *testing.T) {
	var store chunkStore
	store.put(key, 0, []byte("chunk"))
	a := newNode(t, "a", "s1", &store)
	// y is of the same site but never joined: a must not send it chunks.
	y := newNode(t, "y", "s1", nil)
	to := &memberlist.Node{Name: "a", Addr: a.ml.LocalNode().Addr, Port: a.ml.LocalNode().Port}
	req, err := encode(kindRequest, request{ID: 1, From: "y", Site: "s1", Key: key, Index: 0})
	require.NoError(t, err)
	require.NoError(t, y.ml.SendReliable(to, req))
	require.Eventually(t, func() bool { return a.Stats().Unanswered == 1 }, 5*time.Second, 20*time.Millisecond)
	assert.Zero(t, a.Stats().Served)
}
