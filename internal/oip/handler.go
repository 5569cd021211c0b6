package oip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// ServerName is reported by GET /v2.
const ServerName = "edgefleet-agent"

// Limits and defaults of HandlerOptions.
const (
	DefaultMaxBodyBytes     = 4 << 20
	DefaultMaxBatch         = 1024
	DefaultMaxInflightBytes = 4 * DefaultMaxBodyBytes
	// MaxIDBytes bounds a client-supplied request id.
	MaxIDBytes = 256
)

// HandlerOptions configure NewHandler; zero values take the documented defaults.
type HandlerOptions struct {
	// MaxBodyBytes bounds an inference request body (413 above). Default 4 MiB.
	MaxBodyBytes int64
	// MaxBatch bounds the first dimension of inputs whose first dimension
	// is dynamic (a fixed one is what the model takes). Default 1024.
	MaxBatch int
	// MaxInflightBytes bounds the bytes of inference and feedback bodies
	// being read, decoded and run at once (a body counts its
	// Content-Length, or MaxBodyBytes when it has none); a request beyond
	// it gets 503 with Retry-After, its body drained through a small
	// buffer and never held, so parallel large requests cannot grow memory
	// without bound. Default 4 × MaxBodyBytes; it is raised to
	// MaxBodyBytes when lower.
	MaxInflightBytes int64
	// NewID makes the id of a request that has none. Default: 16 random
	// bytes in hex.
	NewID func() string
	// Logger receives request failures; nil discards.
	Logger *slog.Logger
	// ServerVersion is reported by GET /v2. Default "dev".
	ServerVersion string
	// Extensions are reported by GET /v2 (e.g. the agent's feedback route).
	Extensions []string
}

// randomID returns 16 random bytes in hex.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

type handler struct {
	b    Backend
	opts HandlerOptions
	log  *slog.Logger
	mux  *http.ServeMux

	bufs bufferPool // response buffers

	mu       sync.Mutex // guards inflight
	inflight int64      // bytes of bodies being handled
}

// admit reserves n bytes of the in-flight budget, or reports false when
// they do not fit now.
func (h *handler) admit(n int64) (inflight int64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inflight+n > h.opts.MaxInflightBytes {
		return h.inflight, false
	}
	h.inflight += n
	return h.inflight, true
}

func (h *handler) release(n int64) {
	h.mu.Lock()
	h.inflight -= n
	h.mu.Unlock()
}

// budget admits r's body into the in-flight budget, answering 503 with
// Retry-After when it does not fit; the caller releases the returned
// bytes when done.
func (h *handler) budget(w http.ResponseWriter, r *http.Request) (int64, bool) {
	n := r.ContentLength
	if n < 0 || n > h.opts.MaxBodyBytes {
		n = h.opts.MaxBodyBytes // unknown length: the most it may be (413 above)
	}
	if busy, ok := h.admit(n); !ok {
		// Drain the body through a small buffer (memory stays bounded) so
		// the client reads the 503 rather than a reset connection.
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("busy: requests of %d bytes are being handled and this one would pass the limit of %d; retry later", busy, h.opts.MaxInflightBytes))
		return 0, false
	}
	return n, true
}

