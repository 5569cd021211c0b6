package oip

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newTestServer serves NewHandler(b) on 127.0.0.1 and returns its client.
func newTestServer(t *testing.T, b Backend, adjust func(*HandlerOptions)) *Client {
	t.Helper()
	var opts HandlerOptions
	if adjust != nil {
		adjust(&opts)
	}
	srv := httptest.NewServer(NewHandler(b, opts))
	t.Cleanup(srv.Close)
	return &Client{BaseURL: srv.URL, HTTP: srv.Client()}
}

type rawResponse struct {
	status int
	ctype  string
	body   string
}

func send(t *testing.T, c *Client, method, path, body string) rawResponse {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, c.BaseURL+path, rd)
	require.NoError(t, err)
	resp, err := c.HTTP.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return rawResponse{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: string(b)}
}

// errorMessage decodes an ErrorResponse body.
func errorMessage(t *testing.T, r rawResponse) string {
	t.Helper()
	var e ErrorResponse
	require.NoError(t, json.Unmarshal([]byte(r.body), &e), "body %q", r.body)
	require.NotEmpty(t, e.Error, "body %q", r.body)
	return e.Error
}

// outFP32 decodes an FP32 output.
func outFP32(t *testing.T, o ResponseOutput) []float32 {
	t.Helper()
	v, err := o.FP32()
	require.NoError(t, err)
	return v
}

// fraudReq builds a fraud-model request body with one input x.
func fraudReq(shape, data string) string {
	return fmt.Sprintf(`{"inputs":[{"name":"x","shape":%s,"datatype":"FP32","data":%s}]}`, shape, data)
}

