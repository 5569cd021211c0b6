package models

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChunkQueueCoalesces(t *testing.T) {
	q := newChunkQueue(0, 0)
	now := time.Now()
	a, b := chunkKey{"fraud", "v1", ""}, chunkKey{"fraud", "v2", ""}
	assert.Equal(t, 3, q.add(a, "dev", []uint32{0, 1, 2}, now))
	assert.Equal(t, 1, q.add(a, "dev", []uint32{2, 1, 3}, now), "queued chunks coalesce")
	assert.Equal(t, 2, q.add(b, "dev", []uint32{0, 0, 1}, now))
	assert.Equal(t, 6, q.queued())

	type item struct {
		k chunkKey
		i uint32
	}
	var order []item
	for {
		k, i, ok, _ := q.next(now)
		if !ok {
			break
		}
		order = append(order, item{k, i})
		if len(order) == 1 {
			// Asked for after the dequeue by a device that had not
			// asked before: queued anew (the publish may be past it).
			assert.Equal(t, 1, q.add(a, "late", []uint32{0}, now))
		}
	}
	assert.Equal(t, []item{{a, 0}, {b, 0}, {a, 1}, {b, 1}, {a, 2}, {a, 3}, {a, 0}}, order, "versions are served round-robin")
	assert.Equal(t, 0, q.add(a, "dev", nil, now))
	assert.Equal(t, 0, q.queued())
}

func TestChunkQueueCollectsBeforeTheFirstPublish(t *testing.T) {
	q := newChunkQueue(200*time.Millisecond, time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	a, b := chunkKey{"fraud", "v1", ""}, chunkKey{"fraud", "v2", ""}
	q.add(a, "dev", []uint32{0, 1}, t0)
	_, _, ok, wait := q.next(at(50))
	assert.False(t, ok, "inside the window nothing goes out")
	assert.Equal(t, 150*time.Millisecond, wait)
	// Requests inside the window join the same round and keep it open
	// until the requests settle.
	assert.Equal(t, 1, q.add(a, "dev", []uint32{1, 2}, at(100)))
	q.add(b, "dev", []uint32{0}, at(150))
	_, _, ok, wait = q.next(at(250))
	assert.False(t, ok, "v1's round was extended to 300 ms by the request at 100 ms")
	assert.Equal(t, 50*time.Millisecond, wait)

	var got []uint32
	for {
		k, i, ok, _ := q.next(at(300))
		if !ok {
			break
		}
		assert.Equal(t, a, k, "v2's window is still open")
		got = append(got, i)
	}
	assert.Equal(t, []uint32{0, 1, 2}, got)
	k, i, ok, _ := q.next(at(350))
	require.True(t, ok)
	assert.Equal(t, b, k)
	assert.Equal(t, uint32(0), i)
	_, _, ok, wait = q.next(at(1000))
	assert.False(t, ok)
	assert.Zero(t, wait, "nothing queued: wait for a wake-up")
}

func TestChunkQueueWaitsAtMostMaxWait(t *testing.T) {
	q := newChunkQueue(200*time.Millisecond, time.Second)
	t0 := time.Now()
	k := chunkKey{"fraud", "v1", ""}
	// A request every 100 ms would keep the window open forever.
	for ms := 0; ms <= 1500; ms += 100 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		q.add(k, "dev", []uint32{uint32(ms / 100)}, now)
		if _, _, ok, _ := q.next(now); ok {
			assert.Equal(t, 1000, ms, "the round goes out maxWait after its first request")
			// A round going out is not held up by requests arriving now.
			q.add(k, "dev", []uint32{99}, now.Add(time.Millisecond))
			_, _, ok, _ := q.next(now.Add(2 * time.Millisecond))
			assert.True(t, ok)
			return
		}
	}
	t.Fatal("the round never went out")
}

