package retrain

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// errStop ends a job early with a state and a reason for the user.
type errStop struct {
	state  api.RetrainState
	reason string
}

func (e *errStop) Error() string { return e.reason }

func fail(format string, args ...any) error {
	return &errStop{state: api.RetrainFailed, reason: fmt.Sprintf(format, args...)}
}

// execute runs job id from where it stands to a terminal state.
func (s *Service) execute(ctx context.Context, id string) {
	err := s.runJob(ctx, id)
	if err == nil {
		return
	}
	state, reason := api.RetrainFailed, err.Error()
	var stop *errStop
	if errors.As(err, &stop) {
		state, reason = stop.state, stop.reason
	}
	j, jerr := s.Job(id)
	if jerr != nil {
		s.log.Error("retrain job: record its end", "job", id, "err", jerr)
		return
	}
	switch {
	case j.CancelledBy != "":
		state, reason = api.RetrainFailed, "cancelled by "+j.CancelledBy+" while "+string(j.State)
		if j.Candidate != "" && s.publishedBy(j) {
			reason += fmt.Sprintf("; version %s was published before the cancel took effect and was not rolled out", j.Candidate)
		}
	case ctx.Err() != nil:
		// The control plane is stopping: the job stays where it is
		// and resumes at the next start.
		s.log.Info("retrain job interrupted by shutdown", "job", id, "state", j.State)
		return
	case stop == nil && errors.Is(err, context.DeadlineExceeded):
		reason = fmt.Sprintf("passed the job's time limit of %v while %s (time_limit bounds building the dataset, training and evaluation)",
			time.Duration(j.Policy.TimeLimit), j.State)
	}
	if _, err := s.finish(id, state, reason); err != nil {
		s.log.Error("retrain job: record its end", "job", id, "err", err)
	}
}

// step moves job id into state with a log line, unless ctx ended. The
// check and the update are one step under s.mu, which Cancel holds while
// it records a cancel and ends the job's context: a job cancelled before
// a step never takes it (never starts publishing).
func (s *Service) step(ctx context.Context, id string, state api.RetrainState, msg string, fn func(*api.RetrainJob)) (*api.RetrainJob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if j := s.jobs[id]; j != nil && j.CancelledBy != "" {
		return nil, context.Canceled
	}
	return s.updateLocked(id, state, msg, fn)
}

