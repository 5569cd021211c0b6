// Package controlplane is edgefleet's control plane as a library: New checks
// Options, Run builds the components in dependency order (store, keys, audit
// log, device registry, MQTT bus, model registry, fleet, monitoring, rollout
// engine, REST API, web console), wires them, serves until its context ends
// and stops them in reverse order (docs/architecture.md). Imported by
// controlplane/cli (serve), fleet-sim/... and internal/fleettest.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgefleet/edgefleet/controlplane/acks"
	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/controlplane/brokerauth"
	"github.com/edgefleet/edgefleet/controlplane/bus"
	"github.com/edgefleet/edgefleet/controlplane/console"
	"github.com/edgefleet/edgefleet/controlplane/data"
	"github.com/edgefleet/edgefleet/controlplane/fleet"
	"github.com/edgefleet/edgefleet/controlplane/httpapi"
	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/controlplane/retrain"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
	"github.com/edgefleet/edgefleet/controlplane/sites"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
)

// Defaults for zero Options fields.
const (
	DefaultAPIListen   = "127.0.0.1:8080"
	DefaultMQTTListen  = broker.DefaultAddr
	DefaultManifestTTL = 90 * 24 * time.Hour
	DefaultDesiredTTL  = fleet.DefaultDesiredTTL
	// DefaultMQTTClientID is the control plane's client id on an external broker.
	DefaultMQTTClientID = "edgefleet-control-plane"
	// DefaultRolloutInterval is how often rollouts are evaluated when
	// nothing else (a device status event) triggers it.
	DefaultRolloutInterval = time.Second

	renewInterval   = time.Hour
	shutdownTimeout = 5 * time.Second

	// keyPublishedTrust (store namespace "cp") holds the newest trust
	// bundle envelope this control plane published: the next start's
	// bundle chain must continue from it.
	keyPublishedTrust = "trust/published"
)

