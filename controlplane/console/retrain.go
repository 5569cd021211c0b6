package console

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Retraining pages (issue 13): every model's policy and newest jobs, one
// model's policy, jobs and lineage, one job with its figures and log.
// Reads go to the Retrain component; starting and cancelling a job go
// through the API's own routes, like the rollout actions.

// errNoRetrain is what the pages say when the control plane runs without
// retraining (the API answers 503 with the same words).
const errNoRetrain = "Retraining is not configured in this control plane."

// jobRow is a job as the tables show it.
type jobRow struct {
	*api.RetrainJob
	// Took is how long an ended job ran (created → last update).
	Took string
	// Figure is the held-out comparison in words ("" before evaluation).
	Figure string
}

func newJobRow(j *api.RetrainJob) jobRow {
	row := jobRow{RetrainJob: j}
	if j.State.Terminal() {
		row.Took = j.Updated.Sub(j.Created).Round(time.Millisecond).String()
	}
	if ev := j.Evaluation; ev != nil {
		row.Figure = fmt.Sprintf("%.3f vs %.3f %s on %d rows", ev.Candidate.Value(ev.Metric), ev.Parent.Value(ev.Metric), ev.Metric, ev.Rows)
	}
	return row
}

// Overview.

type retrainModelRow struct {
	Model   string
	Status  api.RetrainStatus
	Err     string
	Running *jobRow
	Last    *jobRow
	Jobs    int
}

type retrainOverview struct {
	Models []retrainModelRow
	// Recent are the newest jobs of every model.
	Recent []jobRow
}

const recentJobs = 20

func (c *Console) retrainPage(w http.ResponseWriter, r *http.Request, req *request) {
	if c.opts.Retrain == nil {
		c.renderError(w, r, req, http.StatusServiceUnavailable, errNoRetrain)
		return
	}
	jobs := c.opts.Retrain.Jobs("")
	byModel := map[string][]*api.RetrainJob{}
	for _, j := range jobs {
		byModel[j.Model] = append(byModel[j.Model], j)
	}
	names := map[string]bool{}
	for _, mv := range c.opts.Models.List() {
		names[mv.Name] = true
	}
	for m := range byModel {
		names[m] = true
	}
	d := &retrainOverview{}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		row := retrainModelRow{Model: name, Jobs: len(byModel[name])}
		st, err := c.opts.Retrain.Policy(name)
		if err != nil {
			row.Err = err.Error()
		}
		row.Status = st
		for _, j := range byModel[name] { // newest first
			jr := newJobRow(j)
			if row.Last == nil {
				row.Last = &jr
			}
			if !j.State.Terminal() && row.Running == nil {
				row.Running = &jr
			}
		}
		d.Models = append(d.Models, row)
	}
	for _, j := range jobs[:min(len(jobs), recentJobs)] {
		d.Recent = append(d.Recent, newJobRow(j))
	}
	c.renderLive(w, r, "retrain.html", c.view(req, "Retraining", "retrain", d))
}

// One model.

// policyView is a retrain policy in words.
type policyView struct {
	Triggers string
	Schedule string
	Trainer  string
	Params   []kv
	Window   string
	// Base is the uploaded base dataset joined to the training rows ("" none).
	Base      string
	SiteScope string
	Holdout   string
	Metric    string
	Margin    string
	Labelled  int
	TimeLimit string
	Cooldown  string
	// Rollout is the template a published candidate's rollout follows
	// ("" none: the candidate is published only).
	Rollout string
}

