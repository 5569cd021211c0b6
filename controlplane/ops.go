package controlplane

import (
	"context"
	"errors"
	"github.com/edgefleet/edgefleet/controlplane/audit"

	"github.com/edgefleet/edgefleet/internal/labels"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// The operations behind the REST API, for in-process callers such as
// fleet-sim. They may be called once Ready is closed; errors wrap the
// package's sentinels (ErrInvalid, ErrNotFound, ErrExists, ...).

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
func (s *Server) RegisterDevice(id string, lbls map[string]string) (DeviceCredentials, error) {
	if !s.isReady() {
		return DeviceCredentials{}, errNotReady
	}
	password, err := s.reg.register(id, lbls)
	if err != nil {
		return DeviceCredentials{}, err
	}
	s.log.Info("device registered", "device", id, "labels", lbls)
	return DeviceCredentials{
		ID:            id,
		Username:      id,
		Password:      password,
		BrokerURL:     s.BrokerURL(),
		TopicPrefix:   s.scheme.Prefix,
		RootPublicKey: s.keys.rootPEM,
	}, nil
}

// Device returns one device.
func (s *Server) Device(id string) (Device, error) {
	if !s.isReady() {
		return Device{}, errNotReady
	}
	d, ok := s.reg.get(id)
	if !ok {
		return Device{}, newErr(ErrNotFound, "device %q is not registered", id)
	}
	return d, nil
}

// Devices returns the devices matching selector ("" for all), by id.
func (s *Server) Devices(selector string) ([]Device, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	if selector == "" {
		return s.reg.list(nil), nil
	}
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, newErr(ErrInvalid, "%v", err)
	}
	return s.reg.list(&sel), nil
}

// AddModelVersion checks, signs, stores and publishes a model version, as
// the upload endpoint does. meta holds only metadata fields (see the API).
func (s *Server) AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (ModelVersion, error) {
	if !s.isReady() {
		return ModelVersion{}, errNotReady
	}
	if meta != nil {
		// The same rules as the API's metadata part.
		if err := checkMetadataFields(meta); err != nil {
			return ModelVersion{}, err
		}
	}
	rec, err := s.addModelVersion(ctx, name, version, model, meta, force)
	if err != nil {
		s.metrics.uploads.WithLabelValues("rejected").Inc()
		return ModelVersion{}, err
	}
	s.countUpload(rec)
	return rec.ModelVersion, nil
}

// Deploy issues desired states, as POST /api/v1/deployments does.
func (s *Server) Deploy(ctx context.Context, req DeployRequest) (*DeployResult, error) {
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
func (s *Server) Audit(q audit.Query) ([]audit.Entry, error) {
	if !s.isReady() {
		return nil, errNotReady
	}
	return s.audit.List(q)
}