// Options configure a Server. The zero value of every field but DataDir is
// a documented default.
type Options struct {
	// DataDir holds keys/, db/ (badger) and blobs/ (model files). Required.
	DataDir string
	// APIListen is the REST API address; default DefaultAPIListen. Tests use
	// "127.0.0.1:0".
	APIListen string
	// MQTTListen is the embedded broker's address; default DefaultMQTTListen.
	// Ignored when MQTTURL is set.
	MQTTListen string
	// MQTTURL, if set, is an external broker (tcp://host:1883) used instead
	// of the embedded one; the control plane connects as Username/Password.
	// A comma-separated list names the nodes of a clustered broker (NATS):
	// the control plane fails over between them (mqttc.Options.BrokerURL).
	MQTTURL  string
	Username string
	Password string
	// MQTTPersistentSession, with MQTTURL, keeps the control plane's
	// session on the broker while it is away (mqttc.Options.
	// PersistentSession): on a NATS cluster, what devices sent while the
	// control plane failed over to another node is delivered when it is
	// back. Its client id (Username) must then be used by nothing else.
	MQTTPersistentSession bool
	// ChunkBatchWindow is how long fetch requests for a version are
	// collected before its chunks are published, so that devices starting
	// a download together share one publish of each chunk: the chunks go
	// out once no new request came for ChunkBatchWindow, and at the latest
	// ChunkBatchMax after the first (a round a deploy expects: ChunkBatchMax
	// after the last new device, at most 15 × ChunkBatchMax after the
	// first). Defaults models.DefaultChunkBatchWindow
	// and models.DefaultChunkBatchMax; a negative window publishes at once.
	ChunkBatchWindow time.Duration
	ChunkBatchMax    time.Duration
	// IngestConnections, with MQTTURL, receives telemetry over this many
	// extra connections sharing one MQTT shared subscription
	// ($share/edgefleet-ingest/...), so a busy fleet's reports are decoded
	// and aggregated in parallel. Needs a broker with shared subscriptions
	// (mosquitto 2, EMQX). 0 or 1: the main connection receives telemetry.
	IngestConnections int
	// PublicMQTTURL is the broker URL devices are told at registration;
	// default the embedded broker's URL, or MQTTURL.
	PublicMQTTURL string
	// TopicPrefix is the MQTT topic prefix; default topics.DefaultPrefix.
	TopicPrefix string
	// ORTLibrary is the onnxruntime library path ("" searches the usual
	// places, see infer.FindLibrary). Ignored when Runtime is set.
	ORTLibrary string
	// Runtime is a shared onnxruntime handle (fleet-sim, tests); nil makes
	// the server open its own. The server never closes a given Runtime.
	Runtime *infer.Runtime
	// ManifestTTL is how long a signed manifest is valid; default
	// DefaultManifestTTL. Manifests are re-signed before they expire.
	ManifestTTL time.Duration
	// DesiredTTL is how long a signed desired state is valid; default
	// DefaultDesiredTTL. Desired states are re-issued before they expire.
	DesiredTTL time.Duration
	// InlineManifestMax is the largest signed manifest a desired state
	// carries to the device (no subscription to the manifest topic then);
	// every device's retained desired state grows by it. Default
	// fleet.DefaultInlineManifestMax (8 KiB); negative: never.
	InlineManifestMax int
	// MaxModelSize bounds uploaded models; default
	// transfer.DefaultLimits().MaxModelSize (256 MiB). Agents enforce their
	// own limit, so raising it here alone does not help.
	MaxModelSize uint64
	// MQTTTLS, if set, makes the embedded broker serve TLS (mutual TLS when
	// it requires client certificates: see broker.TLSConfig). Devices are
	// then told a tls:// broker URL.
	MQTTTLS *tls.Config
	// MQTTSubscriptionQueue bounds the queue of each of the control
	// plane's subscriptions on the embedded broker; default
	// broker.DefaultSubscriptionQueue. A report dropped on a full queue is
	// not lost: it is never acknowledged, and the agent resends it. No
	// effect with MQTTURL.
	MQTTSubscriptionQueue int
	// MQTTInMemory also serves the embedded broker inside the process
	// (DialBroker): fleet-sim connects thousands of in-process agents that
	// way, past the process's descriptor limit. No effect with MQTTURL.
	MQTTInMemory bool
	// Clock is the time source; default time.Now.
	Clock func() time.Time
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// RolloutInterval is how often rollouts are evaluated besides after
	// each device status event; default DefaultRolloutInterval.
	RolloutInterval time.Duration
	// RolloutMetrics feeds the rollouts' quality gates (accuracy, drift);
	// nil means the control plane's own monitoring figures.
	RolloutMetrics rollout.Metrics
	// Monitor configures model monitoring: alert rules, the retrain
	// webhook, history retention.
	Monitor monitor.Config
	// Data configures field data capture: retention of captured rows and
	// datasets.
	Data DataConfig
	// Retrain configures retrain jobs: the external trainers policies may
	// name.
	Retrain RetrainConfig
	// Console configures the web console under /ui/ (sessions, live
	// updates); the zero value takes its documented defaults.
	Console console.Config
	// OnInitialToken is called once, during Run, when the admin API token
	// was generated (the first start on an empty DataDir). The token is
	// never shown again; only its hash is stored.
	OnInitialToken func(token string)
}

// Server is one control plane. Create it with New and run it with Run.
type Server struct {
	opts     Options
	log      *slog.Logger
	scheme   topics.Scheme
	keys     *keys.Set
	metrics  *prometheus.Registry
	ready    chan struct{}
	started  atomic.Bool
	runStart time.Time // when New ran: devices not seen since have an unknown presence

	// c holds the components; Run sets it before ready is closed, and it
	// is read-only afterwards (the close orders the write before every
	// reader that waited for Ready).
	c *components

	// addrMu guards apiURL, brokerURL and embedded, which tests and
	// metrics may read before Ready.
	addrMu    sync.Mutex
	apiURL    string
	brokerURL string
	embedded  *broker.Broker // nil with an external broker
}

// components are what Run builds, in this order: each takes the ones
// before it.
type components struct {
	db       *store.DB
	audit    *audit.Log
	ingest   *ingest.Checker
	registry *fleet.Registry
	bus      bus.Bus
	acks     *acks.Acker
	models   *models.Registry
	data     *data.Service // field data capture and datasets
	fleet    *fleet.Fleet
	sites    *sites.Service
	monitor  *monitor.Service
	rollouts *rollout.Engine
	retrain  *retrain.Service // retrain policies and jobs
	api      *httpapi.API
	console  *console.Console
	// kick wakes the rollout loop after a device status event.
	kick chan struct{}
}

