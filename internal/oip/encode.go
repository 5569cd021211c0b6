package oip

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Requests and responses are written by hand around their tensor data:
// encoding/json re-validates and compacts the output of every Marshaler,
// which for raw tensor data is a second pass over every byte. The small
// parts (strings, shapes, parameters) still go through encoding/json.

// appendJSON appends v's JSON (v is a small value that always marshals:
// strings, shapes, parameter maps of JSON values).
func appendJSON(b []byte, v any) []byte {
	out, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, out...)
}

func appendShape(b []byte, shape []int64) []byte {
	b = append(b, '[')
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	return append(b, ']')
}

// appendResponse appends resp as JSON.
func appendResponse(b []byte, resp *InferResponse) []byte {
	b = append(b, `{"model_name":`...)
	b = appendJSON(b, resp.ModelName)
	if resp.ModelVersion != "" {
		b = append(b, `,"model_version":`...)
		b = appendJSON(b, resp.ModelVersion)
	}
	b = append(b, `,"id":`...)
	b = appendJSON(b, resp.ID)
	if len(resp.Parameters) > 0 {
		b = append(b, `,"parameters":`...)
		b = appendJSON(b, resp.Parameters)
	}
	b = append(b, `,"outputs":[`...)
	for i, o := range resp.Outputs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendJSON(b, o.Name)
		b = append(b, `,"shape":`...)
		b = appendShape(b, o.Shape)
		b = append(b, `,"datatype":`...)
		b = appendJSON(b, o.Datatype)
		if len(o.Parameters) > 0 {
			b = append(b, `,"parameters":`...)
			b = appendJSON(b, o.Parameters)
		}
		if len(o.Data) > 0 {
			b = append(b, `,"data":`...)
			b = append(b, o.Data...)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendRequest appends req as JSON.
func appendRequest(b []byte, req *InferRequest) []byte {
	b = append(b, '{')
	if req.ID != "" {
		b = append(b, `"id":`...)
		b = appendJSON(b, req.ID)
		b = append(b, ',')
	}
	if len(req.Parameters) > 0 {
		b = append(b, `"parameters":`...)
		b = appendJSON(b, req.Parameters)
		b = append(b, ',')
	}
	b = append(b, `"inputs":[`...)
	for i, in := range req.Inputs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendJSON(b, in.Name)
		b = append(b, `,"shape":`...)
		b = appendShape(b, in.Shape)
		b = append(b, `,"datatype":`...)
		b = appendJSON(b, in.Datatype)
		if len(in.Parameters) > 0 {
			b = append(b, `,"parameters":`...)
			b = appendJSON(b, in.Parameters)
		}
		if len(in.Data) > 0 {
			b = append(b, `,"data":`...)
			b = append(b, in.Data...)
		}
		b = append(b, '}')
	}
	b = append(b, ']')
	if len(req.Outputs) > 0 {
		b = append(b, `,"outputs":`...)
		b = appendJSON(b, req.Outputs)
	}
	return append(b, '}')
}

// writeResponse writes a successful JSON inference response.
func writeResponse(w http.ResponseWriter, resp *InferResponse) {
	size := 256
	for _, o := range resp.Outputs {
		size += len(o.Data) + 128
	}
	b := appendResponse(make([]byte, 0, size), resp)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}
