package controlplane

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/data"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
)

// DataConfig configures field data capture. Zero values take the defaults
// of controlplane/data.
type DataConfig struct {
	// RowRetention is how long captured rows are kept (default 30 days).
	RowRetention time.Duration
	// DatasetsKept is how many dataset versions are kept per model
	// (default 20, the newest).
	DatasetsKept int
}

// dataAPI is the API's view of capture: setting a policy stores it and
// then re-issues the desired states of the model's devices, so it reaches
// them signed.
type dataAPI struct {
	*data.Service
	fleet *fleet.Fleet
}

func (d dataAPI) SetPolicy(ctx context.Context, model string, p api.CapturePolicy) (api.CaptureStatus, error) {
	st, err := d.Service.SetPolicy(model, p)
	if err != nil {
		return st, err
	}
	if _, err := d.fleet.RefreshCapture(ctx, model); err != nil {
		return st, err
	}
	return st, nil
}