// A deploy says how many devices will ask: the round waits for them all
// (not for a quiet moment, which a gap in their requests would fake), and
// goes out the moment the last one asks.
func TestChunkQueueWaitsForTheExpectedDevices(t *testing.T) {
	q := newChunkQueue(100*time.Millisecond, 2*time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	k := chunkKey{"fraud", "v2", ""}
	q.expect(k, 3, t0)
	q.add(k, "dev-1", []uint32{0, 1}, at(10))
	_, _, ok, _ := q.next(at(600))
	assert.False(t, ok, "a 500 ms gap is not the end of the round: two devices have not asked")
	q.add(k, "dev-1", []uint32{0, 1}, at(700)) // a retry counts once
	q.add(k, "dev-2", []uint32{0, 1}, at(800))
	_, _, ok, _ = q.next(at(850))
	assert.False(t, ok)
	select { // drain: the worker has seen the earlier requests
	case <-q.wake:
	default:
	}
	q.add(k, "dev-3", []uint32{0, 1}, at(900))
	select {
	case <-q.wake:
	default:
		t.Fatal("the worker is not woken: the last device's request adds no chunk but makes the round due")
	}
	_, i, ok, _ := q.next(at(900))
	require.True(t, ok, "the last expected device asked: out at once")
	assert.Equal(t, uint32(0), i)

	// Fulfilled: a straggler's round uses the quiet window again.
	_, _, ok, _ = q.next(at(900))
	require.True(t, ok)
	q.add(k, "dev-4", []uint32{1}, at(1000))
	_, _, ok, wait := q.next(at(1000))
	assert.False(t, ok)
	assert.Equal(t, 100*time.Millisecond, wait)
	_, _, ok, _ = q.next(at(1100))
	require.True(t, ok)

	// Devices that never ask hold a round for maxWait at most.
	k3 := chunkKey{"fraud", "v3", ""}
	q.expect(k3, 5, at(2000))
	q.add(k3, "dev-1", []uint32{0}, at(2000))
	_, _, ok, _ = q.next(at(3999))
	assert.False(t, ok)
	_, _, ok, _ = q.next(at(4000))
	assert.True(t, ok)
}

// Devices a deploy expects that ask over tens of seconds (thousands of
// devices verifying documents on a few cores) are collected into one
// round while new ones keep asking; the round goes out maxWait after the
// last new one, and at the latest collectMax after the first request.
func TestChunkQueueCollectsWhileExpectedDevicesKeepAsking(t *testing.T) {
	q := newChunkQueue(100*time.Millisecond, 2*time.Second)
	require.Equal(t, 30*time.Second, q.collectMax)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	k := chunkKey{"fraud", "v2", ""}
	q.expect(k, 100, t0)
	// A new device every 1.5 s for 12 s, one asking again in between.
	for i := range 9 {
		q.add(k, fmt.Sprintf("dev-%d", i), []uint32{0, 1}, at(i*1500))
		q.add(k, "dev-0", []uint32{0, 1}, at(i*1500+1000))
		_, _, ok, _ := q.next(at(i*1500 + 1400))
		require.False(t, ok, "dev-%d asked 1.4 s ago: the round is still collecting", i)
	}
	_, _, ok, wait := q.next(at(12000 + 1999))
	require.False(t, ok, "a retry is not a new device: it does not hold the round")
	assert.Equal(t, time.Millisecond, wait)
	_, _, ok, _ = q.next(at(14000))
	require.True(t, ok, "2 s after the last new device the round goes out")
	_, _, ok, _ = q.next(at(14000))
	require.True(t, ok, "both chunks")
	_, _, ok, _ = q.next(at(14000))
	require.False(t, ok, "one round: each chunk once")

	// Devices that keep coming hold a round collectMax at most.
	k3 := chunkKey{"fraud", "v3", ""}
	q.expect(k3, 1000, at(20000))
	for i := 0; ; i++ {
		now := at(20000 + i*1000)
		q.add(k3, fmt.Sprintf("dev-%d", i), []uint32{0}, now)
		if _, _, ok, _ := q.next(now); ok {
			assert.Equal(t, 30, i, "out collectMax after the first request")
			break
		}
		require.Less(t, i, 40, "the round never went out")
	}
}

// Chunks a device asks for directly go out at once, to that device alone
// (its key names it), and the device counts for the shared round a deploy
// expects: the devices that share their site's download never ask on the
// shared topic, and the round must not wait for them.
func TestChunkQueueDirect(t *testing.T) {
	q := newChunkQueue(100*time.Millisecond, 2*time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	shared := chunkKey{"fraud", "v1", ""}
	q.expect(shared, 3, t0)
	d1 := chunkKey{"fraud", "v1", "dev-1"}
	assert.Equal(t, 2, q.add(d1, "dev-1", []uint32{0, 1}, at(10)))
	k, i, ok, _ := q.next(at(10))
	require.True(t, ok, "a direct request collects no round")
	assert.Equal(t, d1, k)
	assert.Equal(t, uint32(0), i)
	// Another device's direct request for the same chunk is its own publish.
	d2 := chunkKey{"fraud", "v1", "dev-2"}
	assert.Equal(t, 1, q.add(d2, "dev-2", []uint32{0}, at(20)))

	q.add(shared, "dev-3", []uint32{0}, at(30))
	var keys []chunkKey
	for {
		k, _, ok, _ := q.next(at(30))
		if !ok {
			break
		}
		keys = append(keys, k)
	}
	assert.ElementsMatch(t, []chunkKey{d1, d2, shared}, keys,
		"the shared round went out at once: dev-1 and dev-2 asked directly, dev-3 was the last expected")
}

// add is enqueue for a request that is not fresh, returning how many
// chunks were queued.
func (q *chunkQueue) add(k chunkKey, device string, indexes []uint32, now time.Time) int {
	return q.enqueue(k, asker{device: device}, indexes, now, nil).added
}

// enqueueN is enqueue returning how many chunks were queued and how many
// held back as on their way.
func (q *chunkQueue) enqueueN(k chunkKey, a asker, indexes []uint32, now time.Time) (added, onItsWay int) {
	e := q.enqueue(k, a, indexes, now, nil)
	return e.added, e.onItsWay
}

// A device asking again for a chunk whose publish went to it (it had
// asked before) is not answered with another publish to every device
// downloading the version while that publish is on its way: for the
// round's length, at least minSentGrace. A device that asked only after
// the publish, a fresh request (a restarted or reconnected agent) and any
// request after the grace are answered.
func TestChunkQueueDoesNotRepublishWhatIsOnItsWay(t *testing.T) {
	q := newChunkQueue(0, 0)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	k := chunkKey{"fraud", "v1", ""}
	require.Equal(t, 3, q.add(k, "early", []uint32{0, 1, 2}, at(0)))
	take := func(now time.Time) uint32 {
		t.Helper()
		_, i, ok, _ := q.next(now)
		require.True(t, ok)
		return i
	}
	assert.Equal(t, uint32(0), take(at(10)))
	assert.Equal(t, uint32(1), take(at(1000)))

	added, onItsWay := q.enqueueN(k, asker{device: "early"}, []uint32{0, 1, 2}, at(1500))
	assert.Equal(t, 0, added, "0 and 1 are on their way to it, 2 is still queued")
	assert.Equal(t, 2, onItsWay)
	added, onItsWay = q.enqueueN(k, asker{device: "late"}, []uint32{0, 1, 2}, at(1600))
	assert.Equal(t, 2, added, "a device that asked after the publishes gets them again")
	assert.Zero(t, onItsWay)
	added, _ = q.enqueueN(k, asker{device: "early", fresh: true}, []uint32{0}, at(1700))
	assert.Zero(t, added, "queued again for late already")
	for q.queued() > 0 {
		take(at(2000))
	}
	require.Equal(t, 1, q.add(k, "restarted", []uint32{0}, at(2100)))
	take(at(2200))
	added, onItsWay = q.enqueueN(k, asker{device: "restarted"}, []uint32{0}, at(2250))
	require.Zero(t, added)
	require.Equal(t, 1, onItsWay, "asked before the publish at 2.2 s: on its way")
	added, onItsWay = q.enqueueN(k, asker{device: "restarted", fresh: true}, []uint32{0}, at(2300))
	assert.Equal(t, 1, added, "a fresh request forgets what was published before it")
	assert.Zero(t, onItsWay)
	take(at(2400))

	// "late" asked at 1.6 s; 0 was published again at 2.4 s. Inside the
	// grace (5 s at least) it is on its way, after it it is published.
	added, onItsWay = q.enqueueN(k, asker{device: "late"}, []uint32{0}, at(2400+4900))
	assert.Zero(t, added)
	assert.Equal(t, 1, onItsWay)
	added, onItsWay = q.enqueueN(k, asker{device: "late"}, []uint32{0}, at(2400+5000))
	assert.Equal(t, 1, added, "after the grace it is asked for as if lost")
	assert.Zero(t, onItsWay)
}

// The grace grows with the round: a round whose publishes took 30 s to
// go out (a fan-out to thousands of devices) protects them for 30 s, at
// most maxSentGrace.
func TestChunkQueueGraceFollowsTheRound(t *testing.T) {
	q := newChunkQueue(0, 0)
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	k := chunkKey{"fraud", "v1", ""}
	q.add(k, "dev", []uint32{0, 1}, at(0))
	q.next(at(0.1))
	q.next(at(30.1))
	added, onItsWay := q.enqueueN(k, asker{device: "dev"}, []uint32{0}, at(25))
	assert.Equal(t, 0, added, "25 s after its publish, in a round that took 30 s")
	assert.Equal(t, 1, onItsWay)
	assert.Equal(t, 1, q.add(k, "dev", []uint32{0}, at(30.2)))

	s := &sentChunks{roundStart: at(0), roundLast: at(3600)}
	assert.Equal(t, maxSentGrace, s.grace())
}

// A device that says which chunk it received last is answered by the
// order of the publishes, not by the clock: a chunk published after that
// one is still on its way however long the round drains (at most
// maxSentGrace), one published before it was lost and goes out again at
// once, even inside the grace. A last chunk whose publish did not go to
// the device (published before it asked) tells nothing: the clock rules.
func TestChunkQueueKnowsWhatIsOnItsWayByOrder(t *testing.T) {
	q := newChunkQueue(0, 0)
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	k := chunkKey{"fraud", "v1", ""}
	require.Equal(t, 4, q.add(k, "dev", []uint32{0, 1, 2, 3}, at(0)))
	for i := range 4 { // published at 0.1, 0.2, 0.3, 0.4 s
		_, idx, ok, _ := q.next(at(0.1 * float64(i+1)))
		require.True(t, ok)
		require.Equal(t, uint32(i), idx)
	}
	ask := func(lastReceived uint32, now float64, indexes ...uint32) (added, onItsWay int) {
		return q.enqueueN(k, asker{device: "dev", lastReceived: lastReceived}, indexes, at(now))
	}

	// 20 s on, far past the 5 s grace: it received 0 (last_received 1),
	// so 1–3 are behind it in the topic.
	added, onItsWay := ask(1, 20, 1, 2, 3)
	assert.Zero(t, added, "published after the chunk it received last: on its way")
	assert.Equal(t, 3, onItsWay)
	// It received 2 but not 1: 1 was lost, 3 is on its way — inside the
	// grace, where the clock alone would hold both back.
	added, onItsWay = ask(3, 1, 1, 3)
	assert.Equal(t, 1, added, "published before the chunk it received last: lost")
	assert.Equal(t, 1, onItsWay)
	_, idx, _, _ := q.next(at(1.1)) // 1 again, at 1.1 s
	require.Equal(t, uint32(1), idx)
	// At most maxSentGrace after its publish: 3 went out at 0.4 s.
	added, onItsWay = ask(3, 0.4+maxSentGrace.Seconds(), 3)
	assert.Equal(t, 1, added, "a chunk on its way for longer than maxSentGrace is taken to be lost")
	assert.Zero(t, onItsWay)
	_, idx, _, _ = q.next(at(61)) // 3 again, at 61 s
	require.Equal(t, uint32(3), idx)

	// "other" asked after every publish of 0: its last chunk (say, one
	// received before a restart) tells nothing, so the clock rules.
	require.Equal(t, 1, q.add(k, "other", []uint32{3}, at(61.5)))
	_, idx, _, _ = q.next(at(62)) // 3 again, at 62 s, after "other" asked
	require.Equal(t, uint32(3), idx)
	added, onItsWay = q.enqueueN(k, asker{device: "other", lastReceived: 1}, []uint32{3}, at(66))
	assert.Zero(t, added, "4 s after its publish, inside the grace")
	assert.Equal(t, 1, onItsWay)
	added, _ = q.enqueueN(k, asker{device: "other", lastReceived: 1}, []uint32{3}, at(67.5))
	assert.Equal(t, 1, added, "after the grace")
}

// A device that asks after its version's shared round went out, and
// receives on its own topic, is sent what the round carried there, to it
// alone; what the round still has queued reaches it on the shared topic.
// An older agent (no own topic) gets another shared round, devices told
// to download since the round began collect a round of their own, and
// once the version's topic has been quiet for maxSentGrace a request
// starts a new round.
func TestChunkQueueServesLateAskersOnTheirOwnTopic(t *testing.T) {
	q := newChunkQueue(100*time.Millisecond, time.Second)
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	k := chunkKey{"fraud", "v1", ""}
	own := func(dev string) asker { return asker{device: dev, ownTopic: true} }
	type item struct {
		k chunkKey
		i uint32
	}
	drain := func(now time.Time) []item {
		var got []item
		for {
			k, i, ok, _ := q.next(now)
			if !ok {
				return got
			}
			got = append(got, item{k, i})
		}
	}

	q.expect(k, 3, t0)
	q.add(k, "dev-1", []uint32{0, 1, 2}, at(10))
	q.add(k, "dev-2", []uint32{0, 1, 2}, at(20))
	_, _, ok, _ := q.next(at(500))
	require.False(t, ok, "the round waits for dev-3")
	// dev-3 does not ask within a second of dev-2: the round goes out.
	kk, i, ok, _ := q.next(at(1100))
	require.True(t, ok)
	require.Equal(t, item{k, 0}, item{kk, i})

	e := q.enqueue(k, own("dev-3"), []uint32{0, 1, 2}, at(1150), nil)
	assert.True(t, e.late, "asked after the round went out")
	assert.Equal(t, 1, e.added, "only chunk 0 is queued for it: 1 and 2 are still in the round")
	dev3 := chunkKey{"fraud", "v1", "dev-3"}
	assert.ElementsMatch(t, []item{{k, 1}, {k, 2}, {dev3, 0}}, drain(at(1200)))

	e = q.enqueue(k, own("dev-4"), []uint32{0, 1, 2}, at(1300), nil)
	assert.True(t, e.late)
	assert.Equal(t, 3, e.added)
	dev4 := chunkKey{"fraud", "v1", "dev-4"}
	assert.Equal(t, []item{{dev4, 0}, {dev4, 1}, {dev4, 2}}, drain(at(1310)), "all on its own topic, at once")
	e = q.enqueue(k, own("dev-4"), []uint32{0, 1, 2}, at(1350), nil)
	assert.Zero(t, e.added, "published to it after it asked: on their way, as on the shared topic")
	assert.Equal(t, 3, e.onItsWay)
	e = q.enqueue(k, asker{device: "dev-4", fresh: true, ownTopic: true}, []uint32{0, 1, 2}, at(1360), nil)
	assert.Equal(t, 3, e.added, "a fresh request (a reconnect: what went at most once may be lost) is answered")
	assert.Len(t, drain(at(1370)), 3)

	e = q.enqueue(k, asker{device: "old-agent"}, []uint32{0}, at(1400), nil)
	assert.False(t, e.late, "an agent that does not receive on its own topic")
	assert.Empty(t, drain(at(1450)), "its round collects first")
	assert.Equal(t, []item{{k, 0}}, drain(at(1600)))

	// A rollout's next wave: told to download after the last round began.
	q.expect(k, 2, at(5000))
	e = q.enqueue(k, own("dev-5"), []uint32{0, 1, 2}, at(5010), nil)
	assert.False(t, e.late, "dev-5 was told to download after the last round: it collects a new one")
	assert.Empty(t, drain(at(5020)))
	e = q.enqueue(k, own("dev-6"), []uint32{0, 1, 2}, at(5030), nil)
	assert.False(t, e.late, "joins the round being collected")
	assert.Equal(t, []item{{k, 0}, {k, 1}, {k, 2}}, drain(at(5030)), "both expected devices asked")

	quiet := 5030 + int(maxSentGrace/time.Millisecond) + 1
	e = q.enqueue(k, own("dev-7"), []uint32{0}, at(quiet), nil)
	assert.False(t, e.late, "nothing went out for maxSentGrace: a new round")
	assert.Equal(t, []item{{k, 0}}, drain(at(quiet+200)))
}

// A request is charged what it costs: the chunks it queues anew. Chunks
// coalesced with queued ones cost no publish; a request the budget cannot
// cover queues nothing.
func TestChunkQueueChargesWhatARequestCosts(t *testing.T) {
	q := newChunkQueue(0, 0)
	now := time.Now()
	k := chunkKey{"fraud", "v1", ""}
	var charged []int
	budget := func(left int) func(int) bool {
		return func(n int) bool {
			charged = append(charged, n)
			return n <= left
		}
	}
	assert.Equal(t, 3, q.enqueue(k, asker{device: "a"}, []uint32{0, 1, 2}, now, budget(3)).added)
	assert.Equal(t, 1, q.enqueue(k, asker{device: "b"}, []uint32{1, 2, 3}, now, budget(1)).added, "1 and 2 coalesce")
	e := q.enqueue(k, asker{device: "c"}, []uint32{4, 5}, now, budget(1))
	assert.True(t, e.refused)
	assert.Zero(t, e.added)
	assert.Equal(t, 4, q.queued(), "a refused request queues nothing")
	e = q.enqueue(k, asker{device: "c"}, []uint32{0, 3}, now, budget(0))
	assert.False(t, e.refused, "queued already: costs nothing")
	assert.Equal(t, []int{3, 1, 2}, charged, "asked for what each request would queue anew")
}
