package soak

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/client"
)

// Drops are the control plane's own loss counters, summed over its
// lifetimes (each restart starts them at zero): they say where a report
// missing from the ledger went.
type Drops struct {
	// BrokerSubscription counts messages the embedded broker dropped
	// because an inline subscription's queue was full (acknowledged to
	// the device all the same); BrokerClient messages to a device whose
	// outbound queue was full; Ingest device payloads the control plane
	// refused (undecodable, oversized, unknown device ...).
	BrokerSubscription uint64 `json:"broker_subscription_dropped"`
	BrokerClient       uint64 `json:"broker_client_dropped"`
	Ingest             uint64 `json:"ingest_dropped"`
	// IngestBy breaks Ingest down by the series' labels (the payload's
	// kind and the reason), e.g. `kind="status",reason="stale"`: a stale
	// resend is expected, an undecodable payload is not.
	IngestBy map[string]uint64 `json:"ingest_dropped_by,omitempty"`
	// Reads counts the readings summed; Errors the readings that failed.
	Reads  int `json:"reads"`
	Errors int `json:"errors"`
}

// dropSeries maps the Prometheus series to the Drops field they add to.
var dropSeries = map[string]func(*Drops) *uint64{
	"edgefleet_broker_subscription_dropped_total": func(d *Drops) *uint64 { return &d.BrokerSubscription },
	"edgefleet_broker_client_dropped_total":       func(d *Drops) *uint64 { return &d.BrokerClient },
	"edgefleet_mqtt_payloads_dropped_total":       func(d *Drops) *uint64 { return &d.Ingest },
}

// readDrops adds the running control plane's counters to the soak's
// total; it is called right before the control plane stops.
func (s *soak) readDrops(ctx context.Context) {
	srv := s.fleet.Server()
	if srv == nil {
		return
	}
	var d Drops
	err := func() error {
		c, err := client.New(srv.APIURL(), client.Options{Token: s.fleet.APIToken()})
		if err != nil {
			return err
		}
		defer c.CloseIdleConnections()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		text, err := c.Metrics(cctx)
		if err != nil {
			return err
		}
		return parseDrops(text, &d)
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.drops.Errors++
		return
	}
	s.drops.Reads++
	s.drops.BrokerSubscription += d.BrokerSubscription
	s.drops.BrokerClient += d.BrokerClient
	s.drops.Ingest += d.Ingest
	for k, v := range d.IngestBy {
		if s.drops.IngestBy == nil {
			s.drops.IngestBy = map[string]uint64{}
		}
		s.drops.IngestBy[k] += v
	}
}

// parseDrops sums the drop series of a Prometheus text exposition (every
// label set of a series) into d.
func parseDrops(text string, d *Drops) error {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		base, _, _ := strings.Cut(name, "{")
		field, ok := dropSeries[base]
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return fmt.Errorf("metrics: %s %q: %w", name, value, err)
		}
		*field(d) += uint64(v)
		if base == "edgefleet_mqtt_payloads_dropped_total" && v > 0 {
			if d.IngestBy == nil {
				d.IngestBy = map[string]uint64{}
			}
			labels := strings.TrimSuffix(strings.TrimPrefix(name[len(base):], "{"), "}")
			d.IngestBy[labels] += uint64(v)
		}
	}
	return sc.Err()
}

// dropWatch reads the running control plane's drop counters now and then;
// when the broker's subscription drops grow (reports acknowledged and lost
// today), it writes a goroutine profile into the report directory, so the
// report says where the control plane's ingest was stuck. At most
// maxDumps profiles per soak.
type dropWatch struct {
	srv  any    // the control plane the last reading was of
	last uint64 // its subscription drops then
	// dumps are the profiles written.
	dumps []string
}

const maxDumps = 3

// watchDrops is called by the sampler.
func (s *soak) watchDrops(ctx context.Context, w *dropWatch) {
	srv := s.fleet.Server()
	if srv == nil || s.opts.ReportDir == "" || len(w.dumps) >= maxDumps {
		return
	}
	c, err := client.New(srv.APIURL(), client.Options{Token: s.fleet.APIToken()})
	if err != nil {
		return
	}
	defer c.CloseIdleConnections()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	text, err := c.Metrics(cctx)
	if err != nil {
		return
	}
	var d Drops
	if parseDrops(text, &d) != nil {
		return
	}
	if any(srv) != w.srv {
		w.srv, w.last = srv, 0
	}
	if d.BrokerSubscription <= w.last {
		return
	}
	w.last = d.BrokerSubscription
	name := filepath.Join(s.opts.ReportDir, fmt.Sprintf("goroutines-at-%.0fs.txt", s.since()))
	if err := os.MkdirAll(s.opts.ReportDir, 0o755); err != nil {
		return
	}
	f, err := os.Create(name)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "the embedded broker had dropped %d acknowledged messages from full subscription queues\n\n", d.BrokerSubscription)
	_ = pprof.Lookup("goroutine").WriteTo(f, 1)
	w.dumps = append(w.dumps, name)
	s.progress("broker subscription drops at %d: goroutine profile in %s", d.BrokerSubscription, name)
}
