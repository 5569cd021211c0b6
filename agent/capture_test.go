package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// captureSink plays the control plane's part of capture: it keeps each
// batch name once, checks that a name sent again has the same content, and
// acknowledges the arrivals ack lets through.
type captureSink struct {
	t *testing.T
	h *harness

	mu       sync.Mutex
	ack      func(arrival int) bool // nil: acknowledge every arrival
	arrivals int
	batches  map[string][]byte // "device/stream/batch" → payload
	rows     map[string]string // "inference id/row" → batch name that holds it
	labels   map[string]int64  // "inference id/row" → label
	conflict []string          // a name sent again with other content, a row in two names
	dropped  uint64            // the newest rows_dropped seen
}

func newCaptureSink(t *testing.T, h *harness) *captureSink {
	s := &captureSink{t: t, h: h, batches: map[string][]byte{}, rows: map[string]string{}, labels: map[string]int64{}}
	unsub, err := h.broker.Subscribe(h.scheme.AllCapture(), func(_ string, payload []byte, _ string) { s.receive(payload) })
	require.NoError(t, err)
	t.Cleanup(unsub)
	return s
}

func (s *captureSink) receive(payload []byte) {
	b := &efpb.CaptureBatch{}
	if proto.Unmarshal(payload, b) != nil {
		return
	}
	name := fmt.Sprintf("%s/%016x/%d", b.DeviceId, b.Stream, b.Batch)
	s.mu.Lock()
	s.arrivals++
	ack := s.ack == nil || s.ack(s.arrivals)
	if prev, ok := s.batches[name]; ok {
		// The content may differ only in the send time and drop count.
		p := &efpb.CaptureBatch{}
		_ = proto.Unmarshal(prev, p)
		p.TimeUnixMs, p.RowsDropped = b.TimeUnixMs, b.RowsDropped
		if !proto.Equal(p, b) {
			s.conflict = append(s.conflict, "batch "+name+" sent again with other rows")
		}
	} else {
		s.batches[name] = payload
		for _, r := range b.Rows {
			k := fmt.Sprintf("%s/%d", r.InferenceId, r.Row)
			if other, dup := s.rows[k]; dup {
				s.conflict = append(s.conflict, fmt.Sprintf("row %s in batches %s and %s", k, other, name))
			}
			s.rows[k] = name
			if r.Labelled {
				s.labels[k] = r.Label
			}
		}
		for _, l := range b.Labels {
			s.labels[fmt.Sprintf("%s/%d", l.InferenceId, l.Row)] = l.Label
		}
	}
	s.dropped = max(s.dropped, b.RowsDropped)
	s.mu.Unlock()
	if ack {
		a := &efpb.CaptureAck{ProtocolVersion: 1, DeviceId: b.DeviceId, Stream: b.Stream, Batches: []uint64{b.Batch}}
		bs, _ := proto.Marshal(a)
		_ = s.h.broker.Publish(s.h.scheme.CaptureAck(b.DeviceId), bs, false, 1)
	}
}

func (s *captureSink) setAck(f func(arrival int) bool) {
	s.mu.Lock()
	s.ack = f
	s.mu.Unlock()
}

// counts returns the distinct rows and labels stored.
func (s *captureSink) counts() (rows, labels int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rows), len(s.labels)
}

func (s *captureSink) batchRows(name string) *efpb.CaptureBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &efpb.CaptureBatch{}
	if p, ok := s.batches[name]; ok {
		_ = proto.Unmarshal(p, b)
	}
	return b
}

func (s *captureSink) conflicts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.conflict...)
}

// captureAssign assigns m with a capture policy.
func captureAssign(m *efpb.Manifest, p *efpb.CapturePolicy) *efpb.ModelAssignment {
	as := assign(m)
	as.Capture = p
	return as
}

// inferFraud sends n requests of batch rows each and returns the labels
// (the rows' true classes) keyed as the agent knows them.
func inferFraud(t *testing.T, addr string, g *fraud.Generator, n, batch int) []oip.Label {
	t.Helper()
	c := &oip.Client{BaseURL: "http://" + addr}
	var labels []oip.Label
	for range n {
		flat := make([]float32, 0, batch*fraud.NumFeatures)
		truth := make([]int64, batch)
		for i := range batch {
			row, isFraud := g.Next()
			flat = append(flat, row[:]...)
			if isFraud {
				truth[i] = 1
			}
		}
		resp, err := c.Infer(context.Background(), "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{
			fp32(t, fraud.InputName, []int64{int64(batch), fraud.NumFeatures}, flat)}})
		require.NoError(t, err)
		for i := range batch {
			labels = append(labels, oip.Label{ID: resp.ID, Row: i, Label: &truth[i]})
		}
	}
	return labels
}

