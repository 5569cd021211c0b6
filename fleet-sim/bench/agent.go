package bench

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/oip"
)

// AgentOptions configure `fleet-sim bench agent`: one real agent process
// (the built binary) against an in-process control plane, measured from
// outside through /proc.
type AgentOptions struct {
	// AgentBin is the edgefleet-agent binary to run and measure.
	AgentBin string
	// ExecPrefix runs the binary through another program, e.g.
	// ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"] for an arm64 build.
	ExecPrefix []string
	// AgentORTLibrary is the agent's onnxruntime_library ("" searches next
	// to the binary, then $EDGEFLEET_ORT_LIB).
	AgentORTLibrary string
	// ORTLibrary is the control plane's onnxruntime (it checks uploads).
	ORTLibrary string
	// MemoryLimit is the agent's memory_limit ("" leaves it unset).
	MemoryLimit string
	// Inferences sent before the serving figure (default 10000).
	Inferences int
	// SwapModelBytes is the size of each of the two large models swapped
	// under load (default 100 MiB); 0 with SkipSwap skips that part.
	SwapModelBytes int
	SkipSwap       bool
	// Clients send inference requests during the swap (default 8); one of
	// them sends BigBatch rows per request (default 1024), the others one.
	Clients  int
	BigBatch int
	// Steady is how long the load runs before the swap, and again after
	// it, for the steady-state figures (default 10s).
	Steady time.Duration
	// Settle is how long RSS is sampled for the idle and serving figures
	// (the largest sample counts; default 3s).
	Settle   time.Duration
	Dir      string
	Progress io.Writer
}

