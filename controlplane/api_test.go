package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func errorMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e api.ErrorResponse
	require.NoError(t, json.Unmarshal(body, &e), "error body %q", body)
	require.NotEmpty(t, e.Error, "error body %q", body)
	return e.Error
}

func TestAPIAuth(t *testing.T) {
	ts := newTestServer(t, nil)
	require.True(t, strings.HasPrefix(ts.Token, api.TokenPrefix), "token %q", ts.Token)

	tests := []struct {
		name, token, method, path string
		want                      int
	}{
		{"health needs no token", "", "GET", "/healthz", http.StatusOK},
		{"no token", "", "GET", "/api/v1/devices", http.StatusUnauthorized},
		{"wrong token", api.TokenPrefix + strings.Repeat("0", 64), "GET", "/api/v1/devices", http.StatusUnauthorized},
		{"token with a different case", strings.ToUpper(ts.Token), "GET", "/api/v1/devices", http.StatusUnauthorized},
		{"metrics need the token", "", "GET", "/metrics", http.StatusUnauthorized},
		{"unknown route without token", "", "GET", "/nope", http.StatusUnauthorized},
		{"register without token", "", "POST", "/api/v1/devices", http.StatusUnauthorized},
		{"right token", ts.Token, "GET", "/api/v1/devices", http.StatusOK},
		{"metrics with token", ts.Token, "GET", "/metrics", http.StatusOK},
		{"unknown route with token", ts.Token, "GET", "/nope", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.doToken(tt.token, tt.method, tt.path, nil)
			assert.Equal(t, tt.want, code, "%s %s: %s", tt.method, tt.path, body)
			if code == http.StatusUnauthorized {
				errorMessage(t, body)
			}
		})
	}
	// Basic auth with the token as password is not a bearer token.
	code, _ := ts.doToken("", "GET", "/api/v1/devices", nil, "Authorization", "Basic "+ts.Token)
	assert.Equal(t, http.StatusUnauthorized, code)
}

func TestRegisterDevice(t *testing.T) {
	ts := newTestServer(t, nil)
	creds := ts.register("dev-1", map[string]string{"site": "berlin"})
	assert.Equal(t, "dev-1", creds.ID)
	assert.Equal(t, "dev-1", creds.Username)
	assert.Len(t, creds.Password, 43, "32 random bytes, base64url")
	assert.Equal(t, ts.BrokerURL(), creds.BrokerURL)
	assert.Equal(t, "ef/v1", creds.TopicPrefix)
	root, err := signing.ParsePublicKeyPEM([]byte(creds.RootPublicKey))
	require.NoError(t, err)
	assert.Equal(t, ts.internals().Keys.RootPub, root)

	code, body := ts.doJSON("POST", "/api/v1/devices", api.RegisterDeviceRequest{ID: "dev-1"}, nil)
	assert.Equal(t, http.StatusConflict, code)
	assert.Contains(t, errorMessage(t, body), `"dev-1" is already registered`)

	var d api.Device
	code, body = ts.doJSON("GET", "/api/v1/devices/dev-1", nil, &d)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.Equal(t, map[string]string{"site": "berlin"}, d.Labels)
	assert.False(t, d.Online)
	code, body = ts.doJSON("GET", "/api/v1/devices/dev-2", nil, nil)
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, errorMessage(t, body), `"dev-2" is not registered`)

	ts.register("dev-2", map[string]string{"site": "paris"})
	var list []api.Device
	code, _ = ts.doJSON("GET", "/api/v1/devices", nil, &list)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, list, 2)
	assert.Equal(t, "dev-1", list[0].ID)
	code, _ = ts.doJSON("GET", "/api/v1/devices?selector=site%3Dparis", nil, &list)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, list, 1)
	assert.Equal(t, "dev-2", list[0].ID)
	code, body = ts.doJSON("GET", "/api/v1/devices?selector=site", nil, nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, errorMessage(t, body), "want key=value")

	// The password is what the broker accepts, and only for this device.
	c := deviceClient(t, creds)
	assert.True(t, c.IsConnected())
	_, err = dialDevice(creds.BrokerURL, "dev-1", creds.Password+"x")
	assert.Error(t, err, "wrong password must be refused")
	_, err = dialDevice(creds.BrokerURL, "dev-2", creds.Password)
	assert.Error(t, err, "another device's password must be refused")
	_, err = dialDevice(creds.BrokerURL, "dev-9", creds.Password)
	assert.Error(t, err, "unregistered device must be refused")
}

