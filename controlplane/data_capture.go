package controlplane

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/data"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/proto/efpb"
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

// dataSchemas checks uploaded base datasets against the newest version
// of a model (its inputs and reference statistics).
type dataSchemas struct{ models *models.Registry }

func (d dataSchemas) InputSchema(model string) (string, []*efpb.TensorSpec, []*efpb.FeatureStats, bool) {
	v := newestVersion(d.models, model)
	if v == "" {
		return "", nil, nil, false
	}
	m, err := d.models.Manifest(model, v)
	if err != nil {
		return "", nil, nil, false
	}
	ref, _ := d.models.Reference(model, v)
	return v, m.GetInputs(), ref, true
}