func (o *AgentOptions) defaults() {
	if o.Inferences <= 0 {
		o.Inferences = 10000
	}
	if o.SwapModelBytes <= 0 {
		o.SwapModelBytes = 100 << 20
	}
	if o.Clients <= 0 {
		o.Clients = 8
	}
	if o.BigBatch <= 0 {
		o.BigBatch = 1024
	}
	if o.Steady <= 0 {
		o.Steady = 10 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 3 * time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// AgentResult is what `fleet-sim bench agent` measured.
type AgentResult struct {
	Binary      string `json:"binary"`
	Arch        string `json:"arch"`
	BinaryBytes int64  `json:"binary_bytes"`
	// Stripped says the binary carries no symbol table (-ldflags "-s -w").
	Stripped bool `json:"stripped"`

	// Idle: connected, no model assigned.
	// RSS is VmRSS; Anon its anonymous part (RssAnon: heaps, stacks), the
	// rest being pages of files (the binary, onnxruntime's code) that the
	// kernel may drop and read again.
	IdleRSS       uint64 `json:"idle_rss_bytes"`
	IdleAnon      uint64 `json:"idle_anon_bytes"`
	IdleORTLoaded bool   `json:"idle_onnxruntime_loaded"`
	// IdleReadyStatus is GET /v2/health/ready's status while idle.
	IdleReadyStatus int `json:"idle_ready_status"`
	// IdleGo and ServingGo are what the Go runtime accounts for and has not
	// released (heap objects, free heap it keeps, stacks, its metadata),
	// from the agent's edgefleet_agent_go_memory_bytes: mapped memory, an
	// upper bound of Go's share of Anon (pages never written are not
	// resident).
	IdleGo    uint64 `json:"idle_go_bytes"`
	ServingGo uint64 `json:"serving_go_bytes"`

	// Serving the fraud model after Inferences single-row inferences.
	Inferences       int    `json:"inferences"`
	ServingRSS       uint64 `json:"serving_rss_bytes"`
	ServingAnon      uint64 `json:"serving_anon_bytes"`
	ServingORTLoaded bool   `json:"serving_onnxruntime_loaded"`

	Swap *SwapResult `json:"swap,omitempty"`
}

// SwapResult is a large model replaced by another of the same size while
// Clients send requests.
type SwapResult struct {
	ModelBytes int    `json:"model_bytes"`
	Clients    int    `json:"clients"`
	BigBatch   int    `json:"big_batch"`
	Requests   uint64 `json:"requests"`
	Failed     uint64 `json:"failed"`
	// SteadyP99Ms is the p99 latency of the requests in the steady window
	// before the swap; SwapP99Ms of those started from the moment the agent
	// reported the new version verifying (downloaded) until a second after
	// the first answer from it (load, test vectors, swap, drain).
	SteadyP99Ms float64 `json:"steady_p99_ms"`
	SwapP99Ms   float64 `json:"swap_p99_ms"`
	SwapWindowS float64 `json:"swap_window_s"`
	SwapSamples int     `json:"swap_samples"`
	// SmallRSS is the agent serving the small fraud model (the serving
	// figure); OldRSS the steady state serving the old large model under
	// load; PeakRSS the largest RSS from the deploy of the new one until
	// the end of the run after it; AfterRSS the RSS after the swap and
	// another steady window; NewRSS a fresh agent process serving only the
	// new model under the same load (its steady state).
	SmallRSS uint64 `json:"small_rss_bytes"`
	OldRSS   uint64 `json:"old_rss_bytes"`
	PeakRSS  uint64 `json:"peak_rss_bytes"`
	// PeakPhase is the state the agent last reported when the largest
	// sample was taken (downloading, verifying, staging, swapped, after).
	PeakPhase string `json:"peak_phase"`
	AfterRSS  uint64 `json:"after_rss_bytes"`
	NewRSS    uint64 `json:"new_rss_bytes"`
	// PeakLimit is 1.1 × (OldRSS + ModelBytes): the agent serving the old
	// model plus the new model's size, plus 10 %.
	PeakLimit uint64 `json:"peak_limit_bytes"`
}

// Agent runs the agent benchmark.
func Agent(ctx context.Context, o AgentOptions) (*AgentResult, error) {
	o.defaults()
	if o.AgentBin == "" {
		return nil, errors.New("bench agent: --agent-bin is required (make build)")
	}
	res := &AgentResult{Binary: o.AgentBin, Inferences: o.Inferences}
	if err := describeBinary(o.AgentBin, res); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Progress, "agent binary %s (%s): %d bytes (%.2f MB), stripped %v\n",
		o.AgentBin, res.Arch, res.BinaryBytes, float64(res.BinaryBytes)/1e6, res.Stripped)

	rt, art, err := runtimeAndModel(o.ORTLibrary)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rt.Close() }()
	b := &agentBench{o: o, art: art}
	if err := b.startControlPlane(ctx, rt); err != nil {
		return nil, err
	}
	defer b.stopControlPlane()
	if err := b.addDevice(); err != nil {
		return nil, err
	}
	p, err := b.startAgent(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.stop() }()

	// Idle: connected, nothing assigned.
	if err := b.waitFor(ctx, 60*time.Second, p, "the agent to connect", func() (bool, error) {
		d, err := b.cp.Device(b.id)
		return d.Online, err
	}); err != nil {
		return nil, err
	}
	res.IdleRSS = p.maxRSS(ctx, o.Settle)
	res.IdleAnon = p.status("RssAnon")
	res.IdleORTLoaded = p.mapsLibrary("libonnxruntime")
	res.IdleReadyStatus = b.readyStatus(ctx)
	var goDetail string
	res.IdleGo, goDetail = b.goMemory(ctx)
	fmt.Fprintf(o.Progress, "idle (connected, no model): RSS %s (anonymous %s), onnxruntime loaded %v, /v2/health/ready %d\n",
		mib(res.IdleRSS), mib(res.IdleAnon), res.IdleORTLoaded, res.IdleReadyStatus)
	fmt.Fprintf(o.Progress, "  Go runtime accounts for %s (%s; mapped, not all of it touched)\n", mib(res.IdleGo), goDetail)
	fmt.Fprintf(o.Progress, "  RSS by mapping (MiB): %s\n", p.breakdown())

	// Serving the fraud model.
	if err := b.deploy(ctx, p, "1.0.0", art.ONNX); err != nil {
		return nil, err
	}
	if err := b.inferN(ctx, o.Inferences, 4); err != nil {
		return nil, err
	}
	res.ServingRSS = p.maxRSS(ctx, o.Settle)
	res.ServingAnon = p.status("RssAnon")
	res.ServingORTLoaded = p.mapsLibrary("libonnxruntime")
	res.ServingGo, goDetail = b.goMemory(ctx)
	fmt.Fprintf(o.Progress, "serving fraud after %d inferences: RSS %s (anonymous %s)\n", o.Inferences, mib(res.ServingRSS), mib(res.ServingAnon))
	fmt.Fprintf(o.Progress, "  Go runtime accounts for %s (%s; mapped, not all of it touched)\n", mib(res.ServingGo), goDetail)
	fmt.Fprintf(o.Progress, "  RSS by mapping (MiB): %s\n", p.breakdown())
	if o.SkipSwap {
		return res, p.stop()
	}
	sw, err := b.swap(ctx, p, res.ServingRSS)
	if err != nil {
		return nil, err
	}
	res.Swap = sw
	return res, nil
}

