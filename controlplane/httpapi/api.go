package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/models"
)

// Body limits of the JSON endpoints.
const (
	maxRegisterBody = 64 << 10
	maxDeployBody   = 8 << 20
	// multipartOverhead covers part headers and boundaries of an upload.
	multipartOverhead = 64 << 10
)

// handlers maps every route of api.Routes (by its Key) to its handler.
func (a *API) handlers() map[string]http.Handler {
	hs := map[string]http.Handler{
		"GET " + api.PathHealth: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}),
		"GET " + api.PathMetrics:        a.opts.Prometheus,
		"POST " + api.PathDevices:       http.HandlerFunc(a.handleRegisterDevice),
		"GET " + api.PathDevices:        http.HandlerFunc(a.handleListDevices),
		"GET " + api.PathDevice:         http.HandlerFunc(a.handleGetDevice),
		"POST " + api.PathDeviceRevoke:  http.HandlerFunc(a.handleRevokeDevice),
		"GET " + api.PathModels:         http.HandlerFunc(a.handleListModels),
		"POST " + api.PathModelVersion:  http.HandlerFunc(a.handleUploadModel),
		"GET " + api.PathModelVersion:   http.HandlerFunc(a.handleGetModel),
		"GET " + api.PathModelMetrics:   http.HandlerFunc(a.handleModelMetrics),
		"POST " + api.PathDeployments:   http.HandlerFunc(a.handleDeploy),
		"POST " + api.PathEnrollments:   http.HandlerFunc(a.handleCreateEnrollment),
		"POST " + api.PathEnroll:        http.HandlerFunc(a.handleEnroll),
		"POST " + api.PathTokens:        http.HandlerFunc(a.handleCreateToken),
		"GET " + api.PathTokens:         http.HandlerFunc(a.handleListTokens),
		"DELETE " + api.PathToken:       http.HandlerFunc(a.handleRevokeToken),
		"GET " + api.PathAudit:          http.HandlerFunc(a.handleAudit),
		"POST " + api.PathRollouts:      http.HandlerFunc(a.handleCreateRollout),
		"GET " + api.PathRollouts:       http.HandlerFunc(a.handleListRollouts),
		"GET " + api.PathRollout:        http.HandlerFunc(a.handleGetRollout),
		"GET " + api.PathBrokerMosq:     http.HandlerFunc(a.handleBrokerMosquitto),
		"GET " + api.PathBrokerNATS:     http.HandlerFunc(a.handleBrokerNATS),
		"POST " + api.PathBrokerAuthn:   http.HandlerFunc(a.handleBrokerAuthn),
		"POST " + api.PathBrokerAuthz:   http.HandlerFunc(a.handleBrokerAuthz),
		"GET " + api.PathSites:          http.HandlerFunc(a.handleListSites),
		"POST " + api.PathSiteRotateKey: http.HandlerFunc(a.handleRotateSiteKey),
	}
	for _, act := range api.RolloutActions() {
		hs["POST "+api.PathRolloutAction(act)] = a.rolloutActionHandler(act)
	}
	a.dataHandlers(hs)    // field data capture and datasets (data.go)
	a.retrainHandlers(hs) // retraining and lineage (retrain.go)
	return hs
}

// Handler returns the REST API: exactly the routes of api.Routes, each
// behind authentication (unless public) and its role check. A route
// without a handler, or a handler without a route, is an error: the table
// and the server cannot drift apart.
func (a *API) Handler() (http.Handler, error) {
	mux, err := a.mux(false)
	if err != nil {
		return nil, err
	}
	return a.instrument(mux), nil
}

