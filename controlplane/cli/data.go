package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Field data capture and datasets (issue 13).

func (a *app) dataCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "data <command>",
		Short: "field data capture and datasets",
		Long: `Devices capture the inputs, prediction and (from feedback) label of sampled inferences of a
model once it has a capture policy; capture is off unless set. Captured rows are uploaded in
batches, stored once and acknowledged, and become versioned, content-addressed datasets
with a validation report (schema, missing and non-finite values, ranges against the
manifest's reference statistics, label balance, duplicates).`,
		Example: `  edgefleet data policy fraud --sample-rate 0.1 --hash merchant --rows-per-hour 600
  edgefleet data build fraud --since 24h
  edgefleet data list fraud
  edgefleet data show fraud latest
  edgefleet data export fraud --since 24h --format csv --out fraud.csv
  edgefleet data upload fraud base.csv --name labelled-2025`,
	}, a.dataPolicyCmd(), a.dataBuildCmd(), a.dataListCmd(), a.dataShowCmd(), a.dataExportCmd(),
		a.dataUploadCmd(), a.dataBasesCmd(), a.dataDeleteBaseCmd())
}

func (a *app) dataUploadCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "upload NAME FILE [--name LABEL]",
		Short: "upload a base dataset (CSV of labelled rows) for a model",
		Long: `Uploads FILE, a CSV of labelled rows, as a base dataset of model NAME; a retrain policy can
join it to the captured rows it trains on (edgefleet retrain policy NAME --base-dataset ID).
The header names the model's input columns as a dataset's CSV export names them (the
reference feature names, else input[i]) and "label"; other columns are ignored, so an
exported dataset can be uploaded. Rows are checked like captured ones (each value of its
input's datatype, labels, duplicates) against the newest version of the model; the same
rows are the same base dataset (named by the sha256 of its rows).`,
		Example: `  edgefleet data upload fraud base.csv
  edgefleet data upload fraud labelled-2025.csv --name labelled-2025`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes a model NAME and a CSV FILE, got %d arguments", cmdName(c), len(args))
			}
			return nil
		},
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			f, err := os.Open(pos[1])
			if err != nil {
				return usagef("%v", err)
			}
			defer f.Close()
			c, err := a.client()
			if err != nil {
				return err
			}
			b, err := c.UploadBaseDataset(cmd.Context(), pos[0], name, f)
			if err != nil {
				return fmt.Errorf("data upload %s %s: %w", pos[0], pos[1], err)
			}
			printBase(a.stdout, b)
			return nil
		}),
	}
	c.Flags().StringVar(&name, "name", "", "a `LABEL` for the base dataset")
	return c
}

func printBase(w io.Writer, b api.BaseDataset) {
	label := ""
	if b.Name != "" {
		label = " (" + b.Name + ")"
	}
	fmt.Fprintf(w, "base dataset %s of %s%s: %d labelled rows, %d columns, checked against %s; validation %s\n",
		b.ID, b.Model, label, b.Rows, len(b.Schema), b.ModelVersion, passFail(b.Validation.Passed))
	for _, ch := range b.Validation.Checks {
		if !ch.Passed {
			fmt.Fprintf(w, "    %-4s %-11s %s\n", ch.Severity, ch.Name, ch.Detail)
		}
	}
	fmt.Fprintf(w, "  use it: edgefleet retrain policy %s --trainer ... --base-dataset %s\n", b.Model, b.ID[:12])
}

func (a *app) dataBasesCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "bases NAME",
		Short:   "list a model's base datasets",
		Example: `  edgefleet data bases fraud`,
		Args:    oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.BaseDatasets(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("data bases %s: %w", pos[0], err)
			}
			if len(list) == 0 {
				fmt.Fprintf(a.stdout, "no base datasets of %s (edgefleet data upload %s FILE)\n", pos[0], pos[0])
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROWS\tCHECKED AGAINST\tUPLOADED")
			for _, b := range list {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", b.ID[:12], orNone(b.Name), b.Rows, b.ModelVersion, b.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	}
}

func (a *app) dataDeleteBaseCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete-base NAME ID",
		Short:   "delete a model's base dataset",
		Example: `  edgefleet data delete-base fraud 3f9a0c1d2e4b`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes a model NAME and a base dataset ID, got %d arguments", cmdName(c), len(args))
			}
			return nil
		},
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			b, err := c.DeleteBaseDataset(cmd.Context(), pos[0], pos[1])
			if err != nil {
				return fmt.Errorf("data delete-base %s %s: %w", pos[0], pos[1], err)
			}
			fmt.Fprintf(a.stdout, "base dataset %s of %s deleted\n", b.ID, b.Model)
			return nil
		}),
	}
}

