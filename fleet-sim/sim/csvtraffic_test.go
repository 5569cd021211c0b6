package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/tensor"
)

func writeCSV(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.csv")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// one is the options of a single FP32 input "in" fed from columns (nil:
// every column but the label).
func one(columns ...string) CSVOptions {
	return CSVOptions{Inputs: []CSVInput{{Name: "in", Columns: columns}}}
}

func TestLoadCSV(t *testing.T) {
	path := writeCSV(t, "id, b ,a,y\nx,2,1,1\n\"z\",4, 3 ,0\n")
	o := one("a", "b")
	o.Label = "y"
	d, err := LoadCSV(path, o)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 0}, d.Labels)
	assert.Equal(t, 2, d.Len())
	in, label, ok := d.Row(1)
	require.Len(t, in, 1)
	assert.Equal(t, oip.Tensor{Name: "in", Datatype: tensor.FP32, Shape: []int64{1, 2}, Data: []float32{3, 4}}, in[0])
	assert.True(t, ok)
	assert.Equal(t, int64(0), label)
	in, _, _ = d.Row(0)
	assert.Equal(t, []float32{1, 2}, in[0].Data)

	// No features named: every column but the label, in header order.
	path = writeCSV(t, "b,y,a\n1,2,3\n")
	o = one()
	o.Label = "y"
	d, err = LoadCSV(path, o)
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "a"}, d.Inputs[0].Columns)
	in, _, _ = d.Row(0)
	assert.Equal(t, []float32{1, 3}, in[0].Data)
}

// TestLoadCSVTypedInputs: one row feeds several inputs of other
// datatypes, each from its own columns, rank 1 or [1, columns].
func TestLoadCSVTypedInputs(t *testing.T) {
	path := writeCSV(t, "amount,count,country,flag,id0,id1,small,half,y\n"+
		"12.5,3,fr,true,7,-9000000000,255,0.1,1\n"+
		"-1e3,4.0, Zürich ,0,8,9,0,65504,0\n")
	d, err := LoadCSV(path, CSVOptions{Label: "y", Inputs: []CSVInput{
		{Name: "amount", Datatype: tensor.FP64, Columns: []string{"amount"}},
		{Name: "count", Datatype: tensor.Int32, Columns: []string{"count"}},
		{Name: "country", Datatype: tensor.Bytes, Columns: []string{"country"}, Rank1: true},
		{Name: "flag", Datatype: tensor.Bool, Columns: []string{"flag"}, Rank1: true},
		{Name: "ids", Datatype: tensor.Int64, Columns: []string{"id0", "id1"}},
		{Name: "small", Datatype: tensor.Uint8, Columns: []string{"small"}, Rank1: true},
		{Name: "half", Datatype: tensor.FP16, Columns: []string{"half"}, Rank1: true},
	}})
	require.NoError(t, err)
	require.Equal(t, 2, d.Len())
	want := [][]oip.Tensor{{
		{Name: "amount", Datatype: tensor.FP64, Shape: []int64{1, 1}, Data: []float64{12.5}},
		{Name: "count", Datatype: tensor.Int32, Shape: []int64{1, 1}, Data: []int32{3}},
		{Name: "country", Datatype: tensor.Bytes, Shape: []int64{1}, Data: []string{"fr"}},
		{Name: "flag", Datatype: tensor.Bool, Shape: []int64{1}, Data: []bool{true}},
		{Name: "ids", Datatype: tensor.Int64, Shape: []int64{1, 2}, Data: []int64{7, -9000000000}},
		{Name: "small", Datatype: tensor.Uint8, Shape: []int64{1}, Data: []uint8{255}},
		{Name: "half", Datatype: tensor.FP16, Shape: []int64{1}, Data: []float32{tensor.RoundFP16(0.1)}},
	}, {
		{Name: "amount", Datatype: tensor.FP64, Shape: []int64{1, 1}, Data: []float64{-1000}},
		{Name: "count", Datatype: tensor.Int32, Shape: []int64{1, 1}, Data: []int32{4}},
		{Name: "country", Datatype: tensor.Bytes, Shape: []int64{1}, Data: []string{" Zürich "}},
		{Name: "flag", Datatype: tensor.Bool, Shape: []int64{1}, Data: []bool{false}},
		{Name: "ids", Datatype: tensor.Int64, Shape: []int64{1, 2}, Data: []int64{8, 9}},
		{Name: "small", Datatype: tensor.Uint8, Shape: []int64{1}, Data: []uint8{0}},
		{Name: "half", Datatype: tensor.FP16, Shape: []int64{1}, Data: []float32{65504}},
	}}
	for r, w := range want {
		in, label, ok := d.Row(r)
		assert.Equal(t, w, in, "row %d", r)
		assert.True(t, ok)
		assert.Equal(t, int64(1-r), label)
		for i := range in {
			require.NoError(t, in[i].Check(), "row %d input %s", r, in[i].Name)
		}
	}
	// A request's tensors are copies: changing one leaves the table alone.
	in, _, _ := d.Row(0)
	in[4].Data.([]int64)[0] = 99
	again, _, _ := d.Row(0)
	assert.Equal(t, []int64{7, -9000000000}, again[4].Data)
}