func TestMalformedRequests(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.register("dev-1", nil)
	tests := []struct {
		name, path, body string
		want             int
		msg              string
	}{
		{"empty body", "/api/v1/devices", "", 400, "request body is empty"},
		{"not json", "/api/v1/devices", "id=dev", 400, "malformed JSON at byte"},
		{"truncated", "/api/v1/devices", `{"id": "dev-2"`, 400, "ends in the middle"},
		{"unknown field", "/api/v1/devices", `{"id": "dev-2", "lables": {}}`, 400, `unknown field "lables"`},
		{"wrong type", "/api/v1/devices", `{"id": 7}`, 400, `field "id" must be a string`},
		{"array body", "/api/v1/devices", `["dev-2"]`, 400, "must be a JSON object"},
		{"two values", "/api/v1/devices", `{"id": "dev-2"} {"id": "dev-3"}`, 400, "more than one JSON value"},
		{"trailing garbage", "/api/v1/devices", `{"id": "dev-2"} x`, 400, "malformed JSON"},
		{"oversized", "/api/v1/devices", `{"id": "dev-2", "labels": {"a": "` + strings.Repeat("b", 70<<10) + `"}}`, 413, "exceeds 65536 bytes"},
		{"missing id", "/api/v1/devices", `{"labels": {"a": "b"}}`, 400, `"id" is required`},
		{"bad id", "/api/v1/devices", `{"id": "dev/2"}`, 400, `device id "dev/2"`},
		{"bad label", "/api/v1/devices", `{"id": "dev-2", "labels": {"site": ""}}`, 400, `label "site": label value is empty`},
		{"deploy unknown field", "/api/v1/deployments", `{"model": "fraud", "version": "v1", "device": ["dev-1"]}`, 400, `unknown field "device"`},
		{"deploy devices not a list", "/api/v1/deployments", `{"model": "fraud", "version": "v1", "devices": "dev-1"}`, 400, `field "devices" must be an array`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.do("POST", tt.path, strings.NewReader(tt.body), "Content-Type", "application/json")
			assert.Equal(t, tt.want, code, "%s", body)
			assert.Contains(t, errorMessage(t, body), tt.msg)
		})
	}
	var list []api.Device
	ts.doJSON("GET", "/api/v1/devices", nil, &list)
	assert.Len(t, list, 1, "no malformed request may register a device")
}

