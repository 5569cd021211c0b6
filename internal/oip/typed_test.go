package oip

import (
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

func typedReq(ids, names, flags, half string) string {
	return `{"inputs":[` +
		`{"name":"ids","shape":[2],"datatype":"INT64","data":` + ids + `},` +
		`{"name":"name","shape":[2],"datatype":"BYTES","data":` + names + `},` +
		`{"name":"flag","shape":[2],"datatype":"BOOL","data":` + flags + `},` +
		`{"name":"half","shape":[2],"datatype":"FP16","data":` + half + `}]}`
}

func TestTypedInferenceRoundTrip(t *testing.T) {
	b := newTestBackend()
	c := newTestServer(t, b, nil)
	r := send(t, c, "POST", "/v2/models/typed/infer", typedReq(`[9007199254740993,-9223372036854775808]`, `["日本","a\"b"]`, `[true,false]`, `[0.1,65504]`))
	require.Equal(t, 200, r.status, r.body)
	var resp InferResponse
	require.NoError(t, json.Unmarshal([]byte(r.body), &resp))
	require.Len(t, resp.Outputs, 5)
	// Integers beyond 2^53 survive: they are written as integers, not floats.
	assert.JSONEq(t, `[9007199254740993,-9223372036854775808]`, string(resp.Outputs[0].Data))
	ids, err := resp.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, []int64{9007199254740993, math.MinInt64}, ids.Data)
	names, err := resp.Outputs[1].Tensor()
	require.NoError(t, err)
	assert.Equal(t, []string{"日本", `a"b`}, names.Data)
	assert.JSONEq(t, `[true,false]`, string(resp.Outputs[2].Data))
	// FP16 values are rounded to the type on input and written as numbers.
	assert.Equal(t, "FP16", resp.Outputs[3].Datatype)
	assert.JSONEq(t, `[0.099975586,65504]`, string(resp.Outputs[3].Data))
	// The class map carries its class labels.
	probs := resp.Outputs[4]
	assert.Equal(t, []int64{2, 2}, probs.Shape)
	assert.Equal(t, KindClassMap, probs.Parameters[ParamKind])
	assert.Equal(t, []any{float64(0), float64(1)}, probs.Parameters[ParamClasses])
	assert.Empty(t, b.Violations())

	// Model metadata describes the class map too.
	md, err := c.Metadata(t.Context(), "typed")
	require.NoError(t, err)
	require.Len(t, md.Outputs, 5)
	assert.Equal(t, KindClassMap, md.Outputs[4].Parameters[ParamKind])
	assert.Nil(t, md.Outputs[0].Parameters)

	// Go clients build typed inputs with NewInput.
	var inputs []RequestInput
	for _, tt := range []Tensor{
		{Name: "ids", Shape: []int64{1}, Data: []int64{7}},
		{Name: "name", Shape: []int64{1}, Data: []string{"x"}},
		{Name: "flag", Shape: []int64{1}, Data: []bool{true}},
		{Name: "half", Datatype: tensor.FP16, Shape: []int64{1}, Data: []float32{0.5}},
	} {
		in, err := NewInput(tt)
		require.NoError(t, err)
		inputs = append(inputs, in)
	}
	res, err := c.Infer(t.Context(), "typed", &InferRequest{Inputs: inputs, Outputs: []RequestOutput{{Name: "half"}, {Name: "name"}}})
	require.NoError(t, err)
	require.Len(t, res.Outputs, 2)
	h, err := res.Outputs[0].Tensor()
	require.NoError(t, err)
	assert.Equal(t, tensor.FP16, h.Datatype)
	assert.Equal(t, []float32{0.5}, h.Data)
}

