package data

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of the base dataset options.
const (
	DefaultMaxBaseBytes = 32 << 20
	DefaultBasesKept    = 20
)

// Schemas gives what an uploaded base dataset is checked against.
type Schemas interface {
	// InputSchema is model's newest version with its inputs and reference
	// statistics; false when the model has no version.
	InputSchema(model string) (version string, inputs []*efpb.TensorSpec, ref []*efpb.FeatureStats, ok bool)
}

// Store keys of base datasets (under Options.KV):
//
//	base/<model>/<sha256>   api.BaseDataset (JSON)
const prefixBase = "base/"

func baseKey(model, sum string) string { return prefixBase + model + "/" + sum }

// UploadBase stores a CSV of labelled rows as one of model's base
// datasets: a header naming the model's input columns (as a dataset's CSV
// export names them: reference feature names, else "input[i]") and
// "label" — other columns are ignored, so an exported dataset can be
// uploaded — and one row per line. The rows are checked like captured
// ones (schema, values of each input's datatype, labels, duplicates; a
// report that does not pass is refused with its failed checks), written
// as canonical JSON lines and named by their sha256: the same rows are the
// same base dataset. At most MaxBaseBytes are read.
func (s *Service) UploadBase(ctx context.Context, model, name string, r io.Reader) (api.BaseDataset, bool, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.BaseDataset{}, false, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	if len(name) > 256 {
		return api.BaseDataset{}, false, api.Errorf(api.ErrInvalid, "name: at most 256 bytes")
	}
	if s.opts.Schemas == nil {
		return api.BaseDataset{}, false, api.Errorf(api.ErrUnavailable, "base datasets are not configured in this control plane")
	}
	version, inputs, ref, ok := s.opts.Schemas.InputSchema(model)
	if !ok {
		return api.BaseDataset{}, false, api.Errorf(api.ErrNotFound, "model %s has no version to check a base dataset against (upload one first)", model)
	}
	raw, err := io.ReadAll(io.LimitReader(r, s.opts.MaxBaseBytes+1))
	if err != nil {
		return api.BaseDataset{}, false, fmt.Errorf("data: read base dataset: %w", err)
	}
	if int64(len(raw)) > s.opts.MaxBaseBytes {
		return api.BaseDataset{}, false, api.Errorf(api.ErrTooLarge, "base dataset larger than %d bytes", s.opts.MaxBaseBytes)
	}
	rows, schema, err := parseBase(raw, inputs, ref)
	if err != nil {
		return api.BaseDataset{}, false, api.Errorf(api.ErrInvalid, "base dataset: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return api.BaseDataset{}, false, err
	}
	v := validate(rows, schema, ref)
	if !v.Passed {
		var failed []string
		for _, c := range v.Checks {
			if !c.Passed && c.Severity == api.SeverityFail {
				failed = append(failed, c.Name+": "+c.Detail)
			}
		}
		return api.BaseDataset{}, false, api.Errorf(api.ErrInvalid, "base dataset failed validation (%s)", strings.Join(failed, "; "))
	}
	var body bytes.Buffer
	for _, r := range rows {
		line, err := json.Marshal(r)
		if err != nil {
			return api.BaseDataset{}, false, fmt.Errorf("data: encode row: %w", err)
		}
		body.Write(line)
		body.WriteByte('\n')
	}
	sum := sha256.Sum256(body.Bytes())
	b := api.BaseDataset{Model: model, ID: hex.EncodeToString(sum[:]), Name: name, Created: s.opts.Clock().UTC(),
		Rows: len(rows), Labelled: len(rows), Bytes: int64(body.Len()), ModelVersion: version, Schema: schema, Validation: v}

	s.mu.Lock()
	defer s.mu.Unlock()
	var existing api.BaseDataset
	switch err := s.opts.KV.GetJSON(baseKey(model, b.ID), &existing); {
	case err == nil:
		return existing, false, nil
	case !errors.Is(err, store.ErrNotFound):
		return api.BaseDataset{}, false, fmt.Errorf("data: read base dataset: %w", err)
	}
	list, err := s.bases(model)
	if err != nil {
		return api.BaseDataset{}, false, err
	}
	if len(list) >= s.opts.BasesKept {
		return api.BaseDataset{}, false, api.Errorf(api.ErrExists, "model %s has %d base datasets, the most kept; delete one first (edgefleet data delete-base %s %s)",
			model, len(list), model, list[0].ID[:12])
	}
	if err := writeFileAtomic(s.datasetPath(b.ID), body.Bytes()); err != nil {
		return api.BaseDataset{}, false, fmt.Errorf("data: write base dataset: %w", err)
	}
	if err := s.opts.KV.SetJSON(baseKey(model, b.ID), b, true); err != nil {
		return api.BaseDataset{}, false, fmt.Errorf("data: store base dataset: %w", err)
	}
	s.log.Info("base dataset uploaded", "model", model, "id", b.ID, "rows", b.Rows, "name", name)
	return b, true, nil
}

// parseBase reads a base dataset's CSV into dataset rows, with the schema
// of the model's inputs and the label.
func parseBase(raw []byte, inputs []*efpb.TensorSpec, ref []*efpb.FeatureStats) ([]api.DatasetRow, []api.DatasetColumn, error) {
	// The columns the model's inputs make, named as a captured dataset's.
	proto := api.DatasetRow{Inputs: map[string][]api.Value{}}
	types := map[string]tensor.Datatype{}
	for _, in := range inputs {
		shape := in.GetShape()
		if len(shape) == 0 {
			return nil, nil, fmt.Errorf("input %q is rank 0; a base dataset holds one row per line", in.GetName())
		}
		width := int64(1)
		for _, d := range shape[1:] {
			if d < 0 {
				return nil, nil, fmt.Errorf("input %q has a dynamic inner dimension; a CSV cannot say a row's shape", in.GetName())
			}
			width *= d
		}
		if width > 1<<16 {
			return nil, nil, fmt.Errorf("input %q has %d values per row; at most %d in a CSV", in.GetName(), width, 1<<16)
		}
		proto.Inputs[in.GetName()] = make([]api.Value, width)
		types[in.GetName()] = tensor.Datatype(in.GetDatatype())
	}
	schema := schemaOf(proto, ref)
	for i, c := range schema {
		if c.Kind == "input" {
			schema[i].Datatype = string(types[c.Tensor])
		}
	}

	// A spreadsheet's CSV export often starts with a UTF-8 byte order mark.
	cr := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf"))))
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	at := map[string]int{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		if _, dup := at[h]; dup {
			return nil, nil, fmt.Errorf("header: column %q appears twice", h)
		}
		at[h] = i
	}
	var missing []string
	for _, c := range schema {
		if _, ok := at[c.Name]; !ok {
			missing = append(missing, c.Name)
		}
	}
	if len(missing) > 0 {
		var want []string
		for _, c := range schema {
			want = append(want, c.Name)
		}
		return nil, nil, fmt.Errorf("header lacks %s (the model's inputs and the label: %s)", strings.Join(missing, ", "), strings.Join(want, ","))
	}

	var rows []api.DatasetRow
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		line, _ := cr.FieldPos(0)
		r := api.DatasetRow{InferenceID: "base-" + strconv.Itoa(len(rows)+1), Inputs: map[string][]api.Value{}}
		for _, c := range schema {
			cell := strings.TrimSpace(rec[at[c.Name]])
			if cell == "" {
				return nil, nil, fmt.Errorf("line %d: column %s is empty", line, c.Name)
			}
			if c.Kind == "label" {
				l, err := strconv.ParseInt(cell, 10, 64)
				if err != nil {
					return nil, nil, fmt.Errorf("line %d: label %q is not an integer class", line, cell)
				}
				r.Label = &l
				continue
			}
			v, err := cellValue(cell, types[c.Tensor])
			if err != nil {
				return nil, nil, fmt.Errorf("line %d: column %s: %w", line, c.Name, err)
			}
			if r.Inputs[c.Tensor] == nil {
				r.Inputs[c.Tensor] = make([]api.Value, len(proto.Inputs[c.Tensor]))
			}
			r.Inputs[c.Tensor][c.Index] = v
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return nil, nil, errors.New("no rows after the header")
	}
	return rows, schema, nil
}

// cellValue is a CSV cell as a value of datatype d, as a captured row
// holds it.
func cellValue(cell string, d tensor.Datatype) (api.Value, error) {
	switch {
	case d == tensor.Bytes:
		return cell, nil
	case d == tensor.Bool:
		b, err := strconv.ParseBool(cell)
		if err != nil {
			return nil, fmt.Errorf("%q is not a boolean", cell)
		}
		return b, nil
	case d.IsInteger():
		if lo, hi, ok := tensor.IntRange(d); ok {
			v, err := strconv.ParseInt(cell, 10, 64)
			if err != nil || v < lo || v > hi {
				return nil, fmt.Errorf("%q is not a %s", cell, d)
			}
			return v, nil
		}
		hi, _ := tensor.UintMax(d)
		v, err := strconv.ParseUint(cell, 10, 64)
		if err != nil || v > hi {
			return nil, fmt.Errorf("%q is not a %s", cell, d)
		}
		return v, nil
	}
	f, err := strconv.ParseFloat(cell, 64)
	if err != nil {
		return nil, fmt.Errorf("%q is not a number", cell)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return number(f), nil // counted by validation's non_finite check
	}
	return f, nil
}

// Bases lists model's base datasets, oldest first.
func (s *Service) Bases(model string) ([]api.BaseDataset, error) {
	if err := topics.ValidModelName(model); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	return s.bases(model)
}

func (s *Service) bases(model string) ([]api.BaseDataset, error) {
	var out []api.BaseDataset
	err := s.opts.KV.Scan(prefixBase+model+"/", func(key string, val []byte) error {
		var b api.BaseDataset
		if err := json.Unmarshal(val, &b); err != nil {
			s.log.Warn("base dataset record unreadable; skipped", "key", key, "err", err)
			return nil
		}
		out = append(out, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: list base datasets: %w", err)
	}
	slices.SortFunc(out, func(a, b api.BaseDataset) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Base returns one of model's base datasets by its id (the sha256) or 8+
// hex digits of it.
func (s *Service) Base(model, ref string) (api.BaseDataset, error) {
	list, err := s.Bases(model)
	if err != nil {
		return api.BaseDataset{}, err
	}
	var found []api.BaseDataset
	if len(ref) >= 8 {
		for _, b := range list {
			if strings.HasPrefix(b.ID, strings.ToLower(ref)) {
				found = append(found, b)
			}
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return api.BaseDataset{}, api.Errorf(api.ErrNotFound, "model %s has no base dataset %q (want 8+ hex digits of its id; edgefleet data bases %s)", model, ref, model)
	}
	return api.BaseDataset{}, api.Errorf(api.ErrInvalid, "%q names %d base datasets of %s; give more of the id", ref, len(found), model)
}

// ExportBase writes a base dataset's canonical JSON lines to w.
func (s *Service) ExportBase(model, ref string, w io.Writer) error {
	b, err := s.Base(model, ref)
	if err != nil {
		return err
	}
	f, err := os.Open(s.datasetPath(b.ID))
	if err != nil {
		return fmt.Errorf("data: open base dataset %s: %w", b.ID[:12], err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// DeleteBase deletes a base dataset (its record, and its file unless a
// dataset of another model has the same bytes). A retrain policy naming
// it fails its next job with the reason.
func (s *Service) DeleteBase(model, ref string) (api.BaseDataset, error) {
	b, err := s.Base(model, ref)
	if err != nil {
		return api.BaseDataset{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.opts.KV.Delete(baseKey(model, b.ID)); err != nil {
		return api.BaseDataset{}, fmt.Errorf("data: delete base dataset: %w", err)
	}
	if !s.sharedFile(model, b.ID) && !s.sharedBase(model, b.ID) {
		if err := os.Remove(s.datasetPath(b.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return api.BaseDataset{}, fmt.Errorf("data: delete base dataset file: %w", err)
		}
	}
	s.log.Info("base dataset deleted", "model", model, "id", b.ID)
	return b, nil
}

// sharedBase reports whether another model has a base dataset with the
// same bytes.
func (s *Service) sharedBase(model, sum string) bool {
	shared := false
	_ = s.opts.KV.Scan(prefixBase, func(key string, _ []byte) error {
		if !strings.HasPrefix(key, prefixBase+model+"/") && strings.HasSuffix(key, "/"+sum) {
			shared = true
		}
		return nil
	})
	return shared
}
