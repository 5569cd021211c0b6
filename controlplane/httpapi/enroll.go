package httpapi

import (
	"errors"
	"net/http"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// maxEnrollBody bounds the enrollment requests.
const maxEnrollBody = 64 << 10

func (a *API) handleCreateEnrollment(w http.ResponseWriter, r *http.Request) {
	var req api.EnrollmentRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		writeError(w, err)
		return
	}
	e, err := a.opts.Fleet.CreateEnrollment(req, Actor(r.Context()))
	if err != nil {
		a.logIfInternal(err, "create enrollment")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, e)
}

// handleEnroll is the agent's exchange; it needs no API token, so its
// failures count against the same per-address limit as bad API tokens (a
// valid enrollment token passes whatever the address's count, as a valid
// API token does: devices enrolling behind one NAT must not lock each
// other out).
func (a *API) handleEnroll(w http.ResponseWriter, r *http.Request) {
	remote := remoteHost(r)
	var req api.EnrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		if wait := a.failed(remote); wait > 0 {
			tooManyFailures(w, wait)
			return
		}
		writeError(w, err)
		return
	}
	creds, err := a.opts.Fleet.Enroll(strings.TrimSpace(req.Token))
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, creds)
	case errors.Is(err, api.ErrUnauthorized), errors.Is(err, api.ErrGone):
		if wait := a.failed(remote); wait > 0 {
			tooManyFailures(w, wait)
			return
		}
		writeJSON(w, api.HTTPStatus(err), api.ErrorResponse{Error: strings.TrimPrefix(err.Error(), "enroll: ")})
	default:
		a.logIfInternal(err, "enroll")
		writeError(w, err)
	}
}

func (a *API) handleRevokeDevice(w http.ResponseWriter, r *http.Request) {
	res, err := a.opts.Fleet.Revoke(r.PathValue("id"))
	if err != nil {
		a.logIfInternal(err, "revoke device")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
