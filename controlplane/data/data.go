// Package data is the control plane's side of field data capture: the
// capture policy of each model (with its hashing salt) that desired states
// carry to devices, the ingest of captured batches (stored once per
// (device, stream, batch), then acknowledged), the captured rows, versioned
// content-addressed datasets built from them with a validation report, and
// retention, and base datasets users upload (CSV) to join captured ones
// in retraining. Imported by controlplane.
package data

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Defaults of Options.
const (
	DefaultRowRetention  = 30 * 24 * time.Hour
	DefaultDatasetsKept  = 20
	DefaultSweepInterval = time.Hour
)

// Bus publishes acknowledgements to devices (QoS 1, never retained).
type Bus interface {
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
}

// Devices tells which devices are enrolled and their labels (the site).
type Devices interface {
	Exists(id string) bool
	Labels(id string) map[string]string
}

// Models gives a model version's reference statistics (validation ranges
// and column names).
type Models interface {
	Reference(model, version string) ([]*efpb.FeatureStats, bool)
}

// Options configure a Service. Fields without a documented default are
// required.
type Options struct {
	// KV is the store namespace of policies, rows, batch names and
	// dataset records.
	KV      *store.KV
	Bus     Bus
	Scheme  topics.Scheme
	Devices Devices
	Models  Models
	Ingest  *ingest.Checker
	// DatasetDir holds dataset files, one per sha256 (content-addressed).
	DatasetDir string
	// RowRetention is how long captured rows (and the batch names that
	// deduplicate uploads) are kept; default DefaultRowRetention.
	RowRetention time.Duration
	// DatasetsKept is how many dataset versions are kept per model (the
	// newest); default DefaultDatasetsKept.
	DatasetsKept int
	// SweepInterval is how often Run applies retention; default
	// DefaultSweepInterval.
	SweepInterval time.Duration
	// Schemas checks uploaded base datasets; nil refuses uploads.
	Schemas Schemas
	// MaxBaseBytes bounds an uploaded base dataset's CSV; default
	// DefaultMaxBaseBytes.
	MaxBaseBytes int64
	// BasesKept is how many base datasets a model may have (an upload
	// beyond is refused until one is deleted); default DefaultBasesKept.
	BasesKept  int
	Clock      func() time.Time
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Service holds captured data. Its methods are safe for concurrent use.
type Service struct {
	opts Options
	log  *slog.Logger
	// mu serialises writes of policies and datasets (version numbers);
	// ingest relies on badger transactions. A leaf lock.
	mu sync.Mutex

	rowsStored  prometheus.Counter
	batchesDup  prometheus.Counter
	batchesSeen prometheus.Counter
}

// New returns the data service over o.KV.
func New(o Options) (*Service, error) {
	if o.KV == nil || o.Bus == nil || o.Devices == nil || o.Models == nil || o.Ingest == nil || o.DatasetDir == "" {
		return nil, errors.New("data: KV, Bus, Devices, Models, Ingest and DatasetDir are required")
	}
	if o.RowRetention <= 0 {
		o.RowRetention = DefaultRowRetention
	}
	if o.DatasetsKept <= 0 {
		o.DatasetsKept = DefaultDatasetsKept
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	if o.MaxBaseBytes <= 0 {
		o.MaxBaseBytes = DefaultMaxBaseBytes
	}
	if o.BasesKept <= 0 {
		o.BasesKept = DefaultBasesKept
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if err := os.MkdirAll(o.DatasetDir, 0o700); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	s := &Service{
		opts: o,
		log:  o.Logger.With("component", "data"),
		rowsStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_capture_rows_stored_total",
			Help: "Captured rows and labels stored from device uploads.",
		}),
		batchesSeen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_capture_batches_total",
			Help: "Capture batches stored and acknowledged (first arrival of each name).",
		}),
		batchesDup: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_capture_batches_duplicate_total",
			Help: "Capture batches that arrived again after they were stored (acknowledged again, not stored).",
		}),
	}
	o.Registerer.MustRegister(s.rowsStored, s.batchesSeen, s.batchesDup)
	return s, nil
}

