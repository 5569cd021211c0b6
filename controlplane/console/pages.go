package console

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
)

// Device page.

type deviceModel struct {
	Name    string
	Status  api.ModelStatus
	Desired string
	// Metrics are the device's figures for its active version over the
	// last day (not on live polls: a metrics query scans the version's
	// buckets).
	Metrics *api.MetricsFigures
}

type deviceData struct {
	D       api.Device
	Labels  []kv
	Models  []deviceModel
	Desired []api.Assignment
}

func (c *Console) devicePage(w http.ResponseWriter, r *http.Request, req *request) {
	dev, ok := c.opts.Fleet.Get(r.PathValue("id"))
	if !ok {
		c.renderError(w, r, req, http.StatusNotFound, fmt.Sprintf("Device %q is not registered.", r.PathValue("id")))
		return
	}
	dev.Blocked = dev.BlockedBy(c.opts.Models.Corrupt)
	d := &deviceData{D: dev}
	for _, k := range slices.Sorted(maps.Keys(dev.Labels)) {
		d.Labels = append(d.Labels, kv{k, dev.Labels[k]})
	}
	if dev.Desired != nil {
		d.Desired = dev.Desired.Models
	}
	live := r.URL.Query().Get("live") != ""
	now := c.opts.Clock()
	for _, name := range slices.Sorted(maps.Keys(dev.Reported)) {
		m := deviceModel{Name: name, Status: *dev.Reported[name], Desired: dev.Desired.Version(name)}
		if !live && m.Status.ActiveVersion != "" {
			res, err := c.opts.Metrics.Query(monitor.Query{Model: name, Version: m.Status.ActiveVersion, Devices: []string{dev.ID},
				From: now.Add(-24 * time.Hour), To: now.Add(time.Second), Points: 1})
			if err == nil && res.Total.Reports > 0 {
				m.Metrics = &res.Total
			}
		}
		d.Models = append(d.Models, m)
	}
	c.renderLive(w, r, "device.html", c.view(req, "Device "+dev.ID, "fleet", d))
}

// Models page.

type modelRow struct {
	api.ModelVersion
	// Active devices serve the version, Updating ones are installing it,
	// Refused ones failed or rolled it back, Desired ones were told to run
	// it.
	Active, Updating, Refused, Desired int
	FleetURL                           string
}

type modelsData struct {
	Models []modelRow
	Total  int
}

func (c *Console) modelsPage(w http.ResponseWriter, r *http.Request, req *request) {
	list := c.opts.Models.List()
	type key struct{ name, version string }
	idx := map[key]int{}
	rows := make([]modelRow, len(list))
	for i, mv := range list {
		mv.Manifest = nil
		rows[i] = modelRow{ModelVersion: mv, FleetURL: "/ui/fleet?version=" + urlQuery(mv.Name+"@"+mv.Version)}
		idx[key{mv.Name, mv.Version}] = i
	}
	total := 0
	c.opts.Fleet.Visit(func(dev *api.Device) bool {
		total++
		for name, st := range dev.Reported {
			if i, ok := idx[key{name, st.ActiveVersion}]; ok && st.ActiveVersion != "" {
				rows[i].Active++
			}
			if i, ok := idx[key{name, st.TargetVersion}]; ok && st.TargetVersion != st.ActiveVersion {
				switch {
				case st.State.Refused():
					rows[i].Refused++
				case st.State.InProgress() || st.State == api.ModelPending:
					rows[i].Updating++
				}
			}
		}
		if dev.Desired != nil {
			for _, a := range dev.Desired.Models {
				if i, ok := idx[key{a.Name, a.Version}]; ok {
					rows[i].Desired++
				}
			}
		}
		return true
	})
	slices.SortStableFunc(rows, func(a, b modelRow) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return b.Created.Compare(a.Created)
	})
	c.render(w, r, http.StatusOK, "models.html", c.view(req, "Models", "models", &modelsData{Models: rows, Total: total}))
}

// Rollouts.

type rolloutRow struct {
	R      *api.Rollout
	Stage  string
	Totals api.DeviceCounts
}

func totals(r *api.Rollout) api.DeviceCounts {
	var t api.DeviceCounts
	for _, s := range r.Stages {
		t.Assigned += s.Devices.Assigned
		t.Pending += s.Devices.Pending
		t.Downloading += s.Devices.Downloading
		t.Active += s.Devices.Active
		t.Failed += s.Devices.Failed
		t.RolledBack += s.Devices.RolledBack
		t.Offline += s.Devices.Offline
	}
	return t
}

func stageName(r *api.Rollout) string {
	if r.Stage < 0 || r.Stage >= len(r.Stages) {
		return "—"
	}
	s := r.Stages[r.Stage]
	return fmt.Sprintf("%d of %d: %s (%s)", s.Index, len(r.Stages), s.Name, s.Kind)
}