func newPolicyView(p api.RetrainPolicy) policyView {
	v := policyView{
		Triggers: "none (alerts start nothing)", Schedule: "none", Trainer: p.Trainer,
		Window: time.Duration(p.Window).String(), SiteScope: p.SiteScope,
		Holdout: fmt.Sprintf("%.0f %% of the labelled rows", p.HoldoutFraction*100), Metric: p.Metric,
		Margin: fmt.Sprintf("%+.3f", p.MarginOrDefault()), Labelled: p.MinLabelled,
		TimeLimit: time.Duration(p.TimeLimit).String(), Cooldown: time.Duration(p.Cooldown).String(),
	}
	if len(p.Triggers) > 0 {
		v.Triggers = "alerts " + strings.Join(p.Triggers, ", ")
	}
	if p.Schedule > 0 {
		v.Schedule = "every " + time.Duration(p.Schedule).String()
	}
	if p.Cron != "" {
		v.Schedule = "cron " + p.Cron + " (UTC)"
	}
	v.Base = p.BaseDataset
	for _, k := range slices.Sorted(maps.Keys(p.Params)) {
		v.Params = append(v.Params, kv{k, p.Params[k]})
	}
	if ro := p.Rollout; ro != nil {
		var stages []string
		for i, s := range ro.Stages {
			name := s.Name
			if name == "" {
				name = fmt.Sprintf("stage %d", i+1)
			}
			stages = append(stages, name+" ("+s.KindShadow()+")")
		}
		v.Rollout = fmt.Sprintf("%s on %s", strings.Join(stages, " → "), ro.Selector)
		if ro.AutoPromote {
			v.Rollout += ", promoted automatically"
		}
	}
	return v
}

// lineageRow is one version's lineage entry.
type lineageRow struct {
	api.LineageEntry
	// Known: the version is in the registry (a chain may end with a
	// parent that is not).
	Known bool
	// Held is the held-out evaluation in words ("" for an uploaded
	// version).
	Held string
}

type retrainModelData struct {
	Model  string
	Status api.RetrainStatus
	Policy policyView
	Jobs   []jobRow
	// Lineage is every version of the model, newest first, with where it
	// came from; Omitted older versions are not shown.
	Lineage    []lineageRow
	Omitted    int
	LineageErr string
	// CanStart: an operator may start a job now (a policy is set and no
	// job runs).
	CanStart bool
	Done     string
}

func (c *Console) retrainModelPage(w http.ResponseWriter, r *http.Request, req *request) {
	if c.opts.Retrain == nil {
		c.renderError(w, r, req, http.StatusServiceUnavailable, errNoRetrain)
		return
	}
	model := r.PathValue("name")
	st, err := c.opts.Retrain.Policy(model)
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return
	}
	v := c.view(req, "Retraining "+model, "retrain", nil)
	d := &retrainModelData{Model: model, Status: st}
	if st.Set {
		d.Policy = newPolicyView(st.Policy)
	}
	for _, j := range c.opts.Retrain.Jobs(model) {
		d.Jobs = append(d.Jobs, newJobRow(j))
	}
	d.Lineage, d.Omitted, err = c.lineageOf(model)
	if err != nil {
		d.LineageErr = err.Error()
	}
	d.CanStart = v.Can.Retrain && st.Set && st.Running == ""
	if done := r.URL.Query().Get("done"); done == "cancel" || done == "start" {
		d.Done = done
	}
	v.Data = d
	c.renderLive(w, r, "retrain_model.html", v)
}

// maxLineageVersions bounds the versions whose lineage a page shows.
const maxLineageVersions = 100

