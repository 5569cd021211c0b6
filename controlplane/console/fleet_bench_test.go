package console

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// BenchmarkFleetPage100k times the fleet page's handler (filter, count,
// facets, one page of rows, render) over 100,000 devices held by a fake
// registry: the console's own cost at that size, without the store.
//
//	go test ./controlplane/console -run '^$' -bench BenchmarkFleetPage100k
func BenchmarkFleetPage100k(b *testing.B) {
	fl := &fakeFleet{devs: make([]api.Device, 100_000)}
	for i := range fl.devs {
		fl.devs[i] = api.Device{
			ID: fmt.Sprintf("dev-%06d", i), Online: i%7 != 0, LastSeen: time.Unix(1_700_000_000, 0),
			Labels:   map[string]string{"site": fmt.Sprintf("site-%02d", i%40), "hw": []string{"arm64", "x86"}[i%2], "group": fmt.Sprintf("g%03d", i%500)},
			Reported: map[string]*api.ModelStatus{"fraud": {State: api.ModelActive, ActiveVersion: []string{"1.0.0", "2.0.0"}[i%2]}},
		}
	}
	c, err := New(Options{API: &fakeAPI{}, Fleet: fl, Models: &fakeModels{}, Rollouts: &fakeRollouts{}, Metrics: &fakeMetrics{}, Audit: &fakeAudit{}})
	require.NoError(b, err)
	req := &request{token: api.APIToken{Name: "bench", Role: api.RoleOperator}}
	for _, q := range []string{"", "?page=1500", "?selector=hw%3Darm64,group!%3Dg001&site=site-02&state=online&version=fraud%402.0.0", "?q=dev-0999"} {
		b.Run("query="+q, func(b *testing.B) {
			for b.Loop() {
				w := httptest.NewRecorder()
				c.fleetPage(w, httptest.NewRequest(http.MethodGet, "/ui/fleet"+q, nil), req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/page")
		})
	}
}