func (c *Console) rolloutsPage(w http.ResponseWriter, r *http.Request, req *request) {
	list := c.opts.Rollouts.List()
	rows := make([]rolloutRow, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- { // newest first
		rows = append(rows, rolloutRow{R: list[i], Stage: stageName(list[i]), Totals: totals(list[i])})
	}
	c.renderLive(w, r, "rollouts.html", c.view(req, "Rollouts", "rollouts", rows))
}

type decision struct {
	Time    time.Time
	Actor   string
	Action  string
	Target  string
	Result  string
	Details []kv
}

type gateRow struct {
	api.GateResult
	Value, Limit string
}

type stageRow struct {
	api.StageStatus
	Bake string
	// BakeUntil is set while the current stage bakes: the engine's
	// waiting text counts the time left down, which would change the live
	// region on every poll; the end time does not.
	BakeUntil time.Time
	Gates     []gateRow
}

type rolloutData struct {
	R       *api.Rollout
	Stage   string
	Totals  api.DeviceCounts
	Stages  []stageRow
	Actions []api.RolloutAction
	// Decisions come from the audit log (operators and up).
	Decisions []decision
	Done      string
	// Shadow are the shadow stages' comparisons (shadow.go).
	Shadow []shadowPanel
}

func (c *Console) rolloutPage(w http.ResponseWriter, r *http.Request, req *request) {
	ro, err := c.opts.Rollouts.Get(r.PathValue("id"), false)
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return
	}
	v := c.view(req, "Rollout "+ro.ID, "rollouts", nil)
	d := &rolloutData{R: ro, Stage: stageName(ro), Totals: totals(ro)}
	for _, s := range ro.Stages {
		bake := ro.Spec.Bake
		if i := s.Index - 1; i >= 0 && i < len(ro.Spec.Stages) && ro.Spec.Stages[i].Bake > 0 {
			bake = ro.Spec.Stages[i].Bake
		}
		row := stageRow{StageStatus: s, Bake: time.Duration(bake).String()}
		if end := s.Started.Add(time.Duration(bake)); s.Current && ro.State == api.RolloutRunning && s.Result == "" && !s.Started.IsZero() && c.opts.Clock().Before(end) {
			row.BakeUntil = end
		}
		for _, g := range s.Gates {
			row.Gates = append(row.Gates, gateRow{GateResult: g, Value: gateFigure(g.Gate, g.Value), Limit: gateFigure(g.Gate, g.Limit)})
		}
		d.Stages = append(d.Stages, row)
	}
	d.Shadow = c.shadowPanels(ro)
	if v.Can.Act {
		for _, a := range api.RolloutActions() {
			if ro.State.Allows(a) {
				d.Actions = append(d.Actions, a)
			}
		}
	}
	if done := api.RolloutAction(r.URL.Query().Get("done")); slices.Contains(api.RolloutActions(), done) {
		d.Done = string(done)
	}
	if v.Can.Audit {
		entries, err := c.audits.list(audit.Query{Target: ro.ID, Limit: 200})
		if err != nil {
			c.log.Error("audit list", "err", err)
		}
		for i := len(entries) - 1; i >= 0; i-- {
			d.Decisions = append(d.Decisions, decisionOf(entries[i]))
		}
	}
	v.Data = d
	c.renderLive(w, r, "rollout.html", v)
}

// gateFigure formats a gate's value or limit in the gate's unit.
func gateFigure(gate string, v float64) string {
	switch gate {
	case "failure_rate", "offline_fraction":
		return fmt.Sprintf("%.1f %%", v*100)
	case "accuracy_drop":
		return fmt.Sprintf("%.1f points", v*100)
	}
	return fmt.Sprintf("%.3f", v)
}

func decisionOf(e audit.Entry) decision {
	d := decision{Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target, Result: e.Result}
	for _, k := range slices.Sorted(maps.Keys(e.Details)) {
		d.Details = append(d.Details, kv{k, detailValue(e.Details[k])})
	}
	return d
}