// New checks opts, applies defaults and loads (or, on an empty DataDir,
// generates) the fleet's keys. It starts nothing; Run does.
func New(opts Options) (*Server, error) {
	if opts.DataDir == "" {
		return nil, errors.New("controlplane: DataDir is required")
	}
	if opts.APIListen == "" {
		opts.APIListen = DefaultAPIListen
	}
	if opts.MQTTListen == "" {
		opts.MQTTListen = DefaultMQTTListen
	}
	if opts.ManifestTTL == 0 {
		opts.ManifestTTL = DefaultManifestTTL
	}
	if opts.DesiredTTL == 0 {
		opts.DesiredTTL = DefaultDesiredTTL
	}
	if opts.ManifestTTL < time.Hour || opts.DesiredTTL < time.Hour {
		return nil, fmt.Errorf("controlplane: ManifestTTL %v and DesiredTTL %v must be at least an hour", opts.ManifestTTL, opts.DesiredTTL)
	}
	if opts.MaxModelSize == 0 {
		opts.MaxModelSize = transfer.DefaultLimits().MaxModelSize
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.RolloutInterval <= 0 {
		opts.RolloutInterval = DefaultRolloutInterval
	}
	// Metrics are stored in one-minute buckets and a window counts the
	// buckets that start inside it: a shorter window would see the current
	// bucket only during its first seconds.
	if w := opts.Monitor.Rules.Window; w > 0 && w < monitor.DefaultRawBucket {
		return nil, fmt.Errorf("controlplane: alert window %v is shorter than the %v resolution of the stored metrics; use at least %v",
			w, monitor.DefaultRawBucket, monitor.DefaultRawBucket)
	}
	if opts.MQTTURL == "" && (opts.Username != "" || opts.MQTTPersistentSession) {
		return nil, errors.New("controlplane: Username and MQTTPersistentSession are for an external broker (MQTTURL); the embedded broker needs neither")
	}
	switch n := opts.IngestConnections; {
	case n < 0 || n > bus.MaxIngestConnections:
		return nil, fmt.Errorf("controlplane: IngestConnections %d: want 0 to %d", n, bus.MaxIngestConnections)
	case n > 1 && opts.MQTTURL == "":
		return nil, errors.New("controlplane: IngestConnections is for an external broker (MQTTURL); the embedded broker delivers in process")
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = topics.DefaultPrefix
	}
	scheme := topics.Scheme{Prefix: opts.TopicPrefix}
	if err := scheme.Validate(); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
		opts.Logger = log
	}
	if err := os.MkdirAll(filepath.Join(opts.DataDir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	ks, err := keys.Load(filepath.Join(opts.DataDir, "keys"), opts.Clock(), log.With("component", "keys"))
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Server{
		opts:     opts,
		log:      log.With("component", "controlplane"),
		scheme:   scheme,
		keys:     ks,
		metrics:  prometheus.NewRegistry(),
		ready:    make(chan struct{}),
		runStart: opts.Clock(),
	}
	s.metrics.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_subscription_dropped_total",
			Help: "Device messages the embedded broker dropped because a control-plane subscription's queue was full (ingest falling behind).",
		}, func() float64 { return s.brokerCount(func(b *broker.Broker) uint64 { return b.Dropped() }) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_client_dropped_total",
			Help: "Messages the embedded broker dropped instead of sending them to a device whose outbound queue was full.",
		}, func() float64 { return s.brokerCount(func(b *broker.Broker) uint64 { return b.ClientDropped() }) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_clients_stalled_total",
			Help: "Device connections the embedded broker closed because a write to them accepted no byte for the write-stall time (a device that stopped reading).",
		}, func() float64 { return s.brokerCount(func(b *broker.Broker) uint64 { return b.Stalled() }) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_packets_received_total",
			Help: "MQTT packets of any type the embedded broker received from network clients (not the control plane's own publishes).",
		}, func() float64 {
			return s.brokerCount(func(b *broker.Broker) uint64 { r, _ := b.Packets(); return r })
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_packets_sent_total",
			Help: "MQTT packets of any type the embedded broker sent to network clients.",
		}, func() float64 {
			return s.brokerCount(func(b *broker.Broker) uint64 { _, w := b.Packets(); return w })
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_log_lines_suppressed_total",
			Help: "Log lines about a client (refused packets, protocol errors) the embedded broker did not write: over a few a minute per client.",
		}, func() float64 { return s.brokerCount(func(b *broker.Broker) uint64 { return b.LogsSuppressed() }) }),
	)
	return s, nil
}

