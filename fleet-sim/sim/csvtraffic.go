package sim

import (
	"encoding/csv"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/internal/oip"
)

// MaxCSVBytes bounds a CSV file of traffic rows.
const MaxCSVBytes = 100 << 20

// CSVData is a table of inference inputs read from a CSV file (LoadCSV):
// one row per request, its features in the model's input order, and an
// optional integer label per row, the ground truth fed back.
type CSVData struct {
	// File is where the rows were read from.
	File string
	// Input is the name of the model's input tensor (one FP32 tensor of
	// shape [1, len(Features)] per request).
	Input string
	// Features are the column names, in model input order.
	Features []string
	// Rows holds len(Features) values per row, row after row.
	Rows []float32
	// Labels holds each row's true class; nil without a label column.
	Labels []int64
}

// Len is the number of rows.
func (d *CSVData) Len() int {
	if len(d.Features) == 0 {
		return 0
	}
	return len(d.Rows) / len(d.Features)
}

func (d *CSVData) check() error {
	switch {
	case d == nil:
		return errors.New("no csv data")
	case d.Input == "" || len(d.Features) == 0:
		return fmt.Errorf("csv %s: input name and features are required", d.File)
	case d.Len() == 0 || len(d.Rows) != d.Len()*len(d.Features):
		return fmt.Errorf("csv %s: %d values are no whole number of rows of %d features", d.File, len(d.Rows), len(d.Features))
	case d.Labels != nil && len(d.Labels) != d.Len():
		return fmt.Errorf("csv %s: %d labels for %d rows", d.File, len(d.Labels), d.Len())
	}
	return nil
}

// row returns a copy of row i's features as a request, and its label.
func (d *CSVData) row(i int) ([]oip.Tensor, int64, bool) {
	k := len(d.Features)
	in := []oip.Tensor{{Name: d.Input, Shape: []int64{1, int64(k)}, Data: slices.Clone(d.Rows[i*k : (i+1)*k])}}
	if d.Labels == nil {
		return in, 0, false
	}
	return in, d.Labels[i], true
}

// CSVOptions say how LoadCSV reads a file.
type CSVOptions struct {
	// Input is the model's input tensor name; required.
	Input string
	// Features are the columns that make a request, in model input order;
	// nil takes every column but Label, in header order.
	Features []string
	// Label is the column of true classes (integers); "" for none.
	Label string
	// MaxBytes bounds the file; default MaxCSVBytes.
	MaxBytes int64
}

// LoadCSV reads a CSV file of inference inputs: a header row naming the
// columns, then one request per row. Every cell of the columns used must
// be a finite number (labels: an integer); the first bad cell is reported
// as file:line.
func LoadCSV(path string, o CSVOptions) (*CSVData, error) {
	if o.Input == "" {
		return nil, errors.New("sim: csv: input name is required")
	}
	limit := o.MaxBytes
	if limit <= 0 {
		limit = MaxCSVBytes
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sim: csv: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("sim: csv: %w", err)
	} else if fi.IsDir() {
		return nil, fmt.Errorf("sim: csv: %s is a directory", path)
	} else if fi.Size() > limit {
		return nil, fmt.Errorf("sim: csv: %s is %d bytes, more than the %d allowed", path, fi.Size(), limit)
	}
	d, err := readCSV(io.LimitReader(f, limit), path, o)
	if err != nil {
		return nil, fmt.Errorf("sim: csv: %w", err)
	}
	return d, nil
}

