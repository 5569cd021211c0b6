package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TelemetryOptions configure Telemetry. Zero values are documented
// defaults.
type TelemetryOptions struct {
	Sizes []int
	// Duration is the measured window once every agent reports; default 30s.
	Duration time.Duration
	// Warmup runs before the window (traffic on, reports flowing); default 3s.
	Warmup time.Duration
	// Interval is the agents' HeartbeatInterval (one telemetry report each
	// per interval) and the baseline publishers' period; default 1s.
	Interval time.Duration
	// Rate is inferences per device per second, so that every report
	// carries a monitoring report; default 2.
	Rate float64
	// StoreOnDisk puts the agents' shared store (and so their telemetry
	// outboxes, one synced write per report) in one badger on disk; by
	// default it is in memory: on one machine the shared disk, not the
	// control plane, limits thousands of agents (a device has its own).
	StoreOnDisk bool
	// Transport is sim.TransportTCP or sim.TransportMemory (default); the
	// probe and the baseline's publishers connect the same way.
	Transport  string
	Dir        string
	ORTLibrary string
	Progress   io.Writer
}

// TelemetryResult is one fleet size's telemetry ingest against its
// baseline.
type TelemetryResult struct {
	N              int     `json:"n"`
	WindowSeconds  float64 `json:"window_seconds"`
	OfferedPerSec  float64 `json:"offered_reports_per_second"` // N / interval
	ProducedPerSec float64 `json:"produced_reports_per_second"`
	IngestedPerSec float64 `json:"ingested_reports_per_second"`
	// Delivered is how many reports reached the control plane in the window
	// (the advance of the last report seq it recorded per device; an agent
	// sends its reports in seq order), Ingested how many it aggregated
	// (monitor.Stats().Ingested: every telemetry message, with or without
	// monitoring content) and Lost the difference: reports dropped on the
	// way and not yet resent (agents resend what the control plane did not
	// acknowledge). Produced is Delivered plus the growth of the agents'
	// outbox queues (reports waiting for their acknowledgement).
	Produced   uint64 `json:"produced_reports"`
	Delivered  uint64 `json:"delivered_reports"`
	Ingested   uint64 `json:"ingested_reports"`
	Duplicates uint64 `json:"duplicate_reports"`
	Lost       int64  `json:"lost_reports"`
	// PayloadsDropped counts device payloads the control plane dropped in
	// the window (Server.Dropped).
	PayloadsDropped uint64 `json:"payloads_dropped"`
	// Backlog is the reports still queued in the agents' outboxes at the
	// end of the window, BacklogStart at its start (-1: not measured, the
	// agents' store was too busy to read them within 5 s).
	Backlog      int `json:"agent_outbox_backlog"`
	BacklogStart int `json:"agent_outbox_backlog_at_start"`
	// LagP50, LagP99 and LagMax are the seconds from a probe device's
	// publish to the control plane recording its report, one probe report
	// per interval alongside the fleet's; LagSamples is how many.
	LagP50     float64 `json:"lag_p50_seconds"`
	LagP99     float64 `json:"lag_p99_seconds"`
	LagMax     float64 `json:"lag_max_seconds"`
	LagSamples int     `json:"lag_samples"`
	LagMissed  int     `json:"lag_probes_not_seen"`
	// CPU is the process's user+system CPU seconds per wall second in the
	// window (2.0 = both cores busy).
	CPU float64 `json:"cpu_cores"`
	// Inferences is the traffic's successful inferences in the window.
	Inferences uint64 `json:"inferences"`

	PayloadBytes       int     `json:"payload_bytes"` // mean agent telemetry payload, also the baseline's
	BaselinePerSec     float64 `json:"baseline_received_per_second"`
	BaselineOffered    float64 `json:"baseline_offered_per_second"`
	BaselineLost       int64   `json:"baseline_lost"` // acknowledged publishes the subscriber never got
	BaselineCPU        float64 `json:"baseline_cpu_cores"`
	Ratio              float64 `json:"ratio"` // IngestedPerSec / BaselinePerSec
	StartSeconds       float64 `json:"fleet_start_seconds"`
	DeploySeconds      float64 `json:"deploy_to_all_serving_seconds"`
	BaselineConnectSec float64 `json:"baseline_connect_seconds"`
}

// probeID is the extra device whose reports time the ingest lag.
const probeID = "probe-telemetry"

