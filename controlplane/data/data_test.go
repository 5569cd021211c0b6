package data

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// acks records the acknowledgements the service publishes; fail makes
// publishing fail.
type acks struct {
	mu   sync.Mutex
	got  []*efpb.CaptureAck
	fail bool
}

func (b *acks) Publish(_ context.Context, topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail {
		return errors.New("broker down")
	}
	a := &efpb.CaptureAck{}
	if err := proto.Unmarshal(payload, a); err != nil || retain || topic != (topics.Scheme{}).CaptureAck(a.DeviceId) {
		return fmt.Errorf("bad ack publish on %s", topic)
	}
	b.got = append(b.got, a)
	return nil
}

func (b *acks) list() []*efpb.CaptureAck {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*efpb.CaptureAck(nil), b.got...)
}

type devices map[string]string // id → site

func (d devices) Exists(id string) bool { _, ok := d[id]; return ok }
func (d devices) Labels(id string) map[string]string {
	return map[string]string{"site": d[id]}
}

type refs map[string][]*efpb.FeatureStats

func (r refs) Reference(model, version string) ([]*efpb.FeatureStats, bool) {
	f, ok := r[model+"@"+version]
	return f, ok
}

type env struct {
	s     *Service
	db    *store.DB
	bus   *acks
	check *ingest.Checker
	now   time.Time
}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	db, err := store.Open(store.Options{Dir: t.TempDir(), Profile: store.ProfileServer})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	e := &env{db: db, bus: &acks{}, now: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	e.check = ingest.New(topics.Scheme{}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	o := Options{KV: db.Namespace("data"), Bus: e.bus, Devices: devices{"dev-1": "berlin", "dev-2": "paris"},
		Models: refs{"fraud@v1": {
			{Name: "amount", Min: 0, Max: 100, Mean: 50},
			{Name: "hour", Min: 0, Max: 23, Mean: 12},
		}},
		Ingest: e.check, DatasetDir: t.TempDir(), Clock: func() time.Time { return e.now }}
	if mod != nil {
		mod(&o)
	}
	e.s, err = New(o)
	require.NoError(t, err)
	return e
}

func row(id string, r uint32, at time.Time, amount, hour float32, label *int64) *efpb.CaptureRow {
	cr := &efpb.CaptureRow{ModelName: "fraud", ModelVersion: "v1", InferenceId: id, Row: r, TimeUnixMs: at.UnixMilli(),
		Inputs:  []*efpb.Tensor{{Name: "x", Shape: []int64{1, 2}, Data: []float32{amount, hour}}},
		Outputs: []*efpb.Tensor{{Name: "p", Shape: []int64{1, 1}, Data: []float32{0.25}}}}
	if label != nil {
		cr.Labelled, cr.Label = true, *label
	}
	return cr
}

func (e *env) send(t *testing.T, dev string, b *efpb.CaptureBatch) {
	t.Helper()
	b.ProtocolVersion, b.DeviceId = 1, dev
	payload, err := proto.Marshal(b)
	require.NoError(t, err)
	e.s.OnCapture(topics.Scheme{}.Capture(dev), payload)
}

func lbl(v int64) *int64 { return &v }

// A batch is stored once per (device, stream, batch) and acknowledged
// every time it arrives; a label joins its row whichever comes first.
func TestOnCaptureStoresOnceAndAcknowledges(t *testing.T) {
	e := newEnv(t, nil)
	at := e.now.Add(-time.Minute)
	b := &efpb.CaptureBatch{Stream: 7, Batch: 1, Rows: []*efpb.CaptureRow{row("a", 0, at, 10, 3, nil), row("a", 1, at, 20, 4, nil)},
		Labels: []*efpb.CaptureLabel{{ModelName: "fraud", InferenceId: "b", Row: 0, Label: 1}}}
	e.send(t, "dev-1", b)
	e.send(t, "dev-1", b) // its ack was lost: sent again
	st, err := e.s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, uint64(2), st.Rows, "stored once")
	require.Len(t, e.bus.list(), 2, "acknowledged each time")
	assert.Equal(t, []uint64{1}, e.bus.list()[1].Batches)
	assert.Equal(t, uint64(7), e.bus.list()[1].Stream)

	// Another stream of the same device (a wiped data directory) with the
	// same batch number is another batch.
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 8, Batch: 1, Rows: []*efpb.CaptureRow{row("b", 0, at, 30, 5, nil)},
		Labels: []*efpb.CaptureLabel{{ModelName: "fraud", InferenceId: "a", Row: 1, Label: 0}}})
	st, err = e.s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), st.Rows)
	assert.Equal(t, uint64(2), st.Labelled, "the label before its row and the one after both joined")
}