func fraudGen(t *testing.T) *fraud.Generator {
	t.Helper()
	g, err := fraud.NewGenerator(7, fraud.Params{})
	require.NoError(t, err)
	return g
}

func fastCapture(o *Options) {
	o.Capture = CaptureOptions{FlushInterval: 20 * time.Millisecond, AckTimeout: 300 * time.Millisecond, BatchRows: 8}
}

// A model with a capture policy: every row of every request arrives with
// its inputs and outputs, labels from feedback arrive after, and the queue
// is empty once the control plane acknowledged everything.
func TestCaptureUploadsRowsAndLabels(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	sink := newCaptureSink(t, h)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	fastCapture(&opts)
	a := h.startAgent(t, opts)
	m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", captureAssign(m, &efpb.CapturePolicy{SampleRate: 1}))
	waitServing(t, a, "fraud", "1.0.0")

	labels := inferFraud(t, a.InferenceAddr(), fraudGen(t), 5, 4)
	require.Eventually(t, func() bool { r, _ := sink.counts(); return r == 20 }, 30*time.Second, 10*time.Millisecond)
	_, err := a.Feedback(context.Background(), "fraud", labels)
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, l := sink.counts(); return l == 20 }, 30*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { st := a.CaptureStats(); return st.Queued == 0 && st.Buffered == 0 }, 30*time.Second, 10*time.Millisecond,
		"acknowledged rows are deleted: %+v", a.CaptureStats())
	assert.Empty(t, sink.conflicts())
	st := a.CaptureStats()
	assert.Equal(t, uint64(40), st.Uploaded, "20 rows and 20 labels acknowledged")
	assert.Zero(t, st.Dropped)

	// Every row holds its slice of the input and the output.
	for name := range sink.batches {
		for _, r := range sink.batchRows(name).Rows {
			assert.Equal(t, "1.0.0", r.ModelVersion)
			require.Len(t, r.Inputs, 1)
			assert.Equal(t, []int64{1, fraud.NumFeatures}, r.Inputs[0].Shape)
			assert.Len(t, r.Inputs[0].Data, fraud.NumFeatures)
			require.NotEmpty(t, r.Outputs)
			assert.Equal(t, int64(1), r.Outputs[0].Shape[0])
		}
	}
}

// Without a policy nothing is captured: capture is off unless set.
func TestCaptureOffWithoutPolicy(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	sink := newCaptureSink(t, h)
	opts := h.agentOptions(t, "dev-1", t.TempDir())
	fastCapture(&opts)
	a := h.startAgent(t, opts)
	m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", assign(m))
	waitServing(t, a, "fraud", "1.0.0")
	inferFraud(t, a.InferenceAddr(), fraudGen(t), 3, 4)
	assert.Equal(t, CaptureStats{Stream: a.CaptureStats().Stream, NextBatch: 1}, a.CaptureStats())

	// Turned on by a new desired state, then off again by the next.
	h.desire("dev-1", captureAssign(m, &efpb.CapturePolicy{SampleRate: 1}))
	require.Eventually(t, func() bool { return a.capture.policy("fraud") != nil }, 10*time.Second, 10*time.Millisecond)
	inferFraud(t, a.InferenceAddr(), fraudGen(t), 1, 3)
	require.Eventually(t, func() bool { r, _ := sink.counts(); return r == 3 }, 30*time.Second, 10*time.Millisecond)
	h.desire("dev-1", assign(m))
	require.Eventually(t, func() bool { return a.capture.policy("fraud") == nil }, 10*time.Second, 10*time.Millisecond)
	inferFraud(t, a.InferenceAddr(), fraudGen(t), 2, 3)
	require.Eventually(t, func() bool { st := a.CaptureStats(); return st.Queued == 0 && st.Buffered == 0 }, 30*time.Second, 10*time.Millisecond)
	r, _ := sink.counts()
	assert.Equal(t, 3, r)
}

