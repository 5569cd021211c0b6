package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ControlPlane is what the simulator and its scenarios ask of a control
// plane. The in-process *controlplane.Server has these methods;
// RemoteControlPlane speaks the REST API of an external one. What only
// the in-process one can do (its broker, its alert rules) is not here;
// Fleet.MonitorStats covers the monitoring counters of both.
type ControlPlane interface {
	RegisterDevice(id string, labels map[string]string) (api.DeviceCredentials, error)
	AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error)
	// AddModelUpload adds a version with sample inputs and reference data
	// (the control plane derives test vectors and drift statistics).
	AddModelUpload(ctx context.Context, u models.Upload) (api.ModelVersion, error)
	Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error)
	Devices(selector string) ([]api.Device, error)
	Device(id string) (api.Device, error)
	// CreateRollout, Rollout and RolloutAction are the staged-rollout
	// operations; actor names who acted in the audit log (an external
	// control plane records the API token's name instead).
	CreateRollout(ctx context.Context, spec api.RolloutSpec, actor string) (*api.Rollout, error)
	Rollout(id string, withDevices bool) (*api.Rollout, error)
	RolloutAction(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest, actor string) (*api.Rollout, error)
	// Audit returns audit entries (operator actions, rollout decisions,
	// monitoring alerts), oldest first.
	Audit(q api.AuditQuery) ([]api.AuditEntry, error)
}

var _ ControlPlane = (*controlplane.Server)(nil)

// RemoteControlPlane is a client of an external control plane's REST API.
type RemoteControlPlane struct {
	// APIURL is e.g. http://127.0.0.1:8080; Token is an admin API token.
	APIURL string
	Token  string
	// HTTP is the client to use; nil means one of its own with a 60s
	// timeout.
	HTTP *http.Client

	once sync.Once
	c    *client.Client
	err  error
}

// client is the typed API client, made on first use.
func (r *RemoteControlPlane) client() (*client.Client, error) {
	r.once.Do(func() {
		hc := r.HTTP
		if hc == nil {
			hc = &http.Client{Timeout: 60 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		}
		r.c, r.err = client.New(r.APIURL, client.Options{Token: r.Token, HTTP: hc})
	})
	return r.c, r.err
}

// CloseIdleConnections closes the client's idle keep-alive connections
// (Fleet.Stop calls it, so the leak check sees no connection goroutines).
func (r *RemoteControlPlane) CloseIdleConnections() {
	if c, err := r.client(); err == nil {
		c.CloseIdleConnections()
	}
}

var _ ControlPlane = (*RemoteControlPlane)(nil)

// RegisterDevice implements ControlPlane.
func (r *RemoteControlPlane) RegisterDevice(id string, labels map[string]string) (api.DeviceCredentials, error) {
	c, err := r.client()
	if err != nil {
		return api.DeviceCredentials{}, err
	}
	return c.RegisterDevice(context.Background(), id, labels)
}

// AddModelVersion implements ControlPlane.
func (r *RemoteControlPlane) AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (api.ModelVersion, error) {
	c, err := r.client()
	if err != nil {
		return api.ModelVersion{}, err
	}
	var mj []byte
	if meta != nil {
		if mj, err = protojson.Marshal(meta); err != nil {
			return api.ModelVersion{}, fmt.Errorf("encode metadata: %w", err)
		}
	}
	return c.UploadModel(ctx, client.Upload{Name: name, Version: version, Model: bytes.NewReader(model), Metadata: mj, Force: force})
}

// AddModelUpload implements ControlPlane.
func (r *RemoteControlPlane) AddModelUpload(ctx context.Context, u models.Upload) (api.ModelVersion, error) {
	c, err := r.client()
	if err != nil {
		return api.ModelVersion{}, err
	}
	var mj []byte
	if u.Meta != nil {
		if mj, err = protojson.Marshal(u.Meta); err != nil {
			return api.ModelVersion{}, fmt.Errorf("encode metadata: %w", err)
		}
	}
	return c.UploadModel(ctx, client.Upload{Name: u.Name, Version: u.Version, Model: bytes.NewReader(u.Model), Metadata: mj,
		Samples: u.Samples, Reference: u.Reference, Force: u.Force})
}

// Deploy implements ControlPlane.
func (r *RemoteControlPlane) Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.Deploy(ctx, req)
}

// Devices implements ControlPlane.
func (r *RemoteControlPlane) Devices(selector string) ([]api.Device, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.Devices(context.Background(), selector)
}

// Device implements ControlPlane.
func (r *RemoteControlPlane) Device(id string) (api.Device, error) {
	c, err := r.client()
	if err != nil {
		return api.Device{}, err
	}
	return c.Device(context.Background(), id)
}

// CreateRollout implements ControlPlane; the audit log names the API
// token, not actor.
func (r *RemoteControlPlane) CreateRollout(ctx context.Context, spec api.RolloutSpec, _ string) (*api.Rollout, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.CreateRollout(ctx, spec)
}

// Rollout implements ControlPlane.
func (r *RemoteControlPlane) Rollout(id string, withDevices bool) (*api.Rollout, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.Rollout(context.Background(), id, withDevices)
}

// RolloutAction implements ControlPlane; the audit log names the API
// token, not actor.
func (r *RemoteControlPlane) RolloutAction(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest, _ string) (*api.Rollout, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.RolloutAction(ctx, id, action, req)
}

// Audit implements ControlPlane.
func (r *RemoteControlPlane) Audit(q api.AuditQuery) ([]api.AuditEntry, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.Audit(context.Background(), q)
}

// Prometheus series MonitorStats reads from an external control plane.
const (
	metricIngested   = "edgefleet_monitor_reports_ingested_total"
	metricDuplicates = "edgefleet_monitor_reports_duplicate_total"
)

// MonitorStats returns the control plane's monitoring ingest counters
// (since it started) from its Prometheus endpoint, GET /metrics.
func (r *RemoteControlPlane) MonitorStats(ctx context.Context) (monitor.Stats, error) {
	c, err := r.client()
	if err != nil {
		return monitor.Stats{}, err
	}
	text, err := c.Metrics(ctx)
	if err != nil {
		return monitor.Stats{}, err
	}
	var st monitor.Stats
	var seen bool
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		var dst *uint64
		switch name {
		case metricIngested:
			dst, seen = &st.Ingested, true
		case metricDuplicates:
			dst = &st.Duplicates
		default:
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return monitor.Stats{}, fmt.Errorf("GET /metrics: %s %q: %w", name, value, err)
		}
		*dst = uint64(f)
	}
	if err := sc.Err(); err != nil {
		return monitor.Stats{}, fmt.Errorf("GET /metrics: read answer: %w", err)
	}
	if !seen {
		return monitor.Stats{}, fmt.Errorf("GET /metrics: no %s series (not an edgefleet control plane?)", metricIngested)
	}
	return st, nil
}

// ModelMetrics returns the control plane's monitoring figures of
// model@version over the last day: GET
// /api/v1/models/{name}/versions/{version}/metrics.
func (r *RemoteControlPlane) ModelMetrics(ctx context.Context, model, version string) (*api.ModelMetrics, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	return c.ModelMetrics(ctx, model, version, api.MetricsQuery{Points: 1})
}