func (o *TelemetryOptions) defaults() {
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	if o.Warmup <= 0 {
		o.Warmup = 3 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 2
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Transport == "" {
		o.Transport = sim.TransportMemory
	}
}

// Telemetry measures, per fleet size, how many telemetry reports per
// second N real agents reporting every Interval get ingested by the
// in-process control plane, and in the same run how many messages of the
// same size at the same rate N raw MQTT publishers get through a broker of
// the same package and settings to one counting subscriber.
func Telemetry(ctx context.Context, o TelemetryOptions) ([]TelemetryResult, error) {
	o.defaults()
	rt, art, err := runtimeAndModel(o.ORTLibrary)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	size, err := telemetryPayloadSize(ctx, o, rt, art)
	if err != nil {
		return nil, fmt.Errorf("telemetry: payload size: %w", err)
	}
	store := "in memory"
	if o.StoreOnDisk {
		store = "on disk, synced"
	}
	fmt.Fprintf(o.Progress, "telemetry: agent reports are %d bytes on average (measured on the wire); window %v, report interval %v, %.0f inferences/s per device, transport %s, agent store %s\n",
		size, o.Duration, o.Interval, o.Rate, o.Transport, store)
	fmt.Fprintf(o.Progress, "| N | offered /s | produced /s | ingested /s | lost | outbox backlog (start → end) | lag p50 / p99 / max s | CPU cores | raw baseline /s (lost) | baseline CPU | ratio ingested / baseline |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var out []TelemetryResult
	for _, n := range o.Sizes {
		r, err := telemetryOne(ctx, o, n, rt, art, size)
		if err != nil {
			return out, fmt.Errorf("telemetry N=%d: %w", n, err)
		}
		fmt.Fprintf(o.Progress, "| %d | %.0f | %.1f | %.1f | %d | %d → %d | %.3f / %.3f / %.3f | %.2f | %.1f (%d) | %.2f | **%.3f** |\n",
			r.N, r.OfferedPerSec, r.ProducedPerSec, r.IngestedPerSec, r.Lost, r.BacklogStart, r.Backlog, r.LagP50, r.LagP99, r.LagMax, r.CPU,
			r.BaselinePerSec, r.BaselineLost, r.BaselineCPU, r.Ratio)
		out = append(out, r)
	}
	return out, nil
}

// cpuSeconds is the process's user plus system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// ingestSnapshot is what the control plane recorded at one moment: the
// monitor's ingest counters, the sum of the last report seq per device,
// and its dropped payloads.
type ingestSnapshot struct {
	at        time.Time
	ingested  uint64
	dups      uint64
	seqSum    uint64
	probeSeq  uint64
	dropped   uint64
	cpu       float64
	inference uint64
}

// snapshot reads the counters, retrying a few times for a moment where
// none moved while reading (the monitor counts a report just before the
// registry records its seq).
func snapshot(srv *controlplane.Server, tr *sim.Traffic) (ingestSnapshot, error) {
	read := func() (ingestSnapshot, error) {
		st := srv.Monitor().Stats()
		devs, err := srv.Devices("")
		if err != nil {
			return ingestSnapshot{}, err
		}
		s := ingestSnapshot{ingested: st.Ingested, dups: st.Duplicates, dropped: srv.Dropped()}
		for _, d := range devs {
			if d.Telemetry == nil {
				continue
			}
			if d.ID == probeID {
				s.probeSeq = d.Telemetry.Seq
				continue
			}
			s.seqSum += d.Telemetry.Seq
		}
		return s, nil
	}
	var s ingestSnapshot
	for range 5 {
		a, err := read()
		if err != nil {
			return s, err
		}
		time.Sleep(2 * time.Millisecond)
		b, err := read()
		if err != nil {
			return s, err
		}
		s = b
		if a == b {
			break
		}
	}
	s.at, s.cpu = time.Now(), cpuSeconds()
	if tr != nil {
		s.inference = tr.Stats().OK
	}
	return s, nil
}

func telemetryOne(ctx context.Context, o TelemetryOptions, n int, rt *infer.Runtime, art *fraud.Artifact, payloadSize int) (TelemetryResult, error) {
	r := TelemetryResult{N: n, PayloadBytes: payloadSize, OfferedPerSec: float64(n) / o.Interval.Seconds()}
	devs := devicesFor(n)
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(o.Dir, fmt.Sprintf("telemetry-%d", n)),
		Devices:            devs,
		Runtime:            rt,
		InMemoryStore:      !o.StoreOnDisk,
		Transport:          o.Transport,
		HeartbeatInterval:  o.Interval,
		FetchRetryInterval: 2 * time.Second,
	})
	if err != nil {
		return r, err
	}
	defer f.Stop()
	if r.StartSeconds, err = startTimed(ctx, f); err != nil {
		return r, err
	}
	srv := f.Server()
	t0 := time.Now()
	if err := deployAll(ctx, f, "1", art, 15*time.Minute); err != nil {
		return r, err
	}
	r.DeploySeconds = time.Since(t0).Seconds()
	tr, err := f.StartTraffic(sim.TrafficOptions{Model: "fraud", Rate: o.Rate, Seed: 1})
	if err != nil {
		return r, err
	}
	defer tr.Stop()
	probe, err := newProbe(ctx, srv, payloadSize, o.Transport == sim.TransportMemory)
	if err != nil {
		return r, fmt.Errorf("probe: %w", err)
	}
	defer probe.close()
	if err := sleepCtx(ctx, o.Warmup); err != nil {
		return r, err
	}

	// The backlog first: reading an agent's outbox waits for its store
	// write in progress, which takes long when the store is the
	// bottleneck; then it is not measured (-1).
	var bdone0, bdone1 <-chan struct{}
	r.BacklogStart, bdone0 = backlogWithin(f, 5*time.Second)
	defer func() { <-bdone0 }()
	s0, err := snapshot(srv, tr)
	if err != nil {
		return r, err
	}
	pctx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	go func() { // owned here: stopProbe and <-probeDone below
		defer close(probeDone)
		probe.run(pctx, srv, o.Interval)
	}()
	werr := sleepCtx(ctx, o.Duration)
	stopProbe()
	<-probeDone
	if werr != nil {
		return r, werr
	}
	s1, err := snapshot(srv, tr)
	if err != nil {
		return r, err
	}
	r.Backlog, bdone1 = backlogWithin(f, 5*time.Second)
	defer func() { <-bdone1 }()
	el := s1.at.Sub(s0.at).Seconds()
	probeMsgs := s1.probeSeq - s0.probeSeq
	r.WindowSeconds = el
	r.Delivered = s1.seqSum - s0.seqSum
	r.Produced = r.Delivered
	if r.Backlog >= 0 && r.BacklogStart >= 0 {
		r.Produced = uint64(max(int64(r.Delivered)+int64(r.Backlog)-int64(r.BacklogStart), 0))
	}
	r.Ingested = (s1.ingested - s0.ingested) - min(probeMsgs, s1.ingested-s0.ingested)
	r.Duplicates = s1.dups - s0.dups
	r.Lost = int64(r.Delivered) - int64(r.Ingested)
	r.PayloadsDropped = s1.dropped - s0.dropped
	r.ProducedPerSec = float64(r.Produced) / el
	r.IngestedPerSec = float64(r.Ingested) / el
	r.CPU = (s1.cpu - s0.cpu) / el
	r.Inferences = s1.inference - s0.inference
	lags, missed := probe.results()
	r.LagSamples, r.LagMissed = len(lags), missed
	if len(lags) > 0 {
		slices.Sort(lags)
		r.LagP50, r.LagP99, r.LagMax = lags[len(lags)/2], lags[min(len(lags)-1, len(lags)*99/100)], lags[len(lags)-1]
	}
	tr.Stop()
	probe.close()
	// A backlog read still waiting is left to finish while the agents
	// stop (it only needs their outbox mutex); the defers wait for it.
	if err := f.Stop(); err != nil {
		return r, err
	}

	b, err := telemetryBaseline(ctx, devs, payloadSize, o.Interval, o.Warmup, o.Duration, o.Transport == sim.TransportMemory)
	if err != nil {
		return r, fmt.Errorf("baseline: %w", err)
	}
	r.BaselinePerSec, r.BaselineOffered, r.BaselineLost, r.BaselineCPU, r.BaselineConnectSec = b.perSec, b.offered, b.lost, b.cpu, b.connect
	if r.BaselinePerSec > 0 {
		r.Ratio = r.IngestedPerSec / r.BaselinePerSec
	}
	return r, nil
}

