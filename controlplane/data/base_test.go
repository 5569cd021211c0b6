package data

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// schemas gives fraud@v1's inputs: x FP32 [N, 2] (amount, hour),
// country BYTES [N] and count INT8 [N, 1].
type schemas struct{}

func (schemas) InputSchema(model string) (string, []*efpb.TensorSpec, []*efpb.FeatureStats, bool) {
	if model != "fraud" {
		return "", nil, nil, false
	}
	ref := []*efpb.FeatureStats{{Name: "amount", Input: "x", Min: 0, Max: 100}, {Name: "hour", Input: "x", Min: 0, Max: 23}}
	return "v1", []*efpb.TensorSpec{
		{Name: "x", Datatype: "FP32", Shape: []int64{-1, 2}},
		{Name: "country", Datatype: "BYTES", Shape: []int64{-1}},
		{Name: "count", Datatype: "INT8", Shape: []int64{-1, 1}},
	}, ref, true
}

func baseEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	return newEnv(t, func(o *Options) {
		o.Schemas = schemas{}
		if mod != nil {
			mod(o)
		}
	})
}

func csvOf(lines ...string) *strings.Reader {
	return strings.NewReader(strings.Join(lines, "\n") + "\n")
}

func goodCSV(n int) *strings.Reader {
	lines := []string{"time,amount,hour,country[0],count[0],label,out.p[0]"} // time and out.p: ignored
	for i := range n {
		lines = append(lines, fmt.Sprintf("2026-01-01T00:00:00Z,%d.5,%d,de,%d,%d,0.3", i, i%24, i%100, i%2))
	}
	return csvOf(lines...)
}

// A base dataset is uploaded as a CSV of the model's input columns and
// the label, checked, stored content-addressed, listed, exported as
// dataset rows, and deleted.
func TestUploadBase(t *testing.T) {
	e := baseEnv(t, nil)
	ctx := context.Background()
	b, created, err := e.s.UploadBase(ctx, "fraud", "labelled-2025", goodCSV(50))
	require.NoError(t, err)
	assert.True(t, created)
	assert.Len(t, b.ID, 64)
	assert.Equal(t, 50, b.Rows)
	assert.Equal(t, "v1", b.ModelVersion)
	assert.True(t, b.Validation.Passed)
	var cols []string
	for _, c := range b.Schema {
		cols = append(cols, c.Name+":"+c.Datatype)
	}
	assert.Equal(t, []string{"count[0]:INT8", "country[0]:BYTES", "amount:FP32", "hour:FP32", "label:INT64"}, cols)

	again, created, err := e.s.UploadBase(ctx, "fraud", "", goodCSV(50))
	require.NoError(t, err)
	assert.False(t, created, "the same rows are the same base dataset")
	assert.Equal(t, b.ID, again.ID)
	assert.Equal(t, "labelled-2025", again.Name)

	got, err := e.s.Base("fraud", b.ID[:8])
	require.NoError(t, err)
	assert.Equal(t, b.ID, got.ID)
	var out bytes.Buffer
	require.NoError(t, e.s.ExportBase("fraud", b.ID, &out))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 50)
	var r api.DatasetRow
	require.NoError(t, json.Unmarshal([]byte(lines[3]), &r))
	assert.Equal(t, map[string][]api.Value{"x": {3.5, 3.0}, "country": {"de"}, "count": {3.0}}, r.Inputs)
	require.NotNil(t, r.Label)
	assert.Equal(t, int64(1), *r.Label)

	list, err := e.s.Bases("fraud")
	require.NoError(t, err)
	require.Len(t, list, 1)
	_, err = e.s.DeleteBase("fraud", b.ID)
	require.NoError(t, err)
	_, err = e.s.Base("fraud", b.ID)
	require.ErrorIs(t, err, api.ErrNotFound)
	require.Error(t, e.s.ExportBase("fraud", b.ID, &out))
}

