package controlplane

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors of the control plane's operations, for branching with
// errors.Is. The REST API maps each to an HTTP status.
var (
	// ErrInvalid: the request is malformed or names something invalid (400).
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: a device or model version does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrExists: a device or model version already exists (409).
	ErrExists = errors.New("already exists")
	// ErrTooLarge: a body or model exceeds its limit (413).
	ErrTooLarge = errors.New("too large")
	// ErrChecksFailed: a model loads but fails its test vectors (422).
	ErrChecksFailed = errors.New("model checks failed")
	// ErrUnavailable: a dependency such as onnxruntime or a signing key is
	// missing (503).
	ErrUnavailable = errors.New("unavailable")
)

// opError is a user-facing error: msg is written for the operator and kind
// is one of the sentinels above. errors.Is(err, kind) holds.
type opError struct {
	kind error
	msg  string
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.kind }

func newErr(kind error, format string, args ...any) error {
	return &opError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// httpStatus maps an error to the status the API answers with.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists):
		return http.StatusConflict
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrChecksFailed):
		return http.StatusUnprocessableEntity
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}