func (a *app) dataPolicyCmd() *cobra.Command {
	var (
		rate              optFloat
		rows              uint32
		bytes             uint64
		drop, hash        stringList
		labelledOnly, off bool
	)
	c := &cobra.Command{
		Use:   "policy NAME [flags]",
		Short: "show or set a model's capture policy",
		Long: `Without flags, shows model NAME's capture policy and what was captured. With flags, sets the
policy (the flags given replace the whole policy) and sends it to every device assigned the
model in a new signed desired state. --off turns capture off.

Inputs named by --hash are replaced on the device by a salted HMAC-SHA256 of each value (the
salt is the model's own, made by the control plane): equal values stay equal, the values
are gone. Inputs named by --drop never leave the device.`,
		Example: `  edgefleet data policy fraud
  edgefleet data policy fraud --sample-rate 0.05 --rows-per-hour 600 --drop card_number
  edgefleet data policy fraud --sample-rate 1 --labelled-only
  edgefleet data policy fraud --off`,
		Args: oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			set := off || rate.v != nil || cmd.Flags().Changed("rows-per-hour") || cmd.Flags().Changed("bytes-per-hour") ||
				len(drop) > 0 || len(hash) > 0 || labelledOnly
			if off && (rate.v != nil || labelledOnly || len(drop) > 0 || len(hash) > 0) {
				return usagef("--off turns capture off; give it alone")
			}
			if set && !off && rate.v == nil {
				return usagef("setting a policy needs --sample-rate (0..1], or --off")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var st api.CaptureStatus
			if set {
				p := api.CapturePolicy{MaxRowsPerHour: rows, MaxBytesPerHour: bytes, DropInputs: drop, HashInputs: hash, LabelledOnly: labelledOnly}
				if rate.v != nil {
					p.SampleRate = *rate.v
				}
				if err := p.Check(); err != nil {
					return usagef("%v", err)
				}
				st, err = c.SetCapturePolicy(cmd.Context(), pos[0], p)
			} else {
				st, err = c.CapturePolicy(cmd.Context(), pos[0])
			}
			if err != nil {
				return fmt.Errorf("data policy %s: %w", pos[0], err)
			}
			printPolicy(a.stdout, st)
			return nil
		}),
	}
	f := c.Flags()
	f.Var(&rate, "sample-rate", "`FRACTION` of inference requests captured, (0, 1]")
	f.Uint32Var(&rows, "rows-per-hour", 0, "`N` rows per device per hour at most (default: the agent's, 3600)")
	f.Uint64Var(&bytes, "bytes-per-hour", 0, "`BYTES` per device per hour at most (default: the agent's, 8 MiB)")
	f.Var(&drop, "drop", "`INPUT` never captured (repeatable)")
	f.Var(&hash, "hash", "`INPUT` captured as salted hashes (repeatable)")
	f.BoolVar(&labelledOnly, "labelled-only", false, "keep a row only once feedback labels it")
	f.BoolVar(&off, "off", false, "turn capture off")
	return c
}