// backlog is the number of reports queued in the agents' outboxes.
func backlog(f *sim.Fleet) int {
	n := 0
	for _, m := range f.Members() {
		if a := m.Agent(); a != nil {
			n += a.QueuedReports()
		}
	}
	return n
}

// backlogWithin is backlog, or -1 when reading it takes longer than d;
// done is closed once the read finished.
func backlogWithin(f *sim.Fleet, d time.Duration) (n int, done <-chan struct{}) {
	ch, fin := make(chan int, 1), make(chan struct{})
	go func() { // owned by the caller, which waits on done
		defer close(fin)
		ch <- backlog(f)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case n = <-ch:
		return n, fin
	case <-t.C:
		return -1, fin
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// probeTelemetry is a telemetry report of about size bytes with a
// fraud-sized monitoring report (the shape of
// BenchmarkIngestRatio's) for model fraud@1.
func probeTelemetry(seq uint64, size int) []byte {
	r := &efpb.MonitorReport{ModelName: "fraud", ModelVersion: "1", Rows: 2, WindowEndUnixMs: time.Now().UnixMilli(),
		PredictionCounts: make([]uint64, 10), LatencyEdgesUs: make([]float64, 16), LatencyCounts: make([]uint64, 17),
		CalibrationCounts: make([]uint64, 10), CalibrationPositives: make([]uint64, 10), Binary: true}
	for i := range fraud.NumFeatures {
		r.Features = append(r.Features, &efpb.FeatureSketch{Name: fmt.Sprintf("f%d", i), Counts: make([]uint64, 10)})
	}
	t := &efpb.Telemetry{ProtocolVersion: efpb.ProtocolVersion1, DeviceId: probeID, Seq: seq, TimeUnixMs: time.Now().UnixMilli(),
		AgentVersion: "probe", Monitoring: []*efpb.MonitorReport{r}}
	p, _ := proto.Marshal(t)
	for range 3 { // pad the agent version until the report is the agents' size
		if len(p) >= size {
			break
		}
		t.AgentVersion += strings.Repeat("x", size-len(p))
		p, _ = proto.Marshal(t)
	}
	return p
}

// probe is a registered device that publishes one report per interval
// with plain MQTT and times until the control plane has recorded it.
type probe struct {
	c    paho.Client
	size int

	mu     sync.Mutex // guards lags and missed
	lags   []float64
	missed int
	once   sync.Once
}

func newProbe(ctx context.Context, srv *controlplane.Server, size int, inMemory bool) (*probe, error) {
	creds, err := srv.RegisterDevice(probeID, map[string]string{"site": "probe"})
	if err != nil {
		return nil, err
	}
	o := paho.NewClientOptions().AddBroker(creds.BrokerURL).SetClientID(probeID).SetUsername(creds.Username).SetPassword(creds.Password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true)
	if inMemory {
		o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) { return srv.DialBroker(ctx) })
	}
	c := paho.NewClient(o)
	if t := c.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("connect: %v", t.Error())
	}
	return &probe{c: c, size: size}, nil
}

