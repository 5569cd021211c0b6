// Package controlplane is edgefleet's control plane as a library: device
// registry and credentials, model registry (upload checks, signed
// manifests, chunk distribution), deployments (signed desired states), the
// embedded MQTT broker or a client of an external one, and the REST API.
// The edgefleet binary (controlplane/cmd/edgefleet) and fleet-sim run it.
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

	"github.com/edgefleet/edgefleet/controlplane/audit"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/controlplane/bus"
	"github.com/edgefleet/edgefleet/controlplane/keys"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/controlplane/rollout"
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
	DefaultDesiredTTL  = 30 * 24 * time.Hour
	// DefaultChunkBatchWindow and DefaultChunkBatchMax: see
	// Options.ChunkBatchWindow.
	DefaultChunkBatchWindow = 150 * time.Millisecond
	DefaultChunkBatchMax    = 2 * time.Second
	// DefaultMQTTClientID is the control plane's client id on an external broker.
	DefaultMQTTClientID = "edgefleet-control-plane"

	blobCacheBytes  = 256 << 20
	renewInterval   = time.Hour
	shutdownTimeout = 5 * time.Second
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
	MQTTURL  string
	Username string
	Password string
	// ChunkBatchWindow is how long fetch requests for a version are
	// collected before its chunks are published, so that devices starting
	// a download together share one publish of each chunk: the chunks go
	// out once no new request came for ChunkBatchWindow, and at the latest
	// ChunkBatchMax after the first. Defaults DefaultChunkBatchWindow and
	// DefaultChunkBatchMax; a negative window publishes at once.
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
	// MaxModelSize bounds uploaded models; default
	// transfer.DefaultLimits().MaxModelSize (256 MiB). Agents enforce their
	// own limit, so raising it here alone does not help.
	MaxModelSize uint64
	// MQTTTLS, if set, makes the embedded broker serve TLS (mutual TLS when
	// it requires client certificates: see broker.TLSConfig). Devices are
	// then told a tls:// broker URL.
	MQTTTLS *tls.Config
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
	// nil leaves those gates waiting for figures.
	RolloutMetrics rollout.Metrics
	// Monitor configures model monitoring: alert rules, the retrain
	// webhook, history retention (monitoring.go).
	Monitor MonitorOptions
	// OnInitialToken is called once, during Run, when the admin API token
	// was generated (the first start on an empty DataDir). The token is
	// never shown again; only its hash is stored.
	OnInitialToken func(token string)
}

// Server is one control plane. Create it with New and run it with Run.
type Server struct {
	opts   Options
	log    *slog.Logger
	scheme topics.Scheme
	clock  func() time.Time
	keys   *keys.Set

	metrics  *metrics
	dropped  atomic.Uint64
	chunks   *chunkQueue
	blobs    *blobCache
	ready    chan struct{}
	started  atomic.Bool
	runStart time.Time // when New ran: devices not seen since have an unknown presence

	// deployMu serialises desired-state issuing and publishing (see
	// issueDesired). Lock order: deployMu, then registry.mu.
	deployMu sync.Mutex
	// uploadMu serialises the final existence check and write of a model
	// version, and manifest renewals.
	uploadMu sync.Mutex

	// Set by Run before ready is closed, read-only afterwards (the close
	// orders the writes before every reader that waited for Ready).
	db         *store.DB
	kv         *store.KV
	reg        *registry
	models     *modelIndex
	bus        bus.Bus
	runtime    *infer.Runtime
	runtimeErr error
	tokenHash  []byte
	// audit records every mutating API call and automatic decision;
	// security holds API tokens, enrollments and the auth-failure limiter
	// (auth.go).
	audit    *audit.Log
	security *security
	// rollouts is the rollout engine; rolloutKick wakes its goroutine
	// (rollouts.go).
	rollouts    *rollout.Engine
	rolloutKick chan struct{}
	// monitor aggregates device monitoring reports; alerter and webhook
	// raise alerts from it (monitoring.go).
	monitor    *monitor.Aggregator
	alerter    *monitor.Alerter
	webhook    *monitor.Webhook
	monMetrics *monitorMetrics

	// addrMu guards apiURL and brokerURL, which tests may poll before Ready.
	addrMu    sync.Mutex
	apiURL    string
	brokerURL string
	embedded  *broker.Broker // nil with an external broker
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
	switch {
	case opts.ChunkBatchWindow == 0:
		opts.ChunkBatchWindow = DefaultChunkBatchWindow
	case opts.ChunkBatchWindow < 0:
		opts.ChunkBatchWindow = 0
	}
	if opts.ChunkBatchMax == 0 {
		opts.ChunkBatchMax = DefaultChunkBatchMax
	}
	// Metrics are stored in one-minute buckets and a window counts the
	// buckets that start inside it: a shorter window would see the current
	// bucket only during its first seconds.
	if w := opts.Monitor.Rules.Window; w > 0 && w < monitor.DefaultRawBucket {
		return nil, fmt.Errorf("controlplane: alert window %v is shorter than the %v resolution of the stored metrics; use at least %v",
			w, monitor.DefaultRawBucket, monitor.DefaultRawBucket)
	}
	if opts.MQTTURL == "" && opts.Username != "" {
		return nil, errors.New("controlplane: Username is for an external broker (MQTTURL); the embedded broker needs none")
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
	}
	log = log.With("component", "controlplane")
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	for _, sub := range []string{"keys", "blobs"} {
		if err := os.MkdirAll(filepath.Join(opts.DataDir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("controlplane: %w", err)
		}
	}
	keys, err := keys.Load(filepath.Join(opts.DataDir, "keys"), opts.Clock(), log)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Server{
		opts:     opts,
		log:      log,
		scheme:   scheme,
		clock:    opts.Clock,
		runStart: opts.Clock(),
		keys:     keys,
		chunks:   newChunkQueue(opts.ChunkBatchWindow, opts.ChunkBatchMax),
		blobs:    newBlobCache(blobCacheBytes),
		ready:    make(chan struct{}),
	}
	s.metrics = newMetrics(
		func() float64 { t, _ := s.deviceCounts(); return float64(t) },
		func() float64 { _, o := s.deviceCounts(); return float64(o) },
		func() float64 {
			if s.models == nil {
				return 0
			}
			return float64(s.models.count())
		},
	)
	s.monMetrics = newMonitorMetrics(s.metrics.reg)
	s.metrics.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_subscription_dropped_total",
			Help: "api.Device messages the embedded broker dropped because a control-plane subscription's queue was full (ingest falling behind).",
		}, func() float64 { return s.brokerDrops(func(b *broker.Broker) uint64 { return b.Dropped() }) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgefleet_broker_client_dropped_total",
			Help: "Messages the embedded broker dropped instead of sending them to a device whose outbound queue was full.",
		}, func() float64 { return s.brokerDrops(func(b *broker.Broker) uint64 { return b.ClientDropped() }) }),
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