// Run applies retention every SweepInterval until ctx ends.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		if err := s.Sweep(); err != nil {
			s.log.Error("capture retention sweep failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Store keys (under Options.KV):
//
//	policy/<model>                         policyRecord (JSON)
//	row/<model>/<device>/<inference id>/<row 8 hex>   storedRow (JSON)
//	label/<model>/<device>/<inference id>/<row 8 hex> a label whose row has not arrived
//	seen/<device>/<stream 16 hex>/<batch 16 hex>      when the batch was stored (unix ms)
//	dropped/<device>                       the device's cumulative rows_dropped
//	dataset/<model>/<version 8 digits>     api.Dataset (JSON)
const (
	prefixPolicy  = "policy/"
	prefixRow     = "row/"
	prefixLabel   = "label/"
	prefixSeen    = "seen/"
	prefixDropped = "dropped/"
	prefixDataset = "dataset/"
)

// policyRecord is a model's stored policy; Salt is never shown.
type policyRecord struct {
	Policy  api.CapturePolicy `json:"policy"`
	Salt    []byte            `json:"salt,omitempty"`
	Updated time.Time         `json:"updated"`
}

// SetPolicy stores model's capture policy; the caller re-issues desired
// states so devices get it. The first policy that hashes an input makes
// the model's salt; it is kept across later policies.
func (s *Service) SetPolicy(model string, p api.CapturePolicy) (api.CaptureStatus, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.CaptureStatus{}, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	if err := p.Check(); err != nil {
		return api.CaptureStatus{}, err
	}
	p.DropInputs, p.HashInputs = sortedUnique(p.DropInputs), sortedUnique(p.HashInputs)
	s.mu.Lock()
	defer s.mu.Unlock()
	var rec policyRecord
	if err := s.opts.KV.GetJSON(prefixPolicy+model, &rec); err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.CaptureStatus{}, fmt.Errorf("data: read policy: %w", err)
	}
	rec.Policy, rec.Updated = p, s.opts.Clock().UTC()
	if len(p.HashInputs) > 0 && len(rec.Salt) == 0 {
		rec.Salt = make([]byte, 32)
		if _, err := rand.Read(rec.Salt); err != nil {
			return api.CaptureStatus{}, fmt.Errorf("data: salt: %w", err)
		}
	}
	if err := s.opts.KV.SetJSON(prefixPolicy+model, rec, true); err != nil {
		return api.CaptureStatus{}, fmt.Errorf("data: store policy: %w", err)
	}
	s.log.Info("capture policy set", "model", model, "sample_rate", p.SampleRate, "labelled_only", p.LabelledOnly)
	return s.status(model, rec)
}

func sortedUnique(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := slices.Clone(ss)
	slices.Sort(out)
	return slices.Compact(out)
}

// Policy returns model's capture status (policy off when none was set).
func (s *Service) Policy(model string) (api.CaptureStatus, error) {
	if err := topics.ValidModelName(model); err != nil {
		return api.CaptureStatus{}, api.Errorf(api.ErrInvalid, "model: %v", err)
	}
	var rec policyRecord
	if err := s.opts.KV.GetJSON(prefixPolicy+model, &rec); err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.CaptureStatus{}, fmt.Errorf("data: read policy: %w", err)
	}
	return s.status(model, rec)
}

func (s *Service) status(model string, rec policyRecord) (api.CaptureStatus, error) {
	st := api.CaptureStatus{Model: model, Policy: rec.Policy, Enabled: rec.Policy.SampleRate > 0, Salted: len(rec.Salt) > 0, UpdatedAt: rec.Updated}
	devices := map[string]bool{}
	err := s.opts.KV.Scan(prefixRow+model+"/", func(key string, val []byte) error {
		st.Rows++
		dev, _, _ := cutKey(key[len(prefixRow+model+"/"):])
		devices[dev] = true
		if r, err := decodeStored(val); err == nil && r.Row.GetLabelled() {
			st.Labelled++
		}
		return nil
	})
	if err != nil {
		return api.CaptureStatus{}, fmt.Errorf("data: count rows: %w", err)
	}
	st.Devices = len(devices)
	err = s.opts.KV.Scan(prefixDropped, func(key string, val []byte) error {
		if devices[key[len(prefixDropped):]] && len(val) == 8 {
			st.DroppedOnDevices += beUint64(val)
		}
		return nil
	})
	return st, err
}

// CapturePolicy is the policy desired states carry for model (nil: off).
// A store error is logged and counts as off: issuing must not fail on it.
func (s *Service) CapturePolicy(model string) *efpb.CapturePolicy {
	var rec policyRecord
	if err := s.opts.KV.GetJSON(prefixPolicy+model, &rec); err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("read capture policy failed; issuing without it", "model", model, "err", err)
		}
		return nil
	}
	p := rec.Policy
	if p.SampleRate <= 0 {
		return nil
	}
	return &efpb.CapturePolicy{SampleRate: p.SampleRate, MaxRowsPerHour: p.MaxRowsPerHour, MaxBytesPerHour: p.MaxBytesPerHour,
		DropInputs: p.DropInputs, HashInputs: p.HashInputs, HashSalt: rec.Salt, LabelledOnly: p.LabelledOnly}
}

func (s *Service) datasetPath(sum string) string {
	return filepath.Join(s.opts.DatasetDir, sum+".jsonl")
}
