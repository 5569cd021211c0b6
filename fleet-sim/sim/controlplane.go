package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ControlPlane is what the simulator and its scenarios ask of a control
// plane. The in-process *controlplane.Server has these methods;
// RemoteControlPlane speaks the REST API of an external one. What only
// the in-process one can do (its broker, its alert rules) is not here;
// Fleet.MonitorStats covers the monitoring counters of both.
type ControlPlane interface {
	RegisterDevice(id string, labels map[string]string) (controlplane.DeviceCredentials, error)
	AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (controlplane.ModelVersion, error)
	Deploy(ctx context.Context, req controlplane.DeployRequest) (*controlplane.DeployResult, error)
	Devices(selector string) ([]controlplane.Device, error)
	Device(id string) (controlplane.Device, error)
	// CreateRollout, Rollout and RolloutAction are the staged-rollout
	// operations; actor names who acted in the audit log (an external
	// control plane records the API token's name instead).
	CreateRollout(ctx context.Context, spec rollout.Spec, actor string) (*rollout.Status, error)
	Rollout(id string, withDevices bool) (*rollout.Status, error)
	RolloutAction(ctx context.Context, id, action string, req rollout.RollbackRequest, actor string) (*rollout.Status, error)
	// Audit returns audit entries (operator actions, rollout decisions,
	// monitoring alerts), oldest first.
	Audit(q audit.Query) ([]audit.Entry, error)
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
	own  *http.Client
}

func (r *RemoteControlPlane) client() *http.Client {
	if r.HTTP != nil {
		return r.HTTP
	}
	r.once.Do(func() {
		r.own = &http.Client{Timeout: 60 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	})
	return r.own
}

// CloseIdleConnections closes the client's idle keep-alive connections
// (Fleet.Stop calls it, so the leak check sees no connection goroutines).
func (r *RemoteControlPlane) CloseIdleConnections() { r.client().CloseIdleConnections() }

var _ ControlPlane = (*RemoteControlPlane)(nil)

const maxAnswer = 64 << 20

func (r *RemoteControlPlane) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	hc := r.client()
	if ctx == nil {
		ctx = context.Background()
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(r.APIURL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+r.Token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e controlplane.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func (r *RemoteControlPlane) doJSON(ctx context.Context, method, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return r.do(ctx, method, path, bytes.NewReader(b), "application/json", out)
}

// RegisterDevice implements ControlPlane.
func (r *RemoteControlPlane) RegisterDevice(id string, labels map[string]string) (controlplane.DeviceCredentials, error) {
	var c controlplane.DeviceCredentials
	err := r.doJSON(context.Background(), "POST", "/api/v1/devices", controlplane.RegisterDeviceRequest{ID: id, Labels: labels}, &c)
	return c, err
}

// AddModelVersion implements ControlPlane.
func (r *RemoteControlPlane) AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (controlplane.ModelVersion, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("model", name+".onnx")
	if err != nil {
		return controlplane.ModelVersion{}, err
	}
	_, _ = fw.Write(model)
	if meta != nil {
		mj, err := protojson.Marshal(meta)
		if err != nil {
			return controlplane.ModelVersion{}, fmt.Errorf("encode metadata: %w", err)
		}
		if err := mw.WriteField("metadata", string(mj)); err != nil {
			return controlplane.ModelVersion{}, err
		}
	}
	if err := mw.Close(); err != nil {
		return controlplane.ModelVersion{}, err
	}
	path := "/api/v1/models/" + url.PathEscape(name) + "/versions/" + url.PathEscape(version)
	if force {
		path += "?force=true"
	}
	var mv controlplane.ModelVersion
	err = r.do(ctx, "POST", path, &buf, mw.FormDataContentType(), &mv)
	return mv, err
}

// Deploy implements ControlPlane.
func (r *RemoteControlPlane) Deploy(ctx context.Context, req controlplane.DeployRequest) (*controlplane.DeployResult, error) {
	var res controlplane.DeployResult
	if err := r.doJSON(ctx, "POST", "/api/v1/deployments", req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Devices implements ControlPlane.
func (r *RemoteControlPlane) Devices(selector string) ([]controlplane.Device, error) {
	var out []controlplane.Device
	err := r.do(context.Background(), "GET", "/api/v1/devices?selector="+url.QueryEscape(selector), nil, "", &out)
	return out, err
}

// Device implements ControlPlane.
func (r *RemoteControlPlane) Device(id string) (controlplane.Device, error) {
	var d controlplane.Device
	err := r.do(context.Background(), "GET", "/api/v1/devices/"+url.PathEscape(id), nil, "", &d)
	return d, err
}

// CreateRollout implements ControlPlane; the audit log names the API
// token, not actor.
func (r *RemoteControlPlane) CreateRollout(ctx context.Context, spec rollout.Spec, _ string) (*rollout.Status, error) {
	var st rollout.Status
	if err := r.doJSON(ctx, "POST", "/api/v1/rollouts", spec, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Rollout implements ControlPlane.
func (r *RemoteControlPlane) Rollout(id string, withDevices bool) (*rollout.Status, error) {
	path := "/api/v1/rollouts/" + url.PathEscape(id)
	if withDevices {
		path += "?devices=true"
	}
	var st rollout.Status
	if err := r.do(context.Background(), "GET", path, nil, "", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// RolloutAction implements ControlPlane: POST /api/v1/rollouts/{id}/{action}
// (pause, resume, promote, abort or rollback); the audit log names the API
// token, not actor.
func (r *RemoteControlPlane) RolloutAction(ctx context.Context, id, action string, req rollout.RollbackRequest, _ string) (*rollout.Status, error) {
	path := "/api/v1/rollouts/" + url.PathEscape(id) + "/" + url.PathEscape(action)
	var st rollout.Status
	var err error
	if req == (rollout.RollbackRequest{}) {
		err = r.do(ctx, "POST", path, nil, "", &st)
	} else {
		err = r.doJSON(ctx, "POST", path, req, &st)
	}
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// Audit implements ControlPlane: GET /api/v1/audit.
func (r *RemoteControlPlane) Audit(q audit.Query) ([]audit.Entry, error) {
	v := url.Values{}
	if q.Action != "" {
		v.Set("action", q.Action)
	}
	if q.Target != "" {
		v.Set("target", q.Target)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/api/v1/audit"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out []audit.Entry
	err := r.do(context.Background(), "GET", path, nil, "", &out)
	return out, err
}

// Prometheus series MonitorStats reads from an external control plane.
const (
	metricIngested   = "edgefleet_monitor_reports_ingested_total"
	metricDuplicates = "edgefleet_monitor_reports_duplicate_total"
)

// MonitorStats returns the control plane's monitoring ingest counters
// (since it started) from its Prometheus endpoint, GET /metrics.
func (r *RemoteControlPlane) MonitorStats(ctx context.Context) (monitor.Stats, error) {
	hc := r.client()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(r.APIURL, "/")+"/metrics", nil)
	if err != nil {
		return monitor.Stats{}, fmt.Errorf("GET /metrics: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return monitor.Stats{}, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return monitor.Stats{}, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	var st monitor.Stats
	var seen bool
	sc := bufio.NewScanner(io.LimitReader(resp.Body, maxAnswer))
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
func (r *RemoteControlPlane) ModelMetrics(ctx context.Context, model, version string) (*monitor.Result, error) {
	var out monitor.Result
	path := "/api/v1/models/" + url.PathEscape(model) + "/versions/" + url.PathEscape(version) + "/metrics?points=1"
	if err := r.do(ctx, "GET", path, nil, "", &out); err != nil {
		return nil, err
	}
	return &out, nil
}
