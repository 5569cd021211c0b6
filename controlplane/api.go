package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/transfer"
)

// Body limits of the JSON endpoints.
const (
	maxRegisterBody = 64 << 10
	maxDeployBody   = 8 << 20
	// multipartOverhead covers part headers and boundaries of an upload.
	multipartOverhead = 64 << 10
)

// handlers maps every route of api.Routes (by its Key) to its handler.
func (s *Server) handlers() map[string]http.Handler {
	hs := map[string]http.Handler{
		"GET " + api.PathHealth: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}),
		"GET " + api.PathMetrics:       promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}),
		"POST " + api.PathDevices:      http.HandlerFunc(s.handleRegisterDevice),
		"GET " + api.PathDevices:       http.HandlerFunc(s.handleListDevices),
		"GET " + api.PathDevice:        http.HandlerFunc(s.handleGetDevice),
		"POST " + api.PathDeviceRevoke: http.HandlerFunc(s.handleRevokeDevice),
		"GET " + api.PathModels:        http.HandlerFunc(s.handleListModels),
		"POST " + api.PathModelVersion: http.HandlerFunc(s.handleUploadModel),
		"GET " + api.PathModelVersion:  http.HandlerFunc(s.handleGetModel),
		"GET " + api.PathModelMetrics:  http.HandlerFunc(s.handleModelMetrics),
		"POST " + api.PathDeployments:  http.HandlerFunc(s.handleDeploy),
		"POST " + api.PathEnrollments:  http.HandlerFunc(s.handleCreateEnrollment),
		"POST " + api.PathEnroll:       http.HandlerFunc(s.handleEnroll),
		"POST " + api.PathTokens:       http.HandlerFunc(s.handleCreateToken),
		"GET " + api.PathTokens:        http.HandlerFunc(s.handleListTokens),
		"DELETE " + api.PathToken:      http.HandlerFunc(s.handleRevokeToken),
		"GET " + api.PathAudit:         http.HandlerFunc(s.handleAudit),
		"POST " + api.PathRollouts:     http.HandlerFunc(s.handleCreateRollout),
		"GET " + api.PathRollouts:      http.HandlerFunc(s.handleListRollouts),
		"GET " + api.PathRollout:       http.HandlerFunc(s.handleGetRollout),
	}
	for _, a := range api.RolloutActions() {
		hs["POST "+api.PathRolloutAction(a)] = s.rolloutActionHandler(a)
	}
	return hs
}

// handler returns the REST API: exactly the routes of api.Routes, each
// behind authentication (unless public) and its role check. A route
// without a handler, or a handler without a route, is an error: the table
// and the server cannot drift apart.
func (s *Server) handler() (http.Handler, error) {
	hs := s.handlers()
	mux := http.NewServeMux()
	for _, rt := range api.Routes() {
		h, ok := hs[rt.Key()]
		if !ok {
			return nil, fmt.Errorf("api: route %s has no handler", rt.Key())
		}
		delete(hs, rt.Key())
		mux.Handle(rt.Key(), s.authorize(rt, h))
	}
	for key := range hs {
		return nil, fmt.Errorf("api: handler %s is not in api.Routes", key)
	}
	mux.Handle("/", s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, newErr(api.ErrNotFound, "no endpoint %s %s (see docs/openapi.yaml)", r.Method, r.URL.Path))
	})))
	return s.instrument(mux), nil
}

// instrument counts requests by route pattern and status code.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern // set by the ServeMux on this request
		if route == "" || route == "/" {
			route = "unmatched"
		}
		s.metrics.apiRequests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := httpStatus(err)
	msg := err.Error()
	if code == http.StatusInternalServerError {
		// Internal errors may name paths; they are logged, and the operator
		// running the control plane sees them there too.
		msg = "internal error: " + msg
	}
	writeJSON(w, code, api.ErrorResponse{Error: msg})
}

// decodeJSON strictly decodes one JSON value of at most limit bytes into v:
// unknown fields, trailing data and type mismatches are errors naming the
// problem.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, limit)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return jsonError(err, limit)
		}
		return newErr(api.ErrInvalid, "request body holds more than one JSON value")
	}
	return nil
}

