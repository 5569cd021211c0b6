package oip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ParseRequests decodes one inference request body or a JSON array of
// them (the sample inputs of an upload), strictly: unknown fields and
// trailing data are errors that say where.
func ParseRequests(data []byte) ([]*InferRequest, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("no requests: the document is empty")
	}
	if trimmed[0] != '[' {
		req, herr := decodeRequest(trimmed)
		if herr != nil {
			return nil, errors.New(herr.msg)
		}
		return []*InferRequest{req}, nil
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(trimmed, &raws); err != nil {
		return nil, fmt.Errorf("%s", describeJSONError(err))
	}
	if len(raws) == 0 {
		return nil, errors.New("no requests: the array is empty")
	}
	reqs := make([]*InferRequest, len(raws))
	for i, raw := range raws {
		req, herr := decodeRequest(raw)
		if herr != nil {
			return nil, fmt.Errorf("request %d: %s", i, herr.msg)
		}
		reqs[i] = req
	}
	return reqs, nil
}

// DecodeInputs checks req's inputs against a model's input specs as the
// inference route does (names, datatypes, shapes, flat or nested data)
// and returns them in specs order. There is no batch limit; maxElements
// bounds each input's element count.
func DecodeInputs(req *InferRequest, model string, specs []*efpb.TensorSpec, maxElements int64) ([]Tensor, error) {
	h := &handler{opts: HandlerOptions{MaxBatch: math.MaxInt32, MaxBodyBytes: maxElements}}
	ts, _, herr := h.validate(req, ModelInfo{Name: model, Inputs: specs})
	if herr != nil {
		return nil, errors.New(herr.msg)
	}
	return ts, nil
}