// embeddedBroker is the embedded broker once started (nil before, and
// with an external broker).
func (s *Server) embeddedBroker() *broker.Broker {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.embedded
}

// brokerCount reads a drop counter of the embedded broker (0 with an
// external broker, or before it started).
func (s *Server) brokerCount(count func(*broker.Broker) uint64) float64 {
	b := s.embeddedBroker()
	if b == nil {
		return 0
	}
	return float64(count(b))
}

// Ready is closed once the server serves: API listening, broker up,
// retained state published, subscriptions made.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// APIURL is the REST API's base URL (http://host:port), once Ready.
func (s *Server) APIURL() string {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.apiURL
}

// DialBroker connects to the embedded broker in memory (Options.MQTTInMemory);
// the connection then speaks MQTT with device credentials like a TCP one.
func (s *Server) DialBroker(ctx context.Context) (net.Conn, error) {
	b := s.embeddedBroker()
	if b == nil {
		return nil, errors.New("controlplane: dial broker: no embedded broker (yet)")
	}
	return b.DialInMemory(ctx)
}

// BrokerInMemoryConns is the number of in-memory broker connection ends
// still open (two per connection), for leak checks.
func (s *Server) BrokerInMemoryConns() int64 {
	b := s.embeddedBroker()
	if b == nil {
		return 0
	}
	return b.InMemoryConns()
}

// BrokerURL is the URL devices use to reach the broker (PublicMQTTURL, or
// the embedded broker's bound address), once Ready.
func (s *Server) BrokerURL() string {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.brokerURL
}

// RootPublicKeyPEM is the fleet's root public key, the one key devices are
// provisioned with.
func (s *Server) RootPublicKeyPEM() string { return s.keys.RootPEM }

