package oip

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// feedbackBackend records the ids its inferences ran with and the labels
// it was given.
type feedbackBackend struct {
	*testBackend
	mu     sync.Mutex
	ids    []string
	labels []Label
}

func (b *feedbackBackend) Infer(ctx context.Context, name string, in []Tensor) (string, []Tensor, error) {
	b.mu.Lock()
	b.ids = append(b.ids, InferenceID(ctx))
	b.mu.Unlock()
	return b.testBackend.Infer(ctx, name, in)
}

func (b *feedbackBackend) Feedback(_ context.Context, _ string, labels []Label) (FeedbackResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.labels = append(b.labels, labels...)
	return FeedbackResult{Accepted: len(labels) - 1, Unknown: 1}, nil
}

func TestInferenceIDReachesBackend(t *testing.T) {
	fb := &feedbackBackend{testBackend: newTestBackend()}
	c := newTestServer(t, fb, nil)
	x, err := NewFP32Input("x", []int64{1, 3}, []float32{1, 2, 3})
	require.NoError(t, err)
	resp, err := c.Infer(t.Context(), "fraud", &InferRequest{ID: "abc", Inputs: []RequestInput{x}})
	require.NoError(t, err)
	resp2, err := c.Infer(t.Context(), "fraud", &InferRequest{Inputs: []RequestInput{x}})
	require.NoError(t, err)
	assert.Equal(t, []string{"abc", resp2.ID}, fb.ids, "the backend sees the id the client gets")
	assert.Equal(t, "abc", resp.ID)
	assert.Empty(t, InferenceID(context.Background()))
}

func TestFeedbackRoute(t *testing.T) {
	fb := &feedbackBackend{testBackend: newTestBackend()}
	c := newTestServer(t, fb, nil)
	one := int64(1)
	res, err := c.Feedback(t.Context(), "fraud", &FeedbackRequest{ID: "a", Label: &one})
	require.NoError(t, err)
	assert.Equal(t, FeedbackResult{Accepted: 0, Unknown: 1}, *res)
	res, err = c.Feedback(t.Context(), "fraud", &FeedbackRequest{Labels: []Label{{ID: "b", Row: 2, Label: &one}, {ID: "c", Label: &one}}})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Accepted)
	require.Len(t, fb.labels, 3)
	assert.Equal(t, Label{ID: "b", Row: 2, Label: &one}, fb.labels[1])

	for _, tc := range []struct {
		body, want string
		status     int
	}{
		{`{}`, "no labels", http.StatusBadRequest},
		{``, "empty", http.StatusBadRequest},
		{`{"id": "a"}`, "no label", http.StatusBadRequest},
		{`{"label": 1}`, "no id", http.StatusBadRequest},
		{`{"id": "a", "label": -1}`, "negative", http.StatusBadRequest},
		{`{"id": "a", "label": 1, "labels": [{"id": "b", "label": 0}]}`, "not both", http.StatusBadRequest},
		{`{"labels": [{"id": "b"}]}`, "labels[0] has no label", http.StatusBadRequest},
		{`{"labels": [{"id": "b", "label": 1, "row": -2}]}`, "row -2", http.StatusBadRequest},
		{`{"id": "a", "label": 1, "colour": "red"}`, "colour", http.StatusBadRequest},
		{`{"id": "a", "label": "yes"}`, "label", http.StatusBadRequest},
	} {
		r := send(t, c, "POST", "/v2/models/fraud/feedback", tc.body)
		assert.Equal(t, tc.status, r.status, "feedback(%s)", tc.body)
		assert.Contains(t, errorMessage(t, r), tc.want, "feedback(%s)", tc.body)
	}
	r := send(t, c, "POST", "/v2/models/nosuch/feedback", `{"id": "a", "label": 1}`)
	assert.Equal(t, http.StatusNotFound, r.status)
	r = send(t, c, "GET", "/v2/models/fraud/feedback", "")
	assert.Equal(t, http.StatusMethodNotAllowed, r.status)

	// A backend without the ability says so.
	plain := newTestServer(t, newTestBackend(), nil)
	r = send(t, plain, "POST", "/v2/models/fraud/feedback", `{"id": "a", "label": 1}`)
	assert.Equal(t, http.StatusNotFound, r.status)
	assert.Contains(t, errorMessage(t, r), "feedback")
}
