package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/parquet-go/parquet-go"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// parquetSchema is a dataset's schema as a flat parquet schema: the row's
// identity (time as a UTC millisecond timestamp, device, site, model
// version, inference id, row) and one optional column per schema column,
// named as in CSV. parquet orders a group's columns by name.
func parquetSchema(ds api.Dataset) *parquet.Schema {
	g := parquet.Group{
		"time":          parquet.Timestamp(parquet.Millisecond),
		"device":        parquet.String(),
		"site":          parquet.String(),
		"model_version": parquet.String(),
		"inference_id":  parquet.String(),
		"row":           parquet.Int(64),
	}
	for _, c := range ds.Schema {
		var n parquet.Node
		switch c.Datatype {
		case "BYTES":
			n = parquet.String()
		case "BOOL":
			n = parquet.Leaf(parquet.BooleanType)
		case "INT64", "UINT64":
			n = parquet.Int(64)
		default:
			n = parquet.Leaf(parquet.DoubleType)
		}
		g[c.Name] = parquet.Optional(n)
	}
	return parquet.NewSchema(ds.Model+"_dataset", g)
}

// writeParquet converts a dataset's JSON lines to one parquet file.
func writeParquet(ds api.Dataset, f *os.File, w io.Writer) error {
	schema := parquetSchema(ds)
	cols := schema.Columns()
	byName := map[string]api.DatasetColumn{}
	for _, c := range ds.Schema {
		byName[c.Name] = c
	}
	pw := parquet.NewWriter(w, schema)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	batch := make([]parquet.Row, 0, 256)
	flush := func() error {
		if _, err := pw.WriteRows(batch); err != nil {
			return fmt.Errorf("data: parquet: %w", err)
		}
		batch = batch[:0]
		return nil
	}
	for sc.Scan() {
		var r api.DatasetRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("data: dataset %s: %w", ds, err)
		}
		row := make(parquet.Row, len(cols))
		for i, path := range cols {
			name := path[0]
			switch name {
			case "time":
				row[i] = parquet.Int64Value(r.Time.UnixMilli()).Level(0, 0, i)
			case "device":
				row[i] = parquet.ByteArrayValue([]byte(r.Device)).Level(0, 0, i)
			case "site":
				row[i] = parquet.ByteArrayValue([]byte(r.Site)).Level(0, 0, i)
			case "model_version":
				row[i] = parquet.ByteArrayValue([]byte(r.ModelVersion)).Level(0, 0, i)
			case "inference_id":
				row[i] = parquet.ByteArrayValue([]byte(r.InferenceID)).Level(0, 0, i)
			case "row":
				row[i] = parquet.Int64Value(int64(r.Row)).Level(0, 0, i)
			default:
				row[i] = parquetCell(r, byName[name]).Level(0, 1, i)
				if row[i].IsNull() {
					row[i] = parquet.NullValue().Level(0, 0, i)
				}
			}
		}
		batch = append(batch, row)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("data: read dataset %s: %w", ds, err)
	}
	if err := flush(); err != nil {
		return err
	}
	return pw.Close()
}

// parquetCell is one optional cell (a null value when absent, or when a
// number is not finite: "NaN" and infinities stay in jsonl and CSV).
func parquetCell(r api.DatasetRow, c api.DatasetColumn) parquet.Value {
	if c.Kind == "label" {
		if r.Label == nil {
			return parquet.NullValue()
		}
		return parquet.Int64Value(*r.Label)
	}
	vs := r.Inputs[c.Tensor]
	if c.Kind == "output" {
		vs = r.Outputs[c.Tensor]
	}
	if c.Index >= len(vs) {
		return parquet.NullValue()
	}
	switch v := vs[c.Index].(type) {
	case float64:
		if c.Datatype == "INT64" || c.Datatype == "UINT64" {
			return parquet.Int64Value(int64(v))
		}
		return parquet.DoubleValue(v)
	case string:
		if c.Datatype == "BYTES" {
			return parquet.ByteArrayValue([]byte(v))
		}
		return parquet.NullValue() // NaN, ±Inf
	case bool:
		if c.Datatype == "BOOL" {
			return parquet.BooleanValue(v)
		}
	}
	return parquet.NullValue()
}
