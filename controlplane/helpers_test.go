package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fleettest"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// testRuntime is one onnxruntime handle shared by the package's tests
// (onnxruntime's environment is process-wide anyway).
var testRuntime *infer.Runtime

func TestMain(m *testing.M) { os.Exit(fleettest.Main(m, &testRuntime)) }

// testServer is a control plane from internal/fleettest with the
// request helpers these tests share.
type testServer struct {
	*fleettest.ControlPlane
	t testing.TB
}

// newTestServer runs a real control plane (badger, embedded broker,
// onnxruntime) on 127.0.0.1 ports chosen by the kernel until the test
// ends; mod adjusts the options.
func newTestServer(t testing.TB, mod func(*controlplane.Options)) *testServer {
	t.Helper()
	return &testServer{ControlPlane: fleettest.StartControlPlane(t, testRuntime, mod), t: t}
}

// internals are the parts of the control plane (export_test.go).
func (ts *testServer) internals() controlplane.Internals { return ts.Internals() }

// do sends an API request with the server's token and returns the status
// and body.
func (ts *testServer) do(method, path string, body io.Reader, header ...string) (int, []byte) {
	ts.t.Helper()
	return ts.doToken(ts.Token, method, path, body, header...)
}

func (ts *testServer) doToken(token, method, path string, body io.Reader, header ...string) (int, []byte) {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.APIURL()+path, body)
	require.NoError(ts.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(ts.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(ts.t, err)
	return resp.StatusCode, b
}

// doJSON sends v as JSON and decodes a 2xx answer into out (if non-nil).
func (ts *testServer) doJSON(method, path string, v, out any) (int, []byte) {
	ts.t.Helper()
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		require.NoError(ts.t, err)
		body = bytes.NewReader(b)
	}
	code, b := ts.do(method, path, body, "Content-Type", "application/json")
	if out != nil && code/100 == 2 {
		require.NoError(ts.t, json.Unmarshal(b, out), "decode %s", b)
	}
	return code, b
}

// waitReportedActive waits until the control plane records every device
// of ids with fraud@version active.
func waitReportedActive(t testing.TB, cp *controlplane.Server, version string, timeout time.Duration, ids ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, id := range ids {
			d, err := cp.Device(id)
			if err != nil {
				return false
			}
			rep := d.Reported["fraud"]
			if rep == nil || rep.State != api.ModelActive || rep.ActiveVersion != version {
				return false
			}
		}
		return true
	}, timeout, 20*time.Millisecond, "devices %v never reported fraud@%s active", ids, version)
}

func (ts *testServer) register(id string, lbls map[string]string) api.DeviceCredentials {
	ts.t.Helper()
	var creds api.DeviceCredentials
	code, body := ts.doJSON("POST", "/api/v1/devices", api.RegisterDeviceRequest{ID: id, Labels: lbls}, &creds)
	require.Equal(ts.t, http.StatusCreated, code, "register %s: %s", id, body)
	return creds
}

// upload pushes a model version with optional metadata.
func (ts *testServer) upload(name, version string, model []byte, meta *efpb.Manifest, force bool) (int, []byte) {
	ts.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("model", "model.onnx")
	require.NoError(ts.t, err)
	_, err = fw.Write(model)
	require.NoError(ts.t, err)
	if meta != nil {
		mj, err := protojson.Marshal(meta)
		require.NoError(ts.t, err)
		require.NoError(ts.t, mw.WriteField("metadata", string(mj)))
	}
	require.NoError(ts.t, mw.Close())
	path := "/api/v1/models/" + name + "/versions/" + version
	if force {
		path += "?force=true"
	}
	return ts.do("POST", path, &buf, "Content-Type", mw.FormDataContentType())
}

func (ts *testServer) mustUpload(name, version string, a *fraud.Artifact) api.ModelVersion {
	ts.t.Helper()
	code, body := ts.upload(name, version, a.ONNX, a.Metadata(), false)
	require.Equal(ts.t, http.StatusCreated, code, "upload: %s", body)
	var mv api.ModelVersion
	require.NoError(ts.t, json.Unmarshal(body, &mv))
	return mv
}

func (ts *testServer) deploy(req api.DeployRequest) api.DeployResult {
	ts.t.Helper()
	var res api.DeployResult
	code, body := ts.doJSON("POST", "/api/v1/deployments", req, &res)
	require.Equal(ts.t, http.StatusOK, code, "deploy: %s", body)
	return res
}

// deviceClient connects to the broker as a registered device.
func deviceClient(t testing.TB, creds api.DeviceCredentials) paho.Client {
	t.Helper()
	c, err := dialDevice(creds.BrokerURL, creds.Username, creds.Password)
	require.NoError(t, err, "device %s connect", creds.ID)
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func dialDevice(url, user, password string) (paho.Client, error) {
	o := paho.NewClientOptions().
		AddBroker(url).
		SetClientID(user).
		SetUsername(user).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, context.DeadlineExceeded
	}
	return c, tok.Error()
}

type message struct {
	topic    string
	payload  []byte
	retained bool
}

// subscribe subscribes c to filter and returns the messages it receives.
func subscribe(t testing.TB, c paho.Client, filter string) <-chan message {
	t.Helper()
	ch := make(chan message, 4096)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		select {
		case ch <- message{topic: m.Topic(), payload: bytes.Clone(m.Payload()), retained: m.Retained()}:
		default:
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second), "subscribe %s", filter)
	require.NoError(t, tok.Error(), "subscribe %s", filter)
	return ch
}

func publish(t testing.TB, c paho.Client, topic string, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	require.True(t, tok.WaitTimeout(10*time.Second), "publish %s", topic)
	require.NoError(t, tok.Error(), "publish %s", topic)
}

// receive waits for the next message on ch.
func receive(t testing.TB, ch <-chan message, what string) message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(15 * time.Second):
		require.FailNow(t, "timed out waiting for "+what)
		return message{}
	}
}
