package data

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Build makes a dataset of model's captured rows in [req.Since, req.Until):
// rows sorted by time, device, inference id and row, written as canonical
// JSON lines and named by their sha256. The same rows give the same
// dataset: an existing version with that sha256 is returned as it is.
// Otherwise it becomes the model's next version, with its validation
// report, and versions beyond DatasetsKept (the oldest) are deleted.
// It stops with ctx's error when ctx ends (between rows, and before the
// dataset is recorded).
func (s *Service) Build(ctx context.Context, model string, req api.DatasetRequest) (api.Dataset, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.Dataset{}, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	now := s.opts.Clock().UTC()
	until := req.Until
	if until.IsZero() {
		until = now
	}
	if !req.Since.IsZero() && !req.Since.Before(until) {
		return api.Dataset{}, api.Errorf(api.ErrInvalid, "since %s is not before until %s", req.Since.Format(time.RFC3339), until.Format(time.RFC3339))
	}
	rows, err := s.rows(ctx, model, req.Since, until)
	if err != nil {
		return api.Dataset{}, err
	}
	if len(rows) == 0 {
		return api.Dataset{}, api.Errorf(api.ErrNotFound, "no captured rows of model %s between %s and %s (is a capture policy set? edgefleet data policy %s)",
			model, fmtTime(req.Since), until.Format(time.RFC3339), model)
	}
	ds := api.Dataset{Model: model, Created: now, Since: req.Since.UTC(), Until: until.UTC()}
	versions := map[string]int{}
	sites, devices := map[string]bool{}, map[string]bool{}
	for _, r := range rows {
		versions[r.ModelVersion]++
		devices[r.Device] = true
		if r.Site != "" {
			sites[r.Site] = true
		}
		if r.Label != nil {
			ds.Labelled++
		}
	}
	ds.Rows = len(rows)
	ds.First, ds.Last = rows[0].Time, rows[len(rows)-1].Time
	ds.ModelVersions, ds.Sites, ds.Devices = keys(versions), keys(sites), keys(devices)
	// Column names and ranges come from the reference statistics of the
	// version that answered most rows.
	common := ds.ModelVersions[0]
	for v, n := range versions {
		if n > versions[common] || n == versions[common] && v < common {
			common = v
		}
	}
	ref, _ := s.opts.Models.Reference(model, common)
	ds.Schema = schemaOf(rows[0], ref)

	var body bytes.Buffer
	for _, r := range rows {
		line, err := json.Marshal(r)
		if err != nil {
			return api.Dataset{}, fmt.Errorf("data: encode row: %w", err)
		}
		body.Write(line)
		body.WriteByte('\n')
	}
	sum := sha256.Sum256(body.Bytes())
	ds.SHA256, ds.Bytes = hex.EncodeToString(sum[:]), int64(body.Len())
	ds.Validation = validate(rows, ds.Schema, ref)
	if err := ctx.Err(); err != nil {
		return api.Dataset{}, fmt.Errorf("data: build dataset: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	existing, err := s.list(model)
	if err != nil {
		return api.Dataset{}, err
	}
	for _, e := range existing {
		if e.SHA256 == ds.SHA256 {
			return e, nil
		}
	}
	if err := writeFileAtomic(s.datasetPath(ds.SHA256), body.Bytes()); err != nil {
		return api.Dataset{}, fmt.Errorf("data: write dataset: %w", err)
	}
	ds.Version = 1
	if len(existing) > 0 {
		ds.Version = existing[len(existing)-1].Version + 1
	}
	if err := s.opts.KV.SetJSON(datasetKey(model, ds.Version), ds, true); err != nil {
		return api.Dataset{}, fmt.Errorf("data: store dataset: %w", err)
	}
	s.log.Info("dataset built", "model", model, "version", ds.Version, "rows", ds.Rows, "labelled", ds.Labelled,
		"sha256", ds.SHA256, "passed", ds.Validation.Passed)
	if err := s.prune(model, append(existing, ds)); err != nil {
		s.log.Error("dataset retention failed", "model", model, "err", err)
	}
	return ds, nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "the oldest row kept"
	}
	return t.UTC().Format(time.RFC3339)
}

func datasetKey(model string, version int) string {
	return fmt.Sprintf("%s%s/%08d", prefixDataset, model, version)
}

func keys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// rows returns model's captured rows with a time in [since, until), in
// dataset order.
func (s *Service) rows(ctx context.Context, model string, since, until time.Time) ([]api.DatasetRow, error) {
	var out []api.DatasetRow
	err := s.opts.KV.Scan(prefixRow+model+"/", func(key string, val []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		sr, err := decodeStored(val)
		if err != nil {
			s.log.Warn("stored capture row unreadable; skipped", "key", key, "err", err)
			return nil
		}
		t := time.UnixMilli(sr.Row.TimeUnixMs).UTC()
		if (!since.IsZero() && t.Before(since)) || !t.Before(until) {
			return nil
		}
		dr := api.DatasetRow{Time: t, Device: sr.Device, Site: sr.Site, ModelVersion: sr.Row.ModelVersion,
			InferenceID: sr.Row.InferenceId, Row: sr.Row.Row, Inputs: values(sr.Row.Inputs), Outputs: values(sr.Row.Outputs)}
		if sr.Row.Labelled {
			l := sr.Row.Label
			dr.Label = &l
		}
		out = append(out, dr)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: read rows: %w", err)
	}
	slices.SortFunc(out, func(a, b api.DatasetRow) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.Device, b.Device), cmp.Compare(a.InferenceID, b.InferenceID), cmp.Compare(a.Row, b.Row))
	})
	return out, nil
}

