package httpapi

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Data is field data capture: capture policies (setting one also sends it
// to the model's devices) and datasets.
type Data interface {
	Policy(model string) (api.CaptureStatus, error)
	SetPolicy(ctx context.Context, model string, p api.CapturePolicy) (api.CaptureStatus, error)
	Build(ctx context.Context, model string, req api.DatasetRequest) (api.Dataset, error)
	List(model string) ([]api.Dataset, error)
	Get(model, ref string) (api.Dataset, error)
	Export(model, ref, format string, w io.Writer) error
	// UploadBase stores a base dataset's CSV; created is false when the
	// same rows were uploaded before.
	UploadBase(ctx context.Context, model, name string, r io.Reader) (b api.BaseDataset, created bool, err error)
	Bases(model string) ([]api.BaseDataset, error)
	Base(model, ref string) (api.BaseDataset, error)
	DeleteBase(model, ref string) (api.BaseDataset, error)
}

const maxDataBody = 64 << 10

// dataHandlers adds the capture and dataset routes' handlers to hs.
func (a *API) dataHandlers(hs map[string]http.Handler) {
	hs["GET "+api.PathModelCapture] = a.withData(a.handleGetCapture)
	hs["PUT "+api.PathModelCapture] = a.withData(a.handleSetCapture)
	hs["GET "+api.PathDatasets] = a.withData(a.handleListDatasets)
	hs["POST "+api.PathDatasets] = a.withData(a.handleBuildDataset)
	hs["GET "+api.PathDataset] = a.withData(a.handleGetDataset)
	hs["GET "+api.PathDatasetExport] = a.withData(a.handleExportDataset)
	hs["GET "+api.PathBaseDatasets] = a.withData(a.handleListBases)
	hs["POST "+api.PathBaseDatasets] = a.withData(a.handleUploadBase)
	hs["GET "+api.PathBaseDataset] = a.withData(a.handleGetBase)
	hs["DELETE "+api.PathBaseDataset] = a.withData(a.handleDeleteBase)
}

func (a *API) handleListBases(w http.ResponseWriter, r *http.Request) {
	list, err := a.opts.Data.Bases(r.PathValue("name"))
	if list == nil {
		list = []api.BaseDataset{}
	}
	a.answer(w, "list base datasets", http.StatusOK, list, err)
}

// handleUploadBase takes the CSV as the body (its size is bounded by the
// data service); ?name= names it.
func (a *API) handleUploadBase(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if len(name) > api.MaxBaseName {
		writeError(w, api.Errorf(api.ErrInvalid, "name: at most %d bytes", api.MaxBaseName))
		return
	}
	b, created, err := a.opts.Data.UploadBase(r.Context(), r.PathValue("name"), name, r.Body)
	code := http.StatusOK
	if err == nil {
		w.Header().Set("Location", api.Path(api.PathBaseDataset, b.Model, b.ID))
		if created {
			code = http.StatusCreated
		}
	}
	a.answer(w, "upload base dataset", code, b, err)
}

func (a *API) handleGetBase(w http.ResponseWriter, r *http.Request) {
	b, err := a.opts.Data.Base(r.PathValue("name"), r.PathValue("id"))
	a.answer(w, "get base dataset", http.StatusOK, b, err)
}

func (a *API) handleDeleteBase(w http.ResponseWriter, r *http.Request) {
	b, err := a.opts.Data.DeleteBase(r.PathValue("name"), r.PathValue("id"))
	a.answer(w, "delete base dataset", http.StatusOK, b, err)
}

// withData answers 503 when the control plane runs without the data
// service (API tests that do not need it).
func (a *API) withData(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.opts.Data == nil {
			writeError(w, api.Errorf(api.ErrUnavailable, "field data capture is not configured in this control plane"))
			return
		}
		h(w, r)
	})
}

// setCapture applies a deploy's or rollout's capture policy before it is
// issued.
func (a *API) setCapture(ctx context.Context, model string, p *api.CapturePolicy) error {
	if p == nil {
		return nil
	}
	if a.opts.Data == nil {
		return api.Errorf(api.ErrUnavailable, "field data capture is not configured in this control plane")
	}
	_, err := a.opts.Data.SetPolicy(ctx, model, *p)
	return err
}

func (a *API) handleGetCapture(w http.ResponseWriter, r *http.Request) {
	st, err := a.opts.Data.Policy(r.PathValue("name"))
	if err != nil {
		a.logIfInternal(err, "get capture policy")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) handleSetCapture(w http.ResponseWriter, r *http.Request) {
	var p api.CapturePolicy
	if err := decodeJSON(w, r, maxDataBody, &p); err != nil {
		writeError(w, err)
		return
	}
	st, err := a.opts.Data.SetPolicy(r.Context(), r.PathValue("name"), p)
	if err != nil {
		a.logIfInternal(err, "set capture policy")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) handleListDatasets(w http.ResponseWriter, r *http.Request) {
	list, err := a.opts.Data.List(r.PathValue("name"))
	if err != nil {
		a.logIfInternal(err, "list datasets")
		writeError(w, err)
		return
	}
	if list == nil {
		list = []api.Dataset{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) handleBuildDataset(w http.ResponseWriter, r *http.Request) {
	var req api.DatasetRequest
	if err := decodeJSON(w, r, maxDataBody, &req); err != nil {
		writeError(w, err)
		return
	}
	ds, err := a.opts.Data.Build(r.Context(), r.PathValue("name"), req)
	if err != nil {
		a.logIfInternal(err, "build dataset")
		writeError(w, err)
		return
	}
	w.Header().Set("Location", api.Path(api.PathDataset, ds.Model, strconv.Itoa(ds.Version)))
	writeJSON(w, http.StatusCreated, ds)
}

func (a *API) handleGetDataset(w http.ResponseWriter, r *http.Request) {
	ds, err := a.opts.Data.Get(r.PathValue("name"), r.PathValue("version"))
	if err != nil {
		a.logIfInternal(err, "get dataset")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ds)
}

func (a *API) handleExportDataset(w http.ResponseWriter, r *http.Request) {
	name, ref := r.PathValue("name"), r.PathValue("version")
	format := r.URL.Query().Get("format")
	if format == "" {
		format = api.FormatJSONL
	}
	if err := api.CheckFormat(format); err != nil {
		writeError(w, err)
		return
	}
	ds, err := a.opts.Data.Get(name, ref)
	if err != nil {
		a.logIfInternal(err, "export dataset")
		writeError(w, err)
		return
	}
	ct := "application/x-ndjson"
	switch format {
	case api.FormatCSV:
		ct = "text/csv; charset=utf-8"
	case api.FormatParquet:
		ct = "application/vnd.apache.parquet"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Disposition", `attachment; filename="`+strings.ReplaceAll(ds.Model, `"`, "")+"-"+strconv.Itoa(ds.Version)+"."+format+`"`)
	w.Header().Set("X-Dataset-Sha256", ds.SHA256)
	if err := a.opts.Data.Export(name, strconv.Itoa(ds.Version), format, w); err != nil {
		// Headers are out: the client sees a short body; the log says why.
		a.log.Error("dataset export failed", "model", name, "version", ds.Version, "err", err)
	}
}
