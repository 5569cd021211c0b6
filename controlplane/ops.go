package controlplane

import (
	"context"
	"errors"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/audit"

	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The operations behind the REST API, for in-process callers such as
// fleet-sim. They may be called once Ready is closed; errors wrap the
// package's sentinels (api.ErrInvalid, api.ErrNotFound, api.ErrExists, ...).

var errNotReady = errors.New("controlplane: not ready (wait for Ready)")

func (s *Server) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// RegisterDevice registers a device and returns its credentials; the
// password is not stored and cannot be shown again.
func (s *Server) RegisterDevice(id string, lbls map[string]string) (api.DeviceCredentials, error) {
	if !s.isReady() {
		return api.DeviceCredentials{}, errNotReady
	}
	password, err := s.reg.register(id, lbls)
	if err != nil {
		return api.DeviceCredentials{}, err
	}
	s.log.Info("device registered", "device", id, "labels", lbls)
	return api.DeviceCredentials{
		ID:            id,
		Username:      id,
		Password:      password,
		BrokerURL:     s.BrokerURL(),
		TopicPrefix:   s.scheme.Prefix,
		RootPublicKey: s.keys.RootPEM,
	}, nil
}

// api.Device returns one device.
func (s *Server) Device(id string) (api.Device, error) {
	if !s.isReady() {
		return api.Device{}, errNotReady
	}
	d, ok := s.reg.get(id)
	if !ok {
		return api.Device{}, newErr(api.ErrNotFound, "device %q is not registered", id)
	}
	return d, nil
}

// Devices returns the devices matching selector ("" for all), by id.
func (s *Server) Devices(selector string) ([]api.Device, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	if selector == "" {
		return s.reg.list(nil), nil
	}
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}
	return s.reg.list(&sel), nil
}

// AddModelVersion checks, signs, stores and publishes a model version, as
// the upload endpoint does. meta holds only metadata fields (see the API).
func (s *Server) AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error) {
	if !s.isReady() {
		return api.ModelVersion{}, errNotReady
	}
	if meta != nil {
		// The same rules as the API's metadata part.
		if err := checkMetadataFields(meta); err != nil {
			return api.ModelVersion{}, err
		}
	}
	rec, err := s.addModelVersion(ctx, name, version, model, meta, force)
	if err != nil {
		s.metrics.uploads.WithLabelValues("rejected").Inc()
		return api.ModelVersion{}, err
	}
	s.countUpload(rec)
	return rec.ModelVersion, nil
}

// Deploy issues desired states, as POST /api/v1/deployments does.
func (s *Server) Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	return s.deploy(ctx, req)
}

func (s *Server) countUpload(rec *modelRecord) {
	result := "accepted"
	if rec.Checks.Forced {
		result = "forced"
	}
	s.metrics.uploads.WithLabelValues(result).Inc()
}

// Audit returns the audit entries matching q, oldest first: operator
// actions, rollout decisions and monitoring alerts with their figures.
func (s *Server) Audit(q api.AuditQuery) ([]api.AuditEntry, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	list, err := s.audit.List(audit.Query(q))
	if err != nil {
		return nil, err
	}
	return auditViews(list), nil
}

// auditViews turns stored audit entries into the API's view.
func auditViews(list []audit.Entry) []api.AuditEntry {
	out := make([]api.AuditEntry, len(list))
	for i, e := range list {
		out[i] = api.AuditEntry(e)
	}
	return out
}
