package api

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Field data capture and datasets (issue 13). Kept in this file, with its
// routes, so other API work merges cleanly.

// Path patterns of the capture and dataset routes.
const (
	PathModelCapture  = "/api/v1/models/{name}/capture"
	PathDatasets      = "/api/v1/models/{name}/datasets"
	PathDataset       = "/api/v1/models/{name}/datasets/{version}"
	PathDatasetExport = "/api/v1/models/{name}/datasets/{version}/export"
	PathBaseDatasets  = "/api/v1/models/{name}/base-datasets"
	PathBaseDataset   = "/api/v1/models/{name}/base-datasets/{id}"
)

// dataRoutes are the capture and dataset routes: reading needs viewer,
// changing a policy or building a dataset operator.
func dataRoutes() []Route {
	return []Route{
		{Method: "GET", Pattern: PathModelCapture, Role: RoleViewer, Summary: "a model's capture policy"},
		{Method: "PUT", Pattern: PathModelCapture, Role: RoleOperator, Summary: "set a model's capture policy (devices get it signed)"},
		{Method: "GET", Pattern: PathDatasets, Role: RoleViewer, Summary: "list a model's datasets"},
		{Method: "POST", Pattern: PathDatasets, Role: RoleOperator, Summary: "build a dataset from captured rows"},
		{Method: "GET", Pattern: PathDataset, Role: RoleViewer, Summary: "a dataset with its validation report"},
		{Method: "GET", Pattern: PathDatasetExport, Role: RoleViewer, Summary: "export a dataset's rows (csv or jsonl)"},
		{Method: "GET", Pattern: PathBaseDatasets, Role: RoleViewer, Summary: "list a model's uploaded base datasets"},
		{Method: "POST", Pattern: PathBaseDatasets, Role: RoleOperator, Summary: "upload a base dataset (CSV of the model's inputs and a label)"},
		{Method: "GET", Pattern: PathBaseDataset, Role: RoleViewer, Summary: "a base dataset with its validation report"},
		{Method: "DELETE", Pattern: PathBaseDataset, Role: RoleOperator, Summary: "delete a base dataset"},
	}
}

// CapturePolicy says which inferences of a model devices keep for
// datasets. The zero value (sample_rate 0) is capture off.
type CapturePolicy struct {
	// SampleRate in [0, 1] is the fraction of inference requests captured
	// (all rows of a request); 0 turns capture off.
	SampleRate float64 `json:"sample_rate"`
	// MaxRowsPerHour and MaxBytesPerHour bound what each device captures
	// of the model per hour; 0 means the agent's default (3600 rows,
	// 8 MiB).
	MaxRowsPerHour  uint32 `json:"max_rows_per_hour,omitempty"`
	MaxBytesPerHour uint64 `json:"max_bytes_per_hour,omitempty"`
	// DropInputs are never captured; HashInputs are replaced by a salted
	// HMAC-SHA256 of each element (the salt is the model's own, made by
	// the control plane and never shown).
	DropInputs []string `json:"drop_inputs,omitempty"`
	HashInputs []string `json:"hash_inputs,omitempty"`
	// LabelledOnly keeps a row only once feedback labels it.
	LabelledOnly bool `json:"labelled_only,omitempty"`
}

// Check reports what is wrong with p, for the user.
func (p CapturePolicy) Check() error {
	if math.IsNaN(p.SampleRate) || p.SampleRate < 0 || p.SampleRate > 1 {
		return Errorf(ErrInvalid, "capture policy: sample_rate %v must be between 0 (off) and 1", p.SampleRate)
	}
	for _, in := range p.DropInputs {
		if slices.Contains(p.HashInputs, in) {
			return Errorf(ErrInvalid, "capture policy: input %q is both dropped and hashed; pick one", in)
		}
	}
	for _, in := range append(slices.Clone(p.DropInputs), p.HashInputs...) {
		if in == "" || len(in) > 256 {
			return Errorf(ErrInvalid, "capture policy: input name %q must be 1..256 bytes", in)
		}
	}
	if len(p.DropInputs)+len(p.HashInputs) > 256 {
		return Errorf(ErrInvalid, "capture policy: at most 256 inputs may be dropped or hashed")
	}
	return nil
}

// CaptureStatus is a model's capture policy and what was captured.
type CaptureStatus struct {
	Model  string        `json:"model"`
	Policy CapturePolicy `json:"policy"`
	// Enabled is SampleRate > 0.
	Enabled bool `json:"enabled"`
	// Salted says the model has a hashing salt (made with the first
	// policy that hashes an input); the salt itself is never shown.
	Salted bool `json:"salted"`
	// UpdatedAt is when the policy was last set.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// Rows and Labelled count the captured rows stored now (after
	// retention); Devices is how many devices sent them.
	Rows     uint64 `json:"rows"`
	Labelled uint64 `json:"labelled"`
	Devices  int    `json:"devices"`
	// DroppedOnDevices sums the devices' reported drops (hourly budget,
	// full queue).
	DroppedOnDevices uint64 `json:"dropped_on_devices"`
}

// DatasetRequest is the body of POST /api/v1/models/{name}/datasets: the
// captured rows in [since, until) become a dataset. Zero since means
// from the oldest row kept, zero until means now.
type DatasetRequest struct {
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
}