func printPolicy(w io.Writer, st api.CaptureStatus) {
	p := st.Policy
	if !st.Enabled {
		fmt.Fprintf(w, "capture of %s: off\n", st.Model)
	} else {
		fmt.Fprintf(w, "capture of %s: sample rate %g", st.Model, p.SampleRate)
		if p.MaxRowsPerHour > 0 {
			fmt.Fprintf(w, ", at most %d rows", p.MaxRowsPerHour)
		}
		if p.MaxBytesPerHour > 0 {
			fmt.Fprintf(w, ", at most %d bytes", p.MaxBytesPerHour)
		}
		fmt.Fprint(w, " per device per hour")
		if p.LabelledOnly {
			fmt.Fprint(w, ", labelled rows only")
		}
		fmt.Fprintln(w)
		if len(p.DropInputs) > 0 {
			fmt.Fprintf(w, "  dropped inputs: %s\n", strings.Join(p.DropInputs, ", "))
		}
		if len(p.HashInputs) > 0 {
			fmt.Fprintf(w, "  hashed inputs:  %s (salted)\n", strings.Join(p.HashInputs, ", "))
		}
	}
	fmt.Fprintf(w, "  stored: %d rows (%d labelled) from %d device(s); dropped on devices: %d\n", st.Rows, st.Labelled, st.Devices, st.DroppedOnDevices)
}

// parseSince reads --since/--until: a duration back from now ("24h") or
// an RFC 3339 time.
func parseSince(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("--%s %q: want a duration back from now (24h) or an RFC 3339 time", flag, v)
}

func (a *app) dataBuildCmd() *cobra.Command {
	var since, until string
	c := &cobra.Command{
		Use:   "build NAME [--since 24h] [--until TIME]",
		Short: "make a dataset of a model's captured rows",
		Long: `Makes a dataset of model NAME's captured rows in the window (default: every row kept), named by
the sha256 of its rows. Building the same rows again returns the existing dataset.`,
		Example: `  edgefleet data build fraud --since 24h`,
		Args:    oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			req, err := windowOf(since, until)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ds, err := c.BuildDataset(cmd.Context(), pos[0], req)
			if err != nil {
				return fmt.Errorf("data build %s: %w", pos[0], err)
			}
			printDataset(a.stdout, ds)
			return nil
		}),
	}
	c.Flags().StringVar(&since, "since", "", "rows from `WHEN` on: a duration back (24h) or an RFC 3339 time")
	c.Flags().StringVar(&until, "until", "", "rows before `WHEN` (default now)")
	return c
}

func windowOf(since, until string) (api.DatasetRequest, error) {
	now := time.Now()
	s, err := parseSince("since", since, now)
	if err != nil {
		return api.DatasetRequest{}, err
	}
	u, err := parseSince("until", until, now)
	if err != nil {
		return api.DatasetRequest{}, err
	}
	return api.DatasetRequest{Since: s, Until: u}, nil
}

func (a *app) dataListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list NAME",
		Short:   "list a model's datasets",
		Example: `  edgefleet data list fraud`,
		Args:    oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.Datasets(cmd.Context(), pos[0])
			if err != nil {
				return fmt.Errorf("data list %s: %w", pos[0], err)
			}
			if len(list) == 0 {
				fmt.Fprintf(a.stdout, "no datasets of %s (edgefleet data build %s)\n", pos[0], pos[0])
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSHA256\tROWS\tLABELLED\tDEVICES\tSITES\tFIRST\tLAST\tVALID")
			for _, ds := range list {
				fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", ds.Version, ds.SHA256[:12], ds.Rows, ds.Labelled,
					len(ds.Devices), strings.Join(ds.Sites, ","), ds.First.UTC().Format(time.RFC3339), ds.Last.UTC().Format(time.RFC3339),
					passFail(ds.Validation.Passed))
			}
			return tw.Flush()
		}),
	}
}

func passFail(ok bool) string {
	if ok {
		return "passed"
	}
	return "FAILED"
}

func (a *app) dataShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME [VERSION|latest|SHA256]",
		Short: "show a dataset and its validation report",
		Example: `  edgefleet data show fraud
  edgefleet data show fraud 3`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("%s takes a model NAME and optionally a dataset VERSION, got %d arguments", cmdName(c), len(args))
			}
			return nil
		},
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			ref := "latest"
			if len(pos) == 2 {
				ref = pos[1]
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ds, err := c.Dataset(cmd.Context(), pos[0], ref)
			if err != nil {
				return fmt.Errorf("data show %s %s: %w", pos[0], ref, err)
			}
			printDataset(a.stdout, ds)
			return nil
		}),
	}
}

