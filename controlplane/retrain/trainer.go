package retrain

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// MaxCandidateSize bounds the model.onnx an external trainer writes.
const MaxCandidateSize = 256 << 20

// trainResult is a trained candidate.
type trainResult struct {
	onnx []byte
	// meta holds the metadata fields of the upload (never nil).
	meta *efpb.Manifest
	// reference is a CSV of training rows for the drift reference, when
	// meta has none.
	reference []byte
	params    map[string]string
	run       *api.TrainerRun // external trainers only
}

func (s *Service) train(ctx context.Context, j *api.RetrainJob, ds api.Dataset, parent *efpb.Manifest, train, holdout []labelledRow) (*trainResult, error) {
	if j.Policy.Trainer == api.TrainerBuiltinFraud {
		return s.trainFraud(ctx, j, train, holdout)
	}
	name := strings.TrimPrefix(j.Policy.Trainer, api.TrainerCommandPrefix)
	argv, ok := s.opts.Trainers[name]
	if !ok {
		return nil, fail("trainer %q: this control plane has no trainer %q (serve --trainer %s=PROGRAM)", j.Policy.Trainer, name, name)
	}
	return s.trainCommand(ctx, j, ds, parent, argv, train)
}

// trainFraud fits internal/fraud's logistic regression to the rows'
// fraud.InputName features.
func (s *Service) trainFraud(ctx context.Context, j *api.RetrainJob, train, holdout []labelledRow) (*trainResult, error) {
	l2 := 0.0
	if v, ok := j.Policy.Params["l2"]; ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fail("builtin:fraud param l2 %q is not a number", v)
		}
		l2 = f
	}
	for k := range j.Policy.Params {
		if k != "l2" {
			return nil, fail("builtin:fraud takes the param l2 only, not %q", k)
		}
	}
	tr, err := fraudRows(train)
	if err != nil {
		return nil, err
	}
	te, err := fraudRows(holdout)
	if err != nil {
		return nil, err
	}
	a, err := phase(s, ctx, func(ctx context.Context) (*fraud.Artifact, error) {
		return fraud.ArtifactFromData(ctx, tr, te, l2, s.opts.Clock())
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fail("builtin:fraud: %v", err)
	}
	return &trainResult{onnx: a.ONNX, meta: a.Metadata(), params: map[string]string{"l2": strconv.FormatFloat(l2OrDefault(l2), 'g', -1, 64)}}, nil
}

func l2OrDefault(l2 float64) float64 {
	switch {
	case l2 == 0:
		return fraud.DefaultL2
	case l2 < 0:
		return 0
	}
	return l2
}

// fraudRows converts dataset rows into the fraud trainer's rows.
func fraudRows(rows []labelledRow) (*fraud.Dataset, error) {
	d := &fraud.Dataset{}
	for _, r := range rows {
		vals := r.Inputs[fraud.InputName]
		if len(vals) != fraud.NumFeatures {
			return nil, fail("builtin:fraud trains on input %q with %d features; row %s/%d has %d values of it (is this the fraud model?)",
				fraud.InputName, fraud.NumFeatures, r.InferenceID, r.Row, len(vals))
		}
		var row fraud.Row
		for i, v := range vals {
			f, ok := asFloat(v)
			if !ok {
				return nil, fail("builtin:fraud: row %s/%d feature %d is %v, not a finite number", r.InferenceID, r.Row, i, v)
			}
			row[i] = float32(f)
		}
		d.Rows = append(d.Rows, row)
		d.Labels = append(d.Labels, *r.Label == 1)
	}
	return d, nil
}

func asFloat(v api.Value) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	return 0, false
}

