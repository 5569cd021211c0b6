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
	"github.com/edgefleet/edgefleet/internal/tensor"
)

// MaxCSVBytes bounds a CSV file of traffic rows.
const MaxCSVBytes = 100 << 20

// CSVInput is one model input fed from CSV columns: each request carries
// one row of them as a tensor of Datatype, of shape [1, len(Columns)], or
// [1] for an input of rank 1 (one column).
type CSVInput struct {
	// Name is the model's input tensor name.
	Name string
	// Datatype of the tensor; "" is FP32. Cells are read as the datatype
	// says: numbers for FP16, BF16, FP32, FP64 (finite); whole numbers in
	// range for the integer types (a zero fraction, as "3.0", is taken);
	// true/false (or 1/0) for BOOL; the cell's text as it is for BYTES.
	Datatype tensor.Datatype
	// Columns are the CSV columns of the tensor's elements, in the input's
	// order. Nil (allowed for a single input only): every column but the
	// label, in header order.
	Columns []string
	// Rank1: the input has rank 1, [rows]; it takes one column.
	Rank1 bool
}

func (in *CSVInput) datatype() tensor.Datatype {
	if in.Datatype == "" {
		return tensor.FP32
	}
	return in.Datatype
}

// String describes the input for messages: in FP32[a, b].
func (in CSVInput) String() string {
	return fmt.Sprintf("%s %s[%s]", in.Name, in.datatype(), strings.Join(in.Columns, ", "))
}

// CSVData is a table of inference inputs read from a CSV file (LoadCSV):
// one row per request, feeding one or more model inputs of any datatype a
// CSV cell can hold, and an optional integer label per row, the ground
// truth fed back.
type CSVData struct {
	// File is where the rows were read from.
	File string
	// Inputs are the model inputs each row feeds, Columns resolved.
	Inputs []CSVInput
	// Labels holds each row's true class; nil without a label column.
	Labels []int64

	rows  int
	cells []cells // per input, its cells row after row
}

// Len is the number of rows.
func (d *CSVData) Len() int { return d.rows }

func (d *CSVData) check() error {
	switch {
	case d == nil:
		return errors.New("no csv data")
	case len(d.Inputs) == 0 || len(d.cells) != len(d.Inputs):
		return fmt.Errorf("csv %s: no inputs were read", d.File)
	case d.rows == 0:
		return fmt.Errorf("csv %s: no rows", d.File)
	case d.Labels != nil && len(d.Labels) != d.rows:
		return fmt.Errorf("csv %s: %d labels for %d rows", d.File, len(d.Labels), d.rows)
	}
	for i, in := range d.Inputs {
		if len(in.Columns) == 0 || d.cells[i].len() != d.rows*len(in.Columns) {
			return fmt.Errorf("csv %s: input %s has %d values for %d rows of %d columns", d.File, in.Name, d.cells[i].len(), d.rows, len(in.Columns))
		}
	}
	return nil
}

// sameInputs reports whether o feeds the same inputs from the same columns.
func (d *CSVData) sameInputs(o *CSVData) bool {
	return slices.EqualFunc(d.Inputs, o.Inputs, func(a, b CSVInput) bool {
		return a.Name == b.Name && a.datatype() == b.datatype() && a.Rank1 == b.Rank1 && slices.Equal(a.Columns, b.Columns)
	})
}

// Row returns a copy of row i as a request (its tensors in Inputs order),
// and its label (labelled false without a label column).
func (d *CSVData) Row(i int) ([]oip.Tensor, int64, bool) {
	in := make([]oip.Tensor, len(d.Inputs))
	for j, ci := range d.Inputs {
		k := len(ci.Columns)
		shape := []int64{1, int64(k)}
		if ci.Rank1 {
			shape = []int64{1}
		}
		in[j] = oip.Tensor{Name: ci.Name, Datatype: ci.datatype(), Shape: shape, Data: d.cells[j].slice(i*k, (i+1)*k)}
	}
	if d.Labels == nil {
		return in, 0, false
	}
	return in, d.Labels[i], true
}

// CSVOptions say how LoadCSV reads a file.
type CSVOptions struct {
	// Inputs are the model inputs the columns feed; at least one. Only a
	// single input may leave its Columns nil.
	Inputs []CSVInput
	// Label is the column of true classes (integers); "" for none.
	Label string
	// MaxBytes bounds the file; default MaxCSVBytes.
	MaxBytes int64
}