// Rows the control plane has not acknowledged stay on disk across a
// restart and go again under the same batch name, with the same rows.
func TestCaptureKeepsUnacknowledgedRowsAcrossRestart(t *testing.T) {
	v1, _ := testModels(t)
	h := newHarness(t)
	sink := newCaptureSink(t, h)
	sink.setAck(func(int) bool { return false }) // a control plane that never answers
	dir := t.TempDir()
	opts := h.agentOptions(t, "dev-1", dir)
	fastCapture(&opts)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(opts)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.Ready()
	m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
	h.desire("dev-1", captureAssign(m, &efpb.CapturePolicy{SampleRate: 1}))
	waitServing(t, a, "fraud", "1.0.0")
	inferFraud(t, a.InferenceAddr(), fraudGen(t), 5, 4)
	require.Eventually(t, func() bool { r, _ := sink.counts(); return r > 0 }, 30*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	st := a.CaptureStats()
	assert.Equal(t, 20, st.Queued, "a clean stop writes the buffer: every row is on disk")
	assert.Zero(t, st.Uploaded)
	first := sink.batchRows(fmt.Sprintf("dev-1/%016x/1", st.Stream))
	require.NotEmpty(t, first.Rows)

	sink.setAck(nil)
	b := h.startAgent(t, opts)
	require.Eventually(t, func() bool { r, _ := sink.counts(); return r == 20 }, 30*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return b.CaptureStats().Queued == 0 }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, st.Stream, b.CaptureStats().Stream, "the queue's stream id survives a restart")
	assert.Empty(t, sink.conflicts(), "batch 1 went again with the same rows")
}

// The kill -9 test: the agent is killed with SIGKILL right after a batch
// is recorded and right after an acknowledgement arrived (before the batch
// is deleted), and restarted on the same data directory. No row the agent
// ever sent is lost, and no row is stored twice under two batch names.
func TestCaptureSurvivesKill9(t *testing.T) {
	for _, point := range []string{"capture-acked:2", "capture-recorded:3"} {
		t.Run(point, func(t *testing.T) {
			v1, _ := testModels(t)
			h := newHarness(t)
			sink := newCaptureSink(t, h)
			// Every third arrival goes unanswered: those batches are
			// sent again after the ack timeout.
			sink.setAck(func(n int) bool { return n%3 != 0 })
			dir := t.TempDir()
			metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			metrics := metricsLn.Addr().String()
			require.NoError(t, metricsLn.Close())
			cfg, inference := h.writeChildConfig(t, "dev-1", dir, "metrics_listen: "+metrics)
			first := startChild(t, cfg, inference, point)
			m := h.publishModel("fraud", "1.0.0", v1, v1.ONNX, nil, nil)
			h.desire("dev-1", captureAssign(m, &efpb.CapturePolicy{SampleRate: 1}))
			h.waitReported(t, "dev-1", efpb.ModelState_MODEL_STATE_ACTIVE, "1.0.0")

			g := fraudGen(t)
			sent := 0
			for {
				select {
				case err := <-first.done:
					first.done <- err
				default:
					// Counted as sent even when the answer was lost to the
					// kill: the agent may have captured the rows already.
					tryInfer(inference, g, 4)
					sent += 4
					continue
				}
				break
			}
			first.waitKilled(t)
			seenAtKill, _ := sink.counts()
			t.Logf("killed at %s after %d rows answered, %d stored", point, sent, seenAtKill)

			second := startChild(t, cfg, inference, "")
			after := 0
			tried := 0
			require.Eventually(t, func() bool { tried += 4; after += tryInfer(inference, g, 4); return after > 0 }, 30*time.Second, 20*time.Millisecond,
				"the restarted agent serves")
			sent += tried - 4 // refused attempts before it served were never captured; the answered one is in after
			after += inferFraudCount(t, inference, g, 5, 4)
			sent += after
			// Liveness: the rows sent after the restart all arrive.
			want := seenAtKill + after
			require.Eventually(t, func() bool { r, _ := sink.counts(); return r >= want }, 60*time.Second, 10*time.Millisecond)
			sink.setAck(nil)
			require.Eventually(t, func() bool { return scrape(metrics, "edgefleet_agent_capture_queued_rows") == "0" }, 60*time.Second, 20*time.Millisecond,
				"the agent drains its queue once everything is acknowledged")
			second.stop(t)
			stored, _ := sink.counts()
			assert.Empty(t, sink.conflicts(), "no duplicates: no row under two batch names, no name with two contents")
			assert.LessOrEqual(t, stored, sent)
			t.Logf("rows sent %d, stored once %d, not captured or lost in the memory buffer at the kill %d", sent, stored, sent-stored)

			// What the agent still holds on disk is exactly what it was
			// never acknowledged for: nothing, once it drained.
			db, err := store.Open(store.Options{Dir: dir + "/state"})
			require.NoError(t, err)
			defer db.Close()
			n := 0
			require.NoError(t, db.Namespace("agent").Namespace("capture").Scan(captureRowPrefix, func(string, []byte) error { n++; return nil }))
			assert.Zero(t, n, "every row was acknowledged and deleted")
		})
	}
}