func detailValue(v any) string {
	switch x := v.(type) {
	case float64:
		return strconv.FormatFloat(x, 'g', 4, 64)
	case string:
		return x
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// Rollout actions: a confirmation page, then the API's route.

type confirmData struct {
	R        *api.Rollout
	Action   api.RolloutAction
	What     string
	Allowed  bool
	Error    string
	Selector string
	Device   string
}

var actionWhat = map[api.RolloutAction]string{
	api.ActionPause:    "Stops assigning devices and advancing stages. Devices keep the version they were given.",
	api.ActionResume:   "Continues the rollout. The current stage's bake time starts again, so its gates are judged on fresh figures.",
	api.ActionPromote:  "Moves to the next stage now (or completes the rollout after the last), whether or not the current stage's gates passed.",
	api.ActionAbort:    "Stops the rollout for good. Devices keep the version they were given.",
	api.ActionRollback: "Sends the rollout's devices back to the version they ran before. Narrow it to a label group or one device, or leave both empty to roll back the whole rollout (which ends it).",
}

func (c *Console) confirm(w http.ResponseWriter, r *http.Request, req *request, code int, d *confirmData) {
	c.render(w, r, code, "confirm.html", c.view(req, fmt.Sprintf("%s rollout %s", d.Action, d.R.ID), "rollouts", d))
}

func (c *Console) actionOf(w http.ResponseWriter, r *http.Request, req *request) (*api.Rollout, api.RolloutAction, bool) {
	act := api.RolloutAction(r.PathValue("action"))
	if !slices.Contains(api.RolloutActions(), act) {
		c.renderError(w, r, req, http.StatusNotFound, fmt.Sprintf("There is no rollout action %q.", act))
		return nil, "", false
	}
	ro, err := c.opts.Rollouts.Get(r.PathValue("id"), false)
	if err != nil {
		c.renderError(w, r, req, api.HTTPStatus(err), err.Error())
		return nil, "", false
	}
	return ro, act, true
}

func (c *Console) confirmPage(w http.ResponseWriter, r *http.Request, req *request) {
	ro, act, ok := c.actionOf(w, r, req)
	if !ok {
		return
	}
	d := &confirmData{R: ro, Action: act, What: actionWhat[act], Allowed: ro.State.Allows(act)}
	if !d.Allowed {
		d.Error = fmt.Sprintf("A rollout that is %s cannot be %s.", ro.State, pastTense(act))
	}
	c.confirm(w, r, req, http.StatusOK, d)
}

func pastTense(a api.RolloutAction) string {
	switch a {
	case api.ActionPause:
		return "paused"
	case api.ActionResume:
		return "resumed"
	case api.ActionPromote:
		return "promoted"
	case api.ActionAbort:
		return "aborted"
	}
	return "rolled back"
}

// rolloutAction runs a confirmed action through the REST API's own route
// (role check, engine, audit entry marked via=console).
func (c *Console) rolloutAction(w http.ResponseWriter, r *http.Request, req *request) {
	ro, act, ok := c.actionOf(w, r, req)
	if !ok {
		return
	}
	var body []byte
	d := &confirmData{R: ro, Action: act, What: actionWhat[act], Allowed: true}
	if act == api.ActionRollback {
		d.Selector, d.Device = strings.TrimSpace(r.PostForm.Get("selector")), strings.TrimSpace(r.PostForm.Get("device"))
		if d.Selector != "" || d.Device != "" {
			body, _ = json.Marshal(api.RollbackRequest{Selector: d.Selector, Device: d.Device}) // strings always marshal
		}
	}
	code, resp := c.opts.API.Do(r, req.token, via, http.MethodPost, api.Path(api.PathRolloutAction(act), ro.ID), body)
	if code/100 == 2 {
		http.Redirect(w, r, "/ui/rollouts/"+urlPath(ro.ID)+"?done="+string(act), http.StatusSeeOther)
		return
	}
	d.Error = apiError(code, resp)
	d.Allowed = code != http.StatusForbidden
	c.confirm(w, r, req, code, d)
}

// Audit page.

type auditFilter struct {
	Action, Target, Actor, Since string
	Limit                        int
}

type auditData struct {
	Filter  auditFilter
	Err     string
	Entries []decision
}

const (
	defaultAuditLimit = 200
	maxAuditLimit     = 2000
)

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, req *request) {
	q := r.URL.Query()
	f := auditFilter{Action: strings.TrimSpace(q.Get("action")), Target: strings.TrimSpace(q.Get("target")),
		Actor: strings.TrimSpace(q.Get("actor")), Since: strings.TrimSpace(q.Get("since")), Limit: defaultAuditLimit}
	d := &auditData{Filter: f}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		d.Filter.Limit = min(n, maxAuditLimit)
	}
	aq := audit.Query{Action: f.Action, Target: f.Target, Limit: d.Filter.Limit}
	if f.Actor != "" {
		aq.Limit = 10000 // the actor is filtered here; the newest Limit of those are shown
	}
	if f.Since != "" {
		t, err := parseSince(f.Since)
		if err != nil {
			d.Err = err.Error()
		}
		aq.Since = t
	}
	if d.Err == "" {
		entries, err := c.audits.list(aq)
		if err != nil {
			d.Err = err.Error()
		}
		for i := len(entries) - 1; i >= 0 && len(d.Entries) < d.Filter.Limit; i-- {
			if f.Actor == "" || entries[i].Actor == f.Actor {
				d.Entries = append(d.Entries, decisionOf(entries[i]))
			}
		}
	}
	c.render(w, r, http.StatusOK, "audit.html", c.view(req, "Audit log", "audit", d))
}

// parseSince reads an RFC 3339 time, or the browser's datetime-local
// value (taken as UTC).
func parseSince(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("since %q: want a time such as 2026-01-02T15:04:05Z (UTC)", s)
}