func TestBadRequests(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	small := newTestServer(t, b, func(o *HandlerOptions) { o.MaxBodyBytes = 200 })

	rows := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = "[1,2,3]"
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	const infer = "/v2/models/fraud/infer"
	tests := []struct {
		name   string
		client *Client
		method string
		path   string
		body   string
		status int
		msg    string
	}{
		{"empty body", c, "POST", infer, "", 400, "body is empty"},
		{"invalid json", c, "POST", infer, `{"inputs": [`, 400, "invalid JSON"},
		{"syntax error", c, "POST", infer, `{"inputs": [}`, 400, "invalid JSON at byte"},
		{"not an object", c, "POST", infer, `[1,2]`, 400, "must be a JSON object"},
		{"unknown field", c, "POST", infer, `{"inputs":[],"foo":1}`, 400, `unknown field "foo"`},
		{"unknown input field", c, "POST", infer, `{"inputs":[{"name":"x","dtype":"FP32"}]}`, 400, `unknown field "dtype"`},
		{"wrong field type", c, "POST", infer, `{"inputs":"x"}`, 400, `field "inputs" must be an array`},
		{"shape not numbers", c, "POST", infer, fraudReq(`["a"]`, `[1]`), 400, `field "inputs.shape" must be a number`},
		{"trailing data", c, "POST", infer, fraudReq(`[1,3]`, `[1,2,3]`) + ` {}`, 400, "unexpected data after the request object"},
		{"no inputs", c, "POST", infer, `{"inputs":[]}`, 400, `request has no inputs; model "fraud" needs "x"`},
		{"unnamed input", c, "POST", infer, `{"inputs":[{"shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, "inputs[0] has no name"},
		{"unknown input", c, "POST", infer, `{"inputs":[{"name":"y","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, `input "y" is not an input of model "fraud" (inputs: "x")`},
		{"duplicate input", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, `input "x" is given more than once`},
		{"missing input", c, "POST", "/v2/models/pair/infer", `{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]}]}`, 400, `missing input "b"`},
		{"datatype", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}`, 400, `input "x": datatype is INT64, but the model's input is FP32`},
		{"unknown datatype", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP8","data":[1,2,3]}]}`, 400, `input "x": datatype "FP8" is not one of BOOL, UINT8`},
		{"no shape", c, "POST", infer, `{"inputs":[{"name":"x","datatype":"FP32","data":[1,2,3]}]}`, 400, `input "x" has no shape`},
		{"negative dim", c, "POST", infer, fraudReq(`[-1,3]`, `[1,2,3]`), 400, "negative dimension 0"},
		{"rank", c, "POST", infer, fraudReq(`[3]`, `[1,2,3]`), 400, "shape [3] has rank 1 but the model wants rank 2 (model shape [-1,3]"},
		{"fixed dim", c, "POST", infer, fraudReq(`[1,4]`, `[1,2,3,4]`), 400, "shape [1,4] has 4 at dimension 1 but the model wants 3"},
		{"batch", c, "POST", infer, fraudReq(`[1025,3]`, rows(1025)), 400, "batch size 1025 (shape[0]) exceeds the limit of 1024"},
		{"shape too large", c, "POST", "/v2/models/free/infer", `{"inputs":[{"name":"x","shape":[1,1000000000000],"datatype":"FP32","data":[1]}]}`, 400, "more elements than a request"},
		{"too few values", c, "POST", infer, fraudReq(`[2,3]`, `[1,2,3,4,5]`), 400, "data has 5 values but shape [2,3] needs 6"},
		{"too many values", c, "POST", infer, fraudReq(`[2,3]`, `[1,2,3,4,5,6,7]`), 400, "data has more than 6 values"},
		{"no data", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32"}]}`, 400, `input "x" has no data`},
		{"null data", c, "POST", infer, fraudReq(`[1,3]`, `null`), 400, `input "x" has no data`},
		{"data not array", c, "POST", infer, fraudReq(`[1,3]`, `5`), 400, "data must be a JSON array"},
		{"string value", c, "POST", infer, fraudReq(`[1,3]`, `[1,"2",3]`), 400, `data value 1 ("2") is a string; FP32 data must contain only numbers`},
		{"null value", c, "POST", infer, fraudReq(`[1,3]`, `[1,null,3]`), 400, "data value 1 (null) is null"},
		{"infinite value", c, "POST", infer, fraudReq(`[1,3]`, `[1,1e39,3]`), 400, "data value 1 (1e39) is not a finite FP32 number"},
		{"huge value", c, "POST", infer, fraudReq(`[1,3]`, `[1,2,-1e400]`), 400, "data value 2 (-1e400) is not a finite FP32 number"},
		{"nested row length", c, "POST", infer, fraudReq(`[2,3]`, `[[1,2],[3,4]]`), 400, "array of 2 elements at nesting depth 2, but shape [2,3] wants 3"},
		{"nested row count", c, "POST", infer, fraudReq(`[2,3]`, `[[1,2,3]]`), 400, "array of 1 elements at nesting depth 1, but shape [2,3] wants 2"},
		{"nested too deep", c, "POST", infer, fraudReq(`[1,3]`, `[[[1,2,3]]]`), 400, "data is nested 3 deep but shape [1,3] has rank 2"},
		{"irregular number", c, "POST", infer, fraudReq(`[2,3]`, `[[1,2,3],4]`), 400, "a value appears at depth 1 where arrays are expected"},
		{"irregular array", c, "POST", infer, fraudReq(`[2,3]`, `[1,2,3,[4,5,6]]`), 400, "an array appears where values 3.. are expected"},
		{"unknown output", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"nope"}]}`, 400, `requested output "nope" is not an output of model "fraud" (outputs: "sum", "double")`},
		{"duplicate output", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"sum"},{"name":"sum"}]}`, 400, `output "sum" is requested more than once`},
		{"binary input without header", c, "POST", infer, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12},"data":[1,2,3]}]}`, 400,
			"has parameter binary_data_size but the request has no Inference-Header-Content-Length header"},
		{"id too long", c, "POST", infer, `{"id":"` + strings.Repeat("i", MaxIDBytes+1) + `","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, "id is 257 bytes long; at most 256"},
		{"body too big", small, "POST", infer, fraudReq(`[1,3]`, `[1,2,3]`) + strings.Repeat(" ", 200), 413, "request body exceeds the limit of 200 bytes"},
		{"unknown model", c, "POST", "/v2/models/nope/infer", fraudReq(`[1,3]`, `[1,2,3]`), 404, `model "nope" not found`},
		{"inactive version", c, "POST", "/v2/models/fraud/versions/2/infer", fraudReq(`[1,3]`, `[1,2,3]`), 404, `model "fraud" version "2" is not active (active version: "3")`},
		{"unknown model metadata", c, "GET", "/v2/models/nope", "", 404, `model "nope" not found`},
		{"wrong method", c, "GET", infer, "", 405, "method GET is not allowed on /v2/models/fraud/infer; use POST"},
		{"unknown route", c, "GET", "/v3/anything", "", 404, "no route for GET /v3/anything"},
		{"runtime rejects input", c, "POST", infer, fraudReq(`[1,3]`, `[555,0,0]`), 400, "tensor rejected by runtime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.calls.Load()
			r := send(t, tt.client, tt.method, tt.path, tt.body)
			assert.Equal(t, tt.status, r.status, "%s %s = %d, want %d; body %s", tt.method, tt.path, r.status, tt.status, r.body)
			assert.Equal(t, "application/json", r.ctype)
			assert.Contains(t, errorMessage(t, r), tt.msg)
			if tt.name != "runtime rejects input" {
				assert.Equal(t, before, b.calls.Load(), "a bad request must not reach the backend")
			}
		})
	}
	assert.Empty(t, b.Violations())
}