// Bad input: a row that fails a check is dropped and counted, the rest of
// the batch is kept and acknowledged; an unknown device, a malformed
// payload or another device's id get nothing stored and no ack; a batch
// that cannot be stored is not acknowledged.
func TestOnCaptureBadInput(t *testing.T) {
	e := newEnv(t, nil)
	at := e.now
	bad := row("", 0, at, 1, 1, nil) // no inference id
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: []*efpb.CaptureRow{bad, row("ok", 0, at, 1, 1, nil)}})
	st, _ := e.s.Policy("fraud")
	assert.Equal(t, uint64(1), st.Rows)
	assert.Len(t, e.bus.list(), 1)
	assert.Equal(t, uint64(1), e.check.Dropped())

	e.send(t, "dev-9", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: []*efpb.CaptureRow{row("x", 0, at, 1, 1, nil)}})
	e.s.OnCapture(topics.Scheme{}.Capture("dev-1"), []byte{0xff, 0xff})
	payload, _ := proto.Marshal(&efpb.CaptureBatch{ProtocolVersion: 1, DeviceId: "dev-2", Stream: 1, Batch: 1})
	e.s.OnCapture(topics.Scheme{}.Capture("dev-1"), payload)
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 0})
	assert.Len(t, e.bus.list(), 1, "nothing more acknowledged")
	assert.Equal(t, uint64(5), e.check.Dropped())

	require.NoError(t, e.db.Close())
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 2, Rows: []*efpb.CaptureRow{row("y", 0, at, 1, 1, nil)}})
	assert.Len(t, e.bus.list(), 1, "a batch the store refused is not acknowledged: the device sends it again")
}

