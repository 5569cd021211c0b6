// Package client is the typed Go client of the control plane's REST API: one
// method per route of api.Routes, a context on every call, answers decoded
// into the api types and errors that wrap the api kinds (errors.Is works as
// in process). It imports nothing of the server. Imported by agent
// (enrollment), controlplane/cli, controlplane/demo, fleet-sim/bench,
// fleet-sim/scenario, fleet-sim/sim, fleet-sim/soak and internal/fleettest.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// MaxAnswer bounds an answer the client reads (a fleet of 100,000 devices
// lists in about 60 MiB).
const MaxAnswer = 64 << 20

// ErrUnreachable is wrapped by errors of calls that never reached the
// control plane (connection refused, no route, DNS).
var ErrUnreachable = errors.New("cannot reach the control plane")

// Client calls one control plane. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// Options configure a Client; the zero value is usable.
type Options struct {
	// Token is the API token sent as a bearer token; "" for the public
	// calls only (Health, Enroll).
	Token string
	// HTTP is the client to send requests with; nil means one of the
	// client's own, with its own connection pool and no overall timeout
	// (uploads of large models take long; pass a context deadline).
	HTTP *http.Client
}

// New returns a client of the control plane at baseURL
// (http[s]://host:port).
func New(baseURL string, o Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: control plane URL %q: want an http:// or https:// URL", baseURL)
	}
	hc := o.HTTP
	if hc == nil {
		hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), token: o.Token, hc: hc}, nil
}

// BaseURL is the control plane's URL the client calls.
func (c *Client) BaseURL() string { return c.base }

// CloseIdleConnections closes the client's idle keep-alive connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// StatusError is an answer with a 4xx or 5xx status: Message is the API's
// error text, Kind the api kind the status stands for (nil for 5xx), which
// errors.Is sees through Unwrap.
type StatusError struct {
	Method, Path string
	Status       int
	Message      string
	Kind         error
}

func (e *StatusError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }
func (e *StatusError) Unwrap() error { return e.Kind }

// call sends a request and decodes a 2xx JSON answer into out (if non-nil).
func (c *Client) call(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	hdr := http.Header{}
	if contentType != "" {
		hdr.Set("Content-Type", contentType)
	}
	_, err := c.do(ctx, method, path, body, hdr, out)
	return err
}

// do sends a request with extra headers and decodes a 2xx JSON answer into
// out (if non-nil); 304 Not Modified is an answer without a body. It
// returns the answer's headers.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader, hdr http.Header, out any) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("%w at %s: %w", ErrUnreachable, c.base, err)
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if len(data) > MaxAnswer {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", method, path, MaxAnswer)
	}
	if resp.StatusCode == http.StatusNotModified {
		return resp, nil
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Method: method, Path: path, Status: resp.StatusCode, Kind: api.KindOf(resp.StatusCode)}
		var e api.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			se.Message = e.Error
		} else {
			se.Message = fmt.Sprintf("%s %s: %s", method, path, bytes.TrimSpace(data))
		}
		return nil, se
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp, nil
}

// callJSON sends in (nil: no body) as JSON.
func (c *Client) callJSON(ctx context.Context, method, path string, in, out any) error {
	if in == nil {
		return c.call(ctx, method, path, nil, "", out)
	}
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%s %s: encode request: %w", method, path, err)
	}
	return c.call(ctx, method, path, bytes.NewReader(b), "application/json", out)
}

// Health checks GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, "GET", api.PathHealth, nil, "", nil)
}

// Metrics returns the Prometheus exposition of GET /metrics.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+api.PathMetrics, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", api.PathMetrics, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", api.PathMetrics, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", api.PathMetrics, err)
	}
	if resp.StatusCode/100 != 2 {
		return "", &StatusError{Method: "GET", Path: api.PathMetrics, Status: resp.StatusCode, Kind: api.KindOf(resp.StatusCode),
			Message: fmt.Sprintf("GET %s: %s", api.PathMetrics, bytes.TrimSpace(data))}
	}
	return string(data), nil
}

// RegisterDevice registers a device and returns its credentials (the
// password is shown only here).
func (c *Client) RegisterDevice(ctx context.Context, id string, labels map[string]string) (api.DeviceCredentials, error) {
	var out api.DeviceCredentials
	err := c.callJSON(ctx, "POST", api.PathDevices, api.RegisterDeviceRequest{ID: id, Labels: labels}, &out)
	return out, err
}