// NewHandler returns the Open Inference Protocol REST API over b:
//
//	GET  /v2, /v2/                                    server metadata
//	GET  /v2/health/live, /v2/health/ready            liveness, readiness (400 {"ready": false} when not ready)
//	GET  /v2/models/{name}[/versions/{version}]       model metadata
//	GET  /v2/models/{name}[/versions/{version}]/ready model readiness
//	POST /v2/models/{name}[/versions/{version}]/infer inference
//	POST /v2/models/{name}/feedback                   ground-truth labels (see FeedbackBackend)
//
// Inference requests are validated against the model's schema before the
// backend sees them. Every response, errors included, is JSON; errors are
// ErrorResponse bodies naming what was wrong.
func NewHandler(b Backend, opts HandlerOptions) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.MaxInflightBytes <= 0 {
		opts.MaxInflightBytes = 4 * opts.MaxBodyBytes
	}
	opts.MaxInflightBytes = max(opts.MaxInflightBytes, opts.MaxBodyBytes)
	if opts.NewID == nil {
		opts.NewID = randomID
	}
	if opts.ServerVersion == "" {
		opts.ServerVersion = "dev"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{b: b, opts: opts, log: log.With("component", "oip"), mux: http.NewServeMux()}
	routes := []struct {
		method, path string
		fn           http.HandlerFunc
	}{
		{"GET", "/v2", h.serverMetadata},
		{"GET", "/v2/{$}", h.serverMetadata},
		{"GET", "/v2/health/live", h.live},
		{"GET", "/v2/health/ready", h.ready},
		{"GET", "/v2/models/{name}", h.modelMetadata},
		{"GET", "/v2/models/{name}/versions/{version}", h.modelMetadata},
		{"GET", "/v2/models/{name}/ready", h.modelReady},
		{"GET", "/v2/models/{name}/versions/{version}/ready", h.modelReady},
		{"POST", "/v2/models/{name}/infer", h.infer},
		{"POST", "/v2/models/{name}/versions/{version}/infer", h.infer},
		{"POST", "/v2/models/{name}/feedback", h.feedback},
	}
	for _, rt := range routes {
		h.mux.HandleFunc(rt.method+" "+rt.path, rt.fn)
		// The method-less pattern is less specific: it only sees the
		// other methods, and answers them in JSON rather than text.
		allow := rt.method
		if allow == "GET" {
			allow = "GET, HEAD"
		}
		h.mux.HandleFunc(rt.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s; use %s", r.Method, r.URL.Path, rt.method))
		})
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return h.mux
}

func (h *handler) serverMetadata(w http.ResponseWriter, _ *http.Request) {
	ext := append([]string{BinaryExtension}, h.opts.Extensions...)
	writeJSON(w, http.StatusOK, ServerMetadata{Name: ServerName, Version: h.opts.ServerVersion, Extensions: ext})
}

func (h *handler) live(w http.ResponseWriter, _ *http.Request) {
	t := true
	writeJSON(w, http.StatusOK, healthResponse{Live: &t})
}

// The Open Inference Protocol's health answers are booleans in the
// status: 200 is true, a 4xx false. Not ready is 400 with {"ready":
// false} and the reason in "error".
func (h *handler) ready(w http.ResponseWriter, _ *http.Request) {
	if ok, why := h.b.Ready(); !ok {
		f := false
		writeJSON(w, http.StatusBadRequest, healthResponse{Ready: &f, Error: "server is not ready: " + why})
		return
	}
	t := true
	writeJSON(w, http.StatusOK, healthResponse{Ready: &t})
}

// lookup resolves the {name} and optional {version} path values to the
// active model, writing the error response when there is none: 404 for a
// model the server does not have, 503 while it is not ready (the model may
// be on its way).
func (h *handler) lookup(w http.ResponseWriter, r *http.Request) (ModelInfo, bool) {
	name := r.PathValue("name")
	info, ok := h.b.Model(name)
	if !ok {
		if ready, why := h.b.Ready(); !ready {
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("model %q is not being served; server is not ready: %s", name, why))
			return ModelInfo{}, false
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found", name))
		return ModelInfo{}, false
	}
	if v := r.PathValue("version"); v != "" && v != info.Version {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q version %q is not active (active version: %q)", name, v, info.Version))
		return ModelInfo{}, false
	}
	return info, true
}

func (h *handler) modelMetadata(w http.ResponseWriter, r *http.Request) {
	info, ok := h.lookup(w, r)
	if !ok {
		return
	}
	md := ModelMetadata{
		Name:     info.Name,
		Platform: info.Platform,
		Inputs:   tensorMetadata(info.Inputs),
		Outputs:  tensorMetadata(info.Outputs),
	}
	if info.Version != "" {
		md.Versions = []string{info.Version}
	}
	writeJSON(w, http.StatusOK, md)
}