// Datasets: versioned, content-addressed, validated, exported, pruned.
func TestBuildDataset(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.DatasetsKept = 2 })
	_, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.ErrorIs(t, err, api.ErrNotFound)
	at := e.now.Add(-2 * time.Hour)
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: []*efpb.CaptureRow{
		row("a", 0, at, 10, 3, lbl(0)), row("a", 1, at.Add(time.Second), 20, 4, lbl(1)),
		row("b", 0, at.Add(2*time.Second), 30, 5, lbl(0)),
	}})
	e.send(t, "dev-2", &efpb.CaptureBatch{Stream: 2, Batch: 1, Rows: []*efpb.CaptureRow{
		row("c", 0, at.Add(3*time.Second), 40, 6, lbl(1)),
	}})
	// A build whose context ended (a retrain job cancelled) stops and
	// records nothing.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = e.s.Build(ended, "fraud", api.DatasetRequest{})
	require.ErrorIs(t, err, context.Canceled)
	list, err := e.s.List("fraud")
	require.NoError(t, err)
	assert.Empty(t, list, "a cancelled build records no dataset")

	ds, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, 1, ds.Version)
	assert.Equal(t, 4, ds.Rows)
	assert.Equal(t, 4, ds.Labelled)
	assert.Equal(t, []string{"dev-1", "dev-2"}, ds.Devices)
	assert.Equal(t, []string{"berlin", "paris"}, ds.Sites)
	assert.Equal(t, at, ds.First)
	assert.True(t, ds.Validation.Passed, "%+v", ds.Validation.Checks)
	var cols []string
	for _, c := range ds.Schema {
		cols = append(cols, c.Name)
	}
	assert.Equal(t, []string{"amount", "hour", "out.p[0]", "label"}, cols, "named by the reference statistics")

	same, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, ds, same, "the same rows: the same dataset")

	var csvOut bytes.Buffer
	require.NoError(t, e.s.Export("fraud", "1", api.FormatCSV, &csvOut))
	lines := strings.Split(strings.TrimSpace(csvOut.String()), "\n")
	require.Len(t, lines, 5)
	assert.Equal(t, "time,device,site,model_version,inference_id,row,amount,hour,out.p[0],label", lines[0])
	assert.Contains(t, lines[1], ",dev-1,berlin,v1,a,0,10,3,0.25,0")
	require.ErrorIs(t, e.s.Export("fraud", "1", "xlsx", &csvOut), api.ErrInvalid)

	// Parquet: the same rows and columns, read back with the library.
	var pq bytes.Buffer
	require.NoError(t, e.s.Export("fraud", "1", api.FormatParquet, &pq))
	r := parquet.NewReader(bytes.NewReader(pq.Bytes()))
	defer r.Close()
	require.Equal(t, int64(4), r.NumRows())
	colIdx := map[string]int{}
	for i, path := range r.Schema().Columns() {
		colIdx[path[0]] = i
	}
	for _, c := range []string{"time", "device", "site", "inference_id", "amount", "hour", "out.p[0]", "label"} {
		require.Contains(t, colIdx, c)
	}
	prow := make([]parquet.Row, 4)
	n, err := r.ReadRows(prow)
	if !errors.Is(err, io.EOF) {
		require.NoError(t, err)
	}
	require.Equal(t, 4, n)
	assert.Equal(t, "dev-1", prow[0][colIdx["device"]].String())
	assert.Equal(t, at.UnixMilli(), prow[0][colIdx["time"]].Int64())
	assert.InDelta(t, 10, prow[0][colIdx["amount"]].Double(), 1e-9)
	assert.Equal(t, int64(1), prow[1][colIdx["label"]].Int64())
	assert.Equal(t, "paris", prow[3][colIdx["site"]].String())

	// A window: only the rows in it; a new version.
	part, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{Since: at.Add(2 * time.Second)})
	require.NoError(t, err)
	assert.Equal(t, 2, part.Version)
	assert.Equal(t, 2, part.Rows)
	got, err := e.s.Get("fraud", part.SHA256[:10])
	require.NoError(t, err)
	assert.Equal(t, 2, got.Version)

	// A third version prunes the first (DatasetsKept 2) and its file.
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 2, Rows: []*efpb.CaptureRow{row("d", 0, at.Add(time.Minute), 50, 7, lbl(0))}})
	third, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.Equal(t, 3, third.Version)
	list, err = e.s.List("fraud")
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, 2, list[0].Version)
	_, err = e.s.Get("fraud", "1")
	require.ErrorIs(t, err, api.ErrNotFound)
	require.Error(t, e.s.Export("fraud", ds.SHA256[:12], api.FormatJSONL, &bytes.Buffer{}))
}

