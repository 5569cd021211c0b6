package oip

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// FuzzInferRequestJSON feeds arbitrary bodies to the infer route: the
// handler must never panic, must always answer JSON with an expected
// status, and must call the backend only with inputs that satisfy the
// model's schema (the test backend re-checks them).
func FuzzInferRequestJSON(f *testing.F) {
	seeds := []string{
		fraudReq(`[2,3]`, `[1,2,3,4,5,6]`),
		fraudReq(`[2,3]`, `[[1,2,3],[4,5,6]]`),
		fraudReq(`[1,3]`, `[1e39,0,0]`),
		fraudReq(`[1,3]`, `[666,0,0]`),
		fraudReq(`[1,3]`, `[555,0,0]`),
		fraudReq(`[2,3]`, `[[1,2],[3,4,5,6]]`),
		`{"id":"x","inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]},{"name":"b","shape":[1,2],"datatype":"FP32","data":[[3,4]]}]}`,
		`{"inputs":[{"name":"x","shape":[],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y"}]}`,
		`{"inputs":[{"name":"x","shape":[2,0],"datatype":"FP32","data":[[],[]]}]}`,
		`{"inputs":[{"name":"x","shape":[1,1,1],"datatype":"FP32","data":[[[-0.5e-3]]]}]}`,
		`{"inputs":[]}`, `{}`, `null`, `[]`, ``, `{"inputs":[{"name":"x"}]}`,
		`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,"2",null]}]} {}`,
		typedReq(`[1,2]`, `["a","日本"]`, `[true,false]`, `[0.5,1]`),
		typedReq(`[1.5,2]`, `["a\u0000b","x"]`, `[1,false]`, `[1e9,1]`),
		typedReq(`[[1],[2]]`, `[["a"],["b"]]`, `[[true],[false]]`, `[[1],[2]]`),
	}
	for i, s := range seeds {
		f.Add(s, uint8(i))
	}
	b := newTestBackend()
	h := NewHandler(b, HandlerOptions{MaxBodyBytes: 64 << 10, NewID: func() string { return "fuzz-id" }})
	models := []string{"fraud", "pair", "free", "typed"}

	f.Fuzz(func(t *testing.T, body string, m uint8) {
		model := models[int(m)%len(models)]
		before := b.calls.Load()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v2/models/"+model+"/infer", strings.NewReader(body)))
		called := b.calls.Load() != before

		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type = %q, want application/json", ct)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("response is not JSON: %q", rec.Body.String())
		}
		if v := b.Violations(); len(v) > 0 {
			t.Fatalf("backend got invalid inputs for %s: %v\nbody: %q", model, v, body)
		}
		var e ErrorResponse
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		switch {
		case rec.Code == http.StatusOK:
			if !called {
				t.Fatalf("200 without calling the backend")
			}
			var resp InferResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.ID == "" || resp.ModelName != model {
				t.Fatalf("bad 200 body %q (err %v)", rec.Body.String(), err)
			}
		case rec.Code == http.StatusBadRequest || rec.Code == http.StatusRequestEntityTooLarge:
			if e.Error == "" {
				t.Fatalf("%d without a message: %q", rec.Code, rec.Body.String())
			}
			if called && !strings.Contains(e.Error, "rejected by runtime") {
				t.Fatalf("request reached the backend and then got %d: %s", rec.Code, e.Error)
			}
		case rec.Code == http.StatusInternalServerError:
			if !called {
				t.Fatalf("500 without calling the backend: %s", e.Error)
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
		if called {
			// Independent check: what reached the backend decodes strictly.
			dec := json.NewDecoder(bytes.NewReader([]byte(body)))
			dec.DisallowUnknownFields()
			var req InferRequest
			if err := dec.Decode(&req); err != nil {
				t.Fatalf("backend called for a body that does not decode strictly: %v", err)
			}
		}
	})
}

// FuzzInferBinary feeds arbitrary binary-extension bodies (JSON part
// length, JSON, raw bytes): never a panic, a JSON error or a decodable
// answer, and the backend sees only valid inputs.
func FuzzInferBinary(f *testing.F) {
	head := `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}],"parameters":{"binary_data_output":true}}`
	f.Add([]byte(head+"\x00\x00\x80?\x00\x00\x00@\x00\x00@@"), uint16(len(head)), uint8(0))
	typed := `{"inputs":[{"name":"ids","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}},` +
		`{"name":"name","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}},` +
		`{"name":"flag","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":1}},` +
		`{"name":"half","shape":[1],"datatype":"FP16","parameters":{"binary_data_size":2}}]}`
	f.Add([]byte(typed+"\x07\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00hi\x01\x00\x3c"), uint16(len(typed)), uint8(3))
	b := newTestBackend()
	h := NewHandler(b, HandlerOptions{MaxBodyBytes: 64 << 10, NewID: func() string { return "fuzz-id" }})
	models := []string{"fraud", "pair", "free", "typed"}
	f.Fuzz(func(t *testing.T, body []byte, jsonLen uint16, m uint8) {
		req := httptest.NewRequest(http.MethodPost, "/v2/models/"+models[int(m)%len(models)]+"/infer", bytes.NewReader(body))
		req.Header.Set(HeaderContentLength, strconv.Itoa(int(jsonLen)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if v := b.Violations(); len(v) > 0 {
			t.Fatalf("backend got invalid inputs: %v", v)
		}
		if rec.Code != http.StatusOK {
			var e ErrorResponse
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("%d without a JSON error: %q", rec.Code, rec.Body.String())
			}
			return
		}
		resp, err := decodeResponse(rec.Body.Bytes(), rec.Header().Get(HeaderContentLength), "/infer")
		if err != nil {
			t.Fatalf("a 200 that does not decode: %v", err)
		}
		for _, o := range resp.Outputs {
			if _, err := o.Tensor(); err != nil {
				t.Fatalf("output %q does not decode: %v", o.Name, err)
			}
		}
	})
}