func TestTypedBadRequests(t *testing.T) {
	c := newTestServer(t, newTestBackend(), nil)
	tests := []struct {
		name, body, want string
	}{
		{"fraction for INT64", typedReq(`[1.5,2]`, `["a","b"]`, `[true,false]`, `[1,2]`), `input "ids": data value 0 (1.5) is not an integer; INT64 data must be whole numbers`},
		{"exponent for INT64", typedReq(`[1e3,2]`, `["a","b"]`, `[true,false]`, `[1,2]`), "is not an integer"},
		{"INT64 overflow", typedReq(`[9223372036854775808,2]`, `["a","b"]`, `[true,false]`, `[1,2]`), "is out of INT64 range"},
		{"number for BYTES", typedReq(`[1,2]`, `["a",3]`, `[true,false]`, `[1,2]`), `input "name": data value 1 (3) is a number; BYTES data must contain only strings`},
		{"number for BOOL", typedReq(`[1,2]`, `["a","b"]`, `[1,0]`, `[1,2]`), `input "flag": data value 0 (1) is a number; BOOL data must contain only booleans`},
		{"FP16 overflow", typedReq(`[1,2]`, `["a","b"]`, `[true,false]`, `[1,70000]`), `input "half": data value 1 (70000) is beyond the FP16 range`},
		{"string for FP16", typedReq(`[1,2]`, `["a","b"]`, `[true,false]`, `[1,"2"]`), `is a string; FP16 data must contain only numbers`},
	}
	for _, tt := range tests {
		r := send(t, c, "POST", "/v2/models/typed/infer", tt.body)
		assert.Equal(t, 400, r.status, "%s: %s", tt.name, r.body)
		assert.Contains(t, errorMessage(t, r), tt.want, tt.name)
	}
}

func TestUnsignedRanges(t *testing.T) {
	for _, tt := range []struct {
		d        tensor.Datatype
		raw      string
		ok       bool
		wantData any
	}{
		{tensor.Uint8, `[0,255]`, true, []uint8{0, 255}},
		{tensor.Uint8, `[256]`, false, nil},
		{tensor.Uint8, `[-1]`, false, nil},
		{tensor.Int8, `[-128,127]`, true, []int8{-128, 127}},
		{tensor.Int8, `[128]`, false, nil},
		{tensor.Uint64, `[18446744073709551615]`, true, []uint64{math.MaxUint64}},
		{tensor.Uint16, `[65535]`, true, []uint16{65535}},
		{tensor.Int32, `[-2147483649]`, false, nil},
		{tensor.BF16, `[1e38]`, true, []float32{tensor.RoundBF16(1e38)}},
		{tensor.FP64, `[1e308]`, true, []float64{1e308}},
		{tensor.FP32, `[1e39]`, false, nil},
	} {
		var shape []int64
		var vals []json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(tt.raw), &vals))
		shape = []int64{int64(len(vals))}
		got, err := decodeData([]byte(tt.raw), tt.d, shape, shape[0])
		if !tt.ok {
			assert.Error(t, err, "decode %s %s", tt.d, tt.raw)
			continue
		}
		require.NoError(t, err, "decode %s %s", tt.d, tt.raw)
		assert.Equal(t, tt.wantData, got, "decode %s %s", tt.d, tt.raw)
	}
}

