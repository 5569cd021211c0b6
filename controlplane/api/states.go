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