func (h *handler) modelReady(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, ok := h.b.Model(name); !ok {
		if ready, why := h.b.Ready(); !ready {
			f := false
			writeJSON(w, http.StatusBadRequest, healthResponse{Ready: &f, Error: fmt.Sprintf("model %q is not ready: %s", name, why)})
			return
		}
	}
	if _, ok := h.lookup(w, r); !ok {
		return
	}
	t := true
	writeJSON(w, http.StatusOK, healthResponse{Ready: &t})
}

func (h *handler) infer(w http.ResponseWriter, r *http.Request) {
	info, ok := h.lookup(w, r)
	if !ok {
		return
	}
	if r.ContentLength > h.opts.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds the limit of %d bytes", h.opts.MaxBodyBytes))
		return
	}
	n, ok := h.budget(w, r)
	if !ok {
		return
	}
	defer h.release(n)
	req, herr := h.readRequest(w, r)
	if herr != nil {
		writeError(w, herr.status, herr.msg)
		return
	}
	inputs, want, herr := h.validate(req, info)
	if herr != nil {
		h.log.Debug("rejected inference request", "model", info.Name, "status", herr.status, "reason", herr.msg)
		writeError(w, herr.status, herr.msg)
		return
	}
	id := req.ID
	if id == "" {
		id = h.opts.NewID()
	}

	version, outs, err := h.b.Infer(WithInferenceID(r.Context(), id), info.Name, inputs)
	if err != nil {
		h.inferFailed(w, r, info, id, err)
		return
	}
	if v := r.PathValue("version"); v != "" && v != version {
		writeError(w, http.StatusConflict, fmt.Sprintf("model %q version %q was replaced by %q during the request; retry", info.Name, v, version))
		return
	}
	resp := InferResponse{ModelName: info.Name, ModelVersion: version, ID: id}
	resp.Outputs, err = responseOutputs(outs, want, info, binaryOutputs(req))
	if err != nil {
		h.log.Warn("backend returned bad outputs", "model", info.Name, "version", version, "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if hasBinary(resp.Outputs) {
		writeBinary(w, &resp)
		return
	}
	writeResponse(w, &resp, &h.bufs)
}

func (h *handler) inferFailed(w http.ResponseWriter, r *http.Request, info ModelInfo, id string, err error) {
	switch {
	case errors.Is(err, ErrInvalidInput):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrModelNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrNotReady):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case r.Context().Err() != nil && errors.Is(err, context.Canceled):
		// The client went away; nobody reads the answer.
		h.log.Debug("inference canceled", "model", info.Name, "id", id)
		writeError(w, http.StatusServiceUnavailable, "request canceled")
	default:
		h.log.Warn("inference failed", "model", info.Name, "version", info.Version, "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, "inference failed: "+err.Error())
	}
}

// httpError is a response status with the message sent to the client.
type httpError struct {
	status int
	msg    string
}

func badRequest(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// readRequest reads and strictly decodes the body.
func (h *handler) readRequest(w http.ResponseWriter, r *http.Request) (*InferRequest, *httpError) {
	tooBig := func() *httpError {
		return &httpError{status: http.StatusRequestEntityTooLarge,
			msg: fmt.Sprintf("request body exceeds the limit of %d bytes", h.opts.MaxBodyBytes)}
	}
	if r.ContentLength > h.opts.MaxBodyBytes {
		return nil, tooBig()
	}
	body, err := readBody(w, r, h.opts.MaxBodyBytes)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooBig()
		}
		return nil, badRequest("reading request body: %v", err)
	}
	hdr := r.Header.Get(HeaderContentLength)
	if hdr == "" {
		return decodeRequest(body)
	}
	n, err := strconv.ParseInt(hdr, 10, 64)
	if err != nil || n < 0 || n > int64(len(body)) {
		return nil, badRequest("header %s is %q; want the length of the JSON part, 0..%d (the body's length)", HeaderContentLength, hdr, len(body))
	}
	req, herr := decodeRequest(body[:n])
	if herr != nil {
		return nil, herr
	}
	if herr := attachBinary(req, body[n:]); herr != nil {
		return nil, herr
	}
	return req, nil
}