func TestDeployErrors(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.register("dev-1", map[string]string{"site": "berlin"})
	ts.mustUpload("fraud", "v1", fleettest.TrainedModel(t, 1))
	tests := []struct {
		name string
		req  api.DeployRequest
		want int
		msg  string
	}{
		{"no targets", api.DeployRequest{Model: "fraud", Version: "v1"}, 400, "give the target devices"},
		{"both targets", api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1"}, Selector: "site=berlin"}, 400, "not both"},
		{"bad selector", api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=="}, 400, "single '='"},
		{"selector stray comma", api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=berlin,"}, 400, "empty term"},
		{"selector matches nothing", api.DeployRequest{Model: "fraud", Version: "v1", Selector: "site=paris"}, 400, `selector "site=paris" matches no registered device`},
		{"unknown device", api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev-1", "dev-7"}}, 404, "unknown devices: dev-7"},
		{"invalid device id", api.DeployRequest{Model: "fraud", Version: "v1", Devices: []string{"dev 1"}}, 400, `device id "dev 1"`},
		{"unknown model", api.DeployRequest{Model: "fraud", Version: "v9", Devices: []string{"dev-1"}}, 404, "model fraud version v9 does not exist"},
		{"invalid model name", api.DeployRequest{Model: "../x", Version: "v1", Devices: []string{"dev-1"}}, 400, "model name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := ts.doJSON("POST", "/api/v1/deployments", tt.req, nil)
			assert.Equal(t, tt.want, code, "%s", body)
			assert.Contains(t, errorMessage(t, body), tt.msg)
		})
	}
	d, ok := ts.internals().Registry.Get("dev-1")
	require.True(t, ok)
	assert.Nil(t, d.Desired, "a failed deploy must not issue a desired state")
}

func TestUploadRejections(t *testing.T) {
	ts := newTestServer(t, func(o *controlplane.Options) { o.MaxModelSize = 64 << 10 })
	a := fleettest.TrainedModel(t, 1)

	code, body := ts.upload("fraud", "v1", []byte("this is not an onnx model"), a.Metadata(), false)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "model is not a loadable ONNX model")

	code, body = ts.upload("fraud", "v1", bytes.Repeat([]byte{1}, 65<<10), nil, false)
	assert.Equal(t, http.StatusRequestEntityTooLarge, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "larger than 65536 bytes")

	withSha := a.Metadata()
	withSha.Sha256 = make([]byte, 32)
	withSha.Name = "fraud"
	code, body = ts.upload("fraud", "v1", a.ONNX, withSha, false)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "metadata sets name, sha256; the control plane computes these fields")

	badSchema := a.Metadata()
	badSchema.Inputs[0].Shape = []int64{-1, 8}
	code, body = ts.upload("fraud", "v1", a.ONNX, badSchema, false)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), `metadata input "features" has shape [-1 8], the model's is [-1 7]`)

	// Strict metadata: unknown fields are refused.
	code, body = ts.uploadRaw("fraud", "v1", a.ONNX, `{"tolerance": 0.001, "tolerence": 1}`)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "tolerence")

	code, body = ts.do("POST", "/api/v1/models/fraud/versions/v1", strings.NewReader("{}"), "Content-Type", "application/json")
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "multipart/form-data")

	code, body = ts.do("POST", "/api/v1/models/fraud/versions/v1?force=maybe", nil)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "force")

	code, body = ts.upload(".fraud", "v1", a.ONNX, nil, false)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "must start with a letter or digit")

	var models []api.ModelVersion
	ts.doJSON("GET", "/api/v1/models", nil, &models)
	assert.Empty(t, models, "no rejected upload may be stored")

	// Without metadata the schema comes from the model, and test vectors
	// are recorded from synthetic inputs (see upload_derive_test.go).
	code, body = ts.upload("fraud", "v1", a.ONNX, nil, false)
	assert.Equal(t, http.StatusCreated, code, "%s", body)
	assert.Contains(t, string(body), "synthetic inputs")
}

// uploadRaw uploads with a metadata part given as raw JSON.
func (ts *testServer) uploadRaw(name, version string, model []byte, metadata string) (int, []byte) {
	ts.t.Helper()
	var buf bytes.Buffer
	body := "--b\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.onnx\"\r\n\r\n" + string(model) +
		"\r\n--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n" + metadata + "\r\n--b--\r\n"
	buf.WriteString(body)
	return ts.do("POST", "/api/v1/models/"+name+"/versions/"+version, &buf, "Content-Type", "multipart/form-data; boundary=b")
}

func TestUploadFailingTestVectors(t *testing.T) {
	ts := newTestServer(t, nil)
	a := fleettest.TrainedModel(t, 1)
	bad := a.Metadata()
	bad.TestVectors[0].Expected[0].Data[0] += 0.5

	code, body := ts.upload("fraud", "v2", a.ONNX, bad, false)
	assert.Equal(t, http.StatusUnprocessableEntity, code, "%s", body)
	msg := errorMessage(t, body)
	assert.Contains(t, msg, "failed its checks")
	assert.Contains(t, msg, "force=true")

	code, body = ts.upload("fraud", "v2", a.ONNX, bad, true)
	require.Equal(t, http.StatusCreated, code, "%s", body)
	var mv api.ModelVersion
	require.NoError(t, json.Unmarshal(body, &mv))
	assert.False(t, mv.Checks.Passed)
	assert.True(t, mv.Checks.Forced)
	assert.Contains(t, mv.Checks.Error, "test vectors")

	// The forced manifest carries the bad vectors: agents will refuse it.
	got, err := ts.Client.Model(context.Background(), "fraud", "v2")
	require.NoError(t, err)
	m := &efpb.Manifest{}
	require.NoError(t, protojson.Unmarshal(got.Manifest, m))
	assert.True(t, proto.Equal(bad.TestVectors[0], m.TestVectors[0]))

	// Versions are immutable.
	code, body = ts.upload("fraud", "v2", a.ONNX, a.Metadata(), false)
	assert.Equal(t, http.StatusConflict, code, "%s", body)
	assert.Contains(t, errorMessage(t, body), "immutable")
}