func TestBackendFailures(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	tests := []struct {
		first  string
		status int
		msg    string
	}{
		{"666", 500, "inference failed: runtime exploded"},
		{"444", 500, `model returned output "sum" with 1 values for shape [2,1]`},
	}
	for _, tt := range tests {
		r := send(t, c, "POST", "/v2/models/fraud/infer", fraudReq(`[1,3]`, "["+tt.first+",0,0]"))
		assert.Equal(t, tt.status, r.status, "x[0]=%s: body %s", tt.first, r.body)
		assert.Equal(t, "application/json", r.ctype)
		msg := errorMessage(t, r)
		assert.Contains(t, msg, tt.msg)
		assert.NotContains(t, msg, "goroutine", "no stack traces")
	}
	// A NaN output is an answer, not a failure: JSON carries it as a string.
	r := send(t, c, "POST", "/v2/models/fraud/infer", fraudReq(`[1,3]`, "[777,0,0]"))
	require.Equal(t, 200, r.status, r.body)
	assert.Contains(t, r.body, `"data":["NaN"]`)
	var resp InferResponse
	require.NoError(t, json.Unmarshal([]byte(r.body), &resp))
	got, err := resp.Outputs[0].FP32()
	require.NoError(t, err)
	assert.True(t, math.IsNaN(float64(got[0])))
}

func TestInferFlatAndNested(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	for name, data := range map[string]string{
		"flat":   `[1,2,3,4,5,6.5]`,
		"nested": `[[1,2,3],[4,5,6.5]]`,
		"spaces": " [ [ 1 , 2 , 3 ] ,\n [ 4 , 5 , 6.5e0 ] ] ",
	} {
		t.Run(name, func(t *testing.T) {
			r := send(t, c, "POST", "/v2/models/fraud/infer", fraudReq(`[2,3]`, data))
			require.Equal(t, 200, r.status, r.body)
			assert.Equal(t, "application/json", r.ctype)
			var resp InferResponse
			require.NoError(t, json.Unmarshal([]byte(r.body), &resp))
			assert.Equal(t, "fraud", resp.ModelName)
			assert.Equal(t, "3", resp.ModelVersion)
			sum, ok := resp.Output("sum")
			require.True(t, ok)
			assert.Equal(t, ResponseOutput{Name: "sum", Shape: []int64{2, 1}, Datatype: "FP32", Data: json.RawMessage(`[6,15.5]`)}, sum)
			double, ok := resp.Output("double")
			require.True(t, ok)
			assert.Equal(t, []float32{2, 4, 6, 8, 10, 13}, outFP32(t, double))
		})
	}
}

func TestInferEdgeShapes(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	tests := []struct{ shape, data, want string }{
		{`[]`, `[7]`, `[7]`},       // scalar
		{`[0,3]`, `[]`, `[]`},      // empty batch
		{`[2,0]`, `[[],[]]`, `[]`}, // nested with a zero dimension
		{`[2,1,2]`, `[[[1,2]],[[3,4]]]`, `[1,2,3,4]`},
		{`[2,1,2]`, `[1,2,3,4]`, `[1,2,3,4]`},
		{`[1]`, `[1e-50]`, `[0]`}, // underflow rounds to zero
	}
	for _, tt := range tests {
		r := send(t, c, "POST", "/v2/models/free/infer",
			`{"inputs":[{"name":"x","shape":`+tt.shape+`,"datatype":"FP32","data":`+tt.data+`}]}`)
		require.Equal(t, 200, r.status, "shape %s data %s: %s", tt.shape, tt.data, r.body)
		var resp InferResponse
		require.NoError(t, json.Unmarshal([]byte(r.body), &resp))
		assert.JSONEq(t, tt.want, string(resp.Outputs[0].Data), "shape %s data %s", tt.shape, tt.data)
	}
}