// attachBinary hands each input with a binary_data_size parameter its
// slice of the binary part, in the order of the inputs; every byte must
// belong to one.
func attachBinary(req *InferRequest, bin []byte) *httpError {
	for i := range req.Inputs {
		in := &req.Inputs[i]
		v, ok := in.Parameters[ParamBinaryDataSize]
		if !ok {
			continue
		}
		size, ok := v.(float64)
		if !ok || size < 0 || size != math.Trunc(size) {
			return badRequest("input %q: parameter %s is %v; want a byte count", in.Name, ParamBinaryDataSize, v)
		}
		if size > float64(len(bin)) {
			return badRequest("input %q: parameter %s is %v but only %d bytes of binary data are left", in.Name, ParamBinaryDataSize, size, len(bin))
		}
		in.binary = bin[:int(size):int(size)]
		bin = bin[int(size):]
	}
	if len(bin) > 0 {
		return badRequest("the binary part has %d bytes no input's %s accounts for", len(bin), ParamBinaryDataSize)
	}
	return nil
}

// readBody reads at most limit bytes of r's body into a buffer sized by
// its Content-Length when it has one (io.ReadAll would grow it to twice
// that).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n >= 0 && n <= limit {
		buf := make([]byte, n)
		if _, err := io.ReadFull(rd, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("body ends after fewer than the %d bytes of its Content-Length", n)
			}
			return nil, err
		}
		return buf, nil
	}
	return io.ReadAll(rd)
}

// decodeRequest decodes an InferRequest, rejecting unknown fields and
// trailing data; the inputs' RawData alias body. The common form is
// decoded in one pass (scanRequest); anything else, errors included, the
// general way (decodeRequestJSON), which says what is wrong.
func decodeRequest(body []byte) (*InferRequest, *httpError) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, badRequest("request body is empty; send an inference request JSON object")
	}
	if req, ok := scanRequest(trimmed); ok {
		return req, nil
	}
	return decodeRequestJSON(trimmed)
}

// decodeRequestJSON decodes a trimmed, non-empty body with json.Unmarshal,
// so the inputs' RawData alias body (a json.Decoder would copy the body
// into its own buffer, and reuse it), and then walks body once for fields
// the request does not have.
func decodeRequestJSON(trimmed []byte) (*InferRequest, *httpError) {
	// Counted before decoding: a few MiB of "{}," would otherwise become
	// millions of tensors (hundreds of MiB) before anything looks at them.
	if json.Valid(trimmed) {
		w := jsonWalker{b: trimmed}
		if in, out := w.tensorCounts(); in > MaxRequestTensors || out > MaxRequestTensors {
			return nil, badRequest("invalid request: %d inputs and %d outputs; at most %d of each", in, out, MaxRequestTensors)
		}
	}
	var req InferRequest
	if err := json.Unmarshal(trimmed, &req); err != nil {
		// Distinguish a second value after the object from broken JSON.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		var first json.RawMessage
		if _, ok := errors.AsType[*json.SyntaxError](err); ok && dec.Decode(&first) == nil {
			return nil, badRequest("invalid JSON: unexpected data after the request object")
		}
		return nil, badRequest("%s", describeJSONError(err))
	}
	if name, ok := unknownField(trimmed); !ok {
		return nil, badRequest("invalid request: unknown field %q", name)
	}
	return &req, nil
}

// Fields of an inference request, by where they are.
var (
	requestFields = map[string]bool{"id": true, "parameters": true, "inputs": true, "outputs": true}
	inputFields   = map[string]bool{"name": true, "shape": true, "datatype": true, "parameters": true, "data": true}
	outputFields  = map[string]bool{"name": true, "parameters": true}
)