// mux routes api.Routes to their handlers. The REST mux authenticates
// bearer tokens; the in-process one (Do) finds the principal in the
// request's context, put there by Do.
func (a *API) mux(inproc bool) (*http.ServeMux, error) {
	hs := a.handlers()
	mux := http.NewServeMux()
	for _, rt := range api.Routes() {
		h, ok := hs[rt.Key()]
		if !ok {
			return nil, fmt.Errorf("api: route %s has no handler", rt.Key())
		}
		delete(hs, rt.Key())
		switch {
		case rt.Public:
			mux.Handle(rt.Key(), h)
		case inproc:
			mux.Handle(rt.Key(), a.permit(rt, h))
		default:
			mux.Handle(rt.Key(), a.authenticated(a.permit(rt, h)))
		}
	}
	for key := range hs {
		return nil, fmt.Errorf("api: handler %s is not in api.Routes", key)
	}
	notFound := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.ErrNotFound, "no endpoint %s %s (see docs/openapi.yaml)", r.Method, r.URL.Path))
	}))
	if !inproc {
		notFound = a.authenticated(notFound)
	}
	mux.Handle("/", notFound)
	return mux, nil
}

// instrument counts requests by route pattern and status code.
func (a *API) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern // set by the ServeMux on this request
		if route == "" || route == "/" {
			route = "unmatched"
		}
		a.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
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
	code := api.HTTPStatus(err)
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
		return api.Errorf(api.ErrInvalid, "request body holds more than one JSON value")
	}
	return nil
}

