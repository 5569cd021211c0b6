package controlplane

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// FuzzAPIJSONBodies feeds arbitrary bytes to the strict decoder of every
// JSON request body: it never panics, and every refusal is a 4xx error
// that names the problem.
func FuzzAPIJSONBodies(f *testing.F) {
	for _, seed := range []string{
		`{"id":"dev-1","labels":{"site":"berlin"}}`,
		`{"model":"fraud","version":"v1","devices":["a","b"],"selector":"site=x"}`,
		`{"name":"ci","role":"operator"}`,
		`{"device_id":"cam-1","labels":{"a":"b"},"ttl":"1h"}`,
		`{"token":"efe_00"}`,
		`{"id":1}`, `[]`, `null`, `{"id":"a"} {"id":"b"}`, `{"unknown":true}`, `{"labels":{"a":[1]}}`, "",
		"{\"id\":\"\xff\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		targets := []any{
			&api.RegisterDeviceRequest{}, &api.DeployRequest{}, &api.CreateTokenRequest{}, &api.EnrollmentRequest{}, &api.EnrollRequest{},
		}
		for _, v := range targets {
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			err := decodeJSON(httptest.NewRecorder(), r, 4<<10, v)
			if err == nil {
				continue
			}
			var oe *api.Error
			if !errors.As(err, &oe) || oe.Msg == "" {
				t.Fatalf("decode %T: error %v is not a user-facing error", v, err)
			}
			if code := httpStatus(err); code/100 != 4 {
				t.Fatalf("decode %T: status %d for %v", v, code, err)
			}
		}
	})
}
