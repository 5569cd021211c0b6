package controlplane

import "github.com/edgefleet/edgefleet/controlplane/api"

// newErr is api.Errorf: an error written for the operator, of one of the
// api kinds (api.ErrInvalid, api.ErrNotFound, ...).
func newErr(kind error, format string, args ...any) error { return api.Errorf(kind, format, args...) }

// httpStatus is api.HTTPStatus.
func httpStatus(err error) int { return api.HTTPStatus(err) }