func jsonError(err error, limit int64) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return newErr(api.ErrTooLarge, "request body exceeds %d bytes", limit)
	case errors.Is(err, io.EOF):
		return newErr(api.ErrInvalid, "request body is empty; want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return newErr(api.ErrInvalid, "malformed JSON: the body ends in the middle of a value")
	case errors.As(err, &syn):
		return newErr(api.ErrInvalid, "malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return newErr(api.ErrInvalid, "request body must be a JSON object, got %s", typ.Value)
		}
		return newErr(api.ErrInvalid, "field %q must be %s, got %s", typ.Field, jsonTypeName(typ.Type.String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return newErr(api.ErrInvalid, "unknown field %s in request body", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return newErr(api.ErrInvalid, "malformed JSON: %v", err)
}

func jsonTypeName(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "map["):
		return "an object"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "bool":
		return "a boolean"
	}
	return goType
}

func (s *Server) handleRegisterDevice(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterDeviceRequest
	if err := decodeJSON(w, r, maxRegisterBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.ID == "" {
		writeError(w, newErr(api.ErrInvalid, "field \"id\" is required"))
		return
	}
	creds, err := s.RegisterDevice(req.ID, req.Labels)
	if err != nil {
		s.logIfInternal(err, "register device")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/devices/"+req.ID)
	writeJSON(w, http.StatusCreated, creds)
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	list, err := s.Devices(r.URL.Query().Get("selector"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.Device(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) handleListModels(w http.ResponseWriter, _ *http.Request) {
	recs := s.models.all()
	out := make([]api.ModelVersion, len(recs))
	for i, rec := range recs {
		out[i] = rec.ModelVersion
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetModel(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	rec := s.models.get(name, version)
	if rec == nil {
		writeError(w, newErr(api.ErrNotFound, "model %s version %s does not exist", name, version))
		return
	}
	mv, err := s.withManifest(rec)
	if err != nil {
		s.logIfInternal(err, "get model")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, mv)
}

// withManifest returns the record with its manifest payload as protojson.
func (s *Server) withManifest(rec *modelRecord) (api.ModelVersion, error) {
	mv := rec.ModelVersion
	m, err := decodeManifest(rec)
	if err != nil {
		return mv, err
	}
	mv.Manifest, err = protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return mv, fmt.Errorf("encode manifest: %w", err)
	}
	return mv, nil
}

func (s *Server) handleUploadModel(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	rec, err := s.upload(w, r, name, version)
	if err != nil {
		s.metrics.uploads.WithLabelValues("rejected").Inc()
		if httpStatus(err) >= 500 {
			s.log.Error("model upload failed", "model", name, "version", version, "err", err)
		} else {
			s.log.Info("model upload refused", "model", name, "version", version, "err", err)
		}
		writeError(w, err)
		return
	}
	s.countUpload(rec)
	mv, err := s.withManifest(rec)
	if err != nil {
		s.logIfInternal(err, "upload model")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/models/"+name+"/versions/"+version)
	writeJSON(w, http.StatusCreated, mv)
}

// upload reads the multipart body and adds the model version. Cheap checks
// (names, existence, force flag) come before the body is read.
func (s *Server) upload(w http.ResponseWriter, r *http.Request, name, version string) (*modelRecord, error) {
	if err := transfer.ValidName(name); err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}
	if err := transfer.ValidVersion(version); err != nil {
		return nil, newErr(api.ErrInvalid, "%v", err)
	}
	if s.models.get(name, version) != nil {
		return nil, newErr(api.ErrExists, "model %s version %s already exists; versions are immutable, upload a new version", name, version)
	}
	force := false
	if q := r.URL.Query().Get("force"); q != "" {
		var err error
		if force, err = strconv.ParseBool(q); err != nil {
			return nil, newErr(api.ErrInvalid, "query parameter force=%q: want true or false", q)
		}
	}
	limit := int64(s.opts.MaxModelSize) + maxMetadataSize + multipartOverhead
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, newErr(api.ErrInvalid, "request must be multipart/form-data with a \"model\" part (ONNX bytes) and an optional \"metadata\" part (JSON): %v", err)
	}
	var model, metadata []byte
	var haveModel, haveMeta bool
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, multipartError(err, limit)
		}
		switch p.FormName() {
		case "model":
			if haveModel {
				return nil, newErr(api.ErrInvalid, "the \"model\" part appears twice")
			}
			haveModel = true
			if model, err = readPart(p, int64(s.opts.MaxModelSize), "model", limit); err != nil {
				return nil, err
			}
		case "metadata":
			if haveMeta {
				return nil, newErr(api.ErrInvalid, "the \"metadata\" part appears twice")
			}
			haveMeta = true
			if metadata, err = readPart(p, maxMetadataSize, "metadata", limit); err != nil {
				return nil, err
			}
		default:
			return nil, newErr(api.ErrInvalid, "unknown multipart part %q; want \"model\" and optionally \"metadata\"", p.FormName())
		}
	}
	if !haveModel {
		return nil, newErr(api.ErrInvalid, "the \"model\" part (ONNX bytes) is missing")
	}
	meta, err := parseMetadata(metadata)
	if err != nil {
		return nil, err
	}
	return s.addModelVersion(r.Context(), name, version, model, meta, force)
}

func readPart(p *multipart.Part, max int64, what string, bodyLimit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(p, max+1))
	if err != nil {
		return nil, multipartError(err, bodyLimit)
	}
	if int64(len(data)) > max {
		return nil, newErr(api.ErrTooLarge, "%s is larger than %d bytes", what, max)
	}
	return data, nil
}

func multipartError(err error, limit int64) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return newErr(api.ErrTooLarge, "request body exceeds %d bytes", limit)
	}
	return newErr(api.ErrInvalid, "malformed multipart body: %v", err)
}

func (s *Server) handleDeploy(w http.ResponseWriter, r *http.Request) {
	var req api.DeployRequest
	if err := decodeJSON(w, r, maxDeployBody, &req); err != nil {
		writeError(w, err)
		return
	}
	res, err := s.Deploy(r.Context(), req)
	if err != nil {
		s.logIfInternal(err, "deploy")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// logIfInternal logs errors that are the control plane's fault (5xx).
func (s *Server) logIfInternal(err error, op string) {
	if httpStatus(err) >= 500 {
		s.log.Error(op+" failed", "err", err)
	}
}
