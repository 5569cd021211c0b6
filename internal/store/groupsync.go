package store

import "sync"

// syncGroup is group commit for DB.Sync: a caller that arrives while a
// sync runs waits for the next one, and that one sync covers every caller
// that arrived meanwhile. Each caller committed its writes before it called,
// so a sync that starts after the call makes them durable; a sync that was
// already running when it called might not have. One process with many
// writers (the control plane's ingest, fleet-sim's agents sharing one
// store) then syncs once per round instead of once per writer, each of
// which msyncs the whole memtable and fsyncs the value log.
type syncGroup struct {
	mu      sync.Mutex
	cond    sync.Cond // L is &mu
	running bool
	started uint64 // syncs started
	done    uint64 // syncs finished
	err     error  // the last finished sync's result
}

func newSyncGroup() *syncGroup {
	g := &syncGroup{}
	g.cond.L = &g.mu
	return g
}

// do returns once a run that started after this call has finished,
// with that run's error or a later one's (a later failure is reported even
// when the covering run succeeded: the caller retries, nothing is lost).
// Runs never overlap; the caller that finds none running starts one.
func (g *syncGroup) do(run func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	want := g.started + 1 // the running one, if any, may have missed our writes
	for g.done < want {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		g.mu.Unlock()
		err := run()
		g.mu.Lock()
		g.running = false
		g.done = g.started
		g.err = err
		g.cond.Broadcast()
	}
	return g.err
}