func (p *probe) close() { p.once.Do(func() { p.c.Disconnect(0) }) }

func (p *probe) run(ctx context.Context, srv *controlplane.Server, interval time.Duration) {
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		sent := time.Now()
		t := p.c.Publish(scheme.Telemetry(probeID), 1, false, probeTelemetry(seq, p.size))
		seen := false
		for deadline := sent.Add(interval); time.Now().Before(deadline) && ctx.Err() == nil; {
			if d, err := srv.Device(probeID); err == nil && d.Telemetry != nil && d.Telemetry.Seq >= seq {
				p.mu.Lock()
				p.lags = append(p.lags, d.Telemetry.Received.Sub(sent).Seconds())
				p.mu.Unlock()
				seen = true
				break
			}
			time.Sleep(5 * time.Millisecond) // polling: the registry has no change feed
		}
		if !seen && ctx.Err() == nil {
			p.mu.Lock()
			p.missed++
			p.mu.Unlock()
		}
		t.WaitTimeout(time.Second)
	}
}

func (p *probe) results() ([]float64, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lags), p.missed
}

// telemetryPayloadSize runs two agents behind the counting proxy with the
// benchmark's interval and traffic and returns the mean telemetry payload
// size: bytes the agents sent in a window, over the reports ingested in
// it, less the MQTT PUBLISH framing.
func telemetryPayloadSize(ctx context.Context, o TelemetryOptions, rt *infer.Runtime, art *fraud.Artifact) (int, error) {
	devs := devicesFor(2)
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(o.Dir, "telemetry-calibrate"),
		Devices:            devs,
		Runtime:            rt,
		Proxy:              true,
		InMemoryStore:      !o.StoreOnDisk,
		Transport:          o.Transport,
		HeartbeatInterval:  o.Interval,
		FetchRetryInterval: 2 * time.Second,
	})
	if err != nil {
		return 0, err
	}
	defer f.Stop()
	if err := f.Start(ctx); err != nil {
		return 0, err
	}
	if err := deployAll(ctx, f, "1", art, time.Minute); err != nil {
		return 0, err
	}
	tr, err := f.StartTraffic(sim.TrafficOptions{Model: "fraud", Rate: o.Rate, Seed: 1})
	if err != nil {
		return 0, err
	}
	defer tr.Stop()
	if err := sleepCtx(ctx, 2*o.Interval+500*time.Millisecond); err != nil {
		return 0, err
	}
	s0, err := snapshot(f.Server(), nil)
	if err != nil {
		return 0, err
	}
	out0 := proxyOut(f)
	if err := sleepCtx(ctx, 5*o.Interval); err != nil {
		return 0, err
	}
	s1, err := snapshot(f.Server(), nil)
	if err != nil {
		return 0, err
	}
	out1 := proxyOut(f)
	msgs := s1.ingested - s0.ingested
	if msgs == 0 {
		return 0, errors.New("no telemetry ingested in the calibration window")
	}
	pkt := float64(out1-out0) / float64(msgs)
	topic := topics.Scheme{Prefix: topics.DefaultPrefix}.Telemetry(devs[0].ID)
	// PUBLISH QoS 1: fixed header byte, remaining length (2 bytes for
	// 128..16383), topic length, topic, packet id.
	return max(int(pkt+0.5)-(1+2+2+len(topic)+2), 1), nil
}

