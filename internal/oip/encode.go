package oip

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
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

// appendString appends s as a JSON string, as encoding/json writes it.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return appendJSON(b, s) // escapes and non-ASCII: the rare case
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
	b = appendString(b, resp.ModelName)
	if resp.ModelVersion != "" {
		b = append(b, `,"model_version":`...)
		b = appendString(b, resp.ModelVersion)
	}
	b = append(b, `,"id":`...)
	b = appendString(b, resp.ID)
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
		b = appendString(b, o.Name)
		b = append(b, `,"shape":`...)
		b = appendShape(b, o.Shape)
		b = append(b, `,"datatype":`...)
		b = appendString(b, o.Datatype)
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
		b = appendString(b, req.ID)
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
		b = appendString(b, in.Name)
		b = append(b, `,"shape":`...)
		b = appendShape(b, in.Shape)
		b = append(b, `,"datatype":`...)
		b = appendString(b, in.Datatype)
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

// writeResponse writes a successful JSON inference response, encoded into
// a pooled buffer (net/http copies what is written).
func writeResponse(w http.ResponseWriter, resp *InferResponse, pool *bufferPool) {
	size := 256
	for _, o := range resp.Outputs {
		size += len(o.Data) + 128
	}
	buf := pool.get(size)
	b := append(appendResponse(buf.b[:0], resp), '\n')
	h := w.Header()
	// Canonical keys, set directly: Header.Set would canonicalise them
	// on every request.
	h["Content-Type"] = []string{"application/json"}
	h["X-Content-Type-Options"] = []string{"nosniff"}
	if len(b) > 2048 {
		// Smaller bodies fit net/http's buffer, which sets the length
		// itself; it would send larger ones chunked.
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	buf.b = b
	pool.put(buf)
}

// maxPooledBuffer bounds the buffers a bufferPool keeps: a large
// response's buffer is left to the garbage collector rather than held.
const maxPooledBuffer = 64 << 10

// bufferPool reuses response buffers across requests.
type bufferPool struct{ p sync.Pool }

type buffer struct{ b []byte }

func (p *bufferPool) get(size int) *buffer {
	if v, ok := p.p.Get().(*buffer); ok {
		if cap(v.b) >= size {
			return v
		}
		p.p.Put(v)
	}
	return &buffer{b: make([]byte, 0, size)}
}

func (p *bufferPool) put(buf *buffer) {
	if cap(buf.b) <= maxPooledBuffer {
		p.p.Put(buf)
	}
}
