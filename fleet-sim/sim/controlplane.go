package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ControlPlane is what the simulator asks of a control plane. The
// in-process *controlplane.Server has these methods; RemoteControlPlane
// speaks the REST API of an external one.
type ControlPlane interface {
	RegisterDevice(id string, labels map[string]string) (controlplane.DeviceCredentials, error)
	AddModelVersion(ctx context.Context, name, version string, model []byte, meta *efpb.Manifest, force bool) (controlplane.ModelVersion, error)
	Deploy(ctx context.Context, req controlplane.DeployRequest) (*controlplane.DeployResult, error)
	Devices(selector string) ([]controlplane.Device, error)
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