// lineageOf is the lineage of model's versions, newest first: each chain
// is walked from the newest version not yet on it, so a straight line of
// versions costs one walk. It is cached until the model's versions
// change (a version's lineage is in its signed manifest).
func (c *Console) lineageOf(model string) ([]lineageRow, int, error) {
	var versions []api.ModelVersion
	for _, mv := range c.opts.Models.List() {
		if mv.Name == model {
			versions = append(versions, mv)
		}
	}
	slices.SortStableFunc(versions, func(a, b api.ModelVersion) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(b.Version, a.Version)
	})
	omitted := max(0, len(versions)-maxLineageVersions)
	versions = versions[:len(versions)-omitted]
	var key strings.Builder
	for _, mv := range versions {
		key.WriteString(mv.Version + "@" + mv.SHA256 + "\n")
	}
	if rows, ok := c.lineage.get(model, key.String()); ok {
		return rows, omitted, nil
	}
	entries := map[string]api.LineageEntry{}
	var extra []string // chain entries not in the registry
	var firstErr error
	for _, mv := range versions {
		if _, ok := entries[mv.Version]; ok {
			continue
		}
		l, err := c.opts.Retrain.Lineage(model, mv.Version)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("lineage of %s %s: %w", model, mv.Version, err)
			}
			entries[mv.Version] = api.LineageEntry{Version: mv.Version, Created: mv.Created}
			continue
		}
		for _, e := range l.Chain {
			if _, ok := entries[e.Version]; ok {
				break // the rest of the chain is known
			}
			entries[e.Version] = e
			if !slices.ContainsFunc(versions, func(mv api.ModelVersion) bool { return mv.Version == e.Version }) {
				extra = append(extra, e.Version)
			}
		}
	}
	rows := make([]lineageRow, 0, len(entries))
	add := func(version string, known bool) {
		e := entries[version]
		row := lineageRow{LineageEntry: e, Known: known}
		if ev := e.Eval; ev != nil {
			row.Held = fmt.Sprintf("accuracy %.3f vs %.3f (parent), f1 %.3f vs %.3f on %.0f rows",
				ev["candidate_accuracy"], ev["parent_accuracy"], ev["candidate_f1"], ev["parent_f1"], ev["holdout_rows"])
		}
		rows = append(rows, row)
	}
	for _, mv := range versions {
		add(mv.Version, true)
	}
	for _, v := range extra {
		add(v, false)
	}
	if firstErr == nil {
		c.lineage.put(model, key.String(), rows)
	}
	return rows, omitted, firstErr
}

// lineageCache keeps each model's lineage rows for its set of versions.
type lineageCache struct {
	mu     sync.Mutex // guards models
	models map[string]lineageCached
}

type lineageCached struct {
	key  string
	rows []lineageRow
}

const maxCachedLineages = 256

func newLineageCache() *lineageCache { return &lineageCache{models: map[string]lineageCached{}} }

func (lc *lineageCache) get(model, key string) ([]lineageRow, bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	e, ok := lc.models[model]
	return e.rows, ok && e.key == key
}

func (lc *lineageCache) put(model, key string, rows []lineageRow) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if _, ok := lc.models[model]; !ok && len(lc.models) >= maxCachedLineages {
		clear(lc.models)
	}
	lc.models[model] = lineageCached{key: key, rows: rows}
}

// One job.

// jobStep is one line of a job's log with how long the job stayed there.
type jobStep struct {
	api.RetrainLogEntry
	Took string
}

// evalRow is one figure of the held-out evaluation, candidate against
// the version it is to replace.
type evalRow struct {
	Name                 string
	Candidate, Parent    float64
	Decides              bool
	CandidateWins, Equal bool
}

type retrainJobData struct {
	J     *api.RetrainJob
	Took  string
	Steps []jobStep
	// Eval are the evaluation's figures; Needed is what the candidate's
	// deciding figure had to reach.
	Eval      []evalRow
	Needed    float64
	Params    []kv
	Policy    policyView
	CanCancel bool
	Done      string
}

