package fleet

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/topics"
)

// Status events are applied to the registry in memory as they arrive and
// written to the store in batches: one transaction for every device whose
// events arrived within StatusBatchDelay (a device's newest state only),
// instead of one per event. An event is acknowledged only after the
// transaction holding it committed; when the write fails it is not
// acknowledged and the device resends it (a resent event is then stale in
// memory: acknowledged after the next batch, and not counted again). Run writes the
// batches; Flush writes what is pending.
const (
	// DefaultStatusBatchDelay is how long a batch of status events waits
	// for more after its first one.
	DefaultStatusBatchDelay = 20 * time.Millisecond
	// maxStatusBatch is the most events in one batch: past it the batch
	// is written at once. It bounds the memory of events waiting.
	maxStatusBatch = 1024
)

// pendingStatus is a status event applied in memory whose write and
// acknowledgement wait for the batch.
type pendingStatus struct {
	dev   string
	topic string
	w     *deviceWrite // nil: nothing to write, acknowledged after the batch
	done  func()       // after the commit: acknowledge
}

// enqueueStatus adds an event to the batch; Run writes it.
func (f *Fleet) enqueueStatus(p pendingStatus) {
	f.statusMu.Lock()
	f.status = append(f.status, p)
	n := len(f.status)
	f.statusMu.Unlock()
	wake := f.statusWake
	if n >= maxStatusBatch {
		wake = f.statusFull
	}
	select {
	case wake <- struct{}{}:
	default:
	}
}

// Run writes the status events' batches until ctx ends. Events still
// pending then are written by Flush (the control plane calls it once the
// bus stopped delivering).
func (f *Fleet) Run(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-f.statusWake:
		case <-f.statusFull:
			full = true
		}
		if d := f.opts.StatusBatchDelay; d > 0 && !full {
			t.Reset(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-f.statusFull:
				t.Stop()
			}
		}
		f.Flush()
	}
}

// Flush writes the status events pending now and then acknowledges them.
func (f *Fleet) Flush() {
	f.flushMu.Lock()
	defer f.flushMu.Unlock()
	for {
		f.statusMu.Lock()
		batch := f.status
		f.status = nil
		f.statusMu.Unlock()
		if len(batch) == 0 {
			return
		}
		ws := make([]*deviceWrite, 0, len(batch))
		for _, p := range batch {
			if p.w != nil {
				ws = append(ws, p.w)
			}
		}
		txns, err := f.reg.writeDevices(ws)
		f.statusWrites.Add(uint64(txns))
		if err != nil {
			f.log.Error("store device status failed; the devices resend", "events", len(batch), "err", err)
			for _, p := range batch {
				f.opts.Ingest.Drop(topics.KindStatus, ingest.Store, p.topic, err)
			}
			continue
		}
		for _, p := range batch {
			p.done()
		}
	}
}