// scrape returns the value of an unlabelled metric of the agent's metrics
// endpoint ("" when it cannot be read).
func scrape(addr, name string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// tryInfer sends one request of batch rows; it returns the rows answered
// (0 when the agent is gone).
func tryInfer(addr string, g *fraud.Generator, batch int) int {
	c := &oip.Client{BaseURL: "http://" + addr}
	flat := make([]float32, 0, batch*fraud.NumFeatures)
	for range batch {
		row, _ := g.Next()
		flat = append(flat, row[:]...)
	}
	in, err := oip.NewFP32Input(fraud.InputName, []int64{int64(batch), fraud.NumFeatures}, flat)
	if err != nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}}); err != nil {
		return 0
	}
	return batch
}

func inferFraudCount(t *testing.T, addr string, g *fraud.Generator, n, batch int) int {
	return len(inferFraud(t, addr, g, n, batch))
}

// The policy's privacy settings: dropped inputs are gone, hashed inputs
// keep equality but not values (salted: another salt, other hashes).
func TestCaptureDropsAndHashesInputs(t *testing.T) {
	in := []oip.Tensor{
		{Name: "amount", Shape: []int64{2, 1}, Data: []float32{10, 20}},
		{Name: "card", Shape: []int64{2}, Data: []string{"4111-1111", "4111-1111"}},
		{Name: "merchant", Shape: []int64{2}, Data: []int64{77, 78}},
	}
	p := &efpb.CapturePolicy{SampleRate: 1, DropInputs: []string{"card"}, HashInputs: []string{"merchant"}, HashSalt: []byte("salt-a")}
	got := captureTensors(in, 2, p)
	require.Len(t, got, 2)
	assert.Equal(t, "amount", got[0].Name)
	assert.Equal(t, []float32{10, 20}, got[0].Data)
	assert.Equal(t, "merchant", got[1].Name)
	assert.Equal(t, string(tensor.Bytes), got[1].Datatype)
	assert.Empty(t, got[1].IntData, "hashed values are gone")
	require.Len(t, got[1].BytesData, 2)
	assert.NotEqual(t, got[1].BytesData[0], got[1].BytesData[1])
	assert.Len(t, got[1].BytesData[0], 32, "hex of 16 bytes")

	same := captureTensors(in, 2, p)
	assert.Equal(t, got[1].BytesData, same[1].BytesData, "the same value hashes the same (joins and counts still work)")
	p.HashSalt = []byte("salt-b")
	other := captureTensors(in, 2, p)
	assert.NotEqual(t, got[1].BytesData[0], other[1].BytesData[0], "another model's salt, other hashes")

	r := rowOf(got[0], 1, 2)
	assert.Equal(t, []int64{1, 1}, r.Shape)
	assert.Equal(t, []float32{20}, r.Data)
}

