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
	serveBrokerFiles(a, w, r, func(have string, wait time.Duration) (api.MosquittoAuth, string, bool, error) {
		auth, changed, err := a.opts.Broker.Mosquitto(r.Context(), have, wait, a.stopWaiting)
		return auth, auth.Generation, changed, err
	})
}

// handleBrokerNATS serves a NATS cluster's authorization file, long-polled
// like handleBrokerMosquitto.
func (a *API) handleBrokerNATS(w http.ResponseWriter, r *http.Request) {
	serveBrokerFiles(a, w, r, func(have string, wait time.Duration) (api.NATSAuth, string, bool, error) {
		auth, changed, err := a.opts.Broker.NATS(r.Context(), have, wait, a.stopWaiting)
		return auth, auth.Generation, changed, err
	})
}

// serveBrokerFiles answers a long-polled request for a broker's files:
// get returns them, their generation and whether they differ from have.
func serveBrokerFiles[T any](a *API, w http.ResponseWriter, r *http.Request, get func(have string, wait time.Duration) (T, string, bool, error)) {
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
	auth, generation, changed, err := get(have, wait)
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
	w.Header().Set("ETag", etag(generation))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, auth)
}

// maxBrokerCheckBody bounds a broker's login or ACL check.
const maxBrokerCheckBody = 16 << 10

// handleBrokerAuthn answers a broker's login check. The answer is 200 with
// allow or deny either way: a refused device is not an API error.
func (a *API) handleBrokerAuthn(w http.ResponseWriter, r *http.Request) {
	if a.opts.Broker == nil {
		writeJSON(w, http.StatusConflict, api.ErrorResponse{Error: a.opts.NoBroker})
		return
	}
	var req api.BrokerAuthnRequest
	if err := decodeJSON(w, r, maxBrokerCheckBody, &req); err != nil {
		writeError(w, err)
		return
	}
	ok := a.opts.Broker.Authenticate(req.Username, req.ClientID, []byte(req.Password))
	if !ok {
		a.log.Info("broker login refused", "username", req.Username, "client", req.ClientID)
	}
	writeJSON(w, http.StatusOK, decision(ok))
}

// handleBrokerAuthz answers a broker's ACL check.
func (a *API) handleBrokerAuthz(w http.ResponseWriter, r *http.Request) {
	if a.opts.Broker == nil {
		writeJSON(w, http.StatusConflict, api.ErrorResponse{Error: a.opts.NoBroker})
		return
	}
	var req api.BrokerAuthzRequest
	if err := decodeJSON(w, r, maxBrokerCheckBody, &req); err != nil {
		writeError(w, err)
		return
	}
	var publish bool
	switch req.Action {
	case "publish":
		publish = true
	case "subscribe":
	default:
		writeError(w, api.Errorf(api.ErrInvalid, "action %q: want publish or subscribe", req.Action))
		return
	}
	var retain bool
	switch req.Retain {
	case "true", "1":
		retain = true
	case "", "false", "0":
	default:
		writeError(w, api.Errorf(api.ErrInvalid, "retain %q: want true or false", req.Retain))
		return
	}
	ok := a.opts.Broker.Authorize(req.Username, req.ClientID, req.Topic, publish, retain)
	if !ok {
		a.log.Debug("broker acl refused", "username", req.Username, "topic", req.Topic, "action", req.Action)
	}
	writeJSON(w, http.StatusOK, decision(ok))
}

func decision(ok bool) api.BrokerDecision {
	if ok {
		return api.BrokerDecision{Result: "allow"}
	}
	return api.BrokerDecision{Result: "deny"}
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
