package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Field data capture and datasets (issue 13).

// CapturePolicy returns model's capture policy and what was captured.
func (c *Client) CapturePolicy(ctx context.Context, model string) (api.CaptureStatus, error) {
	var out api.CaptureStatus
	err := c.callJSON(ctx, "GET", api.Path(api.PathModelCapture, model), nil, &out)
	return out, err
}

// SetCapturePolicy sets model's capture policy; the control plane sends
// it to the model's devices in their signed desired states.
func (c *Client) SetCapturePolicy(ctx context.Context, model string, p api.CapturePolicy) (api.CaptureStatus, error) {
	var out api.CaptureStatus
	err := c.callJSON(ctx, "PUT", api.Path(api.PathModelCapture, model), p, &out)
	return out, err
}

// BuildDataset makes a dataset of model's captured rows in the window
// (or returns the existing one with the same rows).
func (c *Client) BuildDataset(ctx context.Context, model string, req api.DatasetRequest) (api.Dataset, error) {
	var out api.Dataset
	err := c.callJSON(ctx, "POST", api.Path(api.PathDatasets, model), req, &out)
	return out, err
}

// Datasets lists model's datasets, oldest first.
func (c *Client) Datasets(ctx context.Context, model string) ([]api.Dataset, error) {
	var out []api.Dataset
	err := c.callJSON(ctx, "GET", api.Path(api.PathDatasets, model), nil, &out)
	return out, err
}

// Dataset returns one of model's datasets: ref is a version number,
// "latest" or 8+ hex digits of its sha256.
func (c *Client) Dataset(ctx context.Context, model, ref string) (api.Dataset, error) {
	var out api.Dataset
	err := c.callJSON(ctx, "GET", api.Path(api.PathDataset, model, ref), nil, &out)
	return out, err
}

// ExportDataset streams a dataset's rows in format (csv or jsonl) to w and
// returns the dataset's sha256 (of its jsonl form). The body is not held
// in memory: datasets may be large.
func (c *Client) ExportDataset(ctx context.Context, model, ref, format string, w io.Writer) (string, error) {
	path := api.Path(api.PathDatasetExport, model, ref) + "?format=" + url.QueryEscape(format)
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
		se := &StatusError{Method: "GET", Path: path, Status: resp.StatusCode, Kind: api.KindOf(resp.StatusCode)}
		var e api.ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			se.Message = e.Error
		} else {
			se.Message = fmt.Sprintf("GET %s: %s", path, bytes.TrimSpace(data))
		}
		return "", se
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	return resp.Header.Get("X-Dataset-Sha256"), nil
}

// UploadBaseDataset uploads a CSV of labelled rows (the model's input
// columns and "label") as one of model's base datasets; name is optional.
// The same rows uploaded again return the existing one.
func (c *Client) UploadBaseDataset(ctx context.Context, model, name string, csv io.Reader) (api.BaseDataset, error) {
	var out api.BaseDataset
	path := api.Path(api.PathBaseDatasets, model)
	if name != "" {
		path += "?name=" + url.QueryEscape(name)
	}
	err := c.call(ctx, "POST", path, csv, "text/csv", &out)
	return out, err
}

// BaseDatasets lists model's base datasets, oldest first.
func (c *Client) BaseDatasets(ctx context.Context, model string) ([]api.BaseDataset, error) {
	var out []api.BaseDataset
	err := c.callJSON(ctx, "GET", api.Path(api.PathBaseDatasets, model), nil, &out)
	return out, err
}

// BaseDataset returns one of model's base datasets by its id (or 8+ hex
// digits of it).
func (c *Client) BaseDataset(ctx context.Context, model, id string) (api.BaseDataset, error) {
	var out api.BaseDataset
	err := c.callJSON(ctx, "GET", api.Path(api.PathBaseDataset, model, id), nil, &out)
	return out, err
}

// DeleteBaseDataset deletes one of model's base datasets.
func (c *Client) DeleteBaseDataset(ctx context.Context, model, id string) (api.BaseDataset, error) {
	var out api.BaseDataset
	err := c.callJSON(ctx, "DELETE", api.Path(api.PathBaseDataset, model, id), nil, &out)
	return out, err
}
