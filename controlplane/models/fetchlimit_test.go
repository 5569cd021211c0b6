package models

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestFetchLimitRefills: a device gets budget copies at once, then the
// bucket refills continuously, so a device that spent it on retries gets
// the few chunks it still lacks soon, and nobody gets more than budget
// copies per window over time. Devices and versions have their own
// buckets.
func TestFetchLimitRefills(t *testing.T) {
	const total = 100
	l := newFetchLimit(4, 10*time.Minute)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 4 {
		assert.True(t, l.allow("d1", "fraud", "1", total, total, t0), "copy %d", i+1)
	}
	assert.False(t, l.allow("d1", "fraud", "1", 1, total, t0), "the budget is spent")
	assert.True(t, l.allow("d2", "fraud", "1", total, total, t0), "another device has its own")
	assert.True(t, l.allow("d1", "fraud", "2", total, total, t0), "another version has its own")

	// 15 s refill 4×100 chunks / 600 s × 15 s = 10 chunks.
	t1 := t0.Add(15 * time.Second)
	assert.False(t, l.allow("d1", "fraud", "1", 11, total, t1), "11 chunks have not refilled")
	assert.True(t, l.allow("d1", "fraud", "1", 10, total, t1), "10 have")
	assert.False(t, l.allow("d1", "fraud", "1", 1, total, t1))

	// Over a whole window a device gets at most 4 more copies, however it asks.
	got := 0
	for s := 1; s <= 600; s++ {
		if l.allow("d1", "fraud", "1", 5, total, t1.Add(time.Duration(s)*time.Second)) {
			got += 5
		}
	}
	assert.LessOrEqual(t, got, 4*total)
	assert.GreaterOrEqual(t, got, 4*total-5)

	// A bucket idle for a window is full again (and forgotten).
	t2 := t1.Add(time.Hour)
	assert.True(t, l.allow("d1", "fraud", "1", 4*total, total, t2))
	assert.LessOrEqual(t, len(l.buckets), 3)
}
