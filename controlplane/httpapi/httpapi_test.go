package httpapi

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

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
			if code := api.HTTPStatus(err); code/100 != 4 {
				t.Fatalf("decode %T: status %d for %v", v, code, err)
			}
		}
	})
}

func TestFailLimiterBoundsMemory(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newFailLimiter(func() time.Time { return now }, 3, 1)
	for i := range maxLimitBuckets + 10 {
		l.fail("10.0." + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "." + time.Duration(i).String())
	}
	assert.LessOrEqual(t, len(l.buckets), maxLimitBuckets)
}

// TestServesExactlyTheRouteTable: the API has a handler for every route of
// api.Routes and none besides (Handler refuses to build otherwise).
func TestServesExactlyTheRouteTable(t *testing.T) {
	a := &API{}
	handlers := map[string]bool{}
	for key := range a.handlers() {
		handlers[key] = true
	}
	routes := map[string]bool{}
	for _, r := range api.Routes() {
		routes[r.Key()] = true
	}
	assert.Equal(t, routes, handlers, "api.Routes and API.handlers differ")
	_, err := a.Handler()
	assert.NoError(t, err)
}