func TestLoadCSVRejects(t *testing.T) {
	typed := func(d tensor.Datatype) CSVOptions {
		return CSVOptions{Inputs: []CSVInput{{Name: "in", Datatype: d, Columns: []string{"a"}}}}
	}
	labelled := one()
	labelled.Label = "y"
	tests := []struct {
		name, content string
		opts          CSVOptions
		want          string
	}{
		{"no header", "", one(), "empty: the first line must be a header"},
		{"duplicate column", "a,a\n1,2\n", one(), `:1: column "a" appears twice`},
		{"unnamed column", "a,\n1,2\n", one(), ":1: column 2 has no name"},
		{"missing column", "a\n1\n", one("a", "b"), ":1: missing columns b (the header has a)"},
		{"not a number", "a,b\n1,2\n3,four\n", one(), `:3: column b (input in, FP32): "four" is not a finite number`},
		{"NaN", "a\nNaN\n", one(), `:2: column a (input in, FP32): "NaN" is not a finite number`},
		{"empty cell", "a,b\n1,\n", one(), `:2: column b (input in, FP32): "" is not a finite number`},
		{"beyond FP32", "a\n1e39\n", one(), `"1e39" is beyond the FP32 range`},
		{"beyond FP16", "a\n70000\n", typed(tensor.FP16), `"70000" is beyond the FP16 range`},
		{"line after a quoted newline", "a,b\n\"1\n\",2\n3,x\n", one(), `:4: column b (input in, FP32): "x" is not a finite number`},
		{"bad quote", "a\n\"1\n", one(), ":2: extraneous or missing"},
		{"label not an integer", "a,y\n1,yes\n", labelled, `:2: label column y: "yes" is not an integer class`},
		{"too large", "a\n1\n2\n3\n", CSVOptions{Inputs: one().Inputs, MaxBytes: 4}, "is 8 bytes, more than the 4 allowed"},
		{"no rows", "a\n", one(), "no rows after the header"},
		{"only the label", "y\n1\n", labelled, ":1: no feature columns"},
		{"fraction in an integer", "a\n1.5\n", typed(tensor.Int64), `:2: column a (input in, INT64): "1.5" is not a whole number`},
		{"INT8 out of range", "a\n128\n", typed(tensor.Int8), `"128" is out of the INT8 range [-128, 127]`},
		{"INT64 out of range", "a\n9223372036854775808\n", typed(tensor.Int64), `is out of the INT64 range`},
		{"negative unsigned", "a\n-1\n", typed(tensor.Uint16), `"-1" is out of the UINT16 range [0, 65535]`},
		{"not a boolean", "a\nyes\n", typed(tensor.Bool), `"yes" is not a boolean`},
		{"rank 1 with two columns", "a,b\n1,2\n", CSVOptions{Inputs: []CSVInput{{Name: "in", Rank1: true}}}, "input in has rank 1 and takes one column; the file has 2"},
		{"no inputs", "a\n1\n", CSVOptions{}, "at least one input is required"},
		{"unnamed columns of two inputs", "a\n1\n", CSVOptions{Inputs: []CSVInput{{Name: "x"}, {Name: "y", Columns: []string{"a"}}}}, "input x: name its columns"},
		{"input twice", "a\n1\n", CSVOptions{Inputs: []CSVInput{{Name: "x", Columns: []string{"a"}}, {Name: "x", Columns: []string{"a"}}}}, "input x is given twice"},
		{"unknown datatype", "a\n1\n", typed("FP8"), `datatype "FP8" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeCSV(t, tt.content)
			_, err := LoadCSV(path, tt.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			if checkCSVInputs(tt.opts.Inputs) == nil { // else the options are wrong, not the file
				assert.Contains(t, err.Error(), path)
			}
		})
	}
	_, err := LoadCSV(filepath.Join(t.TempDir(), "nope.csv"), one())
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestCSVSourceReplaysInOrder: each device replays the rows in order,
// looped, from its own seeded offset; a shift starts the new rows.
func TestCSVSourceReplaysInOrder(t *testing.T) {
	var rows strings.Builder
	rows.WriteString("a\n")
	for i := range 50 {
		fmt.Fprintf(&rows, "%d\n", i)
	}
	d, err := readCSV(strings.NewReader(rows.String()), "d", one("a"))
	require.NoError(t, err)
	o := one("a")
	o.Label = "y"
	other, err := readCSV(strings.NewReader("a,y\n100,1\n101,0\n"), "o", o)
	require.NoError(t, err)
	otherCols, err := readCSV(strings.NewReader("b\n1\n"), "x", one("b"))
	require.NoError(t, err)
	var mine []*Member
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		mine = append(mine, &Member{Device: Device{ID: id}})
	}
	tr := &Traffic{opts: TrafficOptions{Seed: 1, CSV: d}, csv: map[string]*CSVData{}}
	src := &csvSource{t: tr, mine: mine}
	src.refresh()
	starts := map[float32]bool{}
	for i := range mine {
		in, _, labelled := src.next(i)
		assert.False(t, labelled, "no label column")
		first := in[0].Data.([]float32)[0]
		starts[first] = true
		for k := 1; k <= 60; k++ {
			in, _, _ = src.next(i)
			assert.Equal(t, float32((int(first)+k)%50), in[0].Data.([]float32)[0], "device %d, request %d", i, k)
		}
	}
	assert.Len(t, starts, 3, "every device starts at its own offset")

	require.NoError(t, tr.ShiftCSV([]string{"dev-2"}, other))
	assert.Error(t, tr.ShiftCSV([]string{"dev-2"}, otherCols), "other columns")
	src.refresh()
	seen := map[float32]int64{}
	for range 4 {
		in, label, labelled := src.next(1)
		require.True(t, labelled)
		seen[in[0].Data.([]float32)[0]] = label
	}
	assert.Equal(t, map[float32]int64{100: 1, 101: 0}, seen)
	assert.Error(t, tr.ShiftParams([]string{"dev-1"}, tr.opts.Params), "csv traffic takes no fraud parameters")
}
