package oip

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

func TestBinaryRoundTripWithClient(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	inputs := []Tensor{
		{Name: "ids", Shape: []int64{3}, Data: []int64{-1, 0, 1 << 60}},
		{Name: "name", Shape: []int64{3}, Data: []string{"a\x00b", "\xff", ""}}, // any bytes, not only UTF-8
		{Name: "flag", Shape: []int64{3}, Data: []bool{true, false, true}},
		{Name: "half", Datatype: tensor.FP16, Shape: []int64{3}, Data: []float32{0.5, -2, 65504}},
	}
	resp, err := c.InferBinary(t.Context(), "typed", inputs)
	require.NoError(t, err)
	require.Len(t, resp.Outputs, 5)
	for i, in := range inputs {
		out := resp.Outputs[i]
		assert.Empty(t, out.Data, "%s came as binary", out.Name)
		got, err := out.Tensor()
		require.NoError(t, err)
		assert.Equal(t, in.Data, got.Data, in.Name)
		assert.Equal(t, in.DT(), got.DT(), in.Name)
	}
	probs, err := resp.Outputs[4].FP32()
	require.NoError(t, err)
	assert.Equal(t, []float32{0.25, 0.75, 0.25, 0.75, 0.25, 0.75}, probs)

	// Only named outputs binary: the others stay JSON.
	resp, err = c.InferBinary(t.Context(), "typed", inputs, "ids")
	require.NoError(t, err)
	require.Len(t, resp.Outputs, 1)
	ids, err := resp.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, inputs[0].Data, ids.Data)
}

func TestBinaryMixedWithJSONInputs(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	// a as binary, b as JSON; the response as JSON.
	head := `{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},` +
		`{"name":"b","shape":[1,2],"datatype":"FP32","data":[1,2]}]}`
	a := Tensor{Name: "a", Shape: []int64{1, 2}, Data: []float32{10, 20}}
	body := appendBinary([]byte(head), &a)
	req, err := http.NewRequestWithContext(t.Context(), "POST", c.BaseURL+"/v2/models/pair/infer", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set(HeaderContentLength, strconv.Itoa(len(head)))
	resp, err := c.HTTP.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	require.Equal(t, 200, resp.StatusCode, string(b))
	assert.Empty(t, resp.Header.Get(HeaderContentLength), "no binary output was asked for")
	var out InferResponse
	require.NoError(t, json.Unmarshal(b, &out))
	assert.JSONEq(t, `[9,18]`, string(out.Outputs[0].Data))
}

func TestBinaryBadRequests(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	post := func(head string, bin []byte, jsonLen string) (int, string) {
		req, err := http.NewRequestWithContext(t.Context(), "POST", c.BaseURL+"/v2/models/fraud/infer", bytes.NewReader(append([]byte(head), bin...)))
		require.NoError(t, err)
		req.Header.Set(HeaderContentLength, jsonLen)
		resp, err := c.HTTP.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var e ErrorResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
		return resp.StatusCode, e.Error
	}
	head := func(size string) string {
		return `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":` + size + `}}]}`
	}
	twelve := make([]byte, 12)
	tests := []struct {
		name    string
		head    string
		bin     []byte
		jsonLen string
		want    string
	}{
		{"header not a number", head("12"), twelve, "x", "header Inference-Header-Content-Length is \"x\""},
		{"header beyond body", head("12"), twelve, "99999", "want the length of the JSON part"},
		{"size beyond data", head("16"), twelve, "", "parameter binary_data_size is 16 but only 12 bytes"},
		{"leftover bytes", head("8"), twelve, "", "the binary part has 4 bytes no input's binary_data_size accounts for"},
		{"size not the shape's", head("8"), twelve[:8], "", "binary data is 8 bytes; 3 FP32 elements take 12"},
		{"negative size", head("-1"), nil, "", "want a byte count"},
		{"data and binary", `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12},"data":[1,2,3]}]}`, twelve, "",
			"has both JSON data and binary data"},
	}
	for _, tt := range tests {
		jl := tt.jsonLen
		if jl == "" {
			jl = strconv.Itoa(len(tt.head))
		}
		code, msg := post(tt.head, tt.bin, jl)
		assert.Equal(t, 400, code, tt.name)
		assert.Contains(t, msg, tt.want, tt.name)
	}
}