func TestBatchLimitOnlyOnDynamicFirstDimension(t *testing.T) {
	c := newTestServer(t, newTestBackend(), func(o *HandlerOptions) { o.MaxBatch = 10; o.MaxBodyBytes = 1 << 20 })
	data, err := json.Marshal(make([]float32, 2000))
	require.NoError(t, err)
	r := send(t, c, "POST", "/v2/models/fixed/infer", `{"inputs":[{"name":"x","shape":[2000,1],"datatype":"FP32","data":`+string(data)+`}]}`)
	assert.Equal(t, 200, r.status, "a fixed first dimension of 2000 is what the model takes: %s", r.body)
	r = send(t, c, "POST", "/v2/models/fraud/infer", fraudReq(`[11,3]`, string(mustJSON(t, make([]float32, 33)))))
	assert.Equal(t, 400, r.status)
	assert.Contains(t, errorMessage(t, r), "batch size 11 (shape[0]) exceeds the limit of 10")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func TestBinaryEncodingRoundTrips(t *testing.T) {
	for _, d := range tensor.Datatypes() {
		z, err := tensor.Zeros("x", d, []int64{3})
		require.NoError(t, err)
		switch v := z.Data.(type) {
		case []string:
			v[1] = "日本\x00"
		case []bool:
			v[2] = true
		case []float32:
			v[1] = 0.5
		case []int8:
			v[0] = -3
		case []uint64:
			v[2] = math.MaxUint64
		}
		raw := appendBinary(nil, &z)
		assert.EqualValues(t, binarySize(&z), len(raw), string(d))
		got, err := decodeBinary(raw, d, 3)
		require.NoError(t, err, d)
		assert.Equal(t, z.Data, got, string(d))
		if d != tensor.Bytes {
			_, err = decodeBinary(raw[:len(raw)-1], d, 3)
			assert.Error(t, err, "short %s", d)
		}
	}
	_, err := decodeBinary([]byte{2}, tensor.Bool, 1)
	assert.ErrorContains(t, err, "BOOL element 0 is 2")
	_, err = decodeBinary([]byte{5, 0, 0, 0, 'a'}, tensor.Bytes, 1)
	assert.ErrorContains(t, err, "says 5 bytes, 1 are left")
}

// TestInflightBytesAreBounded: a request whose body does not fit the
// in-flight budget next to the ones being handled gets 503 with
// Retry-After before its body is read; once they finish it goes through.
func TestInflightBytesAreBounded(t *testing.T) {
	b := newTestBackend()
	b.gate = make(chan struct{})
	c := newTestServer(t, b, func(o *HandlerOptions) { o.MaxBodyBytes = 1000; o.MaxInflightBytes = 1000 })
	body := fraudReq(`[1,3]`, `[1,2,3]`)
	body += strings.Repeat(" ", 600-len(body)) // 600 bytes: one fits, two do not

	first := make(chan rawResponse)
	go func() { first <- send(t, c, "POST", "/v2/models/fraud/infer", body) }()
	require.Eventually(t, func() bool { return b.calls.Load() == 1 }, 10*time.Second, time.Millisecond)

	req, err := http.NewRequestWithContext(t.Context(), "POST", c.BaseURL+"/v2/models/fraud/infer", strings.NewReader(body))
	require.NoError(t, err)
	resp, err := c.HTTP.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.EqualValues(t, 1, b.calls.Load(), "the second request never reached the backend")

	close(b.gate)
	assert.Equal(t, 200, (<-first).status)
	assert.Equal(t, 200, send(t, c, "POST", "/v2/models/fraud/infer", body).status, "the budget was released")
}

func TestUnknownFieldWalker(t *testing.T) {
	tests := []struct {
		body string
		want string // "" when every field is known
	}{
		{`{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["}{\"","]"]}],"parameters":{"anything":{"goes":[1,{"x":2}]}}}`, ""},
		{`{"id":"a","inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":false}}]}`, ""},
		{`{"inputs":[{"name":"x","data":[1],"dtype":"FP32"}]}`, "dtype"},
		{`{"inputs":[],"outputs":[{"name":"y","shape":[1]}]}`, "shape"},
		{` { "inputs" : [ ] , "extra" : null } `, "extra"},
		{`{"inputs":[{"name":"\u0078","data":[[1,2],[3,4]]}],"model":"m"}`, "model"},
	}
	for _, tt := range tests {
		name, ok := unknownField([]byte(tt.body))
		assert.Equal(t, tt.want == "", ok, tt.body)
		assert.Equal(t, tt.want, name, tt.body)
	}
}

// TestInputDataAliasesTheBody: decoding a request does not copy the
// inputs' data; it stays a view of the body until it is decoded.
func TestInputDataAliasesTheBody(t *testing.T) {
	body := []byte(fraudReq(`[1,3]`, `[1,2,3]`))
	req, herr := decodeRequest(body)
	require.Nil(t, herr)
	data := req.Inputs[0].Data
	require.Equal(t, "[1,2,3]", string(data))
	off := strings.Index(string(body), "[1,2,3]")
	assert.Same(t, &body[off], &data[0], "no copy")
}
