package oip

import (
	"context"
	"errors"

	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Backend runs the models behind the handler; the agent implements it.
type Backend interface {
	// Ready reports whether the server serves every model it should; when
	// not, why (e.g. which model has no version serving and what failed).
	Ready() (ready bool, reason string)
	// Model returns the active version of the named model, or false.
	Model(name string) (ModelInfo, bool)
	// Infer runs the active version of model name on inputs, which the
	// handler has validated against that model's schema and put in the
	// order of ModelInfo.Inputs. It returns the version that actually ran.
	// Errors wrapping ErrModelNotFound, ErrNotReady or ErrInvalidInput map
	// to 404, 503 and 400; anything else is a 500. A class-map output
	// (TENSOR_KIND_CLASS_MAP) is returned as its [rows, classes] tensor.
	Infer(ctx context.Context, name string, inputs []Tensor) (version string, outputs []Tensor, err error)
}

// Sentinel errors a Backend may wrap to choose the HTTP status.
var (
	// ErrModelNotFound: the model went away (e.g. unloaded mid-request).
	ErrModelNotFound = errors.New("oip: model not found")
	// ErrNotReady: the backend cannot serve right now.
	ErrNotReady = errors.New("oip: not ready")
	// ErrInvalidInput: the runtime rejected the inputs.
	ErrInvalidInput = errors.New("oip: invalid input")
)

// ModelInfo describes a model's active version. A TensorSpec shape uses -1
// for dynamic axes; an empty shape accepts any shape.
type ModelInfo struct {
	Name, Version, Platform string
	Inputs, Outputs         []*efpb.TensorSpec
}

// Tensor is a dense typed tensor in row-major order (see package tensor).
type Tensor = tensor.Tensor
