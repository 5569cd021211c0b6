package controlplane

import (
	"context"
	"errors"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The control plane's operations for in-process callers such as fleet-sim:
// the same components the REST API calls, with the same errors (api
// kinds). They may be called once Ready is closed; before, they return
// errNotReady.

var errNotReady = &api.Error{Kind: api.ErrUnavailable, Msg: "controlplane: not ready (wait for Ready)"}

// ready returns the components once Run built them.
func (s *Server) components() (*components, error) {
	select {
	case <-s.ready:
		return s.c, nil
	default:
		return nil, errNotReady
	}
}

// RegisterDevice registers a device and returns its credentials; the
// password is not stored and cannot be shown again.
func (s *Server) RegisterDevice(id string, lbls map[string]string) (api.DeviceCredentials, error) {
	c, err := s.components()
	if err != nil {
		return api.DeviceCredentials{}, err
	}
	return c.fleet.Register(id, lbls)
}

// Device returns one device.
func (s *Server) Device(id string) (api.Device, error) {
	c, err := s.components()
	if err != nil {
		return api.Device{}, err
	}
	return c.fleet.Device(id)
}

// Devices returns the devices matching selector ("" for all), by id.
func (s *Server) Devices(selector string) ([]api.Device, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	return c.fleet.Devices(selector)
}

// AddModelVersion checks, signs, stores and publishes a model version, as
// the upload endpoint does. meta holds only metadata fields (see the API).
func (s *Server) AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error) {
	c, err := s.components()
	if err != nil {
		return api.ModelVersion{}, err
	}
	mv, err := c.models.Add(ctx, name, version, model, meta, force)
	mv.Manifest = nil // as in the list; Model returns it
	return mv, err
}

// AddModelUpload is AddModelVersion with everything an upload may carry:
// sample inputs to record test vectors from, reference data (see
// models.Upload).
func (s *Server) AddModelUpload(ctx context.Context, u models.Upload) (api.ModelVersion, error) {
	c, err := s.components()
	if err != nil {
		return api.ModelVersion{}, err
	}
	mv, err := c.models.AddUpload(ctx, u)
	mv.Manifest = nil // as in the list; Model returns it
	return mv, err
}

// Deploy issues desired states, as POST /api/v1/deployments does (its
// capture policy first).
func (s *Server) Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	if err := c.setCapture(req.Model, req.Version, req.Capture); err != nil {
		return nil, err
	}
	return c.fleet.Deploy(ctx, req)
}

// setCapture makes p, if set, model's capture policy before a deploy or
// rollout of version issues it, as the API's handlers do.
func (c *components) setCapture(model, version string, p *api.CapturePolicy) error {
	if p == nil {
		return nil
	}
	if c.data == nil {
		return api.Errorf(api.ErrUnavailable, "field data capture is not configured in this control plane")
	}
	if !c.models.Has(model, version) {
		return api.Errorf(api.ErrNotFound, "model %s version %s is not uploaded", model, version)
	}
	_, err := c.data.SetPolicy(model, *p)
	return err
}

// CreateRollout checks and starts a rollout, as POST /api/v1/rollouts does.
// actor is who asked (for the audit log).
func (s *Server) CreateRollout(ctx context.Context, spec api.RolloutSpec, actor string) (*api.Rollout, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	if err := c.setCapture(spec.Model, spec.Version, spec.Capture); err != nil {
		return nil, err
	}
	return c.rollouts.Create(ctx, spec, actor)
}

// Rollout returns one rollout; withDevices adds per-device records.
func (s *Server) Rollout(id string, withDevices bool) (*api.Rollout, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	return c.rollouts.Get(id, withDevices)
}

// Rollouts lists every rollout, oldest first.
func (s *Server) Rollouts() ([]*api.Rollout, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	return c.rollouts.List(), nil
}

// RolloutAction pauses, resumes, promotes, aborts or rolls back a rollout;
// req narrows a rollback to a label group or one device.
func (s *Server) RolloutAction(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest, actor string) (*api.Rollout, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	return c.rollouts.Act(ctx, id, action, req, actor)
}

// Audit returns the audit entries matching q, oldest first: operator
// actions, rollout decisions and monitoring alerts with their figures.
func (s *Server) Audit(q api.AuditQuery) ([]api.AuditEntry, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	list, err := c.audit.List(audit.Query(q))
	if err != nil {
		return nil, err
	}
	out := make([]api.AuditEntry, len(list))
	for i, e := range list {
		out[i] = api.AuditEntry(e)
	}
	return out, nil
}

// Dropped is the number of device payloads dropped since start:
// undecodable, oversized, from unknown devices, or naming another device
// than their topic.
func (s *Server) Dropped() uint64 {
	c, err := s.components()
	if err != nil {
		return 0
	}
	return c.ingest.Dropped()
}

// Monitor is the monitoring aggregator (nil before Ready).
func (s *Server) Monitor() *monitor.Aggregator {
	c, err := s.components()
	if err != nil {
		return nil
	}
	return c.monitor.Aggregator()
}

// EvaluateAlerts runs the alert rules now (tests, and `edgefleet` tools).
func (s *Server) EvaluateAlerts() ([]monitor.Alert, error) {
	c, err := s.components()
	if err != nil {
		return nil, errors.New("controlplane: monitoring is not running")
	}
	return c.monitor.Evaluate()
}

// Sites returns each site's sharing and the bytes each model version's
// download took over its WAN link (GET /api/v1/sites).
func (s *Server) Sites() ([]api.Site, error) {
	c, err := s.components()
	if err != nil {
		return nil, err
	}
	return c.sites.Sites(), nil
}

// RotateSiteKey gives site a new gossip key and returns its id.
func (s *Server) RotateSiteKey(ctx context.Context, site string) (string, error) {
	c, err := s.components()
	if err != nil {
		return "", err
	}
	return c.sites.RotateKey(ctx, site)
}
