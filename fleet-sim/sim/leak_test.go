package sim

import (
	"context"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAgentGoroutinesCountsLabelledOnly: goroutines started under the
// agent label, and those they start, are counted; others are not.
func TestAgentGoroutinesCountsLabelledOnly(t *testing.T) {
	require.Zero(t, agentGoroutines())
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { <-release }) // not an agent's
	pprof.Do(context.Background(), pprof.Labels(agentLabel, "1"), func(context.Context) {
		for range 2 {
			wg.Go(func() {
				wg.Go(func() { <-release }) // started by an agent's goroutine: labelled too
				<-release
			})
		}
	})
	require.Eventually(t, func() bool { return agentGoroutines() == 4 }, time.Minute, time.Millisecond, "got %d", agentGoroutines())
	close(release)
	wg.Wait()
	assert.Eventually(t, func() bool { return agentGoroutines() == 0 }, time.Minute, time.Millisecond)
}
