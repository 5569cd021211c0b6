package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// maxRolloutBody bounds POST /api/v1/rollouts (explicit device lists).
const maxRolloutBody = 4 << 20

func (a *API) handleCreateRollout(w http.ResponseWriter, r *http.Request) {
	var spec api.RolloutSpec
	if err := decodeJSON(w, r, maxRolloutBody, &spec); err != nil {
		writeError(w, err)
		return
	}
	st, err := a.opts.Rollouts.Create(r.Context(), spec, Actor(r.Context()))
	if err != nil {
		a.logIfInternal(err, "create rollout")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", api.Path(api.PathRollout, st.ID))
	writeJSON(w, http.StatusCreated, st)
}

func (a *API) handleListRollouts(w http.ResponseWriter, _ *http.Request) {
	list := a.opts.Rollouts.List()
	if list == nil {
		list = []*api.Rollout{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) handleGetRollout(w http.ResponseWriter, r *http.Request) {
	withDevices := false
	if v := r.URL.Query().Get("devices"); v != "" {
		switch v {
		case "true", "1":
			withDevices = true
		case "false", "0":
		default:
			writeError(w, api.Errorf(api.ErrInvalid, "query parameter devices=%q: want true or false", v))
			return
		}
	}
	st, err := a.opts.Rollouts.Get(r.PathValue("id"), withDevices)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) rolloutActionHandler(action api.RolloutAction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.RollbackRequest
		if r.ContentLength != 0 {
			if err := decodeJSON(w, r, maxRegisterBody, &req); err != nil {
				// An empty body (chunked, no bytes) is fine: nothing to narrow.
				if !strings.Contains(err.Error(), "request body is empty") {
					writeError(w, err)
					return
				}
			}
		}
		st, err := a.opts.Rollouts.Act(r.Context(), r.PathValue("id"), action, req, Actor(r.Context()))
		if err != nil {
			a.logIfInternal(err, "rollout "+string(action))
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
}

// handleModelMetrics serves GET /api/v1/models/{name}/versions/{version}/metrics
// ?from=&to= (RFC 3339; default the last 24h) &by=site|cohort|device|label:K
// &points=N (time-series points, default 24).
func (a *API) handleModelMetrics(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	if !a.opts.Models.Has(name, version) {
		writeError(w, api.Errorf(api.ErrNotFound, "model %s version %s: not found", name, version))
		return
	}
	q := api.MetricsQuery{By: r.URL.Query().Get("by")}
	for _, p := range []struct {
		key string
		dst *time.Time
	}{{"from", &q.From}, {"to", &q.To}} {
		if v := r.URL.Query().Get(p.key); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeError(w, api.Errorf(api.ErrInvalid, "invalid request: %s %q is not an RFC 3339 time (e.g. 2026-11-25T12:00:00Z)", p.key, v))
				return
			}
			*p.dst = t
		}
	}
	if v := r.URL.Query().Get("points"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, api.Errorf(api.ErrInvalid, "invalid request: points %q must be a number from 1 to 1000", v))
			return
		}
		q.Points = n
	}
	res, err := a.opts.Metrics.ModelMetrics(name, version, q)
	if err != nil {
		writeError(w, err)
		return
	}
	res.UnmonitoredInputs = a.opts.Models.UnmonitoredInputs(name, version)
	writeJSON(w, http.StatusOK, res)
}
