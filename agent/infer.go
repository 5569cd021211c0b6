package agent

import (
	"context"

	"github.com/edgefleet/edgefleet/internal/oip"
)

// Infer runs one inference on the version of model name that serves now,
// through the same path as POST /v2/models/{name}/infer (same counters, and
// no failure during a version swap). It is for in-process callers such as
// fleet-sim, which run many agents without an HTTP listener each. Unlike
// the HTTP handler it does not check inputs against the model's schema
// first; onnxruntime refuses a mismatch with an error. It returns the
// version that answered.
func (a *Agent) Infer(ctx context.Context, name string, inputs []oip.Tensor) (version string, outputs []oip.Tensor, err error) {
	return backend{a}.Infer(ctx, name, inputs)
}