// trainCommand runs an external trainer: PROGRAM ARGS --data DIR --out
// DIR in its own process group, killed with the group when ctx ends.
func (s *Service) trainCommand(ctx context.Context, j *api.RetrainJob, ds api.Dataset, parent *efpb.Manifest, argv []string, train []labelledRow) (*trainResult, error) {
	// A directory of its own per attempt: what a previous attempt's
	// stray process (a control plane that died mid-training) writes cannot
	// become this attempt's model.
	jobDir := filepath.Join(s.opts.WorkDir, j.ID)
	_ = os.RemoveAll(jobDir)
	if err := os.MkdirAll(jobDir, 0o700); err != nil {
		return nil, fmt.Errorf("retrain: %w", err)
	}
	dir, err := os.MkdirTemp(jobDir, "run-")
	if err != nil {
		return nil, fmt.Errorf("retrain: %w", err)
	}
	dataDir, outDir := filepath.Join(dir, "data"), filepath.Join(dir, "out")
	for _, d := range []string{dataDir, outDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("retrain: %w", err)
		}
	}
	if err := writeInputs(dataDir, ds, parent, j.Policy.Params, train); err != nil {
		return nil, fmt.Errorf("retrain: write trainer inputs: %w", err)
	}
	args := append(slices.Clone(argv[1:]), "--data", dataDir, "--out", outDir)
	cmd := exec.CommandContext(ctx, argv[0], args...)
	cmd.Dir = dir
	cmd.Env = trainerEnv(os.Environ())
	stdout, stderr := &tail{max: api.MaxTrainerOutput}, &tail{max: api.MaxTrainerOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	reap := processGroup(cmd)
	// Grandchildren holding the output pipes must not keep Wait waiting.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	// The trainer's parent-death signal is tied to the thread that starts
	// it: that thread stays locked to this goroutine until it has exited.
	runtime.LockOSThread()
	runErr := cmd.Run()
	runtime.UnlockOSThread()
	reap()
	run := &api.TrainerRun{Program: filepath.Base(argv[0]), Args: args, Duration: api.Duration(time.Since(start)),
		Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: -1}
	if cmd.ProcessState != nil {
		run.ExitCode = cmd.ProcessState.ExitCode()
	}
	res := &trainResult{run: run, params: j.Policy.Params}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		run.TimedOut = true
		return res, fail("trainer %s passed the job's time limit of %v and was killed with its process group", run.Program, time.Duration(j.Policy.TimeLimit))
	case ctx.Err() != nil:
		return res, ctx.Err()
	case runErr != nil && cmd.ProcessState == nil:
		return res, fail("trainer %s did not start: %v", argv[0], runErr)
	case run.ExitCode != 0:
		return res, fail("trainer %s exited with status %d: %s", run.Program, run.ExitCode, lastLine(run.Stderr))
	}
	onnx, err := readBounded(filepath.Join(outDir, "model.onnx"), MaxCandidateSize)
	if err != nil {
		return res, fail("trainer %s exited 0 but its model is missing: %v (the contract: write OUT/model.onnx)", run.Program, err)
	}
	res.onnx, res.meta = onnx, &efpb.Manifest{}
	if b, err := readBounded(filepath.Join(outDir, "metadata.json"), 64<<20); err == nil {
		if err := protojson.Unmarshal(b, res.meta); err != nil {
			return res, fail("trainer %s wrote a metadata.json that is not a manifest JSON document: %v", run.Program, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return res, fail("trainer %s: metadata.json: %v", run.Program, err)
	}
	if len(res.meta.GetReference()) == 0 {
		res.reference = referenceCSV(ds.Schema, parent, train)
	}
	return res, nil
}

// trainerEnv is what of the control plane's environment env an external
// trainer gets: the locale, paths and user, nothing else (the broker
// password, tokens). A trainer that needs more sets it in a wrapper script.
func trainerEnv(env []string) []string {
	keep := []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains(keep, k) {
			out = append(out, kv)
		}
	}
	return out
}

// writeInputs writes the external trainer contract's --data directory.
// The held-out rows are not in it: a trainer must not see the rows it is
// judged on.
func writeInputs(dir string, ds api.Dataset, parent *efpb.Manifest, params map[string]string, train []labelledRow) error {
	var rows bytes.Buffer
	for _, r := range train {
		line, err := json.Marshal(r)
		if err != nil {
			return err
		}
		rows.Write(line)
		rows.WriteByte('\n')
	}
	if err := os.WriteFile(filepath.Join(dir, "train.jsonl"), rows.Bytes(), 0o600); err != nil {
		return err
	}
	schema, err := json.MarshalIndent(ds.Schema, "", "  ")
	if err != nil {
		return err
	}
	man, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(parent)
	if err != nil {
		return err
	}
	if params == nil {
		params = map[string]string{}
	}
	ps, err := json.MarshalIndent(params, "", "  ")
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{"schema.json": schema, "manifest.json": man, "params.json": ps} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// referenceCSV is the training rows' first input as a CSV with the
// dataset's column names, for the candidate's drift reference.
func referenceCSV(schema []api.DatasetColumn, parent *efpb.Manifest, rows []labelledRow) []byte {
	if len(parent.GetInputs()) == 0 || len(rows) == 0 {
		return nil
	}
	input := parent.GetInputs()[0].GetName()
	var cols []api.DatasetColumn
	for _, c := range schema {
		if c.Kind == "input" && c.Tensor == input {
			cols = append(cols, c)
		}
	}
	if len(cols) == 0 {
		return nil
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	header := make([]string, len(cols))
	for i, c := range cols {
		header[i] = c.Name
	}
	_ = w.Write(header)
	for _, r := range rows {
		vals := r.Inputs[input]
		rec := make([]string, len(cols))
		for i, c := range cols {
			if c.Index < len(vals) {
				if f, ok := asFloat(vals[c.Index]); ok {
					rec[i] = strconv.FormatFloat(f, 'g', -1, 64)
				}
			}
		}
		_ = w.Write(rec)
	}
	w.Flush()
	return b.Bytes()
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", filepath.Base(path), limit)
	}
	return b, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "(no output on stderr)"
	}
	return s
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex // guards b: stdout and stderr copiers may write at once
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