// The validation report's checks, each able to fail.
func TestValidation(t *testing.T) {
	e := newEnv(t, nil)
	at := e.now.Add(-time.Hour)
	var rows []*efpb.CaptureRow
	for i := range 10 {
		rows = append(rows, row(fmt.Sprintf("r%d", i), 0, at.Add(time.Duration(i)*time.Second), 500, float32(i), nil)) // amount far out of range
	}
	rows[1].Inputs[0].Data = []float32{float32(math.NaN()), 1}
	rows[2].Inputs[0].Data = []float32{500, 0} // duplicate of rows[0]
	rows[3].Inputs[0] = &efpb.Tensor{Name: "x", Shape: []int64{1, 1}, Data: []float32{5}}
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: rows})
	ds, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	v := ds.Validation
	assert.False(t, v.Passed)
	failed := map[string]string{}
	for _, c := range v.Checks {
		if !c.Passed {
			failed[c.Name] = c.Severity
		}
	}
	assert.Equal(t, map[string]string{
		"schema": api.SeverityFail, "missing": api.SeverityFail, "non_finite": api.SeverityFail,
		"ranges": api.SeverityWarn, "labels": api.SeverityFail,
	}, failed)
	assert.Equal(t, 1, v.Duplicates)
	require.NotEmpty(t, v.Columns)
	assert.Equal(t, "amount", v.Columns[0].Name)
	assert.Equal(t, 1, v.Columns[0].NonFinite)
	assert.Equal(t, 8, v.Columns[0].OutOfRange)

	// Mostly duplicates fails on its own.
	e2 := newEnv(t, nil)
	var dup []*efpb.CaptureRow
	for i := range 10 {
		l := int64(i % 2)
		dup = append(dup, row(fmt.Sprintf("d%d", i), 0, at, 10, 3, &l))
	}
	e2.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: dup})
	ds2, err := e2.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	assert.False(t, ds2.Validation.Passed)
	assert.Equal(t, 9, ds2.Validation.Duplicates)
}

// Retention: rows, waiting labels and batch names older than
// RowRetention go; a batch sent again after that is stored again (the
// agent deletes a batch once acknowledged, so this does not happen within
// the retention).
func TestSweep(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.RowRetention = time.Hour })
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: []*efpb.CaptureRow{
		row("old", 0, e.now.Add(-2*time.Hour), 1, 1, nil), row("new", 0, e.now, 1, 1, nil)},
		Labels: []*efpb.CaptureLabel{{ModelName: "fraud", InferenceId: "gone", TimeUnixMs: e.now.Add(-3 * time.Hour).UnixMilli(), Label: 1}}})
	require.NoError(t, e.s.Sweep())
	st, err := e.s.Policy("fraud")
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.Rows)
	n := 0
	require.NoError(t, e.s.opts.KV.Scan(prefixLabel, func(string, []byte) error { n++; return nil }))
	assert.Zero(t, n)
	e.now = e.now.Add(2 * time.Hour)
	require.NoError(t, e.s.Sweep())
	require.NoError(t, e.s.opts.KV.Scan(prefixSeen, func(string, []byte) error { n++; return nil }))
	assert.Zero(t, n, "batch names expire with the rows")
}

// Policies: off unless set; the salt is made once, kept, never shown;
// the policy devices get carries it.
func TestPolicy(t *testing.T) {
	e := newEnv(t, nil)
	assert.Nil(t, e.s.CapturePolicy("fraud"), "off unless set")
	st, err := e.s.SetPolicy("fraud", api.CapturePolicy{SampleRate: 0.5, HashInputs: []string{"m", "m"}, DropInputs: []string{"card"}, MaxRowsPerHour: 10})
	require.NoError(t, err)
	assert.True(t, st.Enabled)
	assert.True(t, st.Salted)
	assert.Equal(t, []string{"m"}, st.Policy.HashInputs)
	p := e.s.CapturePolicy("fraud")
	require.NotNil(t, p)
	assert.Len(t, p.HashSalt, 32)
	salt := p.HashSalt
	_, err = e.s.SetPolicy("fraud", api.CapturePolicy{SampleRate: 1, HashInputs: []string{"m"}})
	require.NoError(t, err)
	assert.Equal(t, salt, e.s.CapturePolicy("fraud").HashSalt, "the salt stays: hashes stay comparable")
	_, err = e.s.SetPolicy("fraud", api.CapturePolicy{})
	require.NoError(t, err)
	assert.Nil(t, e.s.CapturePolicy("fraud"))
	_, err = e.s.SetPolicy("../x", api.CapturePolicy{SampleRate: 1})
	require.ErrorIs(t, err, api.ErrInvalid)
	_, err = e.s.SetPolicy("fraud", api.CapturePolicy{SampleRate: math.NaN()})
	require.ErrorIs(t, err, api.ErrInvalid)
}