func TestInputsReachBackendInModelOrder(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	a, err := NewFP32Input("a", []int64{1, 2}, []float32{10, 20})
	require.NoError(t, err)
	bIn, err := NewFP32Input("b", []int64{1, 2}, []float32{1, 2})
	require.NoError(t, err)
	// b first in the request; the backend still gets a then b.
	resp, err := c.Infer(t.Context(), "pair", &InferRequest{Inputs: []RequestInput{bIn, a}})
	require.NoError(t, err)
	diff, ok := resp.Output("diff")
	require.True(t, ok)
	assert.Equal(t, []float32{9, 18}, outFP32(t, diff))
}

func TestRequestedOutputs(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	x, err := NewFP32Input("x", []int64{1, 3}, []float32{1, 2, 3})
	require.NoError(t, err)
	resp, err := c.Infer(t.Context(), "fraud", &InferRequest{
		Inputs: []RequestInput{x}, Outputs: []RequestOutput{{Name: "double"}}})
	require.NoError(t, err)
	require.Len(t, resp.Outputs, 1)
	assert.Equal(t, "double", resp.Outputs[0].Name)
	assert.Equal(t, []float32{2, 4, 6}, outFP32(t, resp.Outputs[0]))
}

func TestIDPropagationAndGeneration(t *testing.T) {
	var n atomic.Int64
	c := newTestServer(t, newTestBackend(), func(o *HandlerOptions) {
		o.NewID = func() string { return "gen-" + strconv.FormatInt(n.Add(1), 10) }
	})
	x, err := NewFP32Input("x", []int64{1, 3}, []float32{1, 2, 3})
	require.NoError(t, err)

	resp, err := c.Infer(t.Context(), "fraud", &InferRequest{ID: "client-42", Inputs: []RequestInput{x}})
	require.NoError(t, err)
	assert.Equal(t, "client-42", resp.ID)
	resp, err = c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
	require.NoError(t, err)
	assert.Equal(t, "gen-1", resp.ID)
	resp, err = c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
	require.NoError(t, err)
	assert.Equal(t, "gen-2", resp.ID)

	// The default generator: 32 hex characters, different every time.
	d := newTestServer(t, newTestBackend(), nil)
	seen := map[string]bool{}
	for range 5 {
		resp, err := d.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
		require.NoError(t, err)
		assert.Regexp(t, `^[0-9a-f]{32}$`, resp.ID)
		assert.False(t, seen[resp.ID], "id %s repeated", resp.ID)
		seen[resp.ID] = true
	}
}

func TestVersionRoutes(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	r := send(t, c, "POST", "/v2/models/fraud/versions/3/infer", fraudReq(`[1,3]`, `[1,1,1]`))
	require.Equal(t, 200, r.status, r.body)
	var resp InferResponse
	require.NoError(t, json.Unmarshal([]byte(r.body), &resp))
	assert.Equal(t, "3", resp.ModelVersion)

	r = send(t, c, "GET", "/v2/models/fraud/versions/3", "")
	require.Equal(t, 200, r.status, r.body)
	r = send(t, c, "GET", "/v2/models/fraud/versions/3/ready", "")
	assert.Equal(t, 200, r.status, r.body)
	r = send(t, c, "GET", "/v2/models/fraud/versions/9/ready", "")
	assert.Equal(t, 404, r.status, r.body)
	assert.Contains(t, errorMessage(t, r), `version "9" is not active`)
}

func TestHealthAndMetadata(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, func(o *HandlerOptions) {
		o.ServerVersion = "1.2.3"
		o.Extensions = []string{"feedback"}
	})
	r := send(t, c, "GET", "/v2/health/live", "")
	assert.Equal(t, 200, r.status)
	assert.JSONEq(t, `{"live":true}`, r.body)
	r = send(t, c, "GET", "/v2/health/ready", "")
	assert.Equal(t, 200, r.status)
	assert.JSONEq(t, `{"ready":true}`, r.body)
	for _, p := range []string{"/v2", "/v2/"} {
		r = send(t, c, "GET", p, "")
		assert.Equal(t, 200, r.status, p)
		assert.JSONEq(t, `{"name":"edgefleet-agent","version":"1.2.3","extensions":["binary_tensor_data","feedback"]}`, r.body, p)
	}
	r = send(t, c, "GET", "/v2/models/fraud/ready", "")
	assert.Equal(t, 200, r.status)
	r = send(t, c, "HEAD", "/v2/health/ready", "")
	assert.Equal(t, 200, r.status)

	md, err := c.Metadata(t.Context(), "fraud")
	require.NoError(t, err)
	assert.Equal(t, &ModelMetadata{
		Name: "fraud", Versions: []string{"3"}, Platform: "onnxruntime_onnx",
		Inputs:  []TensorMetadata{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}},
		Outputs: []TensorMetadata{{Name: "sum", Datatype: "FP32", Shape: []int64{-1, 1}}, {Name: "double", Datatype: "FP32", Shape: []int64{-1, 3}}},
	}, md)
	r = send(t, c, "GET", "/v2/models/free", "")
	assert.Contains(t, r.body, `"shape":[]`, "an unconstrained shape is an empty array, not null")

	_, err = c.Metadata(t.Context(), "nope")
	se, ok := errors.AsType[*StatusError](err)
	require.True(t, ok, "err = %v", err)
	assert.Equal(t, 404, se.StatusCode)
	assert.Equal(t, `model "nope" not found`, se.Message)
	assert.Contains(t, err.Error(), "404")
}

