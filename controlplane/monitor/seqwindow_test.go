package monitor

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSeqWindowAcceptsEachSeqOnceInAnyOrder(t *testing.T) {
	var w seqWindow
	seqs := make([]uint64, 3000)
	for i := range seqs {
		seqs[i] = uint64(i + 1)
	}
	// Reorder locally (as parallel connections do): shuffle in blocks of 50.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(seqs); i += 50 {
		blk := seqs[i:min(i+50, len(seqs))]
		rng.Shuffle(len(blk), func(a, b int) { blk[a], blk[b] = blk[b], blk[a] })
	}
	for _, s := range seqs {
		require.True(t, w.add(s), "seq %d is new", s)
	}
	for _, s := range seqs[len(seqs)-seqWindowSize:] {
		assert.False(t, w.add(s), "seq %d again is a duplicate", s)
	}
	assert.False(t, w.add(1), "older than the window: treated as seen")
	assert.False(t, w.add(0))

	// A jump further than the window forgets everything below.
	assert.True(t, w.add(10_000))
	assert.True(t, w.add(9_999))
	assert.False(t, w.add(9_999))

	// Stored and read back; the old 8-byte form means "everything below seen".
	r, ok := unmarshalSeqWindow(w.marshal())
	require.True(t, ok)
	assert.Equal(t, w, r)
	old, ok := unmarshalSeqWindow([]byte{0, 0, 0, 0, 0, 0, 0, 100})
	require.True(t, ok)
	assert.False(t, old.add(99))
	assert.True(t, old.add(101))
	_, ok = unmarshalSeqWindow([]byte{1, 2, 3})
	assert.False(t, ok)
}