// LoadCSV reads a CSV file of inference inputs: a header row naming the
// columns, then one request per row. Every cell of the columns used must
// hold a value of its input's datatype (labels: an integer); the first
// bad cell is reported as file:line.
func LoadCSV(path string, o CSVOptions) (*CSVData, error) {
	if err := checkCSVInputs(o.Inputs); err != nil {
		return nil, fmt.Errorf("sim: csv: %w", err)
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

func checkCSVInputs(ins []CSVInput) error {
	if len(ins) == 0 {
		return errors.New("at least one input is required")
	}
	names := map[string]bool{}
	for _, in := range ins {
		switch {
		case in.Name == "":
			return errors.New("input name is required")
		case names[in.Name]:
			return fmt.Errorf("input %s is given twice", in.Name)
		case !in.datatype().Valid():
			return fmt.Errorf("input %s: datatype %q is not one of %v", in.Name, in.Datatype, tensor.Datatypes())
		case in.Columns == nil && len(ins) > 1:
			return fmt.Errorf("input %s: name its columns (only a single input takes every column)", in.Name)
		case in.Columns != nil && len(in.Columns) == 0:
			return fmt.Errorf("input %s: no columns", in.Name)
		case in.Rank1 && in.Columns != nil && len(in.Columns) != 1:
			return fmt.Errorf("input %s has rank 1 and takes one column, not %d", in.Name, len(in.Columns))
		}
		names[in.Name] = true
	}
	return nil
}

func readCSV(r io.Reader, path string, o CSVOptions) (*CSVData, error) {
	if err := checkCSVInputs(o.Inputs); err != nil {
		return nil, err
	}
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
	d := &CSVData{File: path, Inputs: make([]CSVInput, len(o.Inputs))}
	var missing []string
	idx := make([][]int, len(o.Inputs))
	for j, in := range o.Inputs {
		in.Datatype = in.datatype()
		if in.Columns == nil {
			for _, h := range names {
				if h != o.Label {
					in.Columns = append(in.Columns, h)
				}
			}
			if len(in.Columns) == 0 {
				return nil, fmt.Errorf("%s:1: no feature columns", path)
			}
			if in.Rank1 && len(in.Columns) != 1 {
				return nil, fmt.Errorf("%s:1: input %s has rank 1 and takes one column; the file has %d besides the label (%s)", path, in.Name, len(in.Columns), strings.Join(in.Columns, ", "))
			}
		}
		in.Columns = slices.Clone(in.Columns)
		for _, name := range in.Columns {
			i, ok := cols[name]
			if !ok {
				missing = append(missing, name)
			}
			idx[j] = append(idx[j], i)
		}
		d.Inputs[j] = in
		d.cells = append(d.cells, newCells(in.Datatype))
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
		for j, in := range d.Inputs {
			for c, i := range idx[j] {
				if err := d.cells[j].add(rec[i]); err != nil {
					return nil, fmt.Errorf("%s:%d: column %s (input %s, %s): %q %v", path, line, in.Columns[c], in.Name, in.Datatype, rec[i], err)
				}
			}
		}
		if labelIdx >= 0 {
			v, err := strconv.ParseFloat(strings.TrimSpace(rec[labelIdx]), 64)
			if err != nil || v != math.Trunc(v) || math.Abs(v) > 1<<53 {
				return nil, fmt.Errorf("%s:%d: label column %s: %q is not an integer class", path, line, o.Label, rec[labelIdx])
			}
			d.Labels = append(d.Labels, int64(v))
		}
		d.rows++
	}
	if d.rows == 0 {
		return nil, fmt.Errorf("%s: no rows after the header", path)
	}
	return d, nil
}

// cells holds the parsed cells of one input, row after row, in the Go
// slice type of its datatype (see tensor.Tensor).
type cells interface {
	// add parses and appends one cell; the error completes "%q ...".
	add(cell string) error
	// slice returns a copy of cells [from, to).
	slice(from, to int) any
	len() int
}

type typedCells[T any] struct {
	v     []T
	parse func(string) (T, error)
}

func (c *typedCells[T]) add(cell string) error {
	v, err := c.parse(cell)
	if err != nil {
		return err
	}
	c.v = append(c.v, v)
	return nil
}

func (c *typedCells[T]) slice(from, to int) any { return slices.Clone(c.v[from:to]) }
func (c *typedCells[T]) len() int               { return len(c.v) }

var (
	errNotFinite  = errors.New("is not a finite number")
	errNotBool    = errors.New("is not a boolean (true, false, 1 or 0)")
	errNotInteger = errors.New("is not a whole number")
)

func newCells(d tensor.Datatype) cells {
	switch {
	case d == tensor.Bytes:
		return &typedCells[string]{parse: func(s string) (string, error) { return s, nil }}
	case d == tensor.Bool:
		return &typedCells[bool]{parse: func(s string) (bool, error) {
			v, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return false, errNotBool
			}
			return v, nil
		}}
	case d == tensor.FP64:
		return &typedCells[float64]{parse: func(s string) (float64, error) {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				return 0, errNotFinite
			}
			return v, nil
		}}
	case d.IsFloat(): // FP32, FP16, BF16
		round := func(f float32) float32 { return f }
		switch d {
		case tensor.FP16:
			round = tensor.RoundFP16
		case tensor.BF16:
			round = tensor.RoundBF16
		}
		return &typedCells[float32]{parse: func(s string) (float32, error) {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if (err != nil && !errors.Is(err, strconv.ErrRange)) || math.IsNaN(v) || math.IsInf(v, 0) {
				return 0, errNotFinite
			}
			f := round(float32(v))
			if math.IsInf(float64(f), 0) {
				return 0, fmt.Errorf("is beyond the %s range", d)
			}
			return f, nil
		}}
	case d == tensor.Int8:
		return intCells[int8](d)
	case d == tensor.Int16:
		return intCells[int16](d)
	case d == tensor.Int32:
		return intCells[int32](d)
	case d == tensor.Int64:
		return intCells[int64](d)
	case d == tensor.Uint8:
		return uintCells[uint8](d)
	case d == tensor.Uint16:
		return uintCells[uint16](d)
	case d == tensor.Uint32:
		return uintCells[uint32](d)
	}
	return uintCells[uint64](d)
}

