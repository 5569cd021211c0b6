package httpapi

import (
	"net/http"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// handleBrokerMosquitto serves an external mosquitto's password file and
// ACL. The ETag is the generation; If-None-Match with ?wait= long-polls.
func (a *API) handleBrokerMosquitto(w http.ResponseWriter, r *http.Request) {
	if a.opts.Broker == nil {
		writeJSON(w, http.StatusConflict, api.ErrorResponse{Error: a.opts.NoBroker})
		return
	}
	var wait time.Duration
	if s := r.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > api.MaxBrokerWait {
			writeError(w, api.Errorf(api.ErrInvalid, "wait=%q: want a duration from 0s to %s", s, api.MaxBrokerWait))
			return
		}
		wait = d
	}
	have := parseETag(r.Header.Get("If-None-Match"))
	auth, changed, err := a.opts.Broker.Mosquitto(r.Context(), have, wait, a.stopWaiting)
	if err != nil {
		if r.Context().Err() != nil {
			return // the caller went away
		}
		writeError(w, err)
		return
	}
	if !changed {
		w.Header().Set("ETag", etag(have))
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag(auth.Generation))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, auth)
}

// etag quotes a generation as an HTTP entity tag; parseETag undoes it ("",
// for anything else).
func etag(generation string) string { return `"` + generation + `"` }

func parseETag(h string) string {
	h = strings.TrimPrefix(strings.TrimSpace(h), "W/")
	if len(h) < 2 || h[0] != '"' || h[len(h)-1] != '"' {
		return ""
	}
	return h[1 : len(h)-1]
}