// unknownField walks a valid JSON inference request and returns the
// first field the request type does not have (ok false), without
// allocating for the values it skips.
func unknownField(b []byte) (name string, ok bool) {
	w := jsonWalker{b: b}
	return w.object(requestFields, func(key string) (string, bool) {
		switch key {
		case "inputs":
			return w.objects(inputFields)
		case "outputs":
			return w.objects(outputFields)
		}
		w.skip()
		return "", true
	})
}

// MaxRequestTensors bounds the inputs, and the outputs, one inference
// request may name: far above any model's, far below what a body of the
// size limit could make the decoder allocate.
const MaxRequestTensors = 4096

// tensorCounts walks a valid JSON inference request and returns the
// number of elements of its "inputs" and "outputs" arrays.
func (w *jsonWalker) tensorCounts() (inputs, outputs int) {
	w.object(nil, func(key string) (string, bool) {
		switch key {
		case "inputs":
			inputs = w.count()
		case "outputs":
			outputs = w.count()
		default:
			w.skip()
		}
		return "", true
	})
	return inputs, outputs
}

// count steps over an array and returns its number of elements; any
// other value is skipped and counts 0.
func (w *jsonWalker) count() int {
	w.space()
	if w.b[w.i] != '[' {
		w.skip()
		return 0
	}
	w.i++
	n := 0
	for {
		w.space()
		switch w.b[w.i] {
		case ']':
			w.i++
			return n
		case ',':
			w.i++
			continue
		}
		w.skip()
		n++
	}
}

// jsonWalker steps through valid JSON.
type jsonWalker struct {
	b []byte
	i int
}

func (w *jsonWalker) space() {
	for w.i < len(w.b) && isSpace(w.b[w.i]) {
		w.i++
	}
}

// object walks an object whose keys must be in fields (nil: any key),
// calling value for each value (which must consume it); a non-object is
// skipped.
func (w *jsonWalker) object(fields map[string]bool, value func(key string) (string, bool)) (string, bool) {
	w.space()
	if w.i >= len(w.b) || w.b[w.i] != '{' {
		w.skip()
		return "", true
	}
	w.i++
	for {
		w.space()
		if w.b[w.i] == '}' {
			w.i++
			return "", true
		}
		if w.b[w.i] == ',' {
			w.i++
			w.space()
		}
		start := w.i
		w.str()
		var key string
		if err := json.Unmarshal(w.b[start:w.i], &key); err != nil {
			return "", true // valid JSON: cannot happen
		}
		w.space()
		w.i++ // ':'
		if fields != nil && !fields[key] {
			return key, false
		}
		if name, ok := value(key); !ok {
			return name, false
		}
	}
}

// objects walks an array of objects whose keys must be in fields; other
// values are skipped.
func (w *jsonWalker) objects(fields map[string]bool) (string, bool) {
	w.space()
	if w.b[w.i] != '[' {
		w.skip()
		return "", true
	}
	w.i++
	for {
		w.space()
		switch w.b[w.i] {
		case ']':
			w.i++
			return "", true
		case ',':
			w.i++
			continue
		}
		if name, ok := w.object(fields, func(string) (string, bool) { w.skip(); return "", true }); !ok {
			return name, false
		}
	}
}

// str steps over a string.
func (w *jsonWalker) str() {
	w.i++ // opening quote
	for w.b[w.i] != '"' {
		if w.b[w.i] == '\\' {
			w.i++
		}
		w.i++
	}
	w.i++
}

// skip steps over one value.
func (w *jsonWalker) skip() {
	w.space()
	switch w.b[w.i] {
	case '"':
		w.str()
	case '{', '[':
		depth := 0
		for {
			switch w.b[w.i] {
			case '"':
				w.str()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			w.i++
			if depth == 0 {
				return
			}
		}
	default:
		w.i = tokenEnd(w.b, w.i)
	}
}

func describeJSONError(err error) string {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, se.Error())
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return fmt.Sprintf("invalid request: the body must be a JSON object, not %s", te.Value)
		}
		return fmt.Sprintf("invalid request: field %q must be %s, not %s", te.Field, jsonKind(te.Type.String()), te.Value)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "invalid JSON: the body ends early"
	}
	return "invalid request: " + strings.TrimPrefix(err.Error(), "json: ")
}