func printDataset(w io.Writer, ds api.Dataset) {
	fmt.Fprintf(w, "dataset %s version %d  sha256 %s\n", ds.Model, ds.Version, ds.SHA256)
	fmt.Fprintf(w, "  rows %d (%d labelled) from %s to %s\n", ds.Rows, ds.Labelled, ds.First.UTC().Format(time.RFC3339), ds.Last.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  model versions %s; sites %s; %d device(s)\n", strings.Join(ds.ModelVersions, ", "), orNone(strings.Join(ds.Sites, ", ")), len(ds.Devices))
	fmt.Fprintf(w, "  %d columns; validation %s\n", len(ds.Schema), passFail(ds.Validation.Passed))
	for _, ch := range ds.Validation.Checks {
		mark := "ok  "
		if !ch.Passed {
			mark = ch.Severity
		}
		fmt.Fprintf(w, "    %-4s %-11s %s\n", mark, ch.Name, ch.Detail)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (a *app) dataExportCmd() *cobra.Command {
	var since, until, dataset, format, out string
	c := &cobra.Command{
		Use:   "export NAME [--since 24h | --dataset VERSION] [--format csv|jsonl|parquet] [--out FILE]",
		Short: "write a dataset's rows as CSV, JSON lines or parquet",
		Long: `Writes the rows of one of model NAME's datasets: --dataset names it (a version, latest, or
8+ hex digits of its sha256); otherwise the rows of the window (--since, --until) become a
dataset first (or the existing one with the same rows), as "data build" does. JSON lines are
the dataset's exact bytes (their sha256 names it); CSV has a header from its schema; parquet
has the same columns (a flat schema, in name order; NaN and infinities are nulls).`,
		Example: `  edgefleet data export fraud --since 24h --format csv > fraud.csv
  edgefleet data export fraud --dataset 3 --format parquet --out fraud-3.parquet`,
		Args: oneArg("model NAME"),
		RunE: a.runE(func(cmd *cobra.Command, pos []string) error {
			if err := api.CheckFormat(format); err != nil {
				return usagef("--format: %v", err)
			}
			if dataset != "" && (since != "" || until != "") {
				return usagef("give --dataset or a window (--since/--until), not both")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ref := dataset
			if ref == "" {
				req, err := windowOf(since, until)
				if err != nil {
					return err
				}
				ds, err := c.BuildDataset(cmd.Context(), pos[0], req)
				if err != nil {
					return fmt.Errorf("data export %s: %w", pos[0], err)
				}
				ref = fmt.Sprint(ds.Version)
			}
			w := a.stdout
			var f *os.File
			if out != "" {
				if f, err = os.CreateTemp(filepath.Dir(out), ".export-*"); err != nil {
					return err
				}
				defer os.Remove(f.Name())
				defer f.Close()
				w = f
			}
			sum, err := c.ExportDataset(cmd.Context(), pos[0], ref, format, w)
			if err != nil {
				return fmt.Errorf("data export %s: %w", pos[0], err)
			}
			if f != nil {
				if err := f.Sync(); err != nil {
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				if err := os.Rename(f.Name(), out); err != nil {
					return err
				}
				fmt.Fprintf(a.stderr, "wrote %s (dataset %s %s, sha256 %s)\n", out, pos[0], ref, sum)
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&since, "since", "", "rows from `WHEN` on: a duration back (24h) or an RFC 3339 time")
	f.StringVar(&until, "until", "", "rows before `WHEN` (default now)")
	f.StringVar(&dataset, "dataset", "", "export this dataset `VERSION` (a number, latest, or its sha256 prefix)")
	f.StringVar(&format, "format", api.FormatCSV, "`FORMAT`: csv, jsonl or parquet")
	f.StringVar(&out, "out", "", "write to `FILE` (atomically) instead of standard output")
	enumFlag(c, "format", api.FormatCSV, api.FormatJSONL, api.FormatParquet)
	return c
}
