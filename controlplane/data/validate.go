package data

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Validation thresholds.
const (
	// outOfRangeWarn: a column with more of its values outside the
	// reference range than this fraction is reported (drift, or bad data).
	outOfRangeWarn = 0.05
	// duplicateFail: more exact duplicate input rows than this fraction
	// fails the dataset (a replayed or stuck source).
	duplicateFail = 0.2
	// minorityWarn: a class below this fraction of the labelled rows is
	// reported.
	minorityWarn = 0.01
)

// validate checks rows against their schema (the first row's) and the
// reference statistics. A check of severity fail that does not pass fails
// the report; warnings are reported and pass.
func validate(rows []api.DatasetRow, schema []api.DatasetColumn, ref []*efpb.FeatureStats) api.Validation {
	v := api.Validation{Passed: true, Labels: map[string]int{}}
	add := func(name, sev string, passed bool, format string, args ...any) {
		v.Checks = append(v.Checks, api.ValidationCheck{Name: name, Severity: sev, Passed: passed, Detail: fmt.Sprintf(format, args...)})
		if !passed && sev == api.SeverityFail {
			v.Passed = false
		}
	}
	want := map[string]int{} // input → elements
	for _, c := range schema {
		if c.Kind == "input" {
			want[c.Tensor] = max(want[c.Tensor], c.Index+1)
		}
	}
	refs := referenceByColumn(schema, ref)

	// Columns: numeric input columns' figures.
	var cols []*api.ColumnStats
	colOf := map[[2]any]*api.ColumnStats{}
	for _, c := range schema {
		if c.Kind != "input" || c.Datatype == "BYTES" || c.Datatype == "BOOL" {
			continue
		}
		cs := &api.ColumnStats{Name: c.Name, Min: math.Inf(1), Max: math.Inf(-1)}
		if f := refs[c.Name]; f != nil {
			cs.HasReference, cs.RefMin, cs.RefMax, cs.RefMean = true, f.GetMin(), f.GetMax(), f.GetMean()
		}
		cols = append(cols, cs)
		colOf[[2]any{c.Tensor, c.Index}] = cs
	}

	badSchema, missing, nonFinite, dups := 0, 0, 0, 0
	seen := map[string]bool{}
	for _, r := range rows {
		shapeOK := len(r.Inputs) == len(want)
		for in, n := range want {
			got := len(r.Inputs[in])
			if got != n {
				shapeOK = false
			}
			if got < n {
				missing += n - got
			}
		}
		if !shapeOK {
			badSchema++
		}
		var key strings.Builder
		for in := range want {
			for i, val := range r.Inputs[in] {
				fmt.Fprintf(&key, "%s=%v;", in, val)
				cs := colOf[[2]any{in, i}]
				f, ok := asFloat(val)
				if !ok {
					if s, isStr := val.(string); isStr && (s == "NaN" || s == "+Inf" || s == "-Inf") {
						nonFinite++
						if cs != nil {
							cs.NonFinite++
						}
					}
					continue
				}
				if cs == nil {
					continue
				}
				cs.Count++
				cs.Min, cs.Max = math.Min(cs.Min, f), math.Max(cs.Max, f)
				cs.Mean += f
				if cs.HasReference && (f < cs.RefMin || f > cs.RefMax) {
					cs.OutOfRange++
				}
			}
		}
		if k := key.String(); seen[k] {
			dups++
		} else {
			seen[k] = true
		}
		if r.Label != nil {
			v.Labels[strconv.FormatInt(*r.Label, 10)]++
		}
	}
	for _, cs := range cols {
		cs.Missing = len(rows) - cs.Count - cs.NonFinite
		if cs.Count > 0 {
			cs.Mean /= float64(cs.Count)
		} else {
			cs.Min, cs.Max = 0, 0
		}
		v.Columns = append(v.Columns, *cs)
	}
	v.Duplicates = dups

	add("schema", api.SeverityFail, badSchema == 0, "%d of %d rows differ from the schema (%d inputs)", badSchema, len(rows), len(want))
	add("missing", api.SeverityFail, missing == 0, "%d input values missing", missing)
	add("non_finite", api.SeverityFail, nonFinite == 0, "%d input values are NaN or infinite", nonFinite)
	var far []string
	for _, cs := range v.Columns {
		if cs.HasReference && cs.Count > 0 && float64(cs.OutOfRange)/float64(cs.Count) > outOfRangeWarn {
			far = append(far, fmt.Sprintf("%s %.0f%%", cs.Name, 100*float64(cs.OutOfRange)/float64(cs.Count)))
		}
	}
	switch {
	case len(refs) == 0:
		add("ranges", api.SeverityWarn, true, "no reference statistics in the manifest: ranges not checked")
	case len(far) > 0:
		add("ranges", api.SeverityWarn, false, "outside the reference range in more than %.0f%% of values: %s", 100*outOfRangeWarn, strings.Join(far, ", "))
	default:
		add("ranges", api.SeverityWarn, true, "every column within the reference range (up to %.0f%% outside)", 100*outOfRangeWarn)
	}
	labelled := 0
	for _, n := range v.Labels {
		labelled += n
	}
	switch {
	case labelled == 0:
		add("labels", api.SeverityFail, false, "no labelled rows: a retrain needs ground truth (send feedback to the agents)")
	case len(v.Labels) < 2:
		add("labels", api.SeverityWarn, false, "%d labelled rows, all of one class", labelled)
	default:
		minority := labelled
		for _, n := range v.Labels {
			minority = min(minority, n)
		}
		add("labels", api.SeverityWarn, float64(minority)/float64(labelled) >= minorityWarn,
			"%d labelled rows in %d classes; the smallest class has %d", labelled, len(v.Labels), minority)
	}
	add("duplicates", api.SeverityFail, float64(dups) <= duplicateFail*float64(len(rows)),
		"%d of %d rows repeat an earlier row's inputs exactly (fails above %.0f%%)", dups, len(rows), 100*duplicateFail)
	return v
}

// referenceByColumn maps column names to their reference statistics.
func referenceByColumn(schema []api.DatasetColumn, ref []*efpb.FeatureStats) map[string]*efpb.FeatureStats {
	byName := map[string]*efpb.FeatureStats{}
	for _, f := range ref {
		byName[f.GetName()] = f
	}
	out := map[string]*efpb.FeatureStats{}
	for _, c := range schema {
		if f := byName[c.Name]; f != nil && c.Kind == "input" {
			out[c.Name] = f
		}
	}
	return out
}

func asFloat(v api.Value) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}