// jsonKind names a Go type the way a client thinks of it.
func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"), goType == "json.RawMessage":
		return "an array"
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "oip."):
		return "an object"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "float"):
		return "a number"
	default:
		return goType
	}
}

// validate checks req against the model and returns its inputs as tensors
// in the model's input order, plus the requested output names (nil: all).
func (h *handler) validate(req *InferRequest, info ModelInfo) ([]Tensor, []string, *httpError) {
	if len(req.ID) > MaxIDBytes {
		return nil, nil, badRequest("id is %d bytes long; at most %d are allowed", len(req.ID), MaxIDBytes)
	}
	if len(req.Inputs) == 0 {
		return nil, nil, badRequest("request has no inputs; model %q needs %s", info.Name, specNames(info.Inputs))
	}
	// Models with many inputs (one per column, as some converters make
	// them) get a map; a few inputs are found faster by a scan.
	var byName map[string]int
	if len(info.Inputs) > 16 {
		byName = make(map[string]int, len(info.Inputs))
		for i, s := range info.Inputs {
			byName[s.GetName()] = i
		}
	}
	tensors := make([]Tensor, len(info.Inputs))
	given := make([]bool, len(info.Inputs))
	for n, in := range req.Inputs {
		if in.Name == "" {
			return nil, nil, badRequest("inputs[%d] has no name", n)
		}
		idx, ok := byName[in.Name]
		if byName == nil {
			idx = specIndex(info.Inputs, in.Name)
			ok = idx >= 0
		}
		if !ok {
			return nil, nil, badRequest("input %q is not an input of model %q (inputs: %s)", in.Name, info.Name, specNames(info.Inputs))
		}
		if given[idx] {
			return nil, nil, badRequest("input %q is given more than once", in.Name)
		}
		given[idx] = true
		t, herr := h.validateInput(in, info.Inputs[idx])
		if herr != nil {
			return nil, nil, herr
		}
		tensors[idx] = t
	}
	for i, ok := range given {
		if !ok {
			return nil, nil, badRequest("missing input %q (model %q needs %s)", info.Inputs[i].GetName(), info.Name, specNames(info.Inputs))
		}
	}
	want, herr := requestedOutputs(req.Outputs, info)
	if herr != nil {
		return nil, nil, herr
	}
	return tensors, want, nil
}