// values converts a row's tensors to JSON-friendly element lists.
func values(ts []*efpb.Tensor) map[string][]api.Value {
	out := make(map[string][]api.Value, len(ts))
	for _, t := range ts {
		var vs []api.Value
		switch {
		case len(t.BytesData) > 0:
			for _, b := range t.BytesData {
				vs = append(vs, string(b))
			}
		case len(t.DoubleData) > 0:
			for _, v := range t.DoubleData {
				vs = append(vs, number(v))
			}
		case len(t.IntData) > 0:
			for _, v := range t.IntData {
				vs = append(vs, v)
			}
		case len(t.UintData) > 0:
			for _, v := range t.UintData {
				vs = append(vs, v)
			}
		case len(t.BoolData) > 0:
			for _, v := range t.BoolData {
				vs = append(vs, v)
			}
		default:
			for _, v := range t.Data {
				vs = append(vs, number(float64(v)))
			}
		}
		out[t.Name] = vs
	}
	return out
}

// number is v, or its name when JSON cannot hold it.
func number(v float64) api.Value {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return v
}

// schemaOf names the columns of a row: inputs (in name order; reference
// feature names where the manifest gives them), outputs, the label.
func schemaOf(r api.DatasetRow, ref []*efpb.FeatureStats) []api.DatasetColumn {
	var cols []api.DatasetColumn
	names := map[string][]string{} // input → feature names by column
	first := ""
	for _, in := range keys(r.Inputs) {
		if first == "" {
			first = in
		}
	}
	for _, f := range ref {
		in := f.GetInput()
		if in == "" && len(r.Inputs) == 1 {
			in = first
		}
		names[in] = append(names[in], f.GetName())
	}
	for _, in := range keys(r.Inputs) {
		for i, v := range r.Inputs[in] {
			name := fmt.Sprintf("%s[%d]", in, i)
			if n := names[in]; len(n) == len(r.Inputs[in]) && n[i] != "" {
				name = n[i]
			}
			cols = append(cols, api.DatasetColumn{Name: name, Tensor: in, Index: i, Datatype: datatypeOf(v), Kind: "input"})
		}
	}
	for _, out := range keys(r.Outputs) {
		for i, v := range r.Outputs[out] {
			cols = append(cols, api.DatasetColumn{Name: fmt.Sprintf("out.%s[%d]", out, i), Tensor: out, Index: i, Datatype: datatypeOf(v), Kind: "output"})
		}
	}
	return append(cols, api.DatasetColumn{Name: "label", Datatype: "INT64", Kind: "label"})
}

func datatypeOf(v api.Value) string {
	switch v.(type) {
	case string:
		return "BYTES"
	case bool:
		return "BOOL"
	case int64:
		return "INT64"
	case uint64:
		return "UINT64"
	}
	return "FP64"
}

// List returns model's datasets, oldest first.
func (s *Service) List(model string) ([]api.Dataset, error) {
	if err := topics.ValidModelName(model); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	return s.list(model)
}

