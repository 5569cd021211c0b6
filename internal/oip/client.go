package oip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxResponseBytes bounds what the client reads from a server.
const maxResponseBytes = 64 << 20

// Client calls an Open Inference Protocol server over HTTP: JSON requests
// (Infer), and the binary tensor data extension (InferBinary).
type Client struct {
	// BaseURL is the server root, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// HTTP is the client to use; nil means http.DefaultClient.
	HTTP *http.Client
}

// StatusError is a non-2xx answer: its status and the server's message.
type StatusError struct {
	StatusCode int
	Message    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("oip: server answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Ready returns nil if the server reports ready, else an error (a
// *StatusError with 400 and the server's reason when it is up but not
// ready).
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v2/health/ready", nil, nil)
}

// Metadata returns the metadata of model.
func (c *Client) Metadata(ctx context.Context, model string) (*ModelMetadata, error) {
	var md ModelMetadata
	if err := c.do(ctx, http.MethodGet, "/v2/models/"+url.PathEscape(model), nil, &md); err != nil {
		return nil, err
	}
	return &md, nil
}

// Infer runs req on the active version of model.
func (c *Client) Infer(ctx context.Context, model string, req *InferRequest) (*InferResponse, error) {
	if req == nil {
		return nil, errors.New("oip: infer: request is nil")
	}
	size := 256
	for _, in := range req.Inputs {
		size += len(in.Data) + 128
	}
	body := appendRequest(make([]byte, 0, size), req)
	var resp InferResponse
	if err := c.do(ctx, http.MethodPost, "/v2/models/"+url.PathEscape(model)+"/infer", body, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// InferBinary runs inputs on the active version of model with the binary
// tensor data extension: the inputs' elements travel as raw bytes after
// the JSON header, and every output (or only those named in outputs) comes
// back the same way. Decode outputs with ResponseOutput.Tensor. This is
// the fast path for large tensors: no number is formatted or parsed.
func (c *Client) InferBinary(ctx context.Context, model string, inputs []Tensor, outputs ...string) (*InferResponse, error) {
	req := InferRequest{Inputs: make([]RequestInput, len(inputs))}
	size := 0
	for i := range inputs {
		t := &inputs[i]
		if err := t.Check(); err != nil {
			return nil, fmt.Errorf("oip: infer: input %q: %w", t.Name, err)
		}
		n := binarySize(t)
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		req.Inputs[i] = RequestInput{Name: t.Name, Shape: shape, Datatype: string(t.DT()),
			Parameters: map[string]any{ParamBinaryDataSize: n}}
		size += int(n)
	}
	if len(outputs) == 0 {
		req.Parameters = map[string]any{ParamBinaryDataOutput: true}
	}
	for _, o := range outputs {
		req.Outputs = append(req.Outputs, RequestOutput{Name: o, Parameters: map[string]any{ParamBinaryData: true}})
	}
	head := appendRequest(nil, &req)
	body := make([]byte, 0, len(head)+size)
	body = append(body, head...)
	for i := range inputs {
		body = appendBinary(body, &inputs[i])
	}
	hdr := http.Header{"Content-Type": {"application/octet-stream"}, HeaderContentLength: {strconv.Itoa(len(head))}}
	path := "/v2/models/" + url.PathEscape(model) + "/infer"
	data, rh, err := c.send(ctx, http.MethodPost, path, body, hdr)
	if err != nil {
		return nil, err
	}
	return decodeResponse(data, rh.Get(HeaderContentLength), path)
}

// decodeResponse decodes an inference response body; with a JSON length
// header the binary outputs after the JSON part are handed to their
// outputs, in order.
func decodeResponse(data []byte, jsonLen, path string) (*InferResponse, error) {
	var resp InferResponse
	bin := []byte(nil)
	if jsonLen != "" {
		n, err := strconv.Atoi(jsonLen)
		if err != nil || n < 0 || n > len(data) {
			return nil, fmt.Errorf("oip: POST %s: header %s is %q for a %d-byte body", path, HeaderContentLength, jsonLen, len(data))
		}
		data, bin = data[:n], data[n:]
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("oip: POST %s: decode response: %w", path, err)
	}
	for i := range resp.Outputs {
		o := &resp.Outputs[i]
		v, ok := o.Parameters[ParamBinaryDataSize]
		if !ok {
			continue
		}
		size, ok := v.(float64)
		if !ok || size < 0 || size > float64(len(bin)) || size != math.Trunc(size) {
			return nil, fmt.Errorf("oip: POST %s: output %q: %s %v does not fit the %d bytes of binary data left", path, o.Name, ParamBinaryDataSize, v, len(bin))
		}
		o.binary = bin[:int(size):int(size)]
		bin = bin[int(size):]
	}
	return &resp, nil
}

// do sends one request and decodes a 2xx body into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	var hdr http.Header
	if body != nil {
		hdr = http.Header{"Content-Type": {"application/json"}}
	}
	data, _, err := c.send(ctx, method, path, body, hdr)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("oip: %s %s: decode response: %w", method, path, err)
	}
	return nil
}

// send sends one request and returns a 2xx body and its headers; any other
// status is a *StatusError.
func (c *Client) send(ctx context.Context, method, path string, body []byte, hdr http.Header) ([]byte, http.Header, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("oip: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("oip: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("oip: %s %s: read response: %w", method, path, err)
	}
	if len(data) > maxResponseBytes {
		return nil, nil, fmt.Errorf("oip: %s %s: response exceeds %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data[:min(len(data), 512)]))
		}
		return nil, nil, &StatusError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	return data, resp.Header, nil
}