// wholeNumber parses a whole number written as an integer or with a zero
// fraction ("3", "3.0", "3e2"), as CSV writers print integer columns.
func wholeNumber(s string) (float64, bool) {
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil && v == math.Trunc(v) && !math.IsInf(v, 0)
}

func intCells[T int8 | int16 | int32 | int64](d tensor.Datatype) cells {
	lo, hi, _ := tensor.IntRange(d)
	return &typedCells[T]{parse: func(s string) (T, error) {
		s = strings.TrimSpace(s)
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			f, ok := wholeNumber(s)
			if !ok {
				return 0, errNotInteger
			}
			if f < -(1<<63) || f >= 1<<63 {
				err = strconv.ErrRange
			} else {
				v, err = int64(f), nil
			}
		}
		if err != nil || v < lo || v > hi {
			return 0, fmt.Errorf("is out of the %s range [%d, %d]", d, lo, hi)
		}
		return T(v), nil
	}}
}

func uintCells[T uint8 | uint16 | uint32 | uint64](d tensor.Datatype) cells {
	hi, _ := tensor.UintMax(d)
	return &typedCells[T]{parse: func(s string) (T, error) {
		s = strings.TrimSpace(s)
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			f, ok := wholeNumber(s)
			switch {
			case !ok:
				return 0, errNotInteger
			case f < 0 || f >= 1<<64:
				err = strconv.ErrRange
			default:
				v, err = uint64(f), nil
			}
		}
		if err != nil || v > hi {
			return 0, fmt.Errorf("is out of the %s range [0, %d]", d, hi)
		}
		return T(v), nil
	}}
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
	in, label, ok := d.Row(s.pos[i])
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
	if !t.opts.CSV.sameInputs(d) {
		return fmt.Errorf("sim: shift traffic: csv %s feeds inputs %v, the traffic's are %v", d.File, d.Inputs, t.opts.CSV.Inputs)
	}
	t.mu.Lock()
	for _, id := range devices {
		t.csv[id] = d
	}
	t.mu.Unlock()
	t.paramsGen.Add(1)
	return nil
}