// Devices lists the devices matching selector ("" for all), by id.
func (c *Client) Devices(ctx context.Context, selector string) ([]api.Device, error) {
	path := api.PathDevices
	if selector != "" {
		path += "?selector=" + url.QueryEscape(selector)
	}
	var out []api.Device
	err := c.call(ctx, "GET", path, nil, "", &out)
	return out, err
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (api.Device, error) {
	var out api.Device
	err := c.call(ctx, "GET", api.Path(api.PathDevice, id), nil, "", &out)
	return out, err
}

// RevokeDevice revokes a device's credentials and disconnects it.
func (c *Client) RevokeDevice(ctx context.Context, id string) (api.RevokeResult, error) {
	var out api.RevokeResult
	err := c.call(ctx, "POST", api.Path(api.PathDeviceRevoke, id), nil, "", &out)
	return out, err
}

// Models lists every model version.
func (c *Client) Models(ctx context.Context) ([]api.ModelVersion, error) {
	var out []api.ModelVersion
	err := c.call(ctx, "GET", api.PathModels, nil, "", &out)
	return out, err
}

// Model returns one model version with its manifest.
func (c *Client) Model(ctx context.Context, name, version string) (api.ModelVersion, error) {
	var out api.ModelVersion
	err := c.call(ctx, "GET", api.Path(api.PathModelVersion, name, version), nil, "", &out)
	return out, err
}

// Upload is a model version to push.
type Upload struct {
	Name, Version string
	// Model is the ONNX bytes, streamed (models run to hundreds of MiB);
	// Filename names it in the multipart body (default Name + ".onnx").
	Model    io.Reader
	Filename string
	// Metadata is the optional protojson manifest metadata (schema,
	// reference statistics, test vectors, training metadata); what is
	// derived is merged with it.
	Metadata []byte
	// Samples are optional sample inputs (an OIP inference request JSON, a
	// JSON array of them, or a CSV for a model with one tabular input): the
	// control plane runs the model on them and records the outputs as the
	// test vectors every agent checks.
	Samples []byte
	// Reference is an optional CSV of training data for the drift
	// reference statistics.
	Reference []byte
	// Force stores a model that fails its checks (to test refusal).
	Force bool
}

// UploadModel pushes a model version: the control plane checks it, signs
// its manifest and publishes it.
func (c *Client) UploadModel(ctx context.Context, u Upload) (api.ModelVersion, error) {
	filename := u.Filename
	if filename == "" {
		filename = u.Name + ".onnx"
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan error, 1)
	go func() { // ends when the body is written or the reader is closed below
		err := writeUpload(mw, u.Model, filename, map[string][]byte{
			api.PartMetadata: u.Metadata, api.PartSamples: u.Samples, api.PartReference: u.Reference})
		_ = pw.CloseWithError(err)
		written <- err
	}()
	path := api.Path(api.PathModelVersion, u.Name, u.Version)
	if u.Force {
		path += "?force=true"
	}
	var out api.ModelVersion
	err := c.call(ctx, "POST", path, pr, mw.FormDataContentType(), &out)
	_ = pr.CloseWithError(errors.New("upload finished")) // unblocks the writer if the server stopped reading
	if werr := <-written; err == nil && werr != nil {
		err = fmt.Errorf("POST %s: write body: %w", path, werr)
	}
	return out, err
}

func writeUpload(mw *multipart.Writer, model io.Reader, filename string, parts map[string][]byte) error {
	fw, err := mw.CreateFormFile(api.PartModel, filename)
	if err != nil {
		return err
	}
	if _, err := io.Copy(fw, model); err != nil {
		return err
	}
	for _, name := range []string{api.PartMetadata, api.PartSamples, api.PartReference} {
		if data := parts[name]; len(data) > 0 {
			if err := mw.WriteField(name, string(data)); err != nil {
				return err
			}
		}
	}
	return mw.Close()
}

// ModelMetrics returns a model version's field quality.
func (c *Client) ModelMetrics(ctx context.Context, name, version string, q api.MetricsQuery) (*api.ModelMetrics, error) {
	v := url.Values{}
	if !q.From.IsZero() {
		v.Set("from", q.From.UTC().Format(time.RFC3339))
	}
	if !q.To.IsZero() {
		v.Set("to", q.To.UTC().Format(time.RFC3339))
	}
	if q.By != "" {
		v.Set("by", q.By)
	}
	if q.Points > 0 {
		v.Set("points", strconv.Itoa(q.Points))
	}
	path := api.Path(api.PathModelMetrics, name, version)
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out api.ModelMetrics
	if err := c.call(ctx, "GET", path, nil, "", &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Deploy issues desired states naming a model version to devices.
func (c *Client) Deploy(ctx context.Context, req api.DeployRequest) (*api.DeployResult, error) {
	var out api.DeployResult
	if err := c.callJSON(ctx, "POST", api.PathDeployments, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateEnrollment issues a one-time enrollment token.
func (c *Client) CreateEnrollment(ctx context.Context, req api.EnrollmentRequest) (api.Enrollment, error) {
	var out api.Enrollment
	err := c.callJSON(ctx, "POST", api.PathEnrollments, req, &out)
	return out, err
}

// Enroll exchanges a one-time enrollment token for a device's
// credentials; it needs no API token.
func (c *Client) Enroll(ctx context.Context, token string) (api.DeviceCredentials, error) {
	var out api.DeviceCredentials
	err := c.callJSON(ctx, "POST", api.PathEnroll, api.EnrollRequest{Token: token}, &out)
	return out, err
}

// CreateToken creates an API token; the answer holds its secret, once.
func (c *Client) CreateToken(ctx context.Context, name string, role api.Role) (api.CreatedToken, error) {
	var out api.CreatedToken
	err := c.callJSON(ctx, "POST", api.PathTokens, api.CreateTokenRequest{Name: name, Role: string(role)}, &out)
	return out, err
}

// Tokens lists the API tokens (without secrets).
func (c *Client) Tokens(ctx context.Context) ([]api.APIToken, error) {
	var out []api.APIToken
	err := c.call(ctx, "GET", api.PathTokens, nil, "", &out)
	return out, err
}

// RevokeToken deletes an API token.
func (c *Client) RevokeToken(ctx context.Context, id string) (api.APIToken, error) {
	var out api.APIToken
	err := c.call(ctx, "DELETE", api.Path(api.PathToken, id), nil, "", &out)
	return out, err
}

// Audit reads the audit log, oldest first.
func (c *Client) Audit(ctx context.Context, q api.AuditQuery) ([]api.AuditEntry, error) {
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
	path := api.PathAudit
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out []api.AuditEntry
	err := c.call(ctx, "GET", path, nil, "", &out)
	return out, err
}

// CreateRollout starts a staged rollout.
func (c *Client) CreateRollout(ctx context.Context, spec api.RolloutSpec) (*api.Rollout, error) {
	var out api.Rollout
	if err := c.callJSON(ctx, "POST", api.PathRollouts, spec, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Rollouts lists every rollout (without device records), oldest first.
func (c *Client) Rollouts(ctx context.Context) ([]*api.Rollout, error) {
	var out []*api.Rollout
	err := c.call(ctx, "GET", api.PathRollouts, nil, "", &out)
	return out, err
}

// Rollout returns one rollout; withDevices adds the per-device records.
func (c *Client) Rollout(ctx context.Context, id string, withDevices bool) (*api.Rollout, error) {
	path := api.Path(api.PathRollout, id)
	if withDevices {
		path += "?devices=true"
	}
	var out api.Rollout
	if err := c.call(ctx, "GET", path, nil, "", &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RolloutAction pauses, resumes, promotes, aborts or rolls back a
// rollout; req narrows a rollback (zero: the whole rollout).
func (c *Client) RolloutAction(ctx context.Context, id string, action api.RolloutAction, req api.RollbackRequest) (*api.Rollout, error) {
	var body any
	if req != (api.RollbackRequest{}) {
		body = req
	}
	var out api.Rollout
	if err := c.callJSON(ctx, "POST", api.Path(api.PathRolloutAction(action), id), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// BrokerNATS gets a NATS cluster's authorization file (GET
// /api/v1/broker/nats), long-polled like BrokerMosquitto.
func (c *Client) BrokerNATS(ctx context.Context, have string, wait time.Duration) (auth api.NATSAuth, changed bool, err error) {
	changed, err = c.longPoll(ctx, api.PathBrokerNATS, have, wait, &auth)
	return auth, changed, err
}

// BrokerMosquitto gets an external mosquitto's password file and ACL
// (GET /api/v1/broker/mosquitto). With have, the generation the caller
// holds, and wait > 0 it long-polls: changed is false when nothing changed
// within wait.
func (c *Client) BrokerMosquitto(ctx context.Context, have string, wait time.Duration) (auth api.MosquittoAuth, changed bool, err error) {
	changed, err = c.longPoll(ctx, api.PathBrokerMosq, have, wait, &auth)
	return auth, changed, err
}

// longPoll gets path into out unless its ETag is still have; with have
// and wait > 0 the server holds the request up to wait for a change.
// changed is false when the server answered 304 (out untouched).
func (c *Client) longPoll(ctx context.Context, path, have string, wait time.Duration, out any) (changed bool, err error) {
	hdr := http.Header{}
	if have != "" {
		hdr.Set("If-None-Match", `"`+have+`"`)
		if wait > 0 {
			path += "?wait=" + url.QueryEscape(wait.String())
		}
	}
	resp, err := c.do(ctx, "GET", path, nil, hdr, out)
	if err != nil {
		return false, err
	}
	return resp.StatusCode != http.StatusNotModified, nil
}

// Sites returns each site's sharing and WAN bytes per model version.
func (c *Client) Sites(ctx context.Context) ([]api.Site, error) {
	var out []api.Site
	err := c.call(ctx, "GET", api.PathSites, nil, "", &out)
	return out, err
}

// RotateSiteKey gives a site a new gossip key.
func (c *Client) RotateSiteKey(ctx context.Context, site string) (api.RotateKeyResult, error) {
	var out api.RotateKeyResult
	err := c.call(ctx, "POST", api.Path(api.PathSiteRotateKey, site), nil, "", &out)
	return out, err
}