func (h *handler) validateInput(in RequestInput, spec *efpb.TensorSpec) (Tensor, *httpError) {
	d, err := tensor.Parse(in.Datatype)
	if err != nil {
		return Tensor{}, badRequest("input %q: %v", in.Name, err)
	}
	if want := spec.GetDatatype(); want != "" && string(d) != want {
		return Tensor{}, badRequest("input %q: datatype is %s, but the model's input is %s", in.Name, d, want)
	}
	if _, ok := in.Parameters[ParamBinaryDataSize]; ok && in.binary == nil {
		return Tensor{}, badRequest("input %q has parameter %s but the request has no %s header (the JSON part's length)", in.Name, ParamBinaryDataSize, HeaderContentLength)
	}
	if in.Shape == nil {
		return Tensor{}, badRequest("input %q has no shape", in.Name)
	}
	for i, d := range in.Shape {
		if d < 0 {
			return Tensor{}, badRequest("input %q: shape %s has negative dimension %d; request shapes must be concrete", in.Name, fmtShape(in.Shape), i)
		}
	}
	ms := spec.GetShape()
	if len(ms) > 0 {
		if len(in.Shape) != len(ms) {
			return Tensor{}, badRequest("input %q: shape %s has rank %d but the model wants rank %d (model shape %s, -1 = any size)",
				in.Name, fmtShape(in.Shape), len(in.Shape), len(ms), fmtShape(ms))
		}
		for i, d := range ms {
			if d >= 0 && in.Shape[i] != d {
				return Tensor{}, badRequest("input %q: shape %s has %d at dimension %d but the model wants %d (model shape %s, -1 = any size)",
					in.Name, fmtShape(in.Shape), in.Shape[i], i, d, fmtShape(ms))
			}
		}
	}
	// The batch limit applies to a dynamic first dimension only: a fixed
	// one is what the model takes.
	if len(in.Shape) > 0 && (len(ms) == 0 || ms[0] < 0) && in.Shape[0] > int64(h.opts.MaxBatch) {
		return Tensor{}, badRequest("input %q: batch size %d (shape[0]) exceeds the limit of %d", in.Name, in.Shape[0], h.opts.MaxBatch)
	}
	product, ok := elementCount(in.Shape, h.opts.MaxBodyBytes)
	if !ok {
		return Tensor{}, badRequest("input %q: shape %s has more elements than a request of at most %d bytes can carry",
			in.Name, fmtShape(in.Shape), h.opts.MaxBodyBytes)
	}
	if in.binary != nil {
		if len(in.Data) > 0 {
			return Tensor{}, badRequest("input %q has both JSON data and binary data; send one", in.Name)
		}
		data, err := decodeBinary(in.binary, d, product)
		if err != nil {
			return Tensor{}, badRequest("input %q: %v", in.Name, err)
		}
		return Tensor{Name: in.Name, Datatype: d, Shape: in.Shape, Data: data}, nil
	}
	if len(in.Data) == 0 || string(in.Data) == "null" {
		return Tensor{}, badRequest("input %q has no data", in.Name)
	}
	data, err := decodeData(in.Data, d, in.Shape, product)
	if err != nil {
		return Tensor{}, badRequest("input %q: %v", in.Name, err)
	}
	return Tensor{Name: in.Name, Datatype: d, Shape: in.Shape, Data: data}, nil
}

func requestedOutputs(outs []RequestOutput, info ModelInfo) ([]string, *httpError) {
	if len(outs) == 0 {
		return nil, nil
	}
	known := make(map[string]bool, len(info.Outputs))
	for _, s := range info.Outputs {
		known[s.GetName()] = true
	}
	want := make([]string, 0, len(outs))
	seen := make(map[string]bool, len(outs))
	for i, o := range outs {
		switch {
		case o.Name == "":
			return nil, badRequest("outputs[%d] has no name", i)
		case len(known) > 0 && !known[o.Name]:
			return nil, badRequest("requested output %q is not an output of model %q (outputs: %s)", o.Name, info.Name, specNames(info.Outputs))
		case seen[o.Name]:
			return nil, badRequest("output %q is requested more than once", o.Name)
		}
		seen[o.Name] = true
		want = append(want, o.Name)
	}
	return want, nil
}

// binaryOutputs says which outputs go as binary data: all with the
// request parameter binary_data_output, else those with binary_data.
func binaryOutputs(req *InferRequest) func(name string) bool {
	all, _ := req.Parameters[ParamBinaryDataOutput].(bool)
	var named map[string]bool
	for _, o := range req.Outputs {
		if named == nil {
			named = map[string]bool{}
		}
		if v, ok := o.Parameters[ParamBinaryData].(bool); ok {
			named[o.Name] = v
		}
	}
	return func(name string) bool {
		if v, ok := named[name]; ok {
			return v
		}
		return all
	}
}

func hasBinary(outs []ResponseOutput) bool {
	for _, o := range outs {
		if o.binary != nil {
			return true
		}
	}
	return false
}