func (c *Console) retrainJobPage(w http.ResponseWriter, r *http.Request, req *request) {
	if c.opts.Retrain == nil {
		c.renderError(w, r, req, http.StatusServiceUnavailable, errNoRetrain)
		return
	}
	j, err := c.opts.Retrain.Job(r.PathValue("id"))
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return
	}
	v := c.view(req, "Retrain job "+j.ID, "retrain", nil)
	d := &retrainJobData{J: j, Policy: newPolicyView(j.Policy), CanCancel: v.Can.CancelJob && !j.State.Terminal()}
	if j.State.Terminal() {
		d.Took = j.Updated.Sub(j.Created).Round(time.Millisecond).String()
	}
	for i, e := range j.Log {
		s := jobStep{RetrainLogEntry: e}
		if i+1 < len(j.Log) {
			s.Took = j.Log[i+1].Time.Sub(e.Time).Round(time.Millisecond).String()
		}
		d.Steps = append(d.Steps, s)
	}
	for _, k := range slices.Sorted(maps.Keys(j.Policy.Params)) {
		d.Params = append(d.Params, kv{k, j.Policy.Params[k]})
	}
	if ev := j.Evaluation; ev != nil {
		d.Needed = ev.Parent.Value(ev.Metric) + ev.Margin
		for _, f := range []struct {
			name string
			c, p float64
		}{
			{api.MetricAccuracy, ev.Candidate.Accuracy, ev.Parent.Accuracy},
			{"precision", ev.Candidate.Precision, ev.Parent.Precision},
			{"recall", ev.Candidate.Recall, ev.Parent.Recall},
			{api.MetricF1, ev.Candidate.F1, ev.Parent.F1},
		} {
			d.Eval = append(d.Eval, evalRow{Name: f.name, Candidate: f.c, Parent: f.p, Decides: f.name == ev.Metric,
				CandidateWins: f.c > f.p, Equal: f.c == f.p})
		}
	}
	if done := r.URL.Query().Get("done"); done == "cancel" || done == "start" {
		d.Done = done
	}
	v.Data = d
	c.renderLive(w, r, "retrain_job.html", v)
}

// Starting and cancelling: a confirmation page, then the API's route.

type retrainConfirmData struct {
	// Model is the model to retrain (start), Job the job to cancel.
	Model string
	Job   *api.RetrainJob
	What  string
	// Action is where the form posts, Back where Cancel leads.
	Action, Back string
	Allowed      bool
	Error        string
	Reason       string
}

func (c *Console) retrainConfirm(w http.ResponseWriter, r *http.Request, req *request, code int, title string, d *retrainConfirmData) {
	c.render(w, r, code, "retrain_confirm.html", c.view(req, title, "retrain", d))
}

func (c *Console) startData(model string) (*retrainConfirmData, error) {
	st, err := c.opts.Retrain.Policy(model)
	if err != nil {
		return nil, err
	}
	d := &retrainConfirmData{Model: model, Action: "/ui/models/" + urlPath(model) + "/retrain/start", Back: "/ui/models/" + urlPath(model) + "/retrain", Allowed: true}
	switch {
	case !st.Set:
		d.Allowed = false
		d.Error = fmt.Sprintf("Model %s has no retrain policy: set one first (edgefleet retrain policy %s --trainer %s).", model, model, api.TrainerBuiltinFraud)
	case st.Running != "":
		d.Allowed = false
		d.Error = fmt.Sprintf("Retrain job %s of %s has not ended: one job per model at a time.", st.Running, model)
	default:
		p := newPolicyView(st.Policy)
		d.What = fmt.Sprintf("Builds a dataset of the last %s of captured rows, trains with %s, compares the candidate with the current version on %s (%s, margin %s) and publishes it only if it is better.",
			p.Window, p.Trainer, p.Holdout, p.Metric, p.Margin)
		if p.Rollout != "" {
			d.What += " A published candidate is rolled out: " + p.Rollout + "."
		}
	}
	return d, nil
}

func (c *Console) retrainStartConfirm(w http.ResponseWriter, r *http.Request, req *request) {
	if c.opts.Retrain == nil {
		c.renderError(w, r, req, http.StatusServiceUnavailable, errNoRetrain)
		return
	}
	model := r.PathValue("name")
	d, err := c.startData(model)
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return
	}
	c.retrainConfirm(w, r, req, http.StatusOK, "Retrain "+model, d)
}