func (s *Service) list(model string) ([]api.Dataset, error) {
	var out []api.Dataset
	err := s.opts.KV.Scan(prefixDataset+model+"/", func(key string, val []byte) error {
		var ds api.Dataset
		if err := json.Unmarshal(val, &ds); err != nil {
			return fmt.Errorf("dataset record %s: %w", key, err)
		}
		out = append(out, ds)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: list datasets: %w", err)
	}
	return out, nil
}

// Get returns one dataset: ref is its version number, "latest", or a
// prefix of its sha256 (at least 8 hex digits).
func (s *Service) Get(model, ref string) (api.Dataset, error) {
	list, err := s.List(model)
	if err != nil {
		return api.Dataset{}, err
	}
	if len(list) == 0 {
		return api.Dataset{}, api.Errorf(api.ErrNotFound, "model %s has no datasets (build one: edgefleet data build %s)", model, model)
	}
	if ref == "latest" {
		return list[len(list)-1], nil
	}
	if v, err := strconv.Atoi(ref); err == nil {
		for _, ds := range list {
			if ds.Version == v {
				return ds, nil
			}
		}
		return api.Dataset{}, api.Errorf(api.ErrNotFound, "model %s has no dataset version %d", model, v)
	}
	if len(ref) >= 8 {
		for _, ds := range list {
			if strings.HasPrefix(ds.SHA256, strings.ToLower(ref)) {
				return ds, nil
			}
		}
	}
	return api.Dataset{}, api.Errorf(api.ErrNotFound, "model %s has no dataset %q (want a version number, latest, or 8+ hex digits of its sha256)", model, ref)
}

// Export writes a dataset's rows to w as JSON lines (its exact, hashed
// bytes), CSV (a header from its schema, one line per row) or parquet (a
// flat schema of the same columns; see parquet.go).
func (s *Service) Export(model, ref, format string, w io.Writer) error {
	if err := api.CheckFormat(format); err != nil {
		return err
	}
	ds, err := s.Get(model, ref)
	if err != nil {
		return err
	}
	f, err := os.Open(s.datasetPath(ds.SHA256))
	if err != nil {
		return fmt.Errorf("data: open dataset %s: %w", ds, err)
	}
	defer f.Close()
	switch format {
	case api.FormatJSONL:
		_, err := io.Copy(w, f)
		return err
	case api.FormatParquet:
		return writeParquet(ds, f, w)
	}
	cw := csv.NewWriter(w)
	header := []string{"time", "device", "site", "model_version", "inference_id", "row"}
	for _, c := range ds.Schema {
		header = append(header, c.Name)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var r api.DatasetRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("data: dataset %s: %w", ds, err)
		}
		rec := []string{r.Time.Format(time.RFC3339Nano), r.Device, r.Site, r.ModelVersion, r.InferenceID, strconv.FormatUint(uint64(r.Row), 10)}
		for _, c := range ds.Schema {
			rec = append(rec, cell(r, c))
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("data: read dataset %s: %w", ds, err)
	}
	cw.Flush()
	return cw.Error()
}

func cell(r api.DatasetRow, c api.DatasetColumn) string {
	var vs []api.Value
	switch c.Kind {
	case "label":
		if r.Label == nil {
			return ""
		}
		return strconv.FormatInt(*r.Label, 10)
	case "input":
		vs = r.Inputs[c.Tensor]
	default:
		vs = r.Outputs[c.Tensor]
	}
	if c.Index >= len(vs) {
		return ""
	}
	switch v := vs[c.Index].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

// prune deletes the oldest versions beyond DatasetsKept, and their files
// unless a kept version has the same sha256. Callers hold mu.
func (s *Service) prune(model string, list []api.Dataset) error {
	if len(list) <= s.opts.DatasetsKept {
		return nil
	}
	drop, keep := list[:len(list)-s.opts.DatasetsKept], list[len(list)-s.opts.DatasetsKept:]
	for _, ds := range drop {
		if err := s.opts.KV.Delete(datasetKey(model, ds.Version)); err != nil {
			return err
		}
		if !slices.ContainsFunc(keep, func(k api.Dataset) bool { return k.SHA256 == ds.SHA256 }) && !s.sharedFile(model, ds.SHA256) {
			if err := os.Remove(s.datasetPath(ds.SHA256)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// sharedFile reports whether another model's dataset has the same bytes.
func (s *Service) sharedFile(model, sum string) bool {
	shared := false
	_ = s.opts.KV.Scan(prefixDataset, func(key string, val []byte) error {
		if strings.HasPrefix(key, prefixDataset+model+"/") {
			return nil
		}
		var ds api.Dataset
		if json.Unmarshal(val, &ds) == nil && ds.SHA256 == sum {
			shared = true
		}
		return nil
	})
	return shared
}

// Sweep deletes captured rows, waiting labels and batch names older than
// RowRetention. Datasets are files of their own and are kept by count.
func (s *Service) Sweep() error {
	cutoff := s.opts.Clock().Add(-s.opts.RowRetention).UnixMilli()
	var old []string
	err := s.opts.KV.Scan(prefixRow, func(key string, val []byte) error {
		if sr, err := decodeStored(val); err != nil || sr.Row.TimeUnixMs < cutoff {
			old = append(old, key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("data: sweep rows: %w", err)
	}
	err = s.opts.KV.Scan(prefixLabel, func(key string, val []byte) error {
		var pl pendingLabel
		if json.Unmarshal(val, &pl) != nil || pl.At < cutoff {
			old = append(old, key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("data: sweep labels: %w", err)
	}
	err = s.opts.KV.Scan(prefixSeen, func(key string, val []byte) error {
		if len(val) != 8 || int64(beUint64(val)) < cutoff {
			old = append(old, key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("data: sweep batch names: %w", err)
	}
	for chunk := range slices.Chunk(old, 1000) {
		err := s.opts.KV.Update(func(tx *store.Tx) error {
			for _, k := range chunk {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}, false)
		if err != nil {
			return fmt.Errorf("data: sweep: %w", err)
		}
	}
	if len(old) > 0 {
		s.log.Info("capture retention", "deleted", len(old), "older_than", s.opts.RowRetention)
	}
	return nil
}

// writeFileAtomic writes path through a synced temporary file and rename.
func writeFileAtomic(path string, b []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil // content-addressed: the same bytes are there
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".dataset-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