// writeBinary writes a response whose binary outputs follow the JSON part.
func writeBinary(w http.ResponseWriter, resp *InferResponse) {
	head := appendResponse(nil, resp)
	size := len(head)
	for _, o := range resp.Outputs {
		size += len(o.binary)
	}
	body := make([]byte, 0, size)
	body = append(body, head...)
	for _, o := range resp.Outputs {
		body = append(body, o.binary...)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(HeaderContentLength, strconv.Itoa(len(head)))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// responseOutputs converts the backend's outputs, keeping only want (in its
// order) when given, and checks they can be sent. A class-map output gets
// its class labels in its parameters; binary(name) outputs carry their
// data in binary form.
func responseOutputs(outs []Tensor, want []string, info ModelInfo, binary func(name string) bool) ([]ResponseOutput, error) {
	if want != nil {
		byName := make(map[string]Tensor, len(outs))
		for _, o := range outs {
			byName[o.Name] = o
		}
		sel := make([]Tensor, 0, len(want))
		for _, n := range want {
			o, ok := byName[n]
			if !ok {
				return nil, fmt.Errorf("model did not produce the requested output %q", n)
			}
			sel = append(sel, o)
		}
		outs = sel
	}
	res := make([]ResponseOutput, 0, len(outs))
	for _, o := range outs {
		n, ok := elementCount(o.Shape, math.MaxInt64)
		if !ok || n != int64(o.Len()) {
			return nil, fmt.Errorf("model returned output %q with %d values for shape %s", o.Name, o.Len(), fmtShape(o.Shape))
		}
		d := o.DT()
		if !d.Valid() {
			return nil, fmt.Errorf("model returned output %q of Go type %T, which is no tensor datatype", o.Name, o.Data)
		}
		shape := o.Shape
		if shape == nil {
			shape = []int64{}
		}
		out := ResponseOutput{Name: o.Name, Shape: shape, Datatype: string(d), Parameters: outputParams(specOf(info.Outputs, o.Name))}
		if binary != nil && binary(o.Name) {
			out.binary = appendBinary(make([]byte, 0, binarySize(&o)), &o)
			if out.Parameters == nil {
				out.Parameters = map[string]any{}
			}
			out.Parameters[ParamBinaryDataSize] = len(out.binary)
		} else {
			data, err := appendData(nil, &o)
			if err != nil {
				return nil, fmt.Errorf("model produced output %q that JSON cannot carry: %v", o.Name, err)
			}
			out.Data = data
		}
		res = append(res, out)
	}
	return res, nil
}

// outputParams returns the parameters of a class-map output (its kind and
// class labels), or nil.
func outputParams(spec *efpb.TensorSpec) map[string]any {
	if spec.GetKind() != efpb.TensorKind_TENSOR_KIND_CLASS_MAP {
		return nil
	}
	p := map[string]any{ParamKind: KindClassMap}
	if c, err := tensor.FromProto(spec.GetClasses()); err == nil {
		p[ParamClasses] = c.Data
	}
	return p
}

// specIndex returns the index of the spec named name, or -1 (a linear
// scan: models have a few inputs and outputs, and a map per request
// would cost more).
func specIndex(specs []*efpb.TensorSpec, name string) int {
	for i, s := range specs {
		if s.GetName() == name {
			return i
		}
	}
	return -1
}

// specOf returns the spec named name, or nil.
func specOf(specs []*efpb.TensorSpec, name string) *efpb.TensorSpec {
	if i := specIndex(specs, name); i >= 0 {
		return specs[i]
	}
	return nil
}

// specNames lists tensor names for messages: "x", "y".
func specNames(specs []*efpb.TensorSpec) string {
	if len(specs) == 0 {
		return "none"
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = fmt.Sprintf("%q", s.GetName())
	}
	return strings.Join(names, ", ")
}

func tensorMetadata(specs []*efpb.TensorSpec) []TensorMetadata {
	md := make([]TensorMetadata, len(specs))
	for i, s := range specs {
		shape := s.GetShape()
		if shape == nil {
			shape = []int64{}
		}
		md[i] = TensorMetadata{Name: s.GetName(), Datatype: s.GetDatatype(), Shape: shape, Parameters: outputParams(s)}
	}
	return md
}

// writeJSON encodes v fully before writing, so a failure is a clean 500.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(ErrorResponse{Error: "encoding response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg})
}