// retrainStart starts a job through the API's route (role check, audit
// entry marked via=console) and shows the job.
func (c *Console) retrainStart(w http.ResponseWriter, r *http.Request, req *request) {
	model := r.PathValue("name")
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	var body []byte
	if reason != "" {
		body, _ = json.Marshal(api.RetrainRequest{Reason: reason}) // strings always marshal
	}
	code, resp := c.opts.API.Do(r, req.token, via, http.MethodPost, api.Path(api.PathModelRetrainJ, model), body)
	if code/100 == 2 {
		var j api.RetrainJob
		if err := json.Unmarshal(resp, &j); err == nil && j.ID != "" {
			http.Redirect(w, r, "/ui/retrain/jobs/"+urlPath(j.ID)+"?done=start", http.StatusSeeOther)
			return
		}
		http.Redirect(w, r, "/ui/models/"+urlPath(model)+"/retrain?done=start", http.StatusSeeOther)
		return
	}
	d := &retrainConfirmData{Model: model, Action: "/ui/models/" + urlPath(model) + "/retrain/start", Back: "/ui/models/" + urlPath(model) + "/retrain",
		Reason: reason, Error: apiError(code, resp), Allowed: code != http.StatusForbidden && code != http.StatusServiceUnavailable}
	c.retrainConfirm(w, r, req, code, "Retrain "+model, d)
}

func (c *Console) retrainCancelConfirm(w http.ResponseWriter, r *http.Request, req *request) {
	if c.opts.Retrain == nil {
		c.renderError(w, r, req, http.StatusServiceUnavailable, errNoRetrain)
		return
	}
	j, err := c.opts.Retrain.Job(r.PathValue("id"))
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return
	}
	d := cancelData(j)
	if j.State.Terminal() {
		d.Allowed = false
		d.Error = fmt.Sprintf("Retrain job %s is over (%s): there is nothing to cancel.", j.ID, j.State)
	}
	c.retrainConfirm(w, r, req, http.StatusOK, "Cancel retrain job "+j.ID, d)
}

func cancelData(j *api.RetrainJob) *retrainConfirmData {
	return &retrainConfirmData{Job: j, Model: j.Model, Action: "/ui/retrain/jobs/" + urlPath(j.ID) + "/cancel", Back: "/ui/retrain/jobs/" + urlPath(j.ID), Allowed: true,
		What: "Stops the job: a queued job ends at once, a running one when its step notices (an external trainer's processes are killed). Nothing is published; the job ends as failed, saying who cancelled it."}
}

// retrainCancel cancels a job through the API's route.
func (c *Console) retrainCancel(w http.ResponseWriter, r *http.Request, req *request) {
	id := r.PathValue("id")
	code, resp := c.opts.API.Do(r, req.token, via, http.MethodPost, api.Path(api.PathRetrainCancel, id), nil)
	if code/100 == 2 {
		http.Redirect(w, r, "/ui/retrain/jobs/"+urlPath(id)+"?done=cancel", http.StatusSeeOther)
		return
	}
	d := &retrainConfirmData{Job: &api.RetrainJob{ID: id}, Action: "/ui/retrain/jobs/" + urlPath(id) + "/cancel", Back: "/ui/retrain/jobs/" + urlPath(id)}
	if c.opts.Retrain != nil {
		if j, err := c.opts.Retrain.Job(id); err == nil {
			d = cancelData(j)
		}
	}
	d.Error = apiError(code, resp)
	d.Allowed = code != http.StatusForbidden && code != http.StatusNotFound && code != http.StatusConflict && code != http.StatusServiceUnavailable
	c.retrainConfirm(w, r, req, code, "Cancel retrain job "+id, d)
}

// apiError is the message of an API error answer.
func apiError(code int, resp []byte) string {
	var e api.ErrorResponse
	if json.Unmarshal(resp, &e) != nil || e.Error == "" {
		return http.StatusText(code)
	}
	return e.Error
}