// brokerDrops reads a drop counter of the embedded broker (0 with an
// external broker, or before it started).
func (s *Server) brokerDrops(count func(*broker.Broker) uint64) float64 {
	b := s.embeddedBroker()
	if b == nil {
		return 0
	}
	return float64(count(b))
}

func (s *Server) deviceCounts() (total, online int) {
	select {
	case <-s.ready:
		return s.reg.counts()
	default:
		return 0, 0
	}
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

// Run starts everything, serves until ctx ends, then shuts down in order
// and waits for every goroutine it started. It returns nil after a shutdown
// caused by ctx, or the error that stopped it. Run may be called once.
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

	s.db, err = store.Open(store.Options{
		Dir:     filepath.Join(s.opts.DataDir, "db"),
		Profile: store.ProfileServer,
		Logger:  s.opts.Logger,
	})
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	closers = append(closers, func() {
		if err := s.db.Close(); err != nil {
			s.log.Error("close store", "err", err)
		}
	})
	s.kv = s.db.Namespace("cp")

	var token string
	if s.tokenHash, token, err = ensureAdminToken(s.kv); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if s.reg, err = loadRegistry(s.kv, s.clock); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if s.models, err = loadModels(s.kv); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := s.openSecurity(); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}

	s.runtime = s.opts.Runtime
	if s.runtime == nil {
		s.runtime, s.runtimeErr = infer.NewRuntime(s.opts.ORTLibrary, s.opts.Logger)
		if s.runtimeErr != nil {
			s.log.Warn("onnxruntime unavailable: model uploads will be refused", "err", s.runtimeErr)
		} else {
			rt := s.runtime
			closers = append(closers, func() { _ = rt.Close() })
		}
	}

	if err := s.openMonitoring(); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	closers = append(closers, s.flushMonitoring) // after the bus stopped delivering
	if err := s.openRollouts(); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := s.startBus(ctx); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	closers = append(closers, func() {
		// Waits for running ingest handlers, which use the store.
		if err := s.bus.Close(); err != nil {
			s.log.Error("close broker", "err", err)
		}
	})

	// Shutdown: stop the API, cancel the workers, wait for them, then
	// close the bus, the runtime and the store (closers run in reverse).
	var wg sync.WaitGroup // every goroutine Run starts
	closers = append(closers, wg.Wait, cancel)

	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runChunks(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runRenew(ctx)
	}()
	if eb, ok := s.bus.(*bus.External); ok {
		wg.Go(func() { s.republishOnReconnect(ctx, eb) })
	}
	s.runRollouts(ctx, &wg)
	s.runMonitoring(ctx, &wg)

	handler, err := s.handler()
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
		if err := srv.Shutdown(sctx); err != nil {
			s.log.Warn("api shutdown", "err", err)
			_ = srv.Close()
		}
	})

	s.addrMu.Lock()
	s.apiURL = "http://" + ln.Addr().String()
	s.brokerURL = s.opts.PublicMQTTURL
	if s.brokerURL == "" {
		s.brokerURL = s.bus.URL()
	}
	s.addrMu.Unlock()

	// The initial token is handed out before the API answers anything: a
	// client that sees /healthz can rely on the token file being written.
	if token != "" && s.opts.OnInitialToken != nil {
		s.opts.OnInitialToken(token)
	}
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	close(s.ready)
	s.log.Info("control plane ready", "api", s.APIURL(), "broker", s.bus.URL(), "devices", len(s.reg.list(nil)), "model_versions", s.models.count())

	select {
	case <-ctx.Done():
		s.log.Info("control plane shutting down")
		return nil
	case err := <-serveErr:
		return fmt.Errorf("controlplane: api: %w", err)
	}
}

