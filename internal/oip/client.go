package oip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxResponseBytes bounds what the client reads from a server.
const maxResponseBytes = 64 << 20

// Client calls an Open Inference Protocol server over HTTP.
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
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("oip: infer: encode request: %w", err)
	}
	var resp InferResponse
	if err := c.do(ctx, http.MethodPost, "/v2/models/"+url.PathEscape(model)+"/infer", body, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// do sends one request and decodes a 2xx body into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return fmt.Errorf("oip: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("oip: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("oip: %s %s: read response: %w", method, path, err)
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("oip: %s %s: response exceeds %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data[:min(len(data), 512)]))
		}
		return &StatusError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("oip: %s %s: decode response: %w", method, path, err)
	}
	return nil
}
