package api

import (
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ModelState is where a device stands with one model, as its latest status
// event says (Device.Reported, ModelStatus.State).
type ModelState string

// The model states a device reports.
const (
	ModelIdle        ModelState = "idle"
	ModelPending     ModelState = "pending" // assigned, waiting for its manifest
	ModelDownloading ModelState = "downloading"
	ModelVerifying   ModelState = "verifying"
	ModelStaging     ModelState = "staging"
	ModelActive      ModelState = "active"
	ModelFailed      ModelState = "failed"
	ModelRolledBack  ModelState = "rolled-back"
)

// InProgress reports whether s is a step of an update (downloading,
// verifying or staging).
func (s ModelState) InProgress() bool {
	return s == ModelDownloading || s == ModelVerifying || s == ModelStaging
}

// Refused reports whether the device refused or abandoned the version the
// state is about (failed or rolled back).
func (s ModelState) Refused() bool { return s == ModelFailed || s == ModelRolledBack }

// ModelStateOf names a wire state: MODEL_STATE_ROLLED_BACK is
// "rolled-back"; a number the enum does not know is "state(N)".
func ModelStateOf(s efpb.ModelState) ModelState {
	name, ok := efpb.ModelState_name[int32(s)]
	if !ok {
		return ModelState("state(" + strconv.Itoa(int(s)) + ")")
	}
	return ModelState(strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "MODEL_STATE_")), "_", "-"))
}

// RefusalKind is the kind of signed document a device refused
// (Refusal.Kind, and the kind label of edgefleet_device_refusals_total).
type RefusalKind string

// The kinds of refusal. Unknown is a refusal an older agent reported
// without its kind, or a kind this control plane does not know.
const (
	RefusedTrustBundle  RefusalKind = "trust-bundle"
	RefusedManifest     RefusalKind = "manifest"
	RefusedDesiredState RefusalKind = "desired-state"
	RefusedSite         RefusalKind = "site-document"
	RefusedUnknown      RefusalKind = "unknown"
)

// RefusalKindOf names a wire refusal kind; ok is false for
// REFUSAL_UNSPECIFIED (not a refusal).
func RefusalKindOf(r efpb.Refusal) (kind RefusalKind, ok bool) {
	switch r {
	case efpb.Refusal_REFUSAL_UNSPECIFIED:
		return "", false
	case efpb.Refusal_REFUSAL_TRUST_BUNDLE:
		return RefusedTrustBundle, true
	case efpb.Refusal_REFUSAL_MANIFEST:
		return RefusedManifest, true
	case efpb.Refusal_REFUSAL_DESIRED_STATE:
		return RefusedDesiredState, true
	case efpb.Refusal_REFUSAL_SITE_DOCUMENT:
		return RefusedSite, true
	}
	return RefusedUnknown, true
}