func proxyOut(f *sim.Fleet) uint64 {
	var out uint64
	for _, m := range f.Members() {
		_, o := f.Proxy().Bytes(m.Device.ID)
		out += o
	}
	return out
}

type baselineResult struct {
	perSec, offered, cpu, connect float64
	lost                          int64
}

// telemetryBaseline connects one raw paho publisher per device to a broker
// of the same package and settings as the control plane's, subscribes one
// inline subscriber that only counts (the control plane's ingest is an
// inline subscription too), lets every publisher send a size-byte QoS 1
// message per interval (each at its own phase) and returns the rate the
// subscriber received in a window of the given duration.
func telemetryBaseline(ctx context.Context, devs []sim.Device, size int, interval, warmup, window time.Duration, inMemory bool) (baselineResult, error) {
	var res baselineResult
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Scheme: scheme, Auth: allowAll{}, InMemory: inMemory})
	if err != nil {
		return res, err
	}
	if err := b.Start(); err != nil {
		return res, err
	}
	defer b.Close()
	var received, acked atomic.Uint64
	unsub, err := b.Subscribe(scheme.AllTelemetry(), func(string, []byte, string) { received.Add(1) })
	if err != nil {
		return res, err
	}
	defer unsub()
	payload := make([]byte, size)
	_, _ = rand.Read(payload)

	clients := make([]paho.Client, len(devs))
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Disconnect(0)
			}
		}
	}()
	t0 := time.Now()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	errs := make([]error, len(devs))
	for i, d := range devs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			o := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(d.ID).SetUsername(d.ID).SetPassword("x").
				SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(true)
			if inMemory {
				o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) { return b.DialInMemory(ctx) })
			}
			c := paho.NewClient(o)
			if t := c.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
				errs[i] = fmt.Errorf("connect %s: %v", d.ID, t.Error())
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	res.connect = time.Since(t0).Seconds()

	pctx, stop := context.WithCancel(ctx)
	var pubs sync.WaitGroup
	for i, c := range clients {
		topic := scheme.Telemetry(devs[i].ID)
		phase := time.Duration(int64(interval) * int64(i) / int64(len(clients)))
		pubs.Go(func() {
			if sleepCtx(pctx, phase) != nil {
				return
			}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				// Like an agent's outbox: publish, wait for the PUBACK.
				t := c.Publish(topic, 1, false, payload)
				if t.WaitTimeout(10*time.Second) && t.Error() == nil {
					acked.Add(1)
				}
				select {
				case <-pctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	if err := sleepCtx(ctx, warmup); err != nil {
		stop()
		pubs.Wait()
		return res, err
	}
	r0, c0, w0 := received.Load(), cpuSeconds(), time.Now()
	werr := sleepCtx(ctx, window)
	r1, c1, el := received.Load(), cpuSeconds(), time.Since(w0).Seconds()
	stop()
	pubs.Wait()
	if werr != nil {
		return res, werr
	}
	res.perSec = float64(r1-r0) / el
	res.offered = float64(len(devs)) / interval.Seconds()
	res.cpu = (c1 - c0) / el
	// Drain: every acknowledged publish should reach the subscriber.
	for deadline := time.Now().Add(10 * time.Second); received.Load() < acked.Load() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // polling: a counter, no change feed
	}
	res.lost = int64(acked.Load()) - int64(received.Load())
	return res, nil
}