// Sampling is by inference id, so a label later finds the same decision;
// the hourly budget, labelled-only and the queue's bounds drop and count.
func TestCaptureSamplingBudgetsAndLabelledOnly(t *testing.T) {
	n := 0
	for i := range 10_000 {
		if sampled(fmt.Sprintf("id-%d", i), 0.25) {
			n++
		}
	}
	assert.InDelta(t, 2500, n, 250, "sample rate 0.25 of 10000 ids")
	assert.Equal(t, sampled("x-1", 0.5), sampled("x-1", 0.5))

	db, err := store.Open(store.Options{InMemory: true})
	require.NoError(t, err)
	defer db.Close()
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	c, err := openCapture(db.Namespace("capture"), CaptureOptions{MaxRows: 8}, "dev-1", clock, time.Hour, testLogger(t), func(string) {})
	require.NoError(t, err)
	in := []oip.Tensor{{Name: "x", Shape: []int64{3, 1}, Data: []float32{1, 2, 3}}}
	out := []oip.Tensor{{Name: "p", Shape: []int64{3, 1}, Data: []float32{0.1, 0.2, 0.3}}}
	ctx := oip.WithInferenceID(context.Background(), "inf-1")

	// Hourly budget: 4 rows, then drops until the next hour.
	c.setPolicies(&efpb.DesiredState{Models: []*efpb.ModelAssignment{{Name: "m", Capture: &efpb.CapturePolicy{SampleRate: 1, MaxRowsPerHour: 4}}}})
	c.record(ctx, "m", "1", in, out)
	c.record(oip.WithInferenceID(ctx, "inf-2"), "m", "1", in, out)
	st := c.stats()
	assert.Equal(t, 4, st.Buffered)
	assert.Equal(t, uint64(2), st.Dropped)
	now = now.Add(time.Hour)
	c.record(oip.WithInferenceID(ctx, "inf-3"), "m", "1", in, out)
	assert.Equal(t, 7, c.stats().Buffered, "a new hour, a new budget")

	// The queue on disk holds 8 rows: the 9th and later are dropped.
	c.setPolicies(&efpb.DesiredState{Models: []*efpb.ModelAssignment{{Name: "m", Capture: &efpb.CapturePolicy{SampleRate: 1, MaxRowsPerHour: 100}}}})
	c.record(oip.WithInferenceID(ctx, "inf-4"), "m", "1", in, out)
	require.NoError(t, c.flush())
	st = c.stats()
	assert.Equal(t, 8, st.Queued)
	assert.Equal(t, uint64(4), st.Dropped)

	// Labelled-only: nothing is kept until the label comes.
	c.setPolicies(&efpb.DesiredState{Models: []*efpb.ModelAssignment{{Name: "m", Capture: &efpb.CapturePolicy{SampleRate: 1, LabelledOnly: true}}}})
	c2, err := openCapture(db.Namespace("capture2"), CaptureOptions{}, "dev-1", clock, time.Hour, testLogger(t), func(string) {})
	require.NoError(t, err)
	c2.policies.Store(c.policies.Load())
	c2.record(oip.WithInferenceID(ctx, "inf-5"), "m", "1", in, out)
	assert.Equal(t, 3, c2.stats().Waiting)
	assert.Zero(t, c2.stats().Buffered)
	one := int64(1)
	c2.label("m", []oip.Label{{ID: "inf-5", Row: 1, Label: &one}, {ID: "unknown", Row: 0, Label: &one}})
	st = c2.stats()
	assert.Equal(t, 2, st.Waiting)
	assert.Equal(t, 1, st.Buffered, "the labelled row, and no label record for an id never captured")
	require.NoError(t, c2.flush())
	b, ok, err := c2.nextToSend()
	require.NoError(t, err)
	require.True(t, ok)
	payload, err := c2.encode(b)
	require.NoError(t, err)
	batch := &efpb.CaptureBatch{}
	require.NoError(t, proto.Unmarshal(payload, batch))
	require.Len(t, batch.Rows, 1)
	assert.True(t, batch.Rows[0].Labelled)
	assert.Equal(t, int64(1), batch.Rows[0].Label)
	assert.Equal(t, uint32(1), batch.Rows[0].Row)
	assert.Empty(t, batch.Labels)
}

// A large buffer goes to the device profile's small badger in several
// transactions (one would exceed badger's per-transaction limit), and a
// request never waits for the write.
func TestCaptureFlushesLargeBufferOnDeviceProfile(t *testing.T) {
	db, err := store.Open(store.Options{Dir: t.TempDir(), Profile: store.ProfileDevice})
	require.NoError(t, err)
	defer db.Close()
	c, err := openCapture(db.Namespace("capture"), CaptureOptions{RowsPerHour: 1 << 20, BytesPerHour: 1 << 30}, "dev-1", time.Now, time.Hour, testLogger(t), func(string) {})
	require.NoError(t, err)
	c.setPolicies(&efpb.DesiredState{Models: []*efpb.ModelAssignment{{Name: "m", Capture: &efpb.CapturePolicy{SampleRate: 1}}}})
	flat := make([]float32, 4*64)
	in := []oip.Tensor{{Name: "x", Shape: []int64{4, 64}, Data: flat}}
	out := []oip.Tensor{{Name: "p", Shape: []int64{4, 1}, Data: []float32{0.1, 0.2, 0.3, 0.4}}}
	for i := range 1000 {
		c.record(oip.WithInferenceID(context.Background(), fmt.Sprintf("inf-%d", i)), "m", "1", in, out)
	}
	require.Equal(t, 4000, c.stats().Buffered)
	require.NoError(t, c.flush())
	st := c.stats()
	assert.Equal(t, 4000, st.Queued)
	assert.Zero(t, st.Buffered)
	assert.Greater(t, st.QueuedBytes, int64(1<<20), "more than a device-profile transaction holds")
	assert.Zero(t, st.Dropped)
}
