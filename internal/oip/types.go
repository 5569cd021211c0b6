// Package oip implements the Open Inference Protocol (KServe v2) REST API:
// wire types, an http.Handler that validates requests against a model's
// schema before handing typed tensors (every OIP datatype) to a Backend,
// and a client. Imported by agent (its local inference server),
// controlplane/demo, controlplane/models (sample inputs),
// controlplane/retrain (held-out rows as inputs), fleet-sim/bench
// (the agent benchmark's load), fleet-sim/scenario, fleet-sim/sim,
// internal/fleettest and internal/modelzoo.
package oip

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// DatatypeFP32 is the datatype of NewFP32Input.
const DatatypeFP32 = "FP32"

// Parameters of class-map outputs (a ZipMap's probabilities served as a
// [rows, classes] tensor): ParamClasses holds the class labels, one per
// column (numbers or strings), in model metadata and in every response;
// ParamKind is KindClassMap.
const (
	ParamClasses = "classes"
	ParamKind    = "edgefleet_kind"
	KindClassMap = "class_map"
)

// InferRequest is the body of POST /v2/models/{name}/infer.
type InferRequest struct {
	ID         string          `json:"id,omitempty"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Inputs     []RequestInput  `json:"inputs"`
	Outputs    []RequestOutput `json:"outputs,omitempty"`
}

// RequestInput is one input tensor. Data holds the JSON array as sent: flat
// in row-major order, or nested to match Shape; the handler accepts both.
// Build one from Go values with NewInput or NewFP32Input.
type RequestInput struct {
	Name       string         `json:"name"`
	Shape      []int64        `json:"shape"`
	Datatype   string         `json:"datatype"`
	Parameters map[string]any `json:"parameters,omitempty"`
	Data       RawData        `json:"data,omitempty"`

	binary []byte // this input's slice of the binary part, if any
}

// RawData is JSON kept as it was sent, like json.RawMessage, except that
// decoding does not copy it: it aliases the buffer being decoded. The
// server reads a request body once into a buffer that lives as long as
// the request, checks every input's name, datatype and shape against the
// model, and only then decodes the data — so a large body costs its own
// size once, not twice.
type RawData []byte

// MarshalJSON returns d as it is ("null" when empty).
func (d RawData) MarshalJSON() ([]byte, error) {
	if len(d) == 0 {
		return []byte("null"), nil
	}
	return d, nil
}

// UnmarshalJSON keeps b without copying it.
func (d *RawData) UnmarshalJSON(b []byte) error {
	*d = b
	return nil
}

// NewFP32Input returns an FP32 input with flat data.
func NewFP32Input(name string, shape []int64, data []float32) (RequestInput, error) {
	if data == nil {
		data = []float32{}
	}
	return NewInput(Tensor{Name: name, Datatype: DatatypeFP32, Shape: shape, Data: data})
}

// NewInput returns the input for t with flat JSON data (NaN and
// infinities as the strings "NaN", "Infinity", "-Infinity").
func NewInput(t Tensor) (RequestInput, error) {
	if err := t.Check(); err != nil {
		return RequestInput{}, fmt.Errorf("oip: input %q: %w", t.Name, err)
	}
	raw, err := appendData(nil, &t)
	if err != nil {
		return RequestInput{}, fmt.Errorf("oip: input %q: %w", t.Name, err)
	}
	shape := t.Shape
	if shape == nil {
		shape = []int64{}
	}
	return RequestInput{Name: t.Name, Shape: shape, Datatype: string(t.DT()), Data: raw}, nil
}

// RequestOutput names an output the client wants; when a request lists
// none, every output is returned.
type RequestOutput struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

// InferResponse is the body of a successful inference. ID is the request's
// id, or one the server generated: feedback labels are joined on it.
type InferResponse struct {
	ModelName    string           `json:"model_name"`
	ModelVersion string           `json:"model_version,omitempty"`
	ID           string           `json:"id"`
	Parameters   map[string]any   `json:"parameters,omitempty"`
	Outputs      []ResponseOutput `json:"outputs"`
}

// ResponseOutput is one output tensor, data flat in row-major order (see
// Tensor to decode it).
type ResponseOutput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`

	binary []byte // set by the client from a binary data part
}

// Tensor decodes the output's data (JSON or binary) as its datatype.
func (o *ResponseOutput) Tensor() (Tensor, error) {
	d, err := tensor.Parse(o.Datatype)
	if err != nil {
		return Tensor{}, fmt.Errorf("oip: output %q: %w", o.Name, err)
	}
	n, err := tensor.Elements(o.Shape, math.MaxInt32)
	if err != nil {
		return Tensor{}, fmt.Errorf("oip: output %q: %w", o.Name, err)
	}
	t := Tensor{Name: o.Name, Datatype: d, Shape: o.Shape}
	if o.binary != nil {
		t.Data, err = decodeBinary(o.binary, d, n)
	} else {
		t.Data, err = decodeData(o.Data, d, o.Shape, n)
	}
	if err != nil {
		return Tensor{}, fmt.Errorf("oip: output %q: %w", o.Name, err)
	}
	return t, nil
}

// FP32 returns the data of an FP32 (or FP16, BF16) output.
func (o *ResponseOutput) FP32() ([]float32, error) {
	t, err := o.Tensor()
	if err != nil {
		return nil, err
	}
	v, ok := t.Data.([]float32)
	if !ok {
		return nil, fmt.Errorf("oip: output %q is %s, not FP32", o.Name, o.Datatype)
	}
	return v, nil
}

// Output returns the output named name, or false.
func (r *InferResponse) Output(name string) (ResponseOutput, bool) {
	for _, o := range r.Outputs {
		if o.Name == name {
			return o, true
		}
	}
	return ResponseOutput{}, false
}

// ServerMetadata is the body of GET /v2.
type ServerMetadata struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Extensions []string `json:"extensions"`
}

// ModelMetadata is the body of GET /v2/models/{name}.
type ModelMetadata struct {
	Name     string           `json:"name"`
	Versions []string         `json:"versions,omitempty"`
	Platform string           `json:"platform"`
	Inputs   []TensorMetadata `json:"inputs"`
	Outputs  []TensorMetadata `json:"outputs"`
}

// TensorMetadata describes one model input or output; -1 in Shape is a
// dynamic axis. A class-map output has ParamKind and ParamClasses in
// Parameters.
type TensorMetadata struct {
	Name       string         `json:"name"`
	Datatype   string         `json:"datatype"`
	Shape      []int64        `json:"shape"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

// ErrorResponse is the body of every non-2xx response.
type ErrorResponse struct {
	Error string `json:"error"`
}

// healthResponse is the body of the health and model-ready endpoints;
// Error says why a check is false.
type healthResponse struct {
	Live  *bool  `json:"live,omitempty"`
	Ready *bool  `json:"ready,omitempty"`
	Error string `json:"error,omitempty"`
}
