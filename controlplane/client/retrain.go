package client

import (
	"context"
	"net/url"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Retraining and lineage (issue 13).

// RetrainPolicy returns model's retrain policy (Set false when none).
func (c *Client) RetrainPolicy(ctx context.Context, model string) (api.RetrainStatus, error) {
	var out api.RetrainStatus
	err := c.callJSON(ctx, "GET", api.Path(api.PathModelRetrain, model), nil, &out)
	return out, err
}

// SetRetrainPolicy stores model's retrain policy.
func (c *Client) SetRetrainPolicy(ctx context.Context, model string, p api.RetrainPolicy) (api.RetrainStatus, error) {
	var out api.RetrainStatus
	err := c.callJSON(ctx, "PUT", api.Path(api.PathModelRetrain, model), p, &out)
	return out, err
}

// Retrain queues a retrain job of model now.
func (c *Client) Retrain(ctx context.Context, model string, req api.RetrainRequest) (*api.RetrainJob, error) {
	var out api.RetrainJob
	if err := c.callJSON(ctx, "POST", api.Path(api.PathModelRetrainJ, model), req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RetrainJobs lists retrain jobs (of model, or all for ""), newest first.
func (c *Client) RetrainJobs(ctx context.Context, model string) ([]*api.RetrainJob, error) {
	path := api.PathRetrainJobs
	if model != "" {
		path += "?model=" + url.QueryEscape(model)
	}
	var out []*api.RetrainJob
	err := c.callJSON(ctx, "GET", path, nil, &out)
	return out, err
}

// RetrainJob returns one retrain job with its log.
func (c *Client) RetrainJob(ctx context.Context, id string) (*api.RetrainJob, error) {
	var out api.RetrainJob
	if err := c.callJSON(ctx, "GET", api.Path(api.PathRetrainJob, id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CancelRetrainJob stops an unfinished retrain job.
func (c *Client) CancelRetrainJob(ctx context.Context, id string) (*api.RetrainJob, error) {
	var out api.RetrainJob
	if err := c.callJSON(ctx, "POST", api.Path(api.PathRetrainCancel, id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Lineage returns a model version's chain of parents, newest first
// (version "" is the newest version).
func (c *Client) Lineage(ctx context.Context, model, version string) (api.Lineage, error) {
	path := api.Path(api.PathModelLineage, model)
	if version != "" {
		path += "?version=" + url.QueryEscape(version)
	}
	var out api.Lineage
	err := c.callJSON(ctx, "GET", path, nil, &out)
	return out, err
}
