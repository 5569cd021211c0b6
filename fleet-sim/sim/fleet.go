package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/monitor"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/internal/store"
)

// Options configure a Fleet. Zero values are documented defaults.
type Options struct {
	// Dir holds the control plane's data, the shared badger and each
	// agent's model files (Dir/agents/<id>). Required.
	Dir string
	// AgentDir, if set, holds the agents' model files instead
	// (AgentDir/<id>), e.g. on a tmpfs: on one machine every simulated
	// device's downloads, and their fsyncs, go to one disk, where a fleet
	// has a disk per device. fleet-sim does not remove it.
	AgentDir string
	// Devices to run. Required.
	Devices []Device
	// Remote, if set, is an external control plane; nil runs one in-process
	// with its embedded broker on 127.0.0.1.
	Remote *RemoteControlPlane
	// BrokerURL overrides the broker URL agents use (default: the one in
	// the device credentials).
	BrokerURL string
	// Runtime is a shared onnxruntime; nil opens one from ORTLibrary (""
	// searches, see infer.FindLibrary) and closes it in Stop.
	Runtime    *infer.Runtime
	ORTLibrary string
	// Proxy puts a counting, fault-injecting proxy between the agents and
	// the broker. It costs two goroutines per agent (and two sockets over
	// TCP); network faults and per-agent byte counts need it.
	Proxy bool
	// Transport is how agents reach the in-process broker: TransportTCP
	// (default: loopback sockets, two descriptors per agent) or
	// TransportMemory (in-memory connections to the same broker, same MQTT
	// bytes, no descriptors: for fleets beyond the descriptor limit).
	// An external control plane needs TCP.
	Transport string
	// InMemoryStore keeps the shared agent state in memory (benchmarks);
	// default a badger on disk under Dir/state with synced commits.
	InMemoryStore bool
	// HeartbeatInterval and FetchRetryInterval are passed to every agent;
	// defaults 5s and 1s.
	HeartbeatInterval  time.Duration
	FetchRetryInterval time.Duration
	// Peers picks the devices whose agents share their site's downloads
	// (real memberlist on loopback, through the fleet's LAN); nil: none.
	Peers func(Device) bool
	// WANPerSite is each site's WAN link from the broker, in bytes per
	// second, shared by the site's devices (0: unlimited). Needs Proxy;
	// the proxy counts each site's bytes either way.
	WANPerSite int
	// StartParallel is how many agents start at once; default 32.
	StartParallel int
	// Monitor configures the in-process control plane's alert rules and
	// how often it evaluates them.
	Monitor monitor.Config
	// Clock is the in-process control plane's and every agent's time
	// source (an agent adds its skew, see Member.SkewClock); nil is real
	// time. An external control plane keeps its own clock.
	Clock *Clock
	// Logger receives the simulator's and the control plane's logs;
	// AgentLogger the agents' (both nil: discarded).
	Logger      *slog.Logger
	AgentLogger *slog.Logger
}

// Transports for Options.Transport.
const (
	TransportTCP    = "tcp"
	TransportMemory = "memory"
)

// Fleet is a running simulated fleet. Start it, use it, Stop it, then
// call LeakCheck.
type Fleet struct {
	opts Options
	log  *slog.Logger

	// cpMu guards cp, server, cpStop and cpDone: RestartControlPlane
	// replaces them while agents and scenario steps use them.
	cpMu    sync.Mutex
	cp      ControlPlane
	server  *controlplane.Server // in-process only; nil while restarting
	cpOpts  controlplane.Options // in-process: how it was started
	token   chan string          // the in-process control plane's admin token
	cpStop  context.CancelFunc
	cpDone  chan error
	db      *store.DB
	kv      *store.KV
	rt      *infer.Runtime
	ownRT   bool
	proxy   *Proxy
	lan     *LAN
	members []*Member
	byID    map[string]*Member
	counts  fleetCounts

	baseline        int // goroutines before Start
	brokerPort      int
	brokerConnsLeft int // established broker connections after the agents stopped (-1: unknown)
	stopOnce        sync.Once
	stopErr         error
}

