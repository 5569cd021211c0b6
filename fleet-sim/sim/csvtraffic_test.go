package sim

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeCSV(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.csv")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

func TestLoadCSV(t *testing.T) {
	path := writeCSV(t, "id, b ,a,y\nx,2,1,1\n\"z\",4, 3 ,0\n")
	d, err := LoadCSV(path, CSVOptions{Input: "in", Features: []string{"a", "b"}, Label: "y"})
	require.NoError(t, err)
	assert.Equal(t, []float32{1, 2, 3, 4}, d.Rows)
	assert.Equal(t, []int64{1, 0}, d.Labels)
	assert.Equal(t, 2, d.Len())
	in, label, ok := d.row(1)
	assert.Equal(t, []int64{1, 2}, in[0].Shape)
	assert.Equal(t, []float32{3, 4}, in[0].Data)
	assert.Equal(t, "in", in[0].Name)
	assert.True(t, ok)
	assert.Equal(t, int64(0), label)

	// No features named: every column but the label, in header order.
	path = writeCSV(t, "b,y,a\n1,2,3\n")
	d, err = LoadCSV(path, CSVOptions{Input: "in", Label: "y"})
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "a"}, d.Features)
	assert.Equal(t, []float32{1, 3}, d.Rows)
}

func TestLoadCSVRejects(t *testing.T) {
	tests := []struct {
		name, content string
		opts          CSVOptions
		want          string
	}{
		{"no header", "", CSVOptions{}, "empty: the first line must be a header"},
		{"duplicate column", "a,a\n1,2\n", CSVOptions{}, `:1: column "a" appears twice`},
		{"unnamed column", "a,\n1,2\n", CSVOptions{}, ":1: column 2 has no name"},
		{"missing column", "a\n1\n", CSVOptions{Features: []string{"a", "b"}}, ":1: missing columns b (the header has a)"},
		{"not a number", "a,b\n1,2\n3,four\n", CSVOptions{}, `:3: column b: "four" is not a finite number`},
		{"NaN", "a\nNaN\n", CSVOptions{}, `:2: column a: "NaN" is not a finite number`},
		{"empty cell", "a,b\n1,\n", CSVOptions{}, `:2: column b: "" is not a finite number`},
		{"line after a quoted newline", "a,b\n\"1\n\",2\n3,x\n", CSVOptions{}, `:4: column b: "x" is not a finite number`},
		{"bad quote", "a\n\"1\n", CSVOptions{}, ":2: extraneous or missing"},
		{"label not an integer", "a,y\n1,yes\n", CSVOptions{Label: "y"}, `:2: label column y: "yes" is not an integer class`},
		{"too large", "a\n1\n2\n3\n", CSVOptions{MaxBytes: 4}, "is 8 bytes, more than the 4 allowed"},
		{"no rows", "a\n", CSVOptions{}, "no rows after the header"},
		{"only the label", "y\n1\n", CSVOptions{Label: "y"}, ":1: no feature columns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeCSV(t, tt.content)
			tt.opts.Input = "in"
			_, err := LoadCSV(path, tt.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), path)
		})
	}
	_, err := LoadCSV(filepath.Join(t.TempDir(), "nope.csv"), CSVOptions{Input: "in"})
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestCSVSourceReplaysInOrder: each device replays the rows in order,
// looped, from its own seeded offset; a shift starts the new rows.
func TestCSVSourceReplaysInOrder(t *testing.T) {
	d := &CSVData{File: "d", Input: "in", Features: []string{"a"}}
	for i := range 50 {
		d.Rows = append(d.Rows, float32(i))
	}
	other := &CSVData{File: "o", Input: "in", Features: []string{"a"}, Rows: []float32{100, 101}, Labels: []int64{1, 0}}
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
	assert.Error(t, tr.ShiftCSV([]string{"dev-2"}, &CSVData{File: "x", Input: "in", Features: []string{"b"}, Rows: []float32{1}}), "other columns")
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
