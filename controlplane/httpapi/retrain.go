package httpapi

import (
	"net/http"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Retrain is retraining: policies, jobs and lineage.
type Retrain interface {
	Policy(model string) (api.RetrainStatus, error)
	SetPolicy(model string, p api.RetrainPolicy) (api.RetrainStatus, error)
	Start(model, actor string, req api.RetrainRequest) (*api.RetrainJob, error)
	Jobs(model string) []*api.RetrainJob
	Job(id string) (*api.RetrainJob, error)
	Cancel(id, actor string) (*api.RetrainJob, error)
	// Lineage of version ("" the newest).
	Lineage(model, version string) (api.Lineage, error)
}

// retrainHandlers adds the retrain and lineage routes' handlers to hs.
func (a *API) retrainHandlers(hs map[string]http.Handler) {
	hs["GET "+api.PathModelRetrain] = a.withRetrain(a.handleGetRetrain)
	hs["PUT "+api.PathModelRetrain] = a.withRetrain(a.handleSetRetrain)
	hs["POST "+api.PathModelRetrainJ] = a.withRetrain(a.handleStartRetrain)
	hs["GET "+api.PathRetrainJobs] = a.withRetrain(a.handleListRetrainJobs)
	hs["GET "+api.PathRetrainJob] = a.withRetrain(a.handleGetRetrainJob)
	hs["POST "+api.PathRetrainCancel] = a.withRetrain(a.handleCancelRetrainJob)
	hs["GET "+api.PathModelLineage] = a.withRetrain(a.handleLineage)
}

// withRetrain answers 503 when the control plane runs without retraining
// (API tests that do not need it).
func (a *API) withRetrain(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.opts.Retrain == nil {
			writeError(w, api.Errorf(api.ErrUnavailable, "retraining is not configured in this control plane"))
			return
		}
		h(w, r)
	})
}

func (a *API) answer(w http.ResponseWriter, what string, code int, v any, err error) {
	if err != nil {
		a.logIfInternal(err, what)
		writeError(w, err)
		return
	}
	writeJSON(w, code, v)
}

func (a *API) handleGetRetrain(w http.ResponseWriter, r *http.Request) {
	st, err := a.opts.Retrain.Policy(r.PathValue("name"))
	a.answer(w, "get retrain policy", http.StatusOK, st, err)
}

func (a *API) handleSetRetrain(w http.ResponseWriter, r *http.Request) {
	var p api.RetrainPolicy
	if err := decodeJSON(w, r, maxDataBody, &p); err != nil {
		writeError(w, err)
		return
	}
	st, err := a.opts.Retrain.SetPolicy(r.PathValue("name"), p)
	a.answer(w, "set retrain policy", http.StatusOK, st, err)
}

func (a *API) handleStartRetrain(w http.ResponseWriter, r *http.Request) {
	var req api.RetrainRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, maxDataBody, &req); err != nil {
			writeError(w, err)
			return
		}
	}
	j, err := a.opts.Retrain.Start(r.PathValue("name"), Actor(r.Context()), req)
	if err == nil {
		w.Header().Set("Location", api.Path(api.PathRetrainJob, j.ID))
	}
	a.answer(w, "start retrain job", http.StatusCreated, j, err)
}

func (a *API) handleListRetrainJobs(w http.ResponseWriter, r *http.Request) {
	list := a.opts.Retrain.Jobs(r.URL.Query().Get("model"))
	if list == nil {
		list = []*api.RetrainJob{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) handleGetRetrainJob(w http.ResponseWriter, r *http.Request) {
	j, err := a.opts.Retrain.Job(r.PathValue("id"))
	a.answer(w, "get retrain job", http.StatusOK, j, err)
}

func (a *API) handleCancelRetrainJob(w http.ResponseWriter, r *http.Request) {
	j, err := a.opts.Retrain.Cancel(r.PathValue("id"), Actor(r.Context()))
	a.answer(w, "cancel retrain job", http.StatusOK, j, err)
}

func (a *API) handleLineage(w http.ResponseWriter, r *http.Request) {
	l, err := a.opts.Retrain.Lineage(r.PathValue("name"), r.URL.Query().Get("version"))
	a.answer(w, "lineage", http.StatusOK, l, err)
}