// Member is one device of the fleet and its current agent (a restart
// replaces the agent).
type Member struct {
	Device Device
	opts   agent.Options
	skew   atomic.Int64 // clock skew in nanoseconds (SkewClock)
	clock  *Clock       // Options.Clock
	counts *fleetCounts // the fleet's

	// lying makes the member's agent corrupt the chunks it serves peers.
	lying atomic.Bool

	// hook is the user phase hook and the agent it is for (SetPhaseHook).
	hook atomic.Pointer[boundHook]

	// mu guards cur, cancel, done, restarts and chunksBefore.
	mu       sync.Mutex
	cur      *agent.Agent
	cancel   context.CancelFunc
	done     chan error
	restarts int
	// chunksBefore is the chunks accepted by the agents before cur.
	chunksBefore uint64

	// phaseMu guards phases: how often each phase of each update was
	// entered (see observe).
	phaseMu sync.Mutex
	phases  map[phaseKey]uint64
}

// Agent is the member's current agent: the last one that became ready
// (during a restart, the stopped one), or nil before the first.
func (m *Member) Agent() *agent.Agent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

// Restarts is how often the member's agent was restarted.
func (m *Member) Restarts() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restarts
}

// New checks opts. It starts nothing; Start does.
func New(opts Options) (*Fleet, error) {
	if opts.Dir == "" {
		return nil, errors.New("sim: Dir is required")
	}
	if len(opts.Devices) == 0 {
		return nil, errors.New("sim: no devices")
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = 5 * time.Second
	}
	if opts.FetchRetryInterval <= 0 {
		opts.FetchRetryInterval = time.Second
	}
	if opts.StartParallel <= 0 {
		opts.StartParallel = 32
	}
	if opts.Remote != nil && opts.Clock.Speed() != 1 {
		return nil, errors.New("sim: a sped-up clock needs the in-process control plane (an external one keeps its own time)")
	}
	switch opts.Transport {
	case "":
		opts.Transport = TransportTCP
	case TransportTCP:
	case TransportMemory:
		if opts.Remote != nil {
			return nil, errors.New("sim: the memory transport needs the in-process control plane (an external one is reached over TCP)")
		}
		if opts.BrokerURL != "" {
			return nil, errors.New("sim: BrokerURL and the memory transport exclude each other")
		}
	default:
		return nil, fmt.Errorf("sim: transport %q, want %q or %q", opts.Transport, TransportTCP, TransportMemory)
	}
	if opts.WANPerSite < 0 || (opts.WANPerSite > 0 && !opts.Proxy) {
		return nil, errors.New("sim: WANPerSite must be ≥ 0 and needs the proxy")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{opts: opts, log: log.With("component", "sim"), byID: map[string]*Member{}, brokerConnsLeft: -1, token: make(chan string, 1), lan: NewLAN()}
	for _, d := range opts.Devices {
		if _, dup := f.byID[d.ID]; dup {
			return nil, fmt.Errorf("sim: device %q twice", d.ID)
		}
		m := &Member{Device: d, clock: opts.Clock, counts: &f.counts, phases: map[phaseKey]uint64{}}
		f.members = append(f.members, m)
		f.byID[d.ID] = m
	}
	return f, nil
}

// ControlPlane is the control plane the fleet talks to (valid after Start).
func (f *Fleet) ControlPlane() ControlPlane {
	f.cpMu.Lock()
	defer f.cpMu.Unlock()
	return f.cp
}

// Server is the in-process control plane, or nil with a remote one.
func (f *Fleet) Server() *controlplane.Server {
	f.cpMu.Lock()
	defer f.cpMu.Unlock()
	return f.server
}

// APIToken is the in-process control plane's admin API token ("" with a
// remote one).
func (f *Fleet) APIToken() string {
	select {
	case t := <-f.token:
		f.token <- t
		return t
	default:
		return ""
	}
}

// Runtime is the shared onnxruntime.
func (f *Fleet) Runtime() *infer.Runtime { return f.rt }

// Proxy is the network proxy, or nil when Options.Proxy is off.
func (f *Fleet) Proxy() *Proxy { return f.proxy }

// Members returns every member, in device order.
func (f *Fleet) Members() []*Member { return f.members }

// Member returns the member with id, or nil.
func (f *Fleet) Member(id string) *Member { return f.byID[id] }

// Start starts the control plane (in-process mode), registers every
// device, and starts every agent; it returns once all agents are ready.
// On error the caller must still call Stop.
func (f *Fleet) Start(ctx context.Context) error {
	if err := f.Prepare(ctx); err != nil {
		return err
	}
	return f.StartAgents(ctx)
}

// Prepare is the first half of Start: the runtime, the control plane, the
// shared agent store and every device's registration, but no agent yet.
// StartAgents is the second half. (Benchmarks measure the agents' own cost
// between the two.)
func (f *Fleet) Prepare(ctx context.Context) error {
	f.baseline = runtime.NumGoroutine()
	if err := os.MkdirAll(f.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	if f.opts.Runtime != nil {
		f.rt = f.opts.Runtime
	} else {
		rt, err := infer.NewRuntime(f.opts.ORTLibrary, f.opts.Logger)
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		f.rt, f.ownRT = rt, true
	}
	if err := f.startControlPlane(ctx); err != nil {
		return err
	}
	db, err := store.Open(store.Options{
		Dir:      f.storeDir(),
		InMemory: f.opts.InMemoryStore,
		Profile:  store.ProfileServer,
		Logger:   f.opts.Logger,
	})
	if err != nil {
		return fmt.Errorf("sim: shared agent store: %w", err)
	}
	f.db, f.kv = db, db.Namespace("agents")
	return f.register(ctx)
}

// agentDir is device id's data directory.
func (f *Fleet) agentDir(id string) string {
	if f.opts.AgentDir != "" {
		return filepath.Join(f.opts.AgentDir, id)
	}
	return filepath.Join(f.opts.Dir, "agents", id)
}

func (f *Fleet) storeDir() string {
	if f.opts.InMemoryStore {
		return ""
	}
	return filepath.Join(f.opts.Dir, "state")
}

func (f *Fleet) startControlPlane(ctx context.Context) error {
	if f.opts.Remote != nil {
		f.cp = f.opts.Remote
		return nil
	}
	f.cpOpts = controlplane.Options{
		DataDir:    filepath.Join(f.opts.Dir, "cp"),
		APIListen:  "127.0.0.1:0",
		MQTTListen: "127.0.0.1:0",
		// Listening on TCP as well lets tools (mosquitto_sub) look in.
		MQTTInMemory: f.opts.Transport == TransportMemory,
		Runtime:      f.rt,
		Logger:       f.opts.Logger,
		Monitor:      f.opts.Monitor,
		Clock:        f.opts.Clock.Now,
		// Rollouts are evaluated on a real-time tick: faster at speed, so
		// a bake time ends about when it should in simulated time.
		RolloutInterval: max(f.opts.Clock.Real(controlplane.DefaultRolloutInterval), 50*time.Millisecond),
		OnInitialToken: func(tok string) {
			select {
			case f.token <- tok:
			default:
			}
		},
	}
	return f.runControlPlane(ctx)
}

// runControlPlane starts the in-process control plane with f.cpOpts and
// waits until it is ready.
func (f *Fleet) runControlPlane(ctx context.Context) error {
	srv, err := controlplane.New(f.cpOpts)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(cctx) }() // owned by Stop (or a restart), which waits on done
	f.cpMu.Lock()
	f.cpStop, f.cpDone = cancel, done
	f.cpMu.Unlock()
	select {
	case <-srv.Ready():
	case err := <-done:
		done <- err
		return fmt.Errorf("sim: control plane stopped: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	f.cpMu.Lock()
	f.server, f.cp = srv, srv
	f.cpMu.Unlock()
	return nil
}

// controlPlaneStopTimeout bounds the stop of the in-process control plane:
// a hang guard. A 1,000-agent soak at a load average of 24 on 2 cores saw
// a stop take over 30 s (27 s before its broker even began to close), and
// a restart that gives up leaves the fleet without a control plane.
const controlPlaneStopTimeout = 5 * time.Minute

// stopControlPlane stops the in-process control plane and waits for it.
func (f *Fleet) stopControlPlane() error {
	f.cpMu.Lock()
	stop, done := f.cpStop, f.cpDone
	f.cpStop, f.cpDone = nil, nil
	f.cpMu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("sim: control plane: %w", err)
		}
		return nil
	case <-time.After(controlPlaneStopTimeout):
		return fmt.Errorf("sim: control plane did not stop within %v", controlPlaneStopTimeout)
	}
}

// RestartControlPlane stops the in-process control plane, and with it its
// embedded broker, keeps it down for down, and starts it again on the same
// data and the same API and broker addresses, as an operator's restart or
// a crash would. Agents lose their connection and reconnect; everything
// the control plane knows comes back from its store. stopped, if not nil,
// is called once the control plane has stopped, before the down time: it
// sees the fleet as the restart caught it.
func (f *Fleet) RestartControlPlane(ctx context.Context, down time.Duration, stopped func()) error {
	srv := f.Server()
	if srv == nil {
		return errors.New("sim: no in-process control plane to restart")
	}
	api, broker := srv.APIURL(), srv.BrokerURL()
	if err := f.stopControlPlane(); err != nil {
		return err
	}
	f.cpMu.Lock()
	f.server = nil // DialBroker fails while it is down, as a dial would
	f.cpMu.Unlock()
	if stopped != nil {
		stopped()
	}
	// The same addresses: agents reconnect where they were.
	f.cpOpts.APIListen = strings.TrimPrefix(api, "http://")
	if u, err := url.Parse(broker); err == nil && u.Host != "" {
		f.cpOpts.MQTTListen = u.Host
	}
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	return f.runControlPlane(ctx)
}

// dialBroker connects in memory to the current in-process broker.
func (f *Fleet) dialBroker(ctx context.Context) (net.Conn, error) {
	srv := f.Server()
	if srv == nil {
		return nil, errors.New("sim: the control plane is down")
	}
	return srv.DialBroker(ctx)
}

// register registers every device and prepares its agent options.
func (f *Fleet) register(ctx context.Context) error {
	var root []byte
	sharing := 0
	for i, m := range f.members {
		if err := ctx.Err(); err != nil {
			return err
		}
		creds, err := f.ControlPlane().RegisterDevice(m.Device.ID, m.Device.Labels)
		if err != nil {
			return fmt.Errorf("sim: register %s: %w", m.Device.ID, err)
		}
		if i == 0 {
			if err := f.startProxy(creds.BrokerURL); err != nil {
				return err
			}
			root = []byte(creds.RootPublicKey)
		}
		pub, err := signing.ParsePublicKeyPEM(root)
		if err != nil {
			return fmt.Errorf("sim: root public key of %s: %w", m.Device.ID, err)
		}
		broker := creds.BrokerURL
		var dial func(context.Context) (net.Conn, error)
		switch {
		case f.proxy != nil:
			broker = f.proxy.URL()
		case f.opts.BrokerURL != "":
			broker = f.opts.BrokerURL
		}
		if f.opts.Transport == TransportMemory {
			dial = f.dialBroker
			if f.proxy != nil {
				dial = f.proxy.Dial
			}
		}
		m.opts = agent.Options{
			DeviceID:           m.Device.ID,
			BrokerURL:          broker,
			MQTTDial:           dial,
			Username:           creds.Username,
			Password:           creds.Password,
			TopicPrefix:        creds.TopicPrefix,
			RootPublicKey:      pub,
			Hardware:           m.Device.Labels["hw"],
			DataDir:            f.agentDir(m.Device.ID),
			Store:              f.kv.Namespace(m.Device.ID),
			Runtime:            f.rt,
			HeartbeatInterval:  f.opts.HeartbeatInterval,
			FetchRetryInterval: f.opts.FetchRetryInterval,
			Version:            "fleet-sim",
			Logger:             agentLogger(f.opts.AgentLogger, m.Device.ID),
			Clock:              m.now,
		}
		if f.opts.Peers != nil && f.opts.Peers(m.Device) {
			m.opts.Peers = agent.PeerOptions{Listen: "127.0.0.1:0", ServeFilter: m.serveFilter, Tune: f.lan.Tune(m.Device.ID)}
			sharing++
		}
	}
	f.lan.crowded = sharing > crowdedLAN
	if f.lan.crowded {
		for _, m := range f.members {
			if m.opts.Peers.Listen != "" {
				m.opts.Peers.StallTimeout = crowdedStall
				m.opts.Peers.PeerTimeout = crowdedPeerTimeout
			}
		}
	}
	if f.proxy != nil {
		sites := make(map[string]string, len(f.members))
		for _, m := range f.members {
			if s := m.Device.Labels["site"]; s != "" {
				sites[m.Device.ID] = s
			}
		}
		f.proxy.SetSites(sites, f.opts.WANPerSite)
	}
	return nil
}

// crowdedLAN is the number of sharing agents in one process above which
// their memberlist failure detection is relaxed (LAN.crowded), and their
// downloads wait longer for a slow peer (crowdedPeerTimeout) or a site that
// delivers nothing (crowdedStall) before they turn to the broker: hundreds
// of agents sharing a few cores, each getting a fraction of a CPU, wait
// seconds for the scheduler where a device with its own CPU does not. With
// the device defaults (10 s each), 220 agents beside two test runs
// (goroutine scheduling p99 1.6 s) left 228 chunks to the broker as "site
// stalled" while their sites were delivering.
const (
	crowdedLAN         = 50
	crowdedStall       = 30 * time.Second
	crowdedPeerTimeout = 20 * time.Second
)

// LAN is the sharing agents' local network (partitions).
func (f *Fleet) LAN() *LAN { return f.lan }

// SetLying makes the member's agent corrupt every chunk it serves its
// peers (true) or serve them as they are (false); it takes effect at once.
func (m *Member) SetLying(on bool) { m.lying.Store(on) }

// Sharing reports whether the member's agent shares with its site.
func (m *Member) Sharing() bool { return m.opts.Peers.Listen != "" }

// serveFilter is the member's agent's PeerOptions.ServeFilter.
func (m *Member) serveFilter(_ string, _ uint32, b []byte) []byte {
	if !m.lying.Load() || len(b) == 0 {
		return b
	}
	c := append([]byte(nil), b...)
	c[len(c)/2] ^= 0xff
	return c
}

// now is the member's clock: the fleet's (Options.Clock) plus its injected
// skew.
func (m *Member) now() time.Time { return m.clock.Now().Add(time.Duration(m.skew.Load())) }

// SkewClock sets how far the member's clock is off (negative: behind). It
// takes effect at once, also on a running agent.
func (m *Member) SkewClock(d time.Duration) { m.skew.Store(int64(d)) }

func (f *Fleet) startProxy(brokerURL string) error {
	target := f.opts.BrokerURL
	if target == "" {
		target = brokerURL
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("sim: broker URL %q: want tcp://host:port", target)
	}
	if p := u.Port(); p != "" {
		_, _ = fmt.Sscan(p, &f.brokerPort)
	}
	if !f.opts.Proxy {
		return nil
	}
	if f.opts.Transport == TransportMemory {
		f.proxy = NewMemoryProxy(f.dialBroker, f.opts.Logger)
		return nil
	}
	if u.Scheme != "tcp" && u.Scheme != "mqtt" {
		return fmt.Errorf("sim: the proxy speaks plain TCP; broker URL %q is %s", target, u.Scheme)
	}
	p, err := NewProxy(u.Host, f.opts.Logger)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	f.proxy = p
	return nil
}

// StartAgents starts every agent, StartParallel at a time, after Prepare;
// it returns once all are ready.
func (f *Fleet) StartAgents(ctx context.Context) error {
	sem := make(chan struct{}, f.opts.StartParallel)
	var wg sync.WaitGroup
	errs := make([]error, len(f.members))
	for i, m := range f.members {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = m.start(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// start runs a new agent for the member and waits until it is ready.
func (m *Member) start(ctx context.Context) error {
	a, err := agent.New(m.opts)
	if err != nil {
		return fmt.Errorf("sim: agent %s: %w", m.Device.ID, err)
	}
	a.SetPhaseHook(m.observe(a)) // before Run: no entry goes uncounted
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { // owned by stop, which waits on done
		// Labelled: every goroutine the agent starts carries the label,
		// so LeakCheck can count the agents' own (agentGoroutines).
		pprof.Do(actx, pprof.Labels(agentLabel, "1"), func(ctx context.Context) { done <- a.Run(ctx) })
	}()
	m.mu.Lock()
	m.cancel, m.done = cancel, done
	m.mu.Unlock()
	select {
	case <-a.Ready():
		// Published only now: Agent.Status races with the agent's restore
		// before Ready. The agent it replaces has stopped: its count of
		// chunks is final.
		m.mu.Lock()
		if m.cur != nil {
			m.chunksBefore += m.cur.ChunksReceived()
		}
		m.cur = a
		m.mu.Unlock()
		return nil
	case err := <-done:
		done <- err
		return fmt.Errorf("sim: agent %s stopped while starting: %w", m.Device.ID, err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// agentStopTimeout bounds how long one agent may take to stop;
// killStopTimeout how long a killed one may (Kill is a chaos tool, and a
// soak on a machine with a load average of 20 saw a stop take 19 s: a
// kill that gives up leaves the device without an agent).
const (
	agentStopTimeout = 30 * time.Second
	killStopTimeout  = 3 * time.Minute
)

// stop stops the member's agent and waits for it; it is a no-op when the
// agent is not running.
func (m *Member) stop() error { return m.stopWithin(agentStopTimeout) }

// stopWithin is stop with its own bound.
func (m *Member) stopWithin(limit time.Duration) error {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel, m.done = nil, nil
	m.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("sim: agent %s: %w", m.Device.ID, err)
		}
		return nil
	case <-time.After(limit):
		return fmt.Errorf("sim: agent %s did not stop within %v%s", m.Device.ID, limit, dumpGoroutines(m.opts.DataDir))
	}
}

// dumpGoroutines writes every goroutine's stack to dir/stop-timeout.goroutines,
// for an agent that did not stop: what it was waiting on is the diagnosis.
// It returns a note naming the file, or why there is none.
func dumpGoroutines(dir string) string {
	path := filepath.Join(dir, "stop-timeout.goroutines")
	f, err := os.Create(path)
	if err != nil {
		return fmt.Sprintf(" (no goroutine dump: %v)", err)
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 2); err != nil {
		return fmt.Sprintf(" (goroutine dump: %v)", err)
	}
	return "; goroutines: " + path
}

// Restart stops the device's agent (as a process kill would, without a
// final report) and starts a fresh one on the same state and files.
func (f *Fleet) Restart(ctx context.Context, id string) error {
	return f.RestartAfter(ctx, id, 0)
}

// RestartAfter is Restart with the device down for down (real time)
// between the stop and the start.
func (f *Fleet) RestartAfter(ctx context.Context, id string, down time.Duration) error {
	m := f.byID[id]
	if m == nil {
		return fmt.Errorf("sim: restart: no device %q", id)
	}
	if err := m.stop(); err != nil {
		return err
	}
	m.mu.Lock()
	m.restarts++
	m.mu.Unlock()
	f.counts.restarts.Add(1)
	if down > 0 {
		select {
		case <-time.After(down):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return m.start(ctx)
}

// Kill ends the device's agent as kill -9 would, as far as one process
// can, and starts a fresh one on the same state and files. Its link to
// the broker is cut first and its reconnects refused, so nothing it does
// on its way out reaches the broker: no DISCONNECT (the broker publishes
// its will), no last report or acknowledgement; whatever it was doing is
// dropped where it stood (a phase hook returns as at a kill, see
// agent.PhaseHook), and what it had persisted is all the next agent
// finds. A write torn half-way is beyond it: the agent's own crash tests
// kill a real process for that. It needs the proxy (Options.Proxy).
func (f *Fleet) Kill(ctx context.Context, id string) error {
	m := f.byID[id]
	if m == nil {
		return fmt.Errorf("sim: kill: no device %q", id)
	}
	if f.proxy == nil {
		return errors.New("sim: kill needs the proxy (Options.Proxy) to cut the link first")
	}
	t0 := time.Now()
	release := f.proxy.hold(id)
	err := m.stopWithin(killStopTimeout)
	release()
	if err != nil {
		return err
	}
	stopped := time.Since(t0)
	m.mu.Lock()
	m.restarts++
	m.mu.Unlock()
	f.counts.restarts.Add(1)
	err = m.start(ctx)
	f.log.Info("agent killed and restarted", "device", id, "stop", stopped, "start", time.Since(t0)-stopped, "err", err)
	return err
}

// ControlPlaneDir is the in-process control plane's data directory (its
// store is DataDir/db); "" with a remote one.
func (f *Fleet) ControlPlaneDir() string {
	if f.opts.Remote != nil {
		return ""
	}
	return filepath.Join(f.opts.Dir, "cp")
}

// StopAgents stops every agent and waits for them, leaving the control
// plane running (benchmarks measure a baseline after the agents).
func (f *Fleet) StopAgents() error {
	var errs []error
	var mu sync.Mutex
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, m := range f.members {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := m.stop(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stop stops every agent, the proxy, the in-process control plane, the
// shared store and (if the fleet opened it) the runtime, and waits for all
// of them. It is idempotent.
func (f *Fleet) Stop() error {
	f.stopOnce.Do(func() {
		var errs []error
		if err := f.StopAgents(); err != nil {
			errs = append(errs, err)
		}
		if f.proxy != nil {
			f.proxy.Close()
		}
		if f.opts.Remote != nil {
			f.opts.Remote.CloseIdleConnections()
		}
		switch srv := f.Server(); {
		case srv != nil && f.opts.Transport == TransportMemory:
			f.brokerConnsLeft = waitMemoryConns(srv, 5*time.Second)
		case srv != nil && f.brokerPort > 0:
			f.brokerConnsLeft = waitBrokerConns(f.brokerPort, 5*time.Second)
		}
		if err := f.stopControlPlane(); err != nil {
			errs = append(errs, err)
		}
		if f.db != nil {
			if err := f.db.Close(); err != nil {
				errs = append(errs, fmt.Errorf("sim: close store: %w", err))
			}
		}
		if f.ownRT && f.rt != nil {
			if err := f.rt.Close(); err != nil {
				errs = append(errs, fmt.Errorf("sim: close runtime: %w", err))
			}
		}
		f.stopErr = errors.Join(errs...)
	})
	return f.stopErr
}

// waitMemoryConns polls until the broker's in-memory connections are
// closed or timeout passes, and returns how many connections are left.
func waitMemoryConns(srv *controlplane.Server, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := srv.BrokerInMemoryConns()
		if n <= 0 || time.Now().After(deadline) {
			return int(n+1) / 2 // two ends per connection; a half-closed one counts
		}
		time.Sleep(20 * time.Millisecond) // polling: nothing signals "closed"
	}
}

// LeakReport is what LeakCheck found.
type LeakReport struct {
	GoroutinesBefore int `json:"goroutines_before"`
	GoroutinesAfter  int `json:"goroutines_after"`
	// AgentGoroutines is the goroutines started by the agents (through
	// their runs) still alive; with a remote control plane it is what is
	// checked, since the process may hold that control plane too.
	AgentGoroutines int `json:"agent_goroutines_after"`
	// BrokerConns is the number of client connections the in-process
	// broker still had once every agent stopped (-1: not measured).
	BrokerConns int `json:"broker_connections_after_agents_stopped"`
	// ProxyConns is the number of proxied connections still open.
	ProxyConns int `json:"proxy_connections_open"`
}

// agentLabel is the pprof label on every goroutine an agent of the fleet
// starts.
const agentLabel = "edgefleet_sim_agent"

// agentGoroutines counts the live goroutines carrying agentLabel, from the
// goroutine profile (records of "N @ ..." with their labels).
func agentGoroutines() int {
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		return 0
	}
	n, count := 0, 0
	for line := range strings.Lines(b.String()) {
		if c, _, ok := strings.Cut(line, " @ "); ok {
			count, _ = strconv.Atoi(c)
			continue
		}
		if strings.HasPrefix(line, "# labels: ") && strings.Contains(line, `"`+agentLabel+`":"1"`) {
			n += count
		}
	}
	return n
}

// ErrLeak is wrapped by LeakCheck's error.
var ErrLeak = errors.New("leak")

// LeakCheck, after Stop, waits up to timeout for the goroutine count to
// return to what it was before Start, and checks that no broker or proxy
// connection is left.
func (f *Fleet) LeakCheck(timeout time.Duration) (LeakReport, error) {
	r := LeakReport{GoroutinesBefore: f.baseline, BrokerConns: f.brokerConnsLeft}
	if f.proxy != nil {
		r.ProxyConns = f.proxy.Open()
	}
	// Remote: the process may also run the control plane (a test, an
	// embedding program), whose goroutines come and go in the process's
	// count; the agents' own are what this run owns.
	remote := f.opts.Remote != nil
	deadline := time.Now().Add(timeout)
	for {
		r.GoroutinesAfter = runtime.NumGoroutine()
		r.AgentGoroutines = agentGoroutines()
		settled := r.AgentGoroutines == 0 && (remote || r.GoroutinesAfter <= r.GoroutinesBefore)
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling: nothing signals "goroutines exited"
	}
	var errs []error
	if r.AgentGoroutines > 0 {
		errs = append(errs, fmt.Errorf("%w: %d goroutines the agents started are still running", ErrLeak, r.AgentGoroutines))
	} else if !remote && r.GoroutinesAfter > r.GoroutinesBefore {
		errs = append(errs, fmt.Errorf("%w: %d goroutines after the run, %d before", ErrLeak, r.GoroutinesAfter, r.GoroutinesBefore))
	}
	if r.BrokerConns > 0 {
		errs = append(errs, fmt.Errorf("%w: the broker still had %d client connections after every agent stopped", ErrLeak, r.BrokerConns))
	}
	if r.ProxyConns > 0 {
		errs = append(errs, fmt.Errorf("%w: %d proxied connections still open", ErrLeak, r.ProxyConns))
	}
	return r, errors.Join(errs...)
}

// agentLogger is the logger of one simulated agent: every line names its
// device. nil stays nil (the agent discards its logs).
func agentLogger(l *slog.Logger, device string) *slog.Logger {
	if l == nil {
		return nil
	}
	return l.With("device", device)
}