// Dataset is one version of a model's dataset: an immutable set of
// captured rows, named by the sha256 of its canonical JSON lines (the
// export with format jsonl). Building the same rows again returns the
// existing version.
type Dataset struct {
	Model   string    `json:"model"`
	Version int       `json:"version"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
	// Since and Until are what was asked for; First and Last the times
	// of the oldest and newest row in it.
	Since    time.Time `json:"since,omitzero"`
	Until    time.Time `json:"until"`
	First    time.Time `json:"first,omitzero"`
	Last     time.Time `json:"last,omitzero"`
	Rows     int       `json:"rows"`
	Labelled int       `json:"labelled"`
	Bytes    int64     `json:"bytes"`
	// ModelVersions are the versions that answered the rows.
	ModelVersions []string        `json:"model_versions"`
	Sites         []string        `json:"sites"`
	Devices       []string        `json:"devices"`
	Schema        []DatasetColumn `json:"schema"`
	Validation    Validation      `json:"validation"`
}

// BaseDataset is a set of labelled rows a user uploaded for a model (a
// CSV of its input columns and "label"), that a retrain policy can join
// with the captured rows it trains on. Named, like a dataset, by the
// sha256 of its canonical JSON lines (ID): the same rows are the same
// base dataset.
type BaseDataset struct {
	Model string `json:"model"`
	// ID is the sha256 of the rows as canonical JSON lines.
	ID string `json:"id"`
	// Name is what the uploader called it (optional).
	Name     string    `json:"name,omitempty"`
	Created  time.Time `json:"created"`
	Rows     int       `json:"rows"`
	Labelled int       `json:"labelled"`
	Bytes    int64     `json:"bytes"`
	// ModelVersion is the version whose inputs it was checked against.
	ModelVersion string          `json:"model_version"`
	Schema       []DatasetColumn `json:"schema"`
	Validation   Validation      `json:"validation"`
}

// MaxBaseName bounds a base dataset's name.
const MaxBaseName = 256

// DatasetColumn is one column of a dataset: an input or output element,
// or the label.
type DatasetColumn struct {
	// Name is the column's name in CSV: the reference feature name for a
	// model input column when the manifest names it, else
	// "input[i]"; outputs are "out.<name>[i]".
	Name string `json:"name"`
	// Tensor and Index are where the value comes from ("" for label).
	Tensor   string `json:"tensor,omitempty"`
	Index    int    `json:"index"`
	Datatype string `json:"datatype"`
	// Kind is "input", "output" or "label".
	Kind string `json:"kind"`
}

// Validation severities.
const (
	SeverityFail = "fail"
	SeverityWarn = "warn"
)

// Validation is a dataset's check before use: a retrain refuses a dataset
// whose report does not pass.
type Validation struct {
	Passed bool              `json:"passed"`
	Checks []ValidationCheck `json:"checks"`
	// Columns has per-column figures for the numeric input columns.
	Columns []ColumnStats `json:"columns,omitempty"`
	// Labels counts labelled rows per class ("0", "1", ...).
	Labels map[string]int `json:"labels,omitempty"`
	// Duplicates is the number of rows whose inputs repeat an earlier
	// row's exactly.
	Duplicates int `json:"duplicates"`
}

// ValidationCheck is one check of a validation report.
type ValidationCheck struct {
	Name     string `json:"name"`
	Passed   bool   `json:"passed"`
	Severity string `json:"severity"`
	Detail   string `json:"detail"`
}

// ColumnStats are one numeric input column's figures, with the manifest's
// reference range when it has one.
type ColumnStats struct {
	Name      string  `json:"name"`
	Count     int     `json:"count"`
	Missing   int     `json:"missing"`
	NonFinite int     `json:"non_finite"`
	Min       float64 `json:"min"`
	Max       float64 `json:"max"`
	Mean      float64 `json:"mean"`
	// OutOfRange counts values outside [RefMin, RefMax] of the reference
	// statistics (when HasReference).
	HasReference bool    `json:"has_reference"`
	RefMin       float64 `json:"ref_min,omitempty"`
	RefMax       float64 `json:"ref_max,omitempty"`
	RefMean      float64 `json:"ref_mean,omitempty"`
	OutOfRange   int     `json:"out_of_range"`
}

// Dataset export formats.
const (
	FormatCSV     = "csv"
	FormatJSONL   = "jsonl"
	FormatParquet = "parquet"
)

// CheckFormat reports an export format this control plane cannot write.
func CheckFormat(f string) error {
	switch f {
	case FormatCSV, FormatJSONL, FormatParquet:
		return nil
	}
	return Errorf(ErrInvalid, "format %q: want %s, %s or %s", f, FormatCSV, FormatJSONL, FormatParquet)
}

// DatasetRow is one line of a dataset's JSON lines export.
type DatasetRow struct {
	Time         time.Time          `json:"time"`
	Device       string             `json:"device"`
	Site         string             `json:"site,omitempty"`
	ModelVersion string             `json:"model_version"`
	InferenceID  string             `json:"inference_id"`
	Row          uint32             `json:"row"`
	Inputs       map[string][]Value `json:"inputs"`
	Outputs      map[string][]Value `json:"outputs"`
	Label        *int64             `json:"label,omitempty"`
}

// Value is one tensor element in a dataset row: a number (NaN and
// infinities as the strings "NaN", "+Inf", "-Inf") or, for BYTES and
// hashed inputs, a string.
type Value = any

// String of a dataset reference for messages.
func (d Dataset) String() string {
	return fmt.Sprintf("%s dataset %d (%s)", d.Model, d.Version, d.SHA256[:min(12, len(d.SHA256))])
}