func TestUploadAndGetModel(t *testing.T) {
	ts := newTestServer(t, nil)
	a := fleettest.TrainedModel(t, 1)
	mv := ts.mustUpload("fraud", "v1", a)
	assert.True(t, mv.Checks.Passed)
	assert.Equal(t, len(a.TestVectors), mv.Checks.TestVectors)
	assert.Equal(t, uint64(len(a.ONNX)), mv.Size)

	var got api.ModelVersion
	code, body := ts.doJSON("GET", "/api/v1/models/fraud/versions/v1", nil, &got)
	require.Equal(t, http.StatusOK, code, "%s", body)
	var manifest map[string]any
	require.NoError(t, json.Unmarshal(got.Manifest, &manifest))
	assert.Equal(t, "fraud", manifest["name"])
	assert.Equal(t, "v1", manifest["version"])
	assert.Equal(t, "onnxruntime", manifest["runtime"])

	code, body = ts.doJSON("GET", "/api/v1/models/fraud/versions/v9", nil, nil)
	assert.Equal(t, http.StatusNotFound, code)
	assert.Contains(t, errorMessage(t, body), "does not exist")

	// The model file is content-addressed.
	data, err := os.ReadFile(filepath.Join(ts.Dir, "blobs", mv.SHA256))
	require.NoError(t, err)
	assert.Equal(t, a.ONNX, data)
}

func TestMetrics(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.register("dev-1", nil)
	ts.doJSON("GET", "/api/v1/devices/nope", nil, nil)
	code, body := ts.do("GET", "/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	text := string(body)
	for _, want := range []string{
		"edgefleet_devices 1",
		"edgefleet_devices_online 0",
		"edgefleet_model_versions 0",
		`edgefleet_api_requests_total{code="201",route="POST /api/v1/devices"} 1`,
		`edgefleet_api_requests_total{code="404",route="GET /api/v1/devices/{id}"} 1`,
		// The embedded broker's drops are visible (none here).
		"edgefleet_broker_subscription_dropped_total 0",
		"edgefleet_broker_client_dropped_total 0",
		"edgefleet_broker_log_lines_suppressed_total 0",
	} {
		assert.Contains(t, text, want)
	}
}

// Envelope decoding helpers shared by the MQTT tests.
func mustEnvelope(t *testing.T, b []byte) *efpb.Envelope {
	t.Helper()
	env := &efpb.Envelope{}
	require.NoError(t, proto.Unmarshal(b, env))
	return env
}

// TestDeployRefusesMoreModelsThanADeviceRuns: a device runs at most 64
// models (its desired state, reports and telemetry are bounded by it); the
// 65th deploy to it is refused with the reason, and the device keeps the
// 64 it has.
func TestDeployRefusesMoreModelsThanADeviceRuns(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.register("dev-1", nil)
	art := fleettest.TrainedModel(t, 1)
	for i := range 65 {
		ts.mustUpload(fmt.Sprintf("m%02d", i), "v1", art)
	}
	for i := range 64 {
		ts.deploy(api.DeployRequest{Model: fmt.Sprintf("m%02d", i), Version: "v1", Devices: []string{"dev-1"}})
	}
	code, body := ts.doJSON("POST", "/api/v1/deployments", api.DeployRequest{Model: "m64", Version: "v1", Devices: []string{"dev-1"}}, nil)
	assert.Equal(t, http.StatusBadRequest, code, "%s", body)
	assert.Contains(t, string(body), "device dev-1 would run 65 models; a device runs at most 64")
	dev, err := ts.Client.Device(context.Background(), "dev-1")
	require.NoError(t, err)
	require.NotNil(t, dev.Desired)
	assert.Len(t, dev.Desired.Models, 64, "the refused deploy changed nothing")
}
