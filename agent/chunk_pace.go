package agent

import "time"

// stallCap bounds, in FetchRetryIntervals, how long a download that adds
// nothing waits before asking again, however slowly its version's chunks
// arrive.
const stallCap = 4

// quietBackOff bounds the doublings of the wait while requests bring
// nothing at all (2: r, 2r, 4r).
const quietBackOff = 2

// chunkPace is how the chunks of one download arrive from the broker. On
// the version's shared topic one publish serves every device downloading
// it, and a large fleet makes the publishes far apart: each chunk goes to
// thousands of subscribers before the next one (a raw fan-out of one 64
// KiB chunk to 10,000 subscribers takes 1–3 s here; on a real broker the
// uplink sets the pace). A device that asked again whenever the next
// chunk was FetchRetryInterval late would have the control plane publish
// the chunk in flight again — to every device still downloading, which
// makes the next one later still (100 publishes of a 16-chunk model at
// 10,000 devices, docs/benchmarks.md). So a download waits as long as
// twice the longest gap it saw between two chunks before it calls itself
// stalled, and while its requests bring nothing at all (a round still
// being collected) it asks again after r, then 2r, then 4r.
//
// Owned by the update loop.
type chunkPace struct {
	last  time.Time     // the last chunk of the version from the broker, one already held included
	gap   time.Duration // the longest interval between two of them
	quiet int           // requests sent again since the last chunk arrived
	// asked is set once a request went out since the download opened or
	// the connection came back: the first one is fresh (FetchRequest.fresh).
	asked bool
	// received is the index + 1 of the chunk that arrived last, 0 for
	// none since the download opened or the connection came back
	// (FetchRequest.last_received: a topic's chunks arrive in the order
	// they were published, so the control plane can tell the chunks still
	// on their way from the lost ones).
	received uint32
}

// reconnected starts the pace of a download anew after the connection
// came back: what was published while it was away is lost, so the next
// request is fresh, and what arrived before tells nothing of what the new
// connection carries.
func (p *chunkPace) reconnected() {
	p.asked, p.received = false, 0
}

// fresh says whether the request about to go out is the download's first
// since it opened or the agent reconnected, and records that one went.
func (p *chunkPace) fresh() bool {
	f := !p.asked
	p.asked = true
	return f
}

// arrived records chunk index of the download's version arriving at now.
func (p *chunkPace) arrived(index uint32, now time.Time) {
	if !p.last.IsZero() {
		p.gap = max(p.gap, now.Sub(p.last))
	}
	p.last, p.quiet, p.received = now, 0, index+1
}

// stalled reports whether a download whose own progress (a chunk added or
// a request sent) was at lastProgress should ask again at now, with retry
// interval r. Chunks other devices asked for keep a download from asking
// only so long: a chunk lost while others keep arriving is asked again
// after stallCap intervals at the latest.
func (p *chunkPace) stalled(now, lastProgress time.Time, r time.Duration) bool {
	wait := max(r, 2*p.gap, r<<min(p.quiet, quietBackOff))
	wait = min(wait, stallCap*r)
	idle := now.Sub(lastProgress)
	return idle >= wait && now.Sub(p.last) >= wait || idle >= stallCap*r
}
