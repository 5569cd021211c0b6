package oip

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// scanSeeds are request bodies for TestScanRequest and FuzzScanRequest:
// the common form, and the forms the one-pass decoder leaves to the
// general one.
var scanSeeds = []string{
	`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`,
	` { "id" : "r-1" , "inputs" : [ { "name" : "x" , "shape" : [ 2 , 3 ] , "datatype" : "FP32" , "data" : [[1,2,3],[4,5,6]] } ] } `,
	`{"id":"a","parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"}]}`,
	`{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a\"b","日本"]},{"name":"b","shape":[],"datatype":"BOOL","data":[true]}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":{"a":[1,-0.5e-3,1E+2]}}]}`,
	`{"inputs":[],"outputs":[]}`, `{}`, `{"inputs":[{}]}`,
	// Left to the general decoder: escapes, nulls, unknown or repeated
	// fields, fractions in shapes, JSON errors, trailing data.
	`{"id":"\u0061","inputs":[]}`, `{"id":null,"inputs":[]}`, `{"inputs":null}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"inputs":[]}`,
	`{"inputs":[{"name":"x","shape":[1.0],"datatype":"FP32","data":[1]}]}`,
	`{"inputs":[{"name":"x","shape":[99999999999999999999],"datatype":"FP32","data":[1]}]}`,
	`{"inputs":[{"name":"x","dtype":"FP32"}]}`, `{"Inputs":[]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,,2]}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[01]}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.]}]}`,
	`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["\x"]}]}`,
	`{"inputs":[]} {}`, `{"inputs":[]`, `[]`, `null`, "{\"id\":\"\xff\",\"inputs\":[]}",
}

// TestScanRequest: the one-pass decoder takes the common form and gives
// what encoding/json gives; it leaves the rest to the general decoder.
func TestScanRequest(t *testing.T) {
	tests := []struct {
		body string
		ok   bool
	}{
		{scanSeeds[0], true}, {scanSeeds[1], true}, {scanSeeds[2], true}, {scanSeeds[3], true},
		{scanSeeds[4], true}, {scanSeeds[5], true}, {scanSeeds[6], true}, {scanSeeds[7], true},
		{scanSeeds[8], true},
	}
	for _, s := range scanSeeds[len(tests):] {
		tests = append(tests, struct {
			body string
			ok   bool
		}{s, false})
	}
	for _, tt := range tests {
		_, ok := scanRequest(bytes.TrimSpace([]byte(tt.body)))
		assert.Equal(t, tt.ok, ok, "scanRequest(%s) ok", tt.body)
		checkScanMatchesJSON(t, []byte(tt.body))
	}
	req, ok := scanRequest(bytes.TrimSpace([]byte(scanSeeds[1])))
	require.True(t, ok)
	assert.Equal(t, "r-1", req.ID)
	assert.Equal(t, []int64{2, 3}, req.Inputs[0].Shape)
	assert.Equal(t, "[[1,2,3],[4,5,6]]", string(req.Inputs[0].Data))
}

// checkScanMatchesJSON fails when scanRequest accepts body but the
// general decoder does not, or decodes it differently.
func checkScanMatchesJSON(t *testing.T, body []byte) {
	t.Helper()
	trimmed := bytes.TrimSpace(body)
	got, ok := scanRequest(trimmed)
	if !ok {
		return
	}
	want, herr := decodeRequestJSON(trimmed)
	if herr != nil {
		t.Fatalf("scanRequest(%q) accepted a body the general decoder refuses: %s", body, herr.msg)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("scanRequest(%q) = %+v, want %+v", body, got, want)
	}
}

// FuzzScanRequest: on every body the one-pass decoder accepts, the
// general decoder agrees, field for field.
func FuzzScanRequest(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkScanMatchesJSON(t, body)
	})
}

// FuzzDecodeFlatFP32: where the flat FP32 fast path decodes data, the
// general decoder decodes the same values.
func FuzzDecodeFlatFP32(f *testing.F) {
	for _, s := range []string{`[1,2,3]`, `[ -0.5e-3 , 1E+2,0]`, `[]`, `[1e39]`, `[1e-50,3]`, `[1,"NaN"]`, `[1,2]`, `[[1]]`} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, raw []byte, n uint8) {
		if !json.Valid(raw) {
			return // the handler decodes only valid JSON
		}
		got, ok := decodeFlatFP32(bytes.TrimSpace(raw), int64(n))
		if !ok {
			return
		}
		want, err := decodeNested(raw, skipSpace(raw, 0), 1, tensor.FP32, []int64{int64(n)}, int64(n))
		if err != nil {
			t.Fatalf("decodeFlatFP32(%s) = %v, but the general decoder says %v", raw, got, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeFlatFP32(%s) = %v, want %v", raw, got, want)
		}
	})
}

// TestManyTensorsAreRefusedBeforeDecoding: a body of empty tensors, up to
// the size limit, is refused with a reason by both decoders instead of
// becoming millions of tensors; at the bound it is decoded.
func TestManyTensorsAreRefusedBeforeDecoding(t *testing.T) {
	body := func(field string, n int, extra string) []byte {
		var b strings.Builder
		b.WriteString(`{` + extra + `"` + field + `":[`)
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`{}`)
		}
		b.WriteString(`]}`)
		return []byte(b.String())
	}
	for _, field := range []string{"inputs", "outputs"} {
		for _, extra := range []string{"", `"id":"x\u0041",`} { // an escape takes the general way
			_, herr := decodeRequest(body(field, MaxRequestTensors+1, extra))
			require.NotNil(t, herr, "%s %q", field, extra)
			assert.Contains(t, herr.msg, "at most 4096 of each", "%s %q", field, extra)

			req, herr := decodeRequest(body(field, MaxRequestTensors, extra))
			require.Nil(t, herr, "%s %q: %v", field, extra, herr)
			assert.Equal(t, MaxRequestTensors, len(req.Inputs)+len(req.Outputs), "%s %q", field, extra)
		}
	}
	allocs := testing.AllocsPerRun(1, func() { _, _ = decodeRequest(body("inputs", 500_000, "")) })
	assert.Less(t, allocs, 1000.0, "refusing half a million tensors allocated per tensor")
}