func readCSV(r io.Reader, path string, o CSVOptions) (*CSVData, error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: empty: the first line must be a header naming the columns", path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cols := map[string]int{}
	var names []string
	for i, h := range header {
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, fmt.Errorf("%s:1: column %d has no name in the header", path, i+1)
		}
		if _, dup := cols[h]; dup {
			return nil, fmt.Errorf("%s:1: column %q appears twice in the header", path, h)
		}
		cols[h] = i
		names = append(names, h)
	}
	features := o.Features
	if features == nil {
		for _, h := range names {
			if h != o.Label {
				features = append(features, h)
			}
		}
		if len(features) == 0 {
			return nil, fmt.Errorf("%s:1: no feature columns", path)
		}
	}
	var missing []string
	idx := make([]int, len(features))
	for j, name := range features {
		i, ok := cols[name]
		if !ok {
			missing = append(missing, name)
		}
		idx[j] = i
	}
	labelIdx := -1
	if o.Label != "" {
		i, ok := cols[o.Label]
		if !ok {
			missing = append(missing, o.Label+" (label)")
		}
		labelIdx = i
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s:1: missing columns %s (the header has %s)", path, strings.Join(missing, ", "), strings.Join(names, ", "))
	}
	d := &CSVData{File: path, Input: o.Input, Features: slices.Clone(features)}
	if labelIdx >= 0 {
		d.Labels = []int64{}
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s:%d: %v", path, pe.Line, pe.Err)
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		line, _ := cr.FieldPos(0)
		for j, i := range idx {
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[i]), 32)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("%s:%d: column %s: %q is not a finite number", path, line, features[j], rec[i])
			}
			d.Rows = append(d.Rows, float32(v))
		}
		if labelIdx >= 0 {
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[labelIdx]), 64)
			if err != nil || v != math.Trunc(v) || math.Abs(v) > 1<<53 {
				return nil, fmt.Errorf("%s:%d: label column %s: %q is not an integer class", path, line, o.Label, rec[labelIdx])
			}
			d.Labels = append(d.Labels, int64(v))
		}
	}
	if d.Len() == 0 {
		return nil, fmt.Errorf("%s: no rows after the header", path)
	}
	return d, nil
}

// csvSource replays CSV rows to a worker's devices: in order and looped,
// each device from its own seeded offset.
type csvSource struct {
	t    *Traffic
	mine []*Member
	data []*CSVData
	pos  []int
}

func (s *csvSource) refresh() {
	if s.data == nil {
		s.data, s.pos = make([]*CSVData, len(s.mine)), make([]int, len(s.mine))
	}
	for i, m := range s.mine {
		d := s.t.csvFor(m)
		if d == s.data[i] {
			continue
		}
		s.data[i] = d
		h := fnv.New64a()
		_, _ = h.Write([]byte(m.Device.ID))
		s.pos[i] = rand.New(rand.NewPCG(s.t.opts.Seed, h.Sum64())).IntN(d.Len())
	}
}

func (s *csvSource) next(i int) ([]oip.Tensor, int64, bool) {
	d := s.data[i]
	in, label, ok := d.row(s.pos[i])
	s.pos[i] = (s.pos[i] + 1) % d.Len()
	return in, label, ok
}

// csvFor returns the device's current rows.
func (t *Traffic) csvFor(m *Member) *CSVData {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.csv[m.Device.ID]; ok {
		return d
	}
	return t.opts.CSV
}

// ShiftCSV replays other rows to the given devices from now on (injected
// drift); the traffic must come from a CSV (TrafficOptions.CSV) and d must
// have its input and features.
func (t *Traffic) ShiftCSV(devices []string, d *CSVData) error {
	if t.opts.CSV == nil {
		return errors.New("sim: shift traffic: the traffic is not from a csv")
	}
	if err := d.check(); err != nil {
		return fmt.Errorf("sim: shift traffic: %w", err)
	}
	if d.Input != t.opts.CSV.Input || !slices.Equal(d.Features, t.opts.CSV.Features) {
		return fmt.Errorf("sim: shift traffic: csv %s has input %s%v, the traffic's is %s%v", d.File, d.Input, d.Features, t.opts.CSV.Input, t.opts.CSV.Features)
	}
	t.mu.Lock()
	for _, id := range devices {
		t.csv[id] = d
	}
	t.mu.Unlock()
	t.paramsGen.Add(1)
	return nil
}