// Run builds the components, starts everything, serves until ctx ends,
// then shuts down in reverse order and waits for every goroutine it
// started. It returns nil after a shutdown caused by ctx, or the error
// that stopped it. Run may be called once.
func (s *Server) Run(ctx context.Context) (err error) {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("controlplane: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Resources are released in reverse order of acquisition.
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	c, err := s.build(ctx, &closers)
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	// Retained state and subscriptions go in before the embedded broker's
	// listener opens, so the first device to connect finds everything.
	if err := s.publishRetained(ctx, c); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := c.db.Namespace("cp").SetSync(keyPublishedTrust, s.keys.BundleBytes); err != nil {
		return fmt.Errorf("controlplane: record the published trust bundle: %w", err)
	}
	if err := s.subscribe(ctx, c); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if b := s.embeddedBroker(); b != nil {
		if err := b.Start(); err != nil {
			return fmt.Errorf("controlplane: %w", err)
		}
	}

	// Shutdown: stop the API, cancel the workers, wait for them, then
	// close the bus, flush monitoring, close the runtime and the store
	// (closers run in reverse).
	var wg sync.WaitGroup // every goroutine Run starts
	closers = append(closers, wg.Wait, cancel)
	wg.Go(func() { c.models.Run(ctx) })
	wg.Go(func() { s.renewLoop(ctx, c) })
	wg.Go(func() { s.rolloutLoop(ctx, c) })
	wg.Go(func() { c.monitor.Run(ctx) })
	wg.Go(func() { c.data.Run(ctx) })
	wg.Go(func() { c.retrain.Run(ctx) })
	wg.Go(func() { c.sites.Run(ctx) })
	wg.Go(func() { c.acks.Run(ctx) })
	wg.Go(func() { c.fleet.Run(ctx) })
	if eb, ok := c.bus.(*bus.External); ok {
		wg.Go(func() { s.republishOnReconnect(ctx, c, eb) })
	}

	handler, err := c.handler()
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	ln, err := net.Listen("tcp", s.opts.APIListen)
	if err != nil {
		return fmt.Errorf("controlplane: api listen %s: %w", s.opts.APIListen, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	closers = append(closers, func() {
		sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer scancel()
		c.api.StopWaiting()
		if err := srv.Shutdown(sctx); err != nil {
			s.log.Warn("api shutdown", "err", err)
			_ = srv.Close()
		}
	})

	s.addrMu.Lock()
	s.apiURL = "http://" + ln.Addr().String()
	s.brokerURL = s.opts.PublicMQTTURL
	if s.brokerURL == "" {
		s.brokerURL = c.bus.URL()
	}
	s.addrMu.Unlock()

	// The initial token is handed out before the API answers anything: a
	// client that sees /healthz can rely on the token file being written.
	if tok := c.api.InitialToken(); tok != "" && s.opts.OnInitialToken != nil {
		s.opts.OnInitialToken(tok)
	}
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	})
	s.c = c
	close(s.ready)
	total, _ := c.registry.Counts()
	s.log.Info("control plane ready", "api", s.APIURL(), "broker", c.bus.URL(), "devices", total, "model_versions", c.models.Count())

	select {
	case <-ctx.Done():
		s.log.Info("control plane shutting down")
		return nil
	case err := <-serveErr:
		return fmt.Errorf("controlplane: api: %w", err)
	}
}

// build opens the store and builds every component in dependency order;
// closers receives what must be released, in order of acquisition.
func (s *Server) build(ctx context.Context, closers *[]func()) (*components, error) {
	o := s.opts
	c := &components{kick: make(chan struct{}, 1)}
	var err error
	if c.db, err = store.Open(store.Options{Dir: filepath.Join(o.DataDir, "db"), Profile: store.ProfileServer, Logger: o.Logger}); err != nil {
		return nil, err
	}
	*closers = append(*closers, func() {
		if err := c.db.Close(); err != nil {
			s.log.Error("close store", "err", err)
		}
	})
	kv := c.db.Namespace("cp")
	if err := s.checkTrustChain(kv); err != nil {
		return nil, err
	}
	if c.audit, err = audit.Open(c.db.Namespace("audit"), o.Clock); err != nil {
		return nil, err
	}
	c.ingest = ingest.New(s.scheme, s.metrics, o.Logger)
	if c.registry, err = fleet.OpenRegistryWith(kv, fleet.RegistryOptions{Clock: o.Clock, Bcrypt: o.MQTTURL != ""}); err != nil {
		return nil, err
	}

	rt, rtErr := o.Runtime, error(nil)
	if rt == nil {
		if rt, rtErr = infer.NewRuntime(o.ORTLibrary, o.Logger); rtErr != nil {
			s.log.Warn("onnxruntime unavailable: model uploads will be refused", "err", rtErr)
		} else {
			*closers = append(*closers, func() { _ = rt.Close() })
		}
	}

	if c.bus, err = s.openBus(ctx, c.registry); err != nil {
		return nil, err
	}
	// Reports are acknowledged once the store synced what holds them.
	if c.acks, err = acks.New(acks.Options{Bus: c.bus, Scheme: s.scheme, Sync: c.db.Sync, Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger}); err != nil {
		_ = c.bus.Close()
		return nil, err
	}
	c.models, err = models.New(models.Options{
		KV: kv, BlobDir: filepath.Join(o.DataDir, "blobs"), Keys: s.keys,
		Runtime: rt, RuntimeErr: rtErr, Bus: c.bus, Scheme: s.scheme, Devices: c.registry, Ingest: c.ingest,
		ManifestTTL: o.ManifestTTL, MaxModelSize: o.MaxModelSize,
		ChunkBatchWindow: o.ChunkBatchWindow, ChunkBatchMax: o.ChunkBatchMax,
		Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger,
	})
	if err != nil {
		_ = c.bus.Close()
		return nil, err
	}
	c.data, err = data.New(data.Options{
		KV: c.db.Namespace("data"), Bus: c.bus, Scheme: s.scheme, Devices: c.registry, Models: c.models,
		Ingest: c.ingest, DatasetDir: filepath.Join(o.DataDir, "datasets"), RowRetention: o.Data.RowRetention,
		DatasetsKept: o.Data.DatasetsKept, Schemas: dataSchemas{c.models}, Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger,
	})
	if err != nil {
		_ = c.bus.Close()
		return nil, err
	}
	c.fleet = fleet.New(fleet.Options{
		KV: kv, Sync: c.db.Sync, Registry: c.registry, Keys: s.keys, Bus: c.bus, Scheme: s.scheme,
		Models: c.models, Ingest: c.ingest, Capture: c.data, BrokerURL: o.PublicMQTTURL, DesiredTTL: o.DesiredTTL,
		InlineManifestMax: o.InlineManifestMax, Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger, Acker: c.acks,
	})
	c.sites, err = sites.New(sites.Options{
		KV: c.db.Namespace("sites"), Keys: s.keys, Bus: c.bus, Scheme: s.scheme, Devices: c.registry,
		TTL: o.DesiredTTL, Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger,
		ModelSize: func(model, version string) (uint64, bool) {
			mv, err := c.models.Get(model, version)
			return mv.Size, err == nil
		},
	})
	if err != nil {
		_ = c.bus.Close()
		return nil, err
	}
	alerts := newAlertFeed(s.log)
	c.monitor, err = monitor.NewService(monitor.ServiceOptions{
		Config: o.Monitor, KV: c.db.Namespace("monitor"), Models: c.models, Devices: c.registry,
		Audit: c.audit, Retrainer: alerts, Ingest: c.ingest, Acker: c.acks, Registerer: s.metrics, Clock: o.Clock, Logger: o.Logger,
	})
	if err != nil {
		_ = c.bus.Close()
		return nil, err
	}
	// After the bus stopped delivering (closers run in reverse).
	*closers = append(*closers, func() {
		c.fleet.Flush() // status events (their acknowledgements are not sent: the devices resend)
		if err := c.monitor.Flush(); err != nil {
			s.log.Error("monitoring flush at shutdown failed", "err", err)
		}
	})
	// Waits for running handlers, which use the store.
	*closers = append(*closers, func() {
		if err := c.bus.Close(); err != nil {
			s.log.Error("close broker", "err", err)
		}
	})
	gates := o.RolloutMetrics
	if gates == nil {
		gates = c.monitor.Aggregator()
	}
	c.rollouts, err = rollout.New(rollout.Options{
		KV: c.db.Namespace("rollouts"), Issuer: c.fleet, Fleet: rolloutFleet{c.registry, s.runStart},
		Models: c.models, Metrics: gates, Audit: c.audit, Clock: o.Clock, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	c.retrain, err = retrain.New(retrain.Options{
		KV: c.db.Namespace("retrain"), Datasets: c.data, Models: retrainModels{c.models},
		Fleet: retrainFleet{c.registry, c.models}, Rollouts: c.rollouts, Audit: c.audit, Runtime: rt,
		WorkDir: filepath.Join(o.DataDir, "retrain"), Trainers: o.Retrain.Trainers, Alerts: alerts.ch, SiteLabel: o.Monitor.SiteLabel,
		Clock: o.Clock, Registerer: s.metrics, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	ao := httpapi.Options{
		Fleet: c.fleet, Models: c.models, Rollouts: c.rollouts, Metrics: c.monitor.Aggregator(), Audit: c.audit,
		Data: dataAPI{c.data, c.fleet}, Retrain: retrainAPI{c.retrain, c.models}, Sites: c.sites, KV: kv, Prometheus: promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}), Registerer: s.metrics,
		Clock: o.Clock, Logger: o.Logger,
	}
	if ao.Broker, ao.NoBroker, err = s.brokerAuth(c.registry); err != nil {
		return nil, err
	}
	c.api, err = httpapi.New(ao)
	if err != nil {
		return nil, err
	}
	c.console, err = console.New(console.Options{
		Config: o.Console, API: c.api, Fleet: c.registry, Models: c.models, Rollouts: c.rollouts,
		Metrics: c.monitor.Aggregator(), Audit: c.audit, Retrain: retrainAPI{c.retrain, c.models}, Rules: o.Monitor.Rules,
		Clock: o.Clock, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// brokerAuth is what `edgefleet broker sync` fetches for an external
// mosquitto, or why there is nothing to fetch.
func (s *Server) brokerAuth(reg *fleet.Registry) (httpapi.Broker, string, error) {
	o := s.opts
	switch {
	case o.MQTTURL == "":
		return nil, "the control plane runs the embedded broker, which checks device passwords itself: broker sync is for an external mosquitto", nil
	case o.Username == "":
		return nil, "the control plane logs in to the external broker without a username (serve --mqtt-username), which mosquitto's ACL cannot name", nil
	}
	ingest := 0
	if o.IngestConnections > 1 { // see subscribe: one is the main connection
		ingest = o.IngestConnections
	}
	src, err := brokerauth.New(brokerauth.Options{
		Credentials: reg, Scheme: s.scheme, ControlUser: o.Username, ControlPassword: o.Password,
		IngestConnections: ingest, Logger: o.Logger,
	})
	if err != nil {
		return nil, "", err
	}
	if n := reg.BrokerCredentials().Legacy; n > 0 {
		s.log.Warn("devices with passwords from before mosquitto hashes were kept cannot log in to an external mosquitto kept by broker sync: enroll them again",
			"devices", n)
	}
	return src, "", nil
}

// checkTrustChain refuses a bundle chain that does not continue from the
// newest bundle this control plane published before: every agent that
// accepted that one would refuse what is published now.
func (s *Server) checkTrustChain(kv *store.KV) error {
	prev, err := kv.Get(keyPublishedTrust)
	switch {
	case errors.Is(err, store.ErrNotFound):
		prev = nil
	case err != nil:
		return fmt.Errorf("read the last published trust bundle: %w", err)
	}
	if err := s.keys.ContinuesFrom(prev, s.opts.Clock()); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	return nil
}

// handler is everything the API listener serves: the REST API, the web
// console under console.Prefix, and a redirect from / to the console.
func (c *components) handler() (http.Handler, error) {
	apiHandler, err := c.api.Handler()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", apiHandler)
	mux.Handle(console.Prefix, c.console.Handler())
	mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix, http.StatusFound))
	return mux, nil
}

// openBus creates the embedded broker (not listening yet; Run starts it
// once the retained state is in) or connects to the external one.
func (s *Server) openBus(ctx context.Context, auth broker.Authenticator) (bus.Bus, error) {
	o := s.opts
	if o.MQTTURL == "" {
		b, err := broker.New(broker.Options{Addr: o.MQTTListen, Scheme: s.scheme, Auth: auth, TLS: o.MQTTTLS, InMemory: o.MQTTInMemory,
			SubscriptionQueue: o.MQTTSubscriptionQueue, Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		s.addrMu.Lock()
		s.embedded = b
		s.addrMu.Unlock()
		return bus.NewEmbedded(b), nil
	}
	eb, err := bus.Dial(ctx, s.externalOptions())
	if err != nil {
		return nil, err
	}
	return eb, nil
}

// externalOptions are the client options of the control plane's
// connection(s) to an external broker.
func (s *Server) externalOptions() mqttc.Options {
	clientID := s.opts.Username
	if clientID == "" {
		clientID = DefaultMQTTClientID
	}
	return mqttc.Options{
		BrokerURL: s.opts.MQTTURL,
		ClientID:  clientID,
		Username:  s.opts.Username,
		Password:  s.opts.Password,
		QueueSize: 4096,
		// The main connection only: the ingest connections (bus.AddIngest)
		// are made with clean sessions.
		PersistentSession: s.opts.MQTTPersistentSession,
		Logger:            s.opts.Logger,
	}
}

// publishRetained (re)publishes everything devices expect to find
// retained: the trust bundle chain, every manifest and every device's
// newest desired state. The embedded broker keeps retained messages in
// memory only, so this runs at every start, and after every reconnect to an
// external broker.
//
// The order matters to agents that stay connected (external broker): the
// chain goes first, so a document signed by a new key never reaches an agent
// before the bundle that lists the key; then what a rotated-out key signed
// (or what expires soon) is re-signed, so that no agent that follows the
// chain is handed a document it must refuse; then the documents.
func (s *Server) publishRetained(ctx context.Context, c *components) error {
	if err := c.bus.Publish(ctx, s.scheme.Trust(), s.keys.ChainBytes, true); err != nil {
		return fmt.Errorf("publish trust bundle chain: %w", err)
	}
	if err := s.renew(ctx, c); err != nil {
		return err
	}
	manifests, err := c.models.PublishRetained(ctx)
	if err != nil {
		return err
	}
	desired, err := c.fleet.PublishRetained(ctx)
	if err != nil {
		return err
	}
	siteDocs, err := c.sites.PublishRetained(ctx)
	if err != nil {
		return err
	}
	s.log.Info("retained state published", "manifests", manifests, "desired_states", desired, "site_documents", siteDocs)
	return nil
}

// handlers are the device topics' handlers: each routes a message to
// the components that act on it.
type handlers struct {
	status, fetch, presence, telemetry func(topic string, payload []byte)
	capture                            func(topic string, payload []byte) // field data capture
}

func (c *components) handlers() handlers {
	return handlers{
		status: func(topic string, payload []byte) {
			c.fleet.OnStatus(topic, payload)
			select { // wake the rollout engine
			case c.kick <- struct{}{}:
			default:
			}
		},
		fetch:    c.models.OnFetch,
		capture:  c.data.OnCapture,
		presence: c.fleet.OnPresence,
		telemetry: func(topic string, payload []byte) {
			dev, t, ok := c.fleet.OnTelemetry(topic, payload)
			if ok {
				c.sites.OnTelemetry(dev, t)
				c.monitor.Ingest(topic, dev, t, func(model, version string) string { return c.rollouts.Cohort(dev, model, version) })
			}
		},
	}
}

// subscribe routes the device topics to the components.
func (s *Server) subscribe(ctx context.Context, c *components) error {
	h := c.handlers()
	type sub struct {
		filter string
		h      func(string, []byte)
	}
	subs := []sub{
		{s.scheme.AllStatus(), h.status},
		{s.scheme.AllFetch(), h.fetch},
		{s.scheme.AllPresence(), h.presence},
		{s.scheme.AllCapture(), h.capture},
	}
	eb, external := c.bus.(*bus.External)
	shared := external && s.opts.IngestConnections > 1
	if !shared {
		subs = append(subs, sub{s.scheme.AllTelemetry(), h.telemetry})
	}
	for _, sub := range subs {
		if err := c.bus.Subscribe(ctx, sub.filter, sub.h); err != nil {
			return fmt.Errorf("subscribe %s: %w", sub.filter, err)
		}
	}
	if shared { // telemetry arrives on the shared ingest connections
		err := s.metrics.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgefleet_mqtt_ingest_ready",
			Help: "1 when every ingest connection (serve --ingest-connections) is up and receives telemetry; 0 while the main connection stands in.",
		}, func() float64 {
			if eb.IngestReady() {
				return 1
			}
			return 0
		}))
		if err != nil {
			return fmt.Errorf("ingest metric: %w", err)
		}
		return eb.AddIngest(ctx, s.externalOptions(), s.opts.IngestConnections, s.scheme.AllTelemetry(), h.telemetry)
	}
	return nil
}

// republishOnReconnect publishes the retained state again each time the
// connection to an external broker comes back, until ctx ends.
func (s *Server) republishOnReconnect(ctx context.Context, c *components, eb *bus.External) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-eb.Reconnected():
		}
		if err := s.publishRetained(ctx, c); err != nil && ctx.Err() == nil {
			s.log.Error("republish retained state after reconnect failed", "err", err)
		}
	}
}

// renew re-signs the manifests and desired states that expire soon or were
// signed by a key the trust bundle no longer lists, and publishes them.
func (s *Server) renew(ctx context.Context, c *components) error {
	if err := c.models.Renew(ctx); err != nil {
		return fmt.Errorf("renew manifests: %w", err)
	}
	if err := c.fleet.Renew(ctx); err != nil {
		return fmt.Errorf("renew desired states: %w", err)
	}
	return nil
}

// renewLoop re-signs expiring manifests and desired states every
// renewInterval (publishRetained did at start), until ctx ends.
func (s *Server) renewLoop(ctx context.Context, c *components) {
	t := time.NewTicker(renewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.renew(ctx, c); err != nil && ctx.Err() == nil {
			s.log.Error("renewal failed", "err", err)
		}
	}
}

// rolloutLoop drives the rollout engine every RolloutInterval and after
// each device status event, until ctx ends.
func (s *Server) rolloutLoop(ctx context.Context, c *components) {
	t := time.NewTicker(s.opts.RolloutInterval)
	defer t.Stop()
	for {
		c.rollouts.Tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
	}
}