// phase runs fn on a goroutine of its own and returns its result, or
// ctx's error as soon as ctx ends: a phase slow to notice its context
// (onnxruntime loading a candidate, a long scan) cannot hold the worker
// past a cancel, the time limit or shutdown. fn gets ctx and is expected
// to end soon after it; Run waits for such abandoned phases before it
// returns.
func phase[T any](s *Service, ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	s.phases.Go(func() {
		v, err := fn(ctx)
		ch <- result{v, err}
	})
	select {
	case r := <-ch:
		if ctx.Err() != nil {
			var zero T
			return zero, ctx.Err()
		}
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (s *Service) runJob(ctx context.Context, id string) error {
	j, err := s.Job(id)
	if err != nil {
		return err
	}
	// A job a restart interrupted after it published its candidate goes
	// on from there, never publishing a second version.
	if j.Candidate != "" && s.publishedBy(j) {
		return s.rollout(ctx, j)
	}
	if j.Parent == "" {
		return fail("model %s has no version to retrain (upload one first)", j.Model)
	}
	parentMan, err := s.opts.Models.Manifest(j.Model, j.Parent)
	if err != nil {
		return fail("current version %s of %s: %v", j.Parent, j.Model, err)
	}

	// The time limit bounds the work before publishing: building the
	// dataset, training and evaluation (each attempt: a job a restart
	// interrupted gets the whole limit again).
	wctx, cancelLimit := context.WithTimeout(ctx, time.Duration(j.Policy.TimeLimit))
	defer cancelLimit()

	// Dataset: the one built before an interruption, or a new one of the
	// policy's window.
	var ds api.Dataset
	if j.Dataset != nil {
		if ds, err = s.opts.Datasets.Get(j.Model, j.Dataset.SHA256); err != nil {
			return fail("dataset %d of the interrupted run: %v", j.Dataset.Version, err)
		}
	} else {
		if _, err := s.step(wctx, id, api.RetrainBuilding, fmt.Sprintf("building a dataset of the captured rows of the last %v", time.Duration(j.Policy.Window)), nil); err != nil {
			return err
		}
		since := s.opts.Clock().UTC().Add(-time.Duration(j.Policy.Window))
		ds, err = phase(s, wctx, func(ctx context.Context) (api.Dataset, error) {
			return s.opts.Datasets.Build(ctx, j.Model, api.DatasetRequest{Since: since})
		})
		if err != nil {
			if wctx.Err() != nil {
				return wctx.Err()
			}
			return fail("build dataset: %v", err)
		}
	}
	if j, err = s.step(wctx, id, api.RetrainValidating, fmt.Sprintf("dataset %d (%s): %d rows, %d labelled", ds.Version, ds.SHA256[:12], ds.Rows, ds.Labelled),
		func(j *api.RetrainJob) { j.Dataset = &ds }); err != nil {
		return err
	}
	if !ds.Validation.Passed {
		var failed []string
		for _, c := range ds.Validation.Checks {
			if !c.Passed && c.Severity == api.SeverityFail {
				failed = append(failed, c.Name+": "+c.Detail)
			}
		}
		return fail("dataset %d failed validation (%s); a retrain does not train on it", ds.Version, strings.Join(failed, "; "))
	}
	rows, err := s.readRows(ds)
	if err != nil {
		return err
	}
	if j.Site != "" {
		all := len(rows)
		rows = slices.DeleteFunc(rows, func(r labelledRow) bool { return r.Site != j.Site })
		if j, err = s.update(id, "", fmt.Sprintf("site scope: %d of the %d labelled rows are from site %s", len(rows), all, j.Site), nil); err != nil {
			return err
		}
	}
	train, holdout := split(rows, j.Policy.HoldoutFraction)
	if n := len(train) + len(holdout); n < j.Policy.MinLabelled {
		return fail("dataset %d has %d labelled rows; the policy needs %d (min_labelled)", ds.Version, n, j.Policy.MinLabelled)
	}
	if len(holdout) == 0 || len(train) == 0 {
		return fail("dataset %d: %d training and %d held-out rows; both need some (holdout_fraction %v)", ds.Version, len(train), len(holdout), j.Policy.HoldoutFraction)
	}
	// The base dataset joins the training rows only: the candidate is
	// judged on field rows.
	var base *api.BaseDataset
	if ref := j.Policy.BaseDataset; ref != "" {
		b, err := s.opts.Datasets.Base(j.Model, ref)
		if err != nil {
			return fail("base dataset %s of the policy: %v", ref[:min(12, len(ref))], err)
		}
		baseRows, err := s.readBase(b)
		if err != nil {
			return err
		}
		fieldRows := len(train)
		train = append(baseRows, train...)
		base = &b
		if j, err = s.update(id, "", fmt.Sprintf("base dataset %s: %d rows joined to the %d captured training rows", b.ID[:12], len(baseRows), fieldRows),
			func(j *api.RetrainJob) { j.Base = &b }); err != nil {
			return err
		}
	}
	if j, err = s.step(wctx, id, api.RetrainTraining, fmt.Sprintf("training with %s on %d rows (%d held out)", j.Policy.Trainer, len(train), len(holdout)),
		func(j *api.RetrainJob) { j.TrainRows, j.HoldoutRows = len(train), len(holdout) }); err != nil {
		return err
	}
	res, err := s.train(wctx, j, ds, parentMan, train, holdout)
	if res != nil && res.run != nil {
		run := res.run
		if _, uerr := s.update(id, "", fmt.Sprintf("trainer %s exited %d after %v", run.Program, run.ExitCode, time.Duration(run.Duration).Round(time.Millisecond)),
			func(j *api.RetrainJob) { j.Command = run }); uerr != nil {
			return uerr
		}
	}
	if err != nil {
		return err
	}

	if _, err := s.step(wctx, id, api.RetrainEvaluating, fmt.Sprintf("evaluating the candidate against %s on %d held-out rows", j.Parent, len(holdout)), nil); err != nil {
		return err
	}
	parentONNX, err := s.opts.Models.File(j.Model, j.Parent)
	if err != nil {
		return fail("read %s %s: %v", j.Model, j.Parent, err)
	}
	ev, err := phase(s, wctx, func(ctx context.Context) (*api.Evaluation, error) {
		return s.evaluator(ctx, res.onnx, res.meta, parentONNX, parentMan, holdout)
	})
	if err != nil {
		if wctx.Err() != nil {
			return wctx.Err()
		}
		return fail("evaluate: %v", err)
	}
	cancelLimit()
	ev.Metric, ev.Margin, ev.Parent.Version = j.Policy.Metric, j.Policy.MarginOrDefault(), j.Parent
	cand, par := ev.Candidate.Value(ev.Metric), ev.Parent.Value(ev.Metric)
	ev.Better = cand-par >= ev.Margin
	verdict := fmt.Sprintf("held-out %s: candidate %.4f, %s %.4f (margin %+.4f) on %d rows", ev.Metric, cand, j.Parent, par, ev.Margin, ev.Rows)
	if j, err = s.update(id, "", verdict, func(j *api.RetrainJob) { j.Evaluation = ev }); err != nil {
		return err
	}
	if !ev.Better {
		return &errStop{state: api.RetrainRejected, reason: fmt.Sprintf("the candidate is not better than %s by the margin: %s", j.Parent, verdict)}
	}

	// Publish: the version name is recorded (synced) before the upload,
	// so a restart in between finds it and does not publish twice.
	version := s.nextVersion(j.Model, j.Parent)
	if j, err = s.step(ctx, id, api.RetrainPublishing, "publishing the candidate as version "+version, func(j *api.RetrainJob) { j.Candidate = version }); err != nil {
		return err
	}
	meta := res.meta
	if meta.Training == nil {
		meta.Training = &efpb.TrainingInfo{}
	}
	ti := meta.Training
	ti.ParentVersion = j.Parent
	ti.Datasets = []*efpb.DatasetRef{{Model: ds.Model, Version: uint32(ds.Version), Sha256: ds.SHA256, Rows: uint64(ds.Rows)}}
	if base != nil { // version 0: an uploaded base dataset, named by its sha256
		ti.Datasets = append(ti.Datasets, &efpb.DatasetRef{Model: base.Model, Sha256: base.ID, Rows: uint64(base.Rows)})
	}
	ti.Trainer = j.Policy.Trainer
	ti.TrainerParams = nil
	params := maps.Clone(res.params)
	if j.Site != "" {
		if params == nil {
			params = map[string]string{}
		}
		params["site"] = j.Site
	}
	for _, k := range slices.Sorted(maps.Keys(params)) {
		ti.TrainerParams = append(ti.TrainerParams, &efpb.KeyValue{Key: k, Value: params[k]})
	}
	ti.Evaluation = []*efpb.Metric{
		{Name: "holdout_rows", Value: float64(ev.Rows)},
		{Name: "candidate_accuracy", Value: ev.Candidate.Accuracy},
		{Name: "candidate_f1", Value: ev.Candidate.F1},
		{Name: "parent_accuracy", Value: ev.Parent.Accuracy},
		{Name: "parent_f1", Value: ev.Parent.F1},
		{Name: "margin", Value: ev.Margin},
	}
	ti.Trigger, ti.RetrainJob = j.Trigger, j.ID
	if ti.TrainedUnix == 0 {
		ti.TrainedUnix = s.opts.Clock().Unix()
	}
	if _, err := s.opts.Models.Publish(ctx, j.Model, version, res.onnx, meta, res.reference); err != nil {
		if errors.Is(err, api.ErrChecksFailed) || errors.Is(err, api.ErrInvalid) {
			return fail("publish %s: the control plane refused the candidate: %v", version, err)
		}
		return fail("publish %s: %v", version, err)
	}
	details := map[string]any{"model": j.Model, "version": version, "parent": j.Parent,
		"dataset": ds.SHA256, "trigger": j.Trigger, "candidate": cand, "parent_figure": par, "metric": ev.Metric}
	if base != nil {
		details["base_dataset"] = base.ID
	}
	s.audit("system", "retrain.version", j.ID, "ok", details)
	return s.rollout(ctx, j)
}

// publishedBy reports whether j's candidate exists and is the one j
// published (its lineage names the job).
func (s *Service) publishedBy(j *api.RetrainJob) bool {
	if !s.opts.Models.Has(j.Model, j.Candidate) {
		return false
	}
	m, err := s.opts.Models.Manifest(j.Model, j.Candidate)
	return err == nil && m.GetTraining().GetRetrainJob() == j.ID
}

// rollout hands the published candidate to the policy's rollout template,
// unless a rollout of it exists (created before a restart).
func (s *Service) rollout(ctx context.Context, j *api.RetrainJob) error {
	tmpl := j.Policy.Rollout
	if tmpl == nil {
		_, err := s.finish(j.ID, api.RetrainPublished, fmt.Sprintf("published %s; the policy has no rollout template (deploy or roll it out by hand)", j.Candidate))
		return err
	}
	for _, r := range s.opts.Rollouts.List() {
		if r.Spec.Model == j.Model && r.Spec.Version == j.Candidate {
			return s.rolledOut(j, r.ID)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	spec := *tmpl
	spec.Model, spec.Version = j.Model, j.Candidate
	spec.Stages = slices.Clone(tmpl.Stages)
	if j.Site != "" { // a model fitted to one site's rows goes to that site
		spec.Selector = strings.TrimPrefix(spec.Selector+","+s.opts.SiteLabel+"="+j.Site, ",")
	}
	r, err := s.opts.Rollouts.Create(ctx, spec, "retrain/"+j.ID)
	if err != nil {
		return fail("published %s, but its rollout was refused: %v (start one by hand: edgefleet rollout create)", j.Candidate, err)
	}
	return s.rolledOut(j, r.ID)
}

func (s *Service) rolledOut(j *api.RetrainJob, rolloutID string) error {
	if _, err := s.update(j.ID, "", "", func(j *api.RetrainJob) { j.Rollout = rolloutID }); err != nil {
		return err
	}
	s.audit("system", "retrain.rollout", j.ID, "ok", map[string]any{"model": j.Model, "version": j.Candidate, "rollout": rolloutID})
	_, err := s.finish(j.ID, api.RetrainRollingOut, fmt.Sprintf("published %s and started rollout %s", j.Candidate, rolloutID))
	return err
}

var trailingNumber = regexp.MustCompile(`^(.*?)(\d+)$`)

// nextVersion names the candidate after parent: its trailing number
// plus one (v1 → v2, 1.2.0 → 1.2.1), else parent-r1; the first free one.
func (s *Service) nextVersion(model, parent string) string {
	prefix, n := parent+"-r", 0
	if m := trailingNumber.FindStringSubmatch(parent); m != nil {
		prefix = m[1]
		n, _ = strconv.Atoi(m[2])
	}
	for {
		n++
		v := prefix + strconv.Itoa(n)
		if !s.opts.Models.Has(model, v) {
			return v
		}
	}
}

// labelledRow is a dataset row with a label.
type labelledRow = api.DatasetRow

// readRows returns ds's labelled rows.
func (s *Service) readRows(ds api.Dataset) ([]labelledRow, error) {
	var buf bytes.Buffer
	if err := s.opts.Datasets.Export(ds.Model, ds.SHA256, api.FormatJSONL, &buf); err != nil {
		return nil, fail("read dataset %d: %v", ds.Version, err)
	}
	return labelled(&buf, fmt.Sprintf("dataset %d", ds.Version))
}

// readBase returns base dataset b's rows (every one is labelled).
func (s *Service) readBase(b api.BaseDataset) ([]labelledRow, error) {
	var buf bytes.Buffer
	if err := s.opts.Datasets.ExportBase(b.Model, b.ID, &buf); err != nil {
		return nil, fail("read base dataset %s: %v", b.ID[:12], err)
	}
	return labelled(&buf, "base dataset "+b.ID[:12])
}

// labelled decodes JSON lines of dataset rows and keeps the labelled ones.
func labelled(buf *bytes.Buffer, what string) ([]labelledRow, error) {
	sc := bufio.NewScanner(buf)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	var out []labelledRow
	for sc.Scan() {
		var r api.DatasetRow
		// Numbers stay json.Number: a 64-bit integer input keeps every digit.
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&r); err != nil {
			return nil, fail("read %s: %v", what, err)
		}
		if r.Label != nil {
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fail("read %s: %v", what, err)
	}
	return out, nil
}

// split puts a row in the held-out part when the hash of its inference
// id and row falls under fraction: the same rows every time (a batch
// request's rows are independent rows, so they are split one by one).
func split(rows []labelledRow, fraction float64) (train, holdout []labelledRow) {
	for _, r := range rows {
		if heldOut(r.InferenceID+"/"+strconv.FormatUint(uint64(r.Row), 10), fraction) {
			holdout = append(holdout, r)
		} else {
			train = append(train, r)
		}
	}
	return train, holdout
}

func heldOut(key string, fraction float64) bool {
	sum := sha256.Sum256([]byte("edgefleet-holdout/" + key))
	return float64(binary.BigEndian.Uint64(sum[:8]))/(1<<64) < fraction
}
