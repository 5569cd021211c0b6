// Package agent is the edgefleet device agent as a library: it follows the
// signed desired state from the control plane, downloads and verifies model
// versions, activates them only after they pass their checks, serves local
// inference and reports back. Imported by agent/cmd/edgefleet-agent (its thin
// main), fleet-sim/... (many agents in one process), controlplane/cli (it
// writes agent configs) and internal/fleettest.
package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/mqttc"
	"github.com/edgefleet/edgefleet/internal/oip"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
)

// eventQueue bounds the events waiting for the update loop. The MQTT
// client queues more in front of it, so it stays small: fleet-sim runs
// thousands of agents and each one pays for it.
const eventQueue = 64

// DefaultRetainedRecheck is Options.RetainedRecheck on a clustered broker.
const DefaultRetainedRecheck = 20 * time.Second

// Options configure an Agent. Zero values take the documented defaults.
type Options struct {
	DeviceID string
	// BrokerURL is the broker, or a comma-separated list of a cluster's
	// nodes to fail over between (mqttc.Options.BrokerURL).
	BrokerURL string
	// QoS0Subscriptions subscribes at QoS 0 (for a NATS cluster:
	// mqttc.Options.QoS0Subscriptions).
	QoS0Subscriptions bool
	// RetainedRecheck is how long after (re)connecting the agent asks once
	// more for its retained documents (trust bundle, desired state, the
	// manifest it waits for), and asks a second time three times as long
	// after that. A node of a clustered broker (NATS) serves a new
	// subscription only the retained messages it has replicated so far, and
	// nothing is published again to a device that missed them. 0 takes the
	// default: 20s when BrokerURL lists several nodes, off for one broker
	// (mosquitto and the embedded broker serve retained messages at once);
	// negative turns it off.
	RetainedRecheck time.Duration
	// Username defaults to DeviceID; the broker requires them equal.
	Username string
	Password string
	TLS      *tls.Config
	// MQTTDial, if set, opens the MQTT connection instead of dialling
	// BrokerURL (fleet-sim connects agents to its embedded broker in
	// memory); BrokerURL is then only a name in logs and may be empty.
	MQTTDial func(ctx context.Context) (net.Conn, error)
	// TopicPrefix defaults to "ef/v1".
	TopicPrefix string
	// RootPublicKey is required: the only key the agent trusts on its own.
	RootPublicKey ed25519.PublicKey
	// Hardware is this device's class, matched against a manifest's
	// hardware list. Default: runtime.GOARCH.
	Hardware string

	// DataDir holds model files (DataDir/models) and, unless Store is set,
	// the badger state (DataDir/state).
	DataDir string
	// Store, if set, is used instead of a badger of the agent's own
	// (fleet-sim shares one badger between agents through namespaces).
	Store *store.KV
	// Runtime, if set, is a shared onnxruntime; else the agent opens one
	// from ORTLibrary (empty: searched, see infer.FindLibrary) when it
	// loads its first model, so an idle agent does not map the library.
	Runtime    *infer.Runtime
	ORTLibrary string

	// InferenceListen is the address of the local Open Inference Protocol
	// API, e.g. 127.0.0.1:8081; empty disables it.
	InferenceListen string
	// InferenceMaxBodyBytes bounds one inference or feedback request body
	// (413 above). Default oip.DefaultMaxBodyBytes (4 MiB).
	InferenceMaxBodyBytes int64
	// InferenceMaxBatch bounds a dynamic first dimension of an input (400
	// above); a fixed one is what the model takes. Default
	// oip.DefaultMaxBatch (1024).
	InferenceMaxBatch int
	// InferenceMaxInflightBytes bounds the bytes of request bodies being
	// read, decoded and run at once; a request beyond it gets 503 with
	// Retry-After before its body is read. Default 4 × the body limit.
	InferenceMaxInflightBytes int64

	// Peers turns on sharing downloads with the devices of the same site
	// (docs/architecture.md, "Site-local distribution"); zero: off.
	Peers PeerOptions

	// MetricsListen is the address of an optional Prometheus endpoint
	// (GET /metrics), e.g. 127.0.0.1:9101; empty disables it.
	MetricsListen string

	// HeartbeatInterval between telemetry reports. Default 30s.
	HeartbeatInterval time.Duration
	// FetchRetryInterval is how long a download may make no progress before
	// the agent asks for its missing chunks again. Default 5s.
	FetchRetryInterval time.Duration
	// StatusHold is how long the report of an update's progress
	// (downloading, verifying, staging) waits for the next state, which
	// replaces it: a fast update reports only its outcome (status_hold.go).
	// Default DefaultStatusHold; negative: every state is reported at once.
	StatusHold time.Duration
	// TransientRetry is how long after an update failed on the way (chunks
	// corrupted in transit, every download attempt used up) the agent tries
	// the same desired state again; it doubles with each such failure of one
	// generation, up to 10 times it. Default 30s.
	TransientRetry time.Duration
	// HealthPeriod is how long a newly activated version serves on trial
	// before it is committed: an inference error or MaxActivationAttempts
	// restarts during the period make the agent return to the previous
	// version by itself. 0 commits as soon as the version passed its checks.
	HealthPeriod time.Duration
	// MaxActivationAttempts caps how often the agent tries to stage one
	// version across restarts before it abandons it. Default 3.
	MaxActivationAttempts int
	// Limits bound what a manifest may declare.
	Limits transfer.Limits

	// DisableMonitoring turns off per-inference monitoring (drift
	// sketches, latency, label joins); telemetry then carries no reports.
	DisableMonitoring bool
	// LabelCapacity bounds the predictions kept per model for delayed
	// labels; the oldest is dropped first. Default DefaultLabelCapacity.
	LabelCapacity int
	// LabelTTL is how long a prediction waits for its label. Default
	// DefaultLabelTTL.
	LabelTTL time.Duration
	// OutboxMaxReports and OutboxMaxBytes bound the telemetry reports kept
	// on disk while the broker is unreachable; when full the oldest is
	// dropped and counted. Defaults DefaultOutboxMaxReports and
	// DefaultOutboxMaxBytes.
	OutboxMaxReports int
	OutboxMaxBytes   int64
	// ShadowQueue and ShadowQueueBytes bound the requests waiting to be
	// scored by a challenger in shadow (shadow.go); a request beyond them
	// is not shadowed (counted as skipped). Defaults DefaultShadowQueue and
	// DefaultShadowQueueBytes.
	ShadowQueue      int
	ShadowQueueBytes int64
	// ReportAckTimeout is how long a report (telemetry or status event)
	// the broker accepted waits for the control plane's acknowledgement
	// before it is sent again (then with doubling back-off, at most ten
	// minutes apart). Default 30s.
	ReportAckTimeout time.Duration
	// Capture bounds field data capture (capture.go); whether a model is
	// captured at all is its policy in the signed desired state.
	Capture CaptureOptions

	// Version is the agent's own version, reported in telemetry.
	Version string
	// Clock returns the current wall-clock time, used for what is judged
	// against wall time: signature expiry, trial periods, report and label
	// timestamps. Intervals (fetch stalls, heartbeats) use real elapsed
	// time. Default time.Now.
	Clock  func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.DeviceID == "" {
		return errors.New("agent: DeviceID is required")
	}
	if err := topics.ValidDeviceID(o.DeviceID); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if o.BrokerURL == "" && o.MQTTDial == nil {
		return errors.New("agent: BrokerURL is required")
	}
	if len(o.RootPublicKey) != ed25519.PublicKeySize {
		return errors.New("agent: RootPublicKey is required: an agent trusts nothing without the fleet's root key")
	}
	if o.DataDir == "" {
		return errors.New("agent: DataDir is required")
	}
	if o.Username == "" {
		o.Username = o.DeviceID
	}
	if o.Hardware == "" {
		o.Hardware = runtime.GOARCH
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.FetchRetryInterval <= 0 {
		o.FetchRetryInterval = 5 * time.Second
	}
	if o.StatusHold == 0 {
		o.StatusHold = DefaultStatusHold
	}
	if o.TransientRetry <= 0 {
		o.TransientRetry = 30 * time.Second
	}
	if o.MaxActivationAttempts <= 0 {
		o.MaxActivationAttempts = 3
	}
	if o.RetainedRecheck == 0 && strings.Contains(o.BrokerURL, ",") {
		o.RetainedRecheck = DefaultRetainedRecheck
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Agent is one device agent. Create it with New and run it with Run.
type Agent struct {
	opts    Options
	log     *slog.Logger
	topics  topics.Scheme
	verify  *signing.Verifier
	started time.Time

	// Set in open, released in close; owned by Run.
	kv        *store.KV
	ownDB     *store.DB
	infLn     net.Listener
	metricsLn net.Listener
	events    chan event

	// rtMu guards rt and ownRT: onnxruntime, opened at the first model
	// load (runtime.go) and closed by close.
	rtMu  sync.Mutex
	rt    *infer.Runtime
	ownRT bool

	// mu guards slots (the map, not the slot contents) and client.
	mu     sync.RWMutex
	slots  map[string]*slot
	client *mqttc.Client

	mon    *monitors  // nil when monitoring is disabled; see monitor.go
	outbox *outbox    // set in open; see outbox.go
	shadow *shadowSet // challengers scored in shadow; see shadow.go
	// capture is the field data capture queue; set in open (capture.go).
	capture *capturer

	// u is the update state: touched only by the Run goroutine.
	u updater

	// peers is the agent's part in its site's sharing (peers.go).
	peers     *sharing
	peerBad   atomic.Uint64 // chunks from peers that failed their check
	transfers transferLog

	// crashAt, when set by tests, is called at named points of an update
	// so a test can kill the process exactly there.
	crashAt func(point string)
	// failWrite, when set by tests before Run, is asked before each write
	// of persisted state, with the step's name (see step); an error fails
	// the write as a failing disk would.
	failWrite func(step string) error

	// logLimit rate-limits the log lines a flood of bad input would
	// repeat (loglimit.go).
	logLimit *logLimiter

	// phaseHook is the PhaseHook set by SetPhaseHook (nil: none).
	phaseHook atomic.Pointer[PhaseHook]

	gen           atomic.Uint64 // mirror of u.generation for Generation()
	dropped       atomic.Uint64 // malformed or unexpected MQTT payloads
	refused       atomic.Uint64 // well-formed documents refused by a check
	writeFailures atomic.Uint64 // writes of persisted state that failed
	chunks        atomic.Uint64 // chunks accepted into a download (ChunksReceived)
	telemetryMade atomic.Uint64 // telemetry reports queued (TelemetryReports)
	ready         chan struct{}
	runOnce       atomic.Bool
	infAddr       atomic.Value // string
	statusMu      sync.Mutex   // serialises seq allocation with its reservation
	seq           uint64       // guarded by statusMu
	seqLimit      uint64       // guarded by statusMu: reserved on disk
}

// New checks the options and returns an agent ready to Run.
func New(opts Options) (*Agent, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{
		opts:     opts,
		log:      opts.Logger.With("component", "agent", "device", opts.DeviceID),
		topics:   topics.Scheme{Prefix: opts.TopicPrefix},
		verify:   signing.NewVerifier(opts.RootPublicKey),
		slots:    map[string]*slot{},
		events:   make(chan event, eventQueue),
		ready:    make(chan struct{}),
		logLimit: newLogLimiter(logEvery, time.Now),
	}
	a.u.subs = map[string]bool{}
	a.u.status.hold = a.opts.StatusHold
	a.peers = newSharing(a)
	if !opts.DisableMonitoring {
		a.mon = newMonitors(&a.opts)
	}
	a.shadow = newShadowSet(&a.opts)
	return a, nil
}

// Ready is closed once the agent has restored its state, loaded its
// committed models and (if configured) listens for inference.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// InferenceAddr is the bound address of the inference API ("" if disabled).
// Valid once Ready is closed.
func (a *Agent) InferenceAddr() string {
	s, _ := a.infAddr.Load().(string)
	return s
}

// MetricsAddr is the bound address of the metrics endpoint ("" if
// disabled). Valid once Ready is closed.
func (a *Agent) MetricsAddr() string {
	if a.metricsLn == nil {
		return ""
	}
	return a.metricsLn.Addr().String()
}

// Dropped counts MQTT payloads that could not be decoded or were not meant
// for this agent; they are dropped, never acted on.
func (a *Agent) Dropped() uint64 { return a.dropped.Load() }

// Refused counts signed documents that failed a check (signature, expiry,
// replay, hash, test vectors ...).
func (a *Agent) Refused() uint64 { return a.refused.Load() }

// TrustVersion is the version of the trust bundle the agent trusts, 0
// before it accepted one.
func (a *Agent) TrustVersion() uint64 { return a.verify.Version() }

// Run restores state, serves inference, keeps the broker connection and
// follows the desired state until ctx ends. It returns nil after a clean
// shutdown; a second Run on the same Agent is an error.
func (a *Agent) Run(ctx context.Context) error {
	if !a.runOnce.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	a.started = a.opts.Clock()
	if err := a.open(); err != nil {
		a.close()
		return err
	}
	defer a.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()                   // runs before wg.Wait: stop everything, then wait
	a.startSystemdNotify(ctx, wg.Go) // sdnotify.go: READY/WATCHDOG/STOPPING under systemd

	if a.infLn != nil {
		a.serveHTTP(ctx, &wg, "inference", a.infLn,
			oip.NewHandler(backend{a}, oip.HandlerOptions{Logger: a.log, ServerVersion: a.opts.Version,
				MaxBodyBytes: a.opts.InferenceMaxBodyBytes, MaxBatch: a.opts.InferenceMaxBatch,
				MaxInflightBytes: a.opts.InferenceMaxInflightBytes,
				Extensions:       []string{oip.FeedbackExtension}}))
	}
	if a.metricsLn != nil {
		a.serveHTTP(ctx, &wg, "metrics", a.metricsLn, a.metricsHandler())
	}
	close(a.ready)
	a.log.Info("agent started", "inference", a.InferenceAddr(), "broker", a.opts.BrokerURL)

	wg.Go(func() { a.connectLoop(ctx) })
	wg.Go(func() { a.outbox.run(ctx, a.sendQueued, a.connected) })
	wg.Go(func() { a.shadowWorker(ctx) })
	wg.Go(func() {
		a.capture.run(ctx, a.mqtt, a.topics.Capture(a.opts.DeviceID), a.topics.CaptureAck(a.opts.DeviceID))
	})
	a.updateLoop(ctx)
	return nil
}

// open restores everything the agent needs before it talks to anyone.
func (a *Agent) open() error {
	if a.opts.Store != nil {
		a.kv = a.opts.Store
	} else {
		db, err := store.Open(store.Options{
			Dir:     filepath.Join(a.opts.DataDir, "state"),
			Profile: store.ProfileDevice,
			Logger:  a.opts.Logger,
		})
		if err != nil {
			return fmt.Errorf("agent: open state: %w", err)
		}
		a.ownDB = db
		a.kv = db.Namespace("agent")
	}
	if a.opts.Runtime == nil {
		// Loaded at the first model (runtime.go), but a device without the
		// library is told now, not when its first model arrives.
		if _, err := infer.FindLibrary(a.opts.ORTLibrary); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	ob, err := openOutbox(a.kv.Namespace("outbox"), a.opts.OutboxMaxReports, a.opts.OutboxMaxBytes, a.opts.ReportAckTimeout, a.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.outbox = ob
	if err := a.restore(); err != nil {
		return err
	}
	ttl := a.opts.LabelTTL
	if ttl <= 0 {
		ttl = DefaultLabelTTL
	}
	cq, err := openCapture(a.kv.Namespace("capture"), a.opts.Capture, a.opts.DeviceID, a.opts.Clock, ttl, a.log, a.crashPoint)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.capture = cq
	if ds := desiredOf(a.u.desired); ds != nil {
		a.capture.setPolicies(ds)
	}
	if a.opts.InferenceListen != "" {
		ln, err := net.Listen("tcp", a.opts.InferenceListen)
		if err != nil {
			return fmt.Errorf("agent: inference listen: %w", err)
		}
		a.infLn = ln
		a.infAddr.Store(ln.Addr().String())
	}
	if a.opts.MetricsListen != "" {
		ln, err := net.Listen("tcp", a.opts.MetricsListen)
		if err != nil {
			return fmt.Errorf("agent: metrics listen: %w", err)
		}
		a.metricsLn = ln
	}
	return nil
}

// close releases what open acquired; safe after a partial open.
func (a *Agent) close() {
	a.stopSharing()
	a.mu.Lock()
	c := a.client
	a.client = nil
	slots := a.slots
	a.mu.Unlock()
	if c != nil {
		c.Close()
	}
	a.closeShadows()
	for _, s := range slots {
		s.closeDownload()
		if m := s.serving.Swap(nil); m != nil {
			m.close()
		}
	}
	for _, ln := range []net.Listener{a.infLn, a.metricsLn} {
		if ln != nil {
			_ = ln.Close() // already closed by Shutdown when it served
		}
	}
	a.rtMu.Lock()
	if a.ownRT && a.rt != nil {
		_ = a.rt.Close()
	}
	a.rt, a.ownRT = nil, false
	a.rtMu.Unlock()
	if a.ownDB != nil {
		_ = a.ownDB.Close()
	}
}

// connectLoop dials the broker until the first connection succeeds; the
// client reconnects by itself after that. Refused credentials are retried
// slowly: a device may be re-provisioned while it runs.
func (a *Agent) connectLoop(ctx context.Context) {
	backoff := time.Second
	for {
		c, err := mqttc.Connect(ctx, mqttc.Options{
			BrokerURL: a.opts.BrokerURL,
			ClientID:  a.opts.DeviceID,
			Username:  a.opts.Username,
			Password:  a.opts.Password,
			TLS:       a.opts.TLS,
			Dial:      a.opts.MQTTDial,
			Will:      a.presenceMessage(false),
			// What the agent subscribes to is retained or asked for again.
			QoS0Subscriptions: a.opts.QoS0Subscriptions,
			MayPublish: func(topic string, retained bool) bool {
				return a.topics.DeviceMayPublish(a.opts.DeviceID, topic, retained)
			},
			// Every connection is announced once, here; the first fires
			// before Connect returns, so the client is stored first.
			OnConnect: func(ctx context.Context, c *mqttc.Client) {
				a.setClient(c)
				a.send(ctx, event{kind: evConnected})
			},
			Logger: a.opts.Logger,
		})
		if err == nil {
			a.setClient(c)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, mqttc.ErrRefused) {
			backoff = max(backoff, 30*time.Second)
		}
		a.log.Warn("broker connect failed", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, 2*time.Minute)
	}
}

func (a *Agent) mqtt() *mqttc.Client {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.client
}

// setClient records the connected broker client.
func (a *Agent) setClient(c *mqttc.Client) {
	a.mu.Lock()
	a.client = c
	a.mu.Unlock()
}

// send hands an event to the update loop, giving up when ctx ends.
func (a *Agent) send(ctx context.Context, ev event) {
	select {
	case a.events <- ev:
	case <-ctx.Done():
	}
}

// PhaseHook is called by the update loop each time an update of model to
// version enters a phase: phase is one of HookPhases, as a string —
// PhaseDownloading (its manifest was accepted), PhaseVerifying (every
// chunk is in) or PhaseStaging (the file is complete: next come loading,
// test vectors, warm-up and the commit). It runs after the phase is
// persisted and reported, and before the agent acts on it (see
// transition). The update loop waits for it. If ctx ends while it runs
// (the agent is being stopped), the agent goes no further, as if the
// process had been killed right there, and the next agent on the same
// state resumes that phase. It is for fault injection: fleet-sim holds
// agents at a phase and restarts them there.
type PhaseHook func(ctx context.Context, model, version string, phase Phase)

// ChunksReceived is how many chunks this agent has accepted into its
// downloads (a challenger's too) since it was made: each matched the signed
// manifest and was not a duplicate. It only grows; fleet-sim reads it to tell a slow download
// from a stalled one.
func (a *Agent) ChunksReceived() uint64 { return a.chunks.Load() }

// SetPhaseHook sets the hook called as updates enter a phase (nil removes
// it). It may be called on a running agent.
func (a *Agent) SetPhaseHook(h PhaseHook) {
	if h == nil {
		a.phaseHook.Store(nil)
		return
	}
	a.phaseHook.Store(&h)
}