func TestNotReady(t *testing.T) {
	b := newTestBackend()
	b.ready.Store(false)
	c := newTestServer(t, b, nil)

	err := c.Ready(t.Context())
	se, ok := errors.AsType[*StatusError](err)
	require.True(t, ok, "err = %v", err)
	assert.Equal(t, 400, se.StatusCode, "the protocol's health answers: 4xx is false")
	assert.Equal(t, `server is not ready: model "fraud" has no version serving`, se.Message)
	r := send(t, c, "GET", "/v2/health/ready", "")
	assert.JSONEq(t, `{"ready":false,"error":"server is not ready: model \"fraud\" has no version serving"}`, r.body)

	assert.Equal(t, 200, send(t, c, "GET", "/v2/health/live", "").status, "live while not ready")
	assert.Equal(t, 503, send(t, c, "GET", "/v2/models/fraud", "").status)
	r = send(t, c, "GET", "/v2/models/fraud/ready", "")
	assert.Equal(t, 400, r.status)
	assert.Contains(t, r.body, `"ready":false`)
	x, err := NewFP32Input("x", []int64{1, 3}, []float32{1, 2, 3})
	require.NoError(t, err)
	_, err = c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
	se, ok = errors.AsType[*StatusError](err)
	require.True(t, ok, "err = %v", err)
	assert.Equal(t, 503, se.StatusCode)
	assert.Zero(t, b.calls.Load())

	b.ready.Store(true)
	require.NoError(t, c.Ready(t.Context()))
	_, err = c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
	require.NoError(t, err)
}

func TestConcurrentInference(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	const workers, each = 16, 25
	var mu sync.Mutex // guards ids
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				v := float32(w*1000 + i)
				x, err := NewFP32Input("x", []int64{2, 3}, []float32{v, 1, 2, -v, 0, 0.5})
				if !assert.NoError(t, err) {
					return
				}
				resp, err := c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
				if !assert.NoError(t, err) {
					return
				}
				sum, _ := resp.Output("sum")
				got, err := sum.FP32()
				assert.NoError(t, err)
				assert.Equal(t, []float32{v + 3, -v + 0.5}, got)
				mu.Lock()
				assert.False(t, ids[resp.ID], "duplicate id %s", resp.ID)
				ids[resp.ID] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	assert.Len(t, ids, workers*each)
	assert.Equal(t, int64(workers*each), b.calls.Load())
	assert.Empty(t, b.Violations())
}

func TestClientErrors(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	_, err := c.Infer(t.Context(), "fraud", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "request is nil")

	in, err := NewFP32Input("x", []int64{2}, []float32{float32(math.Inf(1)), float32(math.NaN())})
	require.NoError(t, err)
	assert.JSONEq(t, `["Infinity","NaN"]`, string(in.Data), "JSON has no infinity or NaN: they travel as strings")
	_, err = NewFP32Input("x", []int64{2}, []float32{1})
	assert.ErrorContains(t, err, `tensor "x" has 1 values, shape [2] needs 2`)

	// A server that is gone: a transport error, not a StatusError.
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	dead := &Client{BaseURL: srv.URL}
	err = dead.Ready(t.Context())
	require.Error(t, err)
	_, isStatus := errors.AsType[*StatusError](err)
	assert.False(t, isStatus)

	// A non-JSON error body still yields its text.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream broke", http.StatusBadGateway)
	}))
	t.Cleanup(plain.Close)
	err = (&Client{BaseURL: plain.URL + "/"}).Ready(t.Context())
	se, ok := errors.AsType[*StatusError](err)
	require.True(t, ok, "err = %v", err)
	assert.Equal(t, StatusError{StatusCode: 502, Message: "upstream broke"}, *se)
}
