package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error kinds: the control plane's operations wrap one of these, and the
// REST API answers with the status each maps to (HTTPStatus). The typed
// client turns an answer's status back into the same kind, so in-process
// and remote callers branch alike with errors.Is.
var (
	// ErrInvalid: the request is malformed or names something invalid (400).
	ErrInvalid = errors.New("invalid request")
	// ErrUnauthorized: no API token, or an unknown one (401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: the token's role does not allow the route (403).
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound: a device, model version, rollout or token does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrExists: it already exists, or the operation conflicts with the
	// current state (409).
	ErrExists = errors.New("already exists")
	// ErrGone: a one-time credential was used already or expired (410).
	ErrGone = errors.New("gone")
	// ErrTooLarge: a body or model exceeds its limit (413).
	ErrTooLarge = errors.New("too large")
	// ErrChecksFailed: a model loads but fails its test vectors (422).
	ErrChecksFailed = errors.New("model checks failed")
	// ErrRateLimited: too many failed authentications from one address (429).
	ErrRateLimited = errors.New("rate limited")
	// ErrUnavailable: a dependency such as onnxruntime or a signing key is
	// missing, or the control plane is not ready (503).
	ErrUnavailable = errors.New("unavailable")
)

// kinds pairs every kind with its status, in the order HTTPStatus checks.
var kinds = [...]struct {
	err    error
	status int
}{
	{ErrInvalid, http.StatusBadRequest},
	{ErrUnauthorized, http.StatusUnauthorized},
	{ErrForbidden, http.StatusForbidden},
	{ErrNotFound, http.StatusNotFound},
	{ErrExists, http.StatusConflict},
	{ErrGone, http.StatusGone},
	{ErrTooLarge, http.StatusRequestEntityTooLarge},
	{ErrChecksFailed, http.StatusUnprocessableEntity},
	{ErrRateLimited, http.StatusTooManyRequests},
	{ErrUnavailable, http.StatusServiceUnavailable},
}

// HTTPStatus is the status the API answers err with: the status of the
// first kind err wraps, 500 for anything else.
func HTTPStatus(err error) int {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.status
		}
	}
	return http.StatusInternalServerError
}

// KindOf is the kind an answer's status stands for (nil for 2xx and for
// statuses without a kind, such as 500).
func KindOf(status int) error {
	for _, k := range kinds {
		if k.status == status {
			return k.err
		}
	}
	return nil
}

// Error is an error written for the operator: Msg says what was wrong and
// what to do, Kind is one of the kinds above (errors.Is(err, Kind) holds).
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

// Errorf returns an *Error of kind with a formatted message. The message
// is the whole text a user sees: it names the problem and the fix.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}