// Bad uploads are refused with what was wrong.
func TestUploadBaseRefuses(t *testing.T) {
	e := baseEnv(t, func(o *Options) { o.MaxBaseBytes = 4096; o.BasesKept = 1 })
	ctx := context.Background()
	dup := []string{"amount,hour,country[0],count[0],label"}
	for range 10 {
		dup = append(dup, "1,2,de,3,0")
	}
	for _, tt := range []struct {
		name  string
		model string
		csv   *strings.Reader
		kind  error
		want  string
	}{
		{"no version", "churn", goodCSV(3), api.ErrNotFound, "no version"},
		{"missing column", "fraud", csvOf("amount,country[0],count[0],label", "1,de,1,0"), api.ErrInvalid, "header lacks hour"},
		{"twice", "fraud", csvOf("amount,amount,hour,country[0],count[0],label"), api.ErrInvalid, `column "amount" appears twice`},
		{"not a number", "fraud", csvOf("amount,hour,country[0],count[0],label", "1,2,de,1,0", "x,2,de,1,1"), api.ErrInvalid, `line 3: column amount: "x" is not a number`},
		{"out of range", "fraud", csvOf("amount,hour,country[0],count[0],label", "1,2,de,300,0"), api.ErrInvalid, `"300" is not a INT8`},
		{"empty", "fraud", csvOf("amount,hour,country[0],count[0],label", "1,,de,1,0"), api.ErrInvalid, "line 2: column hour is empty"},
		{"no label", "fraud", csvOf("amount,hour,country[0],count[0],label", "1,2,de,1,maybe"), api.ErrInvalid, `label "maybe" is not an integer`},
		{"no rows", "fraud", csvOf("amount,hour,country[0],count[0],label"), api.ErrInvalid, "no rows"},
		{"ragged", "fraud", csvOf("amount,hour,country[0],count[0],label", "1,2,de"), api.ErrInvalid, "wrong number of fields"},
		{"non-finite", "fraud", csvOf("amount,hour,country[0],count[0],label", "NaN,2,de,1,0", "1,2,de,1,1"), api.ErrInvalid, "non_finite"},
		{"duplicates", "fraud", csvOf(dup...), api.ErrInvalid, "duplicates"},
		{"too large", "fraud", goodCSV(500), api.ErrTooLarge, "larger than 4096 bytes"},
	} {
		_, _, err := e.s.UploadBase(ctx, tt.model, "", tt.csv)
		require.ErrorIs(t, err, tt.kind, tt.name)
		assert.Contains(t, err.Error(), tt.want, tt.name)
	}
	list, err := e.s.Bases("fraud")
	require.NoError(t, err)
	assert.Empty(t, list, "nothing stored")

	_, _, err = e.s.UploadBase(ctx, "fraud", "", goodCSV(10))
	require.NoError(t, err)
	_, _, err = e.s.UploadBase(ctx, "fraud", "", goodCSV(11))
	require.ErrorIs(t, err, api.ErrExists, "BasesKept 1")
	assert.Contains(t, err.Error(), "delete one first")
}

// An exported captured dataset (CSV) uploads as a base dataset: the
// columns it has beside the inputs and label are ignored.
func TestExportedDatasetUploadsAsBase(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.Schemas = onlyX{}
	})
	at := e.now.Add(-time.Hour)
	var rows []*efpb.CaptureRow
	for i := range 20 {
		rows = append(rows, row(fmt.Sprint("r", i), 0, at.Add(time.Duration(i)*time.Second), float32(i), float32(i%24), lbl(int64(i%2))))
	}
	e.send(t, "dev-1", &efpb.CaptureBatch{Stream: 1, Batch: 1, Rows: rows})
	ds, err := e.s.Build(context.Background(), "fraud", api.DatasetRequest{})
	require.NoError(t, err)
	var exported bytes.Buffer
	require.NoError(t, e.s.Export("fraud", "latest", api.FormatCSV, &exported))
	b, _, err := e.s.UploadBase(context.Background(), "fraud", "", &exported)
	require.NoError(t, err)
	assert.Equal(t, ds.Rows, b.Rows)
}

type onlyX struct{}

func (onlyX) InputSchema(string) (string, []*efpb.TensorSpec, []*efpb.FeatureStats, bool) {
	return "v1", []*efpb.TensorSpec{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 2}}},
		[]*efpb.FeatureStats{{Name: "amount", Min: 0, Max: 100}, {Name: "hour", Min: 0, Max: 23}}, true
}

// A spreadsheet's export: a UTF-8 byte order mark, CRLF line ends and a
// quoted header are read as any CSV (the mark once made the header
// unreadable).
func TestUploadBaseFromASpreadsheetExport(t *testing.T) {
	e := baseEnv(t, nil)
	raw, err := io.ReadAll(goodCSV(20))
	require.NoError(t, err)
	text := strings.ReplaceAll(string(raw), "\n", "\r\n")
	text = strings.Replace(text, "time", `"time"`, 1) // the mark then stands before a quote
	b, _, err := e.s.UploadBase(context.Background(), "fraud", "", strings.NewReader("\xef\xbb\xbf"+text))
	require.NoError(t, err)
	assert.Equal(t, 20, b.Rows)
	assert.True(t, b.Validation.Passed)
}