func jsonError(err error, limit int64) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return api.Errorf(api.ErrTooLarge, "request body exceeds %d bytes", limit)
	case errors.Is(err, io.EOF):
		return api.Errorf(api.ErrInvalid, "request body is empty; want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return api.Errorf(api.ErrInvalid, "malformed JSON: the body ends in the middle of a value")
	case errors.As(err, &syn):
		return api.Errorf(api.ErrInvalid, "malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return api.Errorf(api.ErrInvalid, "request body must be a JSON object, got %s", typ.Value)
		}
		return api.Errorf(api.ErrInvalid, "field %q must be %s, got %s", typ.Field, jsonTypeName(typ.Type.String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return api.Errorf(api.ErrInvalid, "unknown field %s in request body", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return api.Errorf(api.ErrInvalid, "malformed JSON: %v", err)
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

func (a *API) handleRegisterDevice(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterDeviceRequest
	if err := decodeJSON(w, r, maxRegisterBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.ID == "" {
		writeError(w, api.Errorf(api.ErrInvalid, "field \"id\" is required"))
		return
	}
	creds, err := a.opts.Fleet.Register(req.ID, req.Labels)
	if err != nil {
		a.logIfInternal(err, "register device")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/v1/devices/"+req.ID)
	writeJSON(w, http.StatusCreated, creds)
}

func (a *API) handleListDevices(w http.ResponseWriter, r *http.Request) {
	list, err := a.opts.Fleet.Devices(r.URL.Query().Get("selector"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	d, err := a.opts.Fleet.Device(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *API) handleListModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.opts.Models.List())
}

func (a *API) handleGetModel(w http.ResponseWriter, r *http.Request) {
	mv, err := a.opts.Models.Get(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		a.logIfInternal(err, "get model")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, mv)
}

func (a *API) handleUploadModel(w http.ResponseWriter, r *http.Request) {
	name, version := r.PathValue("name"), r.PathValue("version")
	mv, err := a.upload(w, r, name, version)
	if err != nil {
		if api.HTTPStatus(err) >= 500 {
			a.log.Error("model upload failed", "model", name, "version", version, "err", err)
		} else {
			a.log.Info("model upload refused", "model", name, "version", version, "err", err)
		}
		writeError(w, err)
		return
	}
	w.Header().Set("Location", api.Path(api.PathModelVersion, name, version))
	writeJSON(w, http.StatusCreated, mv)
}

// upload reads the multipart body and adds the model version. Cheap checks
// (names, existence, force flag) come before the body is read; a request
// refused before it reaches Models.AddUpload is counted as rejected here.
func (a *API) upload(w http.ResponseWriter, r *http.Request, name, version string) (api.ModelVersion, error) {
	u, err := a.readUpload(w, r, name, version)
	if err != nil {
		a.opts.Models.CountRejected()
		return api.ModelVersion{}, err
	}
	return a.opts.Models.AddUpload(r.Context(), u)
}

// uploadParts are the parts an upload takes, with their size limits.
func (a *API) uploadParts() map[string]int64 {
	return map[string]int64{
		api.PartModel:     int64(a.opts.Models.MaxModelSize()),
		api.PartMetadata:  models.MaxMetadataSize,
		api.PartSamples:   models.MaxSamplesSize,
		api.PartReference: models.MaxReferenceSize,
	}
}

func (a *API) readUpload(w http.ResponseWriter, r *http.Request, name, version string) (models.Upload, error) {
	if err := a.opts.Models.CheckNew(name, version); err != nil {
		return models.Upload{}, err
	}
	u := models.Upload{Name: name, Version: version}
	if q := r.URL.Query().Get("force"); q != "" {
		var err error
		if u.Force, err = strconv.ParseBool(q); err != nil {
			return models.Upload{}, api.Errorf(api.ErrInvalid, "query parameter force=%q: want true or false", q)
		}
	}
	parts := a.uploadParts()
	limit := int64(multipartOverhead)
	for _, max := range parts {
		limit += max
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr, err := r.MultipartReader()
	if err != nil {
		return models.Upload{}, api.Errorf(api.ErrInvalid, "request must be multipart/form-data with a %q part (ONNX bytes) and optional %q (JSON), %q (OIP request JSON or CSV) and %q (CSV) parts: %v",
			api.PartModel, api.PartMetadata, api.PartSamples, api.PartReference, err)
	}
	got := map[string][]byte{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return models.Upload{}, multipartError(err, limit)
		}
		part := p.FormName()
		max, known := parts[part]
		if !known {
			return models.Upload{}, api.Errorf(api.ErrInvalid, "unknown multipart part %q; want %q and optionally %q, %q, %q", part, api.PartModel, api.PartMetadata, api.PartSamples, api.PartReference)
		}
		if _, dup := got[part]; dup {
			return models.Upload{}, api.Errorf(api.ErrInvalid, "the %q part appears twice", part)
		}
		data, err := readPart(p, max, part, limit)
		if err != nil {
			return models.Upload{}, err
		}
		if data == nil {
			data = []byte{}
		}
		got[part] = data
	}
	if _, ok := got[api.PartModel]; !ok {
		return models.Upload{}, api.Errorf(api.ErrInvalid, "the %q part (ONNX bytes) is missing", api.PartModel)
	}
	u.Model, u.Samples, u.Reference = got[api.PartModel], got[api.PartSamples], got[api.PartReference]
	if u.Meta, err = models.ParseMetadata(got[api.PartMetadata]); err != nil {
		return models.Upload{}, err
	}
	return u, nil
}

func readPart(p *multipart.Part, max int64, what string, bodyLimit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(p, max+1))
	if err != nil {
		return nil, multipartError(err, bodyLimit)
	}
	if int64(len(data)) > max {
		return nil, api.Errorf(api.ErrTooLarge, "%s is larger than %d bytes", what, max)
	}
	return data, nil
}

func multipartError(err error, limit int64) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return api.Errorf(api.ErrTooLarge, "request body exceeds %d bytes", limit)
	}
	return api.Errorf(api.ErrInvalid, "malformed multipart body: %v", err)
}

func (a *API) handleDeploy(w http.ResponseWriter, r *http.Request) {
	var req api.DeployRequest
	if err := decodeJSON(w, r, maxDeployBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Capture != nil && !a.opts.Models.Has(req.Model, req.Version) {
		writeError(w, api.Errorf(api.ErrNotFound, "model %s version %s is not uploaded", req.Model, req.Version))
		return
	}
	if err := a.setCapture(r.Context(), req.Model, req.Capture); err != nil {
		a.logIfInternal(err, "deploy: capture policy")
		writeError(w, err)
		return
	}
	res, err := a.opts.Fleet.Deploy(r.Context(), req)
	if err != nil {
		a.logIfInternal(err, "deploy")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// logIfInternal logs errors that are the control plane's fault (5xx).
func (a *API) logIfInternal(err error, op string) {
	if api.HTTPStatus(err) >= 500 {
		a.log.Error(op+" failed", "err", err)
	}
}