// startBus starts the embedded broker or connects to the external one,
// publishes the retained state and subscribes to the device topics.
func (s *Server) startBus(ctx context.Context) error {
	if s.opts.MQTTURL != "" {
		clientID := s.opts.Username
		if clientID == "" {
			clientID = DefaultMQTTClientID
		}
		mo := mqttc.Options{
			BrokerURL: s.opts.MQTTURL,
			ClientID:  clientID,
			Username:  s.opts.Username,
			Password:  s.opts.Password,
			QueueSize: 4096,
			Logger:    s.opts.Logger,
		}
		eb, err := bus.Dial(ctx, mo)
		if err != nil {
			return err
		}
		s.bus = eb
		if err := s.publishRetained(ctx); err != nil {
			_ = eb.Close()
			return err
		}
		if err := s.subscribe(ctx); err != nil {
			_ = eb.Close()
			return err
		}
		if n := s.opts.IngestConnections; n > 1 {
			if err := eb.AddIngest(ctx, mo, n, s.scheme.AllTelemetry(), s.onTelemetry); err != nil {
				_ = eb.Close()
				return err
			}
		}
		return nil
	}

	b, err := broker.New(broker.Options{
		Addr:     s.opts.MQTTListen,
		Scheme:   s.scheme,
		Auth:     s.reg,
		TLS:      s.opts.MQTTTLS,
		InMemory: s.opts.MQTTInMemory,
		Logger:   s.opts.Logger,
	})
	if err != nil {
		return err
	}
	s.bus = bus.NewEmbedded(b)
	s.addrMu.Lock()
	s.embedded = b
	s.addrMu.Unlock()
	// Retained state and subscriptions go in before the listener opens, so
	// the first device to connect already finds everything.
	if err := s.publishRetained(ctx); err != nil {
		_ = b.Close()
		return err
	}
	if err := s.subscribe(ctx); err != nil {
		_ = b.Close()
		return err
	}
	if err := b.Start(); err != nil {
		_ = b.Close()
		return err
	}
	return nil
}

// republishOnReconnect publishes the retained state again each time the
// connection to an external broker comes back, until ctx ends.
func (s *Server) republishOnReconnect(ctx context.Context, eb *bus.External) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-eb.Reconnected():
		}
		if err := s.publishRetained(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("republish retained state after reconnect failed", "err", err)
		}
	}
}

func (s *Server) subscribe(ctx context.Context) error {
	for _, sub := range []struct {
		filter string
		h      func(string, []byte)
	}{
		{s.scheme.AllStatus(), s.onStatusRollouts},
		{s.scheme.AllFetch(), s.onFetch},
		{s.scheme.AllPresence(), s.onPresence},
	} {
		if err := s.bus.Subscribe(ctx, sub.filter, sub.h); err != nil {
			return fmt.Errorf("subscribe %s: %w", sub.filter, err)
		}
	}
	if s.opts.MQTTURL != "" && s.opts.IngestConnections > 1 {
		return nil // telemetry arrives on the shared ingest connections
	}
	if err := s.bus.Subscribe(ctx, s.scheme.AllTelemetry(), s.onTelemetry); err != nil {
		return fmt.Errorf("subscribe %s: %w", s.scheme.AllTelemetry(), err)
	}
	return nil
}

// runRenew re-signs expiring manifests and desired states, at start and
// then every renewInterval, until ctx ends.
func (s *Server) runRenew(ctx context.Context) {
	t := time.NewTicker(renewInterval)
	defer t.Stop()
	for {
		if err := s.renew(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("renew signed documents failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