type agentBench struct {
	o    AgentOptions
	art  *fraud.Artifact
	cp   *controlplane.Server
	stop context.CancelFunc
	done chan error

	id, dir, cfg, infURL, metricsURL string
}

func (b *agentBench) startControlPlane(ctx context.Context, rt *infer.Runtime) error {
	srv, err := controlplane.New(controlplane.Options{
		DataDir:    filepath.Join(b.o.Dir, "controlplane"),
		APIListen:  "127.0.0.1:0",
		MQTTListen: "127.0.0.1:0",
		Runtime:    rt,
	})
	if err != nil {
		return fmt.Errorf("bench agent: %w", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	b.cp, b.stop, b.done = srv, cancel, make(chan error, 1)
	go func() { b.done <- srv.Run(cctx) }()
	select {
	case <-srv.Ready():
		return nil
	case err := <-b.done:
		return fmt.Errorf("bench agent: control plane: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *agentBench) stopControlPlane() {
	b.stop()
	<-b.done
}

func (b *agentBench) addDevice() error {
	b.id = "bench-agent"
	b.dir = filepath.Join(b.o.Dir, "agent")
	if err := os.MkdirAll(b.dir, 0o750); err != nil {
		return fmt.Errorf("bench agent: %w", err)
	}
	creds, err := b.cp.RegisterDevice(b.id, nil)
	if err != nil {
		return fmt.Errorf("bench agent: register: %w", err)
	}
	addr, err := freePort()
	if err != nil {
		return err
	}
	b.infURL = "http://" + addr
	cfg := agent.ConfigFor(creds, filepath.Join(b.dir, "data"), addr)
	cfg.ONNXRuntimeLibrary = b.o.AgentORTLibrary
	cfg.LogLevel = "warn"
	cfg.MemoryLimit = b.o.MemoryLimit
	cfg.InferenceMaxBatch = max(b.o.BigBatch, 1024)
	maddr, err := freePort()
	if err != nil {
		return err
	}
	cfg.MetricsListen = maddr
	b.metricsURL = "http://" + maddr + "/metrics"
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("bench agent: %w", err)
	}
	b.cfg = filepath.Join(b.dir, "agent.yaml")
	if err := os.WriteFile(b.cfg, raw, 0o600); err != nil {
		return fmt.Errorf("bench agent: %w", err)
	}
	return nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("bench agent: free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// agentProc is the running agent binary.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (b *agentBench) startAgent(ctx context.Context) (*agentProc, error) {
	argv := append(slices.Clone(b.o.ExecPrefix), b.o.AgentBin, "--config", b.cfg)
	logf, err := os.OpenFile(filepath.Join(b.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("bench agent: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("bench agent: start %s: %w", b.o.AgentBin, err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	if err := b.waitFor(ctx, 60*time.Second, p, "the inference API", func() (bool, error) {
		resp, err := http.Get(b.infURL + "/v2/health/live")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		_ = p.stop()
		return nil, err
	}
	return p, nil
}

// stop ends the agent with SIGTERM and waits for it.
func (p *agentProc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("bench agent: the agent did not stop within 30s of SIGTERM")
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return p.err
	}
	return nil
}

func (p *agentProc) procFile(name string) string {
	return fmt.Sprintf("/proc/%d/%s", p.cmd.Process.Pid, name)
}

// status reads a kB field of /proc/pid/status in bytes.
func (p *agentProc) status(field string) uint64 {
	b, err := os.ReadFile(p.procFile("status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (p *agentProc) rss() uint64 { return p.status("VmRSS") }

// maxRSS samples RSS for d and returns the largest sample.
func (p *agentProc) maxRSS(ctx context.Context, d time.Duration) uint64 {
	var peak uint64
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		peak = max(peak, p.rss())
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return max(peak, p.rss())
}

// breakdown is RSS by what is mapped: the largest files, anonymous
// memory, in MiB, for reading where memory went. Anonymous memory is split
// by who mapped it: glibc's malloc arenas (mapped MAP_NORESERVE, "nr" in
// VmFlags, plus the brk [heap]) hold onnxruntime's and the other C
// allocations; "[anon]" is the rest: the Go heap and runtime, thread stacks
// and C allocations large enough for malloc to map them on their own.
func (p *agentProc) breakdown() string {
	b, err := os.ReadFile(p.procFile("smaps"))
	if err != nil {
		return ""
	}
	by := map[string]uint64{}
	cur := ""
	var rss uint64
	flush := func(flags string) {
		if (cur == "[anon]" && strings.Contains(" "+flags+" ", " nr ")) || cur == "[heap]" {
			cur = "[malloc arenas]"
		}
		by[cur] += rss
		rss = 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			cur = "[anon]"
			if len(f) >= 6 {
				cur = filepath.Base(f[5])
			}
			continue
		}
		if len(f) >= 2 && f[0] == "Rss:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss = kb << 10
		}
		if len(f) >= 1 && f[0] == "VmFlags:" {
			flush(strings.Join(f[1:], " "))
		}
	}
	type kv struct {
		k string
		v uint64
	}
	var all []kv
	for k, v := range by {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return int(b.v>>10) - int(a.v>>10) })
	var parts []string
	for i, e := range all {
		if i == 8 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.1f", e.k, float64(e.v)/(1<<20)))
	}
	return strings.Join(parts, ", ")
}

// resetPeak restarts VmHWM from the current RSS (Linux clear_refs 5).
func (p *agentProc) resetPeak() error {
	return os.WriteFile(p.procFile("clear_refs"), []byte("5"), 0)
}

// mapsLibrary says whether a file whose name contains lib is mapped.
func (p *agentProc) mapsLibrary(lib string) bool {
	b, err := os.ReadFile(p.procFile("maps"))
	return err == nil && strings.Contains(string(b), lib)
}

// waitFor polls cond until it holds, the agent exits or limit passes.
func (b *agentBench) waitFor(ctx context.Context, limit time.Duration, p *agentProc, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-p.done:
			return fmt.Errorf("bench agent: the agent exited waiting for %s (%v; see %s)", what, p.err, filepath.Join(b.dir, "agent.log"))
		case <-ctx.Done():
			return fmt.Errorf("bench agent: waiting for %s: %w (last error %v)", what, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (b *agentBench) readyStatus(ctx context.Context) int {
	req, _ := http.NewRequestWithContext(ctx, "GET", b.infURL+"/v2/health/ready", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// upload stores model as fraud@version with the fraud model's manifest
// metadata (its test vectors hold: every model here computes the same).
func (b *agentBench) upload(ctx context.Context, version string, model []byte) error {
	if _, err := b.cp.AddModelVersion(ctx, "fraud", version, model, b.art.Metadata(), false); err != nil {
		return fmt.Errorf("bench agent: upload fraud@%s: %w", version, err)
	}
	return nil
}

func (b *agentBench) assign(ctx context.Context, version string) error {
	if _, err := b.cp.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: version, Devices: []string{b.id}}); err != nil {
		return fmt.Errorf("bench agent: deploy fraud@%s: %w", version, err)
	}
	return nil
}

func (b *agentBench) deploy(ctx context.Context, p *agentProc, version string, model []byte) error {
	if err := b.upload(ctx, version, model); err != nil {
		return err
	}
	if err := b.assign(ctx, version); err != nil {
		return err
	}
	return b.waitActive(ctx, p, version)
}

func (b *agentBench) reported() (*api.ModelStatus, error) {
	d, err := b.cp.Device(b.id)
	if err != nil {
		return nil, err
	}
	return d.Reported["fraud"], nil
}

func (b *agentBench) waitActive(ctx context.Context, p *agentProc, version string) error {
	return b.waitFor(ctx, 5*time.Minute, p, "fraud@"+version+" active", func() (bool, error) {
		st, err := b.reported()
		if err != nil || st == nil {
			return false, err
		}
		if st.State == api.ModelFailed && st.TargetVersion == version {
			return false, fmt.Errorf("fraud@%s failed: %s", version, st.Reason)
		}
		return st.State == api.ModelActive && st.ActiveVersion == version, nil
	})
}

// rows returns n rows of the fraud features, flat.
func (b *agentBench) rows(n int, seed uint64) []float32 {
	g, _ := fraud.NewGenerator(seed, fraud.Params{})
	out := make([]float32, 0, n*fraud.NumFeatures)
	for range n {
		r, _ := g.Next()
		out = append(out, r[:]...)
	}
	return out
}

// inferN sends n single-row inferences over c clients.
func (b *agentBench) inferN(ctx context.Context, n, c int) error {
	var sent atomic.Int64
	errs := make(chan error, c)
	var wg sync.WaitGroup
	for i := range c {
		wg.Go(func() {
			cl := &oip.Client{BaseURL: b.infURL}
			in, _ := oip.NewFP32Input(fraud.InputName, []int64{1, fraud.NumFeatures}, b.rows(1, uint64(i)))
			for sent.Add(1) <= int64(n) {
				if _, err := cl.Infer(ctx, "fraud", &oip.InferRequest{Inputs: []oip.RequestInput{in}}); err != nil {
					errs <- fmt.Errorf("bench agent: inference: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// sample is one request of the load.
type sample struct {
	start   time.Time
	dur     time.Duration
	failed  bool
	version string
}

// load keeps Clients clients sending requests until stopped.
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample // guarded by mu
	// firstNew is when the first answer from version want came.
	want     string
	firstNew atomic.Pointer[time.Time]
}

func (b *agentBench) startLoad(ctx context.Context) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel}
	for i := range b.o.Clients {
		rows := 1
		if i == 0 {
			rows = b.o.BigBatch
		}
		in, _ := oip.NewFP32Input(fraud.InputName, []int64{int64(rows), fraud.NumFeatures}, b.rows(rows, uint64(100+i)))
		req := &oip.InferRequest{Inputs: []oip.RequestInput{in}}
		l.wg.Go(func() {
			cl := &oip.Client{BaseURL: b.infURL, HTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}}
			var mine []sample
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := cl.Infer(ctx, "fraud", req)
				if ctx.Err() != nil {
					break
				}
				s := sample{start: t0, dur: time.Since(t0), failed: err != nil}
				if err == nil {
					s.version = resp.ModelVersion
					l.mu.Lock()
					want := l.want
					l.mu.Unlock()
					if want != "" && s.version == want && l.firstNew.Load() == nil {
						now := time.Now()
						l.firstNew.CompareAndSwap(nil, &now)
					}
				}
				mine = append(mine, s)
			}
			l.mu.Lock()
			l.samples = append(l.samples, mine...)
			l.mu.Unlock()
		})
	}
	return l
}

func (l *load) expect(version string) {
	l.mu.Lock()
	l.want = version
	l.mu.Unlock()
}

func (l *load) stop() []sample {
	l.cancel()
	l.wg.Wait()
	return l.samples
}

// p99 of the successful requests started in [from, to).
func p99(samples []sample, from, to time.Time) (float64, int) {
	var d []float64
	for _, s := range samples {
		if !s.failed && !s.start.Before(from) && s.start.Before(to) {
			d = append(d, float64(s.dur)/float64(time.Millisecond))
		}
	}
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(math.Ceil(0.99*float64(len(d))))-1)], len(d)
}

// swap measures a large model replaced by another under load.
func (b *agentBench) swap(ctx context.Context, p *agentProc, smallRSS uint64) (*SwapResult, error) {
	o := b.o
	r := &SwapResult{ModelBytes: o.SwapModelBytes, Clients: o.Clients, BigBatch: o.BigBatch, SmallRSS: smallRSS}
	oldModel, err := fraud.LargeONNX(b.art.Model, o.SwapModelBytes, 2)
	if err != nil {
		return nil, err
	}
	if err := b.deploy(ctx, p, "2.0.0", oldModel); err != nil {
		return nil, err
	}
	oldModel = nil
	newModel, err := fraud.LargeONNX(b.art.Model, o.SwapModelBytes, 3)
	if err != nil {
		return nil, err
	}
	if err := b.upload(ctx, "3.0.0", newModel); err != nil {
		return nil, err
	}
	newModel = nil
	fmt.Fprintf(o.Progress, "swap: %s models, %d clients (one sending %d rows a request)\n", mib(uint64(o.SwapModelBytes)), o.Clients, o.BigBatch)

	l := b.startLoad(ctx)
	steadyFrom := time.Now()
	r.OldRSS = p.maxRSS(ctx, o.Steady)
	steadyTo := time.Now()
	_ = p.resetPeak()
	l.expect("3.0.0")
	if err := b.assign(ctx, "3.0.0"); err != nil {
		l.stop()
		return nil, err
	}
	// The swap window opens when the download is complete.
	var verifyingAt time.Time
	var phaseMu sync.Mutex
	phase := "assigned" // guarded by phaseMu: the last state reported
	var peak atomic.Uint64
	sampling, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for sampling.Err() == nil {
			if v := p.rss(); v > peak.Load() {
				peak.Store(v)
				phaseMu.Lock()
				r.PeakPhase = phase
				phaseMu.Unlock()
			}
			sleepCtx(sampling, 10*time.Millisecond)
		}
	})
	err = b.waitFor(ctx, 5*time.Minute, p, "fraud@3.0.0 active", func() (bool, error) {
		st, err := b.reported()
		if err != nil || st == nil {
			return false, err
		}
		phaseMu.Lock()
		if st.TargetVersion == "3.0.0" {
			phase = string(st.State)
		}
		if l.firstNew.Load() != nil {
			phase = "swapped"
		}
		phaseMu.Unlock()
		if verifyingAt.IsZero() && st.TargetVersion == "3.0.0" && (st.State == api.ModelVerifying || st.State == api.ModelStaging || st.State == api.ModelActive) {
			verifyingAt = time.Now()
		}
		if st.State == api.ModelFailed && st.TargetVersion == "3.0.0" {
			return false, fmt.Errorf("fraud@3.0.0 failed: %s", st.Reason)
		}
		return st.State == api.ModelActive && st.ActiveVersion == "3.0.0" && l.firstNew.Load() != nil, nil
	})
	if err != nil {
		stopSampling()
		sampler.Wait()
		l.stop()
		return nil, err
	}
	swapTo := l.firstNew.Load().Add(time.Second)
	sleepCtx(ctx, time.Until(swapTo))
	phaseMu.Lock()
	phase = "after"
	phaseMu.Unlock()
	r.AfterRSS = p.maxRSS(ctx, o.Steady)
	stopSampling()
	sampler.Wait()
	samples := l.stop()
	r.PeakRSS = max(peak.Load(), p.status("VmHWM"))
	for _, s := range samples {
		r.Requests++
		if s.failed {
			r.Failed++
		}
	}
	r.SteadyP99Ms, _ = p99(samples, steadyFrom, steadyTo)
	r.SwapP99Ms, r.SwapSamples = p99(samples, verifyingAt, swapTo)
	r.SwapWindowS = swapTo.Sub(verifyingAt).Seconds()

	// The new model's steady state: a fresh agent serving only it.
	if err := p.stop(); err != nil {
		return nil, err
	}
	p2, err := b.startAgent(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = p2.stop() }()
	if err := b.waitActive(ctx, p2, "3.0.0"); err != nil {
		return nil, err
	}
	l2 := b.startLoad(ctx)
	r.NewRSS = p2.maxRSS(ctx, o.Steady)
	for _, s := range l2.stop() {
		r.Requests++
		if s.failed {
			r.Failed++
		}
	}
	r.PeakLimit = uint64(1.1 * float64(r.OldRSS+uint64(r.ModelBytes)))
	fmt.Fprintf(o.Progress, "swap: %d requests, %d failed; p99 steady %.1f ms, during the swap %.1f ms (%.2f×, %d requests in %.1fs)\n",
		r.Requests, r.Failed, r.SteadyP99Ms, r.SwapP99Ms, r.SwapP99Ms/math.Max(r.SteadyP99Ms, 1e-9), r.SwapSamples, r.SwapWindowS)
	fmt.Fprintf(o.Progress, "swap: RSS old steady %s, peak %s (limit %s; sampled at %s), after %s, new steady %s (after/new %.2f)\n",
		mib(r.OldRSS), mib(r.PeakRSS), mib(r.PeakLimit), r.PeakPhase, mib(r.AfterRSS), mib(r.NewRSS), float64(r.AfterRSS)/float64(max(r.NewRSS, 1)))
	return r, p2.stop()
}

// describeBinary fills in the binary's size, architecture and whether it
// is stripped.
func describeBinary(path string, r *AgentResult) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("bench agent: %w", err)
	}
	r.BinaryBytes = fi.Size()
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("bench agent: %s: %w", path, err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		r.Arch = "amd64"
	case elf.EM_AARCH64:
		r.Arch = "arm64"
	default:
		r.Arch = f.Machine.String()
	}
	r.Stripped = f.Section(".symtab") == nil
	return nil
}

// goMemory reads the agent's edgefleet_agent_go_memory_bytes: what the Go
// runtime holds and has not released to the system, and its main parts.
func (b *agentBench) goMemory(ctx context.Context) (uint64, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.metricsURL, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, err.Error()
	}
	class := map[string]uint64{}
	var held uint64
	for _, line := range strings.Split(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, `edgefleet_agent_go_memory_bytes{class="`)
		if !ok {
			continue
		}
		name, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		class[name] = uint64(v)
		if name != "heap_released" {
			held += uint64(v)
		}
	}
	if len(class) == 0 {
		return 0, "not reported by this agent"
	}
	var meta uint64
	for k, v := range class {
		if strings.HasPrefix(k, "metadata_") {
			meta += v
		}
	}
	return held, fmt.Sprintf("heap objects %s, free heap kept %s, goroutine stacks %s, metadata %s",
		mib(class["heap_objects"]), mib(class["heap_free"]+class["heap_unused"]), mib(class["heap_stacks"]), mib(meta))
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
