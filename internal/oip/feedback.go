package oip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// The feedback extension: ground-truth labels for earlier inferences,
// joined by the agent to the predictions it kept (accuracy monitoring).
//
//	POST /v2/models/{name}/feedback  {"id": "…", "label": 1}
//	                                 {"labels": [{"id": "…", "row": 2, "label": 0}, …]}
//
// row selects a row of a batched inference (default 0). Unknown (or
// expired) ids and repeated labels are counted in the answer, not errors.

// FeedbackExtension is the name reported in GET /v2 extensions.
const FeedbackExtension = "edgefleet_feedback"

// MaxFeedbackLabels bounds the labels of one feedback request.
const MaxFeedbackLabels = 10_000

// Label is the true class of one row of an earlier inference.
type Label struct {
	ID    string `json:"id"`
	Row   int    `json:"row,omitempty"`
	Label *int64 `json:"label"`
}

// FeedbackRequest is the single ({id, row, label}) or batch ({labels})
// form; exactly one is given.
type FeedbackRequest struct {
	ID     string  `json:"id,omitempty"`
	Row    int     `json:"row,omitempty"`
	Label  *int64  `json:"label,omitempty"`
	Labels []Label `json:"labels,omitempty"`
}

// FeedbackResult says what became of the labels.
type FeedbackResult struct {
	// Accepted labels were joined to a stored prediction.
	Accepted int `json:"accepted"`
	// Unknown labels name an id (or row) the agent does not hold: never
	// seen, evicted or expired.
	Unknown int `json:"unknown"`
	// Duplicate labels repeat one already joined; the first one counts.
	Duplicate int `json:"duplicate"`
}

// FeedbackBackend is the optional ability of a Backend to take labels.
type FeedbackBackend interface {
	// Feedback joins labels (validated: id set, row >= 0, label set) to the
	// predictions of model name. ErrModelNotFound maps to 404.
	Feedback(ctx context.Context, name string, labels []Label) (FeedbackResult, error)
}

type inferenceIDKey struct{}

// WithInferenceID returns ctx carrying the id of the inference being run;
// the handler sets it before calling Backend.Infer, and in-process callers
// may set it to label their inferences later.
func WithInferenceID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, inferenceIDKey{}, id)
}

// InferenceID returns the inference id carried by ctx, or "".
func InferenceID(ctx context.Context) string {
	id, _ := ctx.Value(inferenceIDKey{}).(string)
	return id
}

// feedbackLabels validates a decoded feedback request and returns its labels.
func feedbackLabels(req *FeedbackRequest) ([]Label, *httpError) {
	single := req.ID != "" || req.Label != nil || req.Row != 0
	switch {
	case single && req.Labels != nil:
		return nil, badRequest("give either id and label, or labels, not both")
	case !single && len(req.Labels) == 0:
		return nil, badRequest(`request has no labels; send {"id": "…", "label": 1} or {"labels": [{"id": "…", "label": 1}]}`)
	case len(req.Labels) > MaxFeedbackLabels:
		return nil, badRequest("%d labels in one request; at most %d are allowed", len(req.Labels), MaxFeedbackLabels)
	}
	labels := req.Labels
	if single {
		labels = []Label{{ID: req.ID, Row: req.Row, Label: req.Label}}
	}
	for i, l := range labels {
		where := fmt.Sprintf("labels[%d]", i)
		if single {
			where = "request"
		}
		switch {
		case l.ID == "":
			return nil, badRequest("%s has no id", where)
		case len(l.ID) > MaxIDBytes:
			return nil, badRequest("%s: id is %d bytes long; at most %d are allowed", where, len(l.ID), MaxIDBytes)
		case l.Row < 0:
			return nil, badRequest("%s: row %d is negative", where, l.Row)
		case l.Label == nil:
			return nil, badRequest("%s has no label", where)
		case *l.Label < 0:
			return nil, badRequest("%s: label %d is negative; labels are class indexes (0 or 1 for a binary model)", where, *l.Label)
		}
	}
	return labels, nil
}

func (h *handler) feedback(w http.ResponseWriter, r *http.Request) {
	fb, ok := h.b.(FeedbackBackend)
	if !ok {
		writeError(w, http.StatusNotFound, "this server does not take feedback")
		return
	}
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
	var req FeedbackRequest
	if herr := decodeStrict(w, r, h.opts.MaxBodyBytes, &req); herr != nil {
		writeError(w, herr.status, herr.msg)
		return
	}
	labels, herr := feedbackLabels(&req)
	if herr != nil {
		writeError(w, herr.status, herr.msg)
		return
	}
	res, err := fb.Feedback(r.Context(), info.Name, labels)
	switch {
	case errors.Is(err, ErrModelNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		h.log.Warn("feedback failed", "model", info.Name, "err", err)
		writeError(w, http.StatusInternalServerError, "feedback failed: "+err.Error())
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// decodeStrict reads at most limit bytes of r's body into v, refusing
// unknown fields and trailing data.
func decodeStrict(w http.ResponseWriter, r *http.Request, limit int64, v any) *httpError {
	body, err := readBody(w, r, limit)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return &httpError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds the limit of %d bytes", limit)}
		}
		return badRequest("reading request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("invalid JSON: unexpected data after the request object")
	}
	return nil
}

// Feedback posts ground-truth labels for earlier inferences of model.
func (c *Client) Feedback(ctx context.Context, model string, req *FeedbackRequest) (*FeedbackResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("oip: encode feedback: %w", err)
	}
	var res FeedbackResult
	if err := c.do(ctx, http.MethodPost, "/v2/models/"+url.PathEscape(model)+"/feedback", body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
