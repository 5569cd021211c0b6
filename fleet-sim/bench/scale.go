package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/fleet-sim/sim"
	"github.com/edgefleet/edgefleet/internal/fraud"
	"github.com/edgefleet/edgefleet/internal/infer"
)

// ScaleOptions configure Scale.
type ScaleOptions struct {
	Sizes []int
	// Transport is sim.TransportTCP or sim.TransportMemory (default).
	Transport  string
	Dir        string
	ORTLibrary string
	Progress   io.Writer
	// HeapProfile, if set, receives a heap profile taken at the largest N
	// while every agent runs.
	HeapProfile string
}

// ScaleResult is the cost of N agents, each serving a small fraud model,
// with the control plane in the same process.
type ScaleResult struct {
	N             int     `json:"n"`
	StartSeconds  float64 `json:"fleet_start_seconds"`
	DeploySeconds float64 `json:"deploy_to_all_active_seconds"`
	// FixedHeapBytes is the control plane, its broker and the shared
	// agent store before any agent starts; the figures below are the
	// agents' on top of it.
	FixedHeapBytes uint64  `json:"fixed_heap_inuse_bytes"`
	HeapBytes      uint64  `json:"heap_inuse_bytes"`
	HeapPerAgent   float64 `json:"heap_inuse_per_agent_bytes"`
	// LiveHeapPerAgent counts live objects only (HeapPerAgent also the
	// free slots of the spans they sit in); StackPerAgent is goroutine
	// stacks, which are not heap.
	LiveHeapPerAgent   float64 `json:"live_heap_per_agent_bytes"`
	StackPerAgent      float64 `json:"stack_per_agent_bytes"`
	Goroutines         int     `json:"goroutines"`
	GoroutinesPerAgent float64 `json:"goroutines_per_agent"`
	RSSBytes           uint64  `json:"rss_bytes"`
	RSSPerAgent        float64 `json:"rss_per_agent_bytes"`
}

// Scale starts N agents (plus the control plane) for each size, deploys a
// model to all of them, and measures live heap, goroutines and RSS against
// the process once the control plane and the shared store were up (their
// own heap is reported as FixedHeapBytes).
func Scale(ctx context.Context, o ScaleOptions) ([]ScaleResult, error) {
	if o.Transport == "" {
		o.Transport = sim.TransportMemory
	}
	rt, art, err := runtimeAndModel(o.ORTLibrary)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	fmt.Fprintf(o.Progress, "| N | start s | deploy→all active s | fixed heap | agents' heap in use | heap in use / agent | live heap / agent | stacks / agent | goroutines / agent | RSS / agent |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var out []ScaleResult
	for _, n := range o.Sizes {
		r, err := scaleOne(ctx, o, n, rt, art)
		if err != nil {
			return out, fmt.Errorf("scale N=%d: %w", n, err)
		}
		fmt.Fprintf(o.Progress, "| %d | %.1f | %.2f | %.1f MiB | %.1f MiB | %.1f KiB | %.1f KiB | %.1f KiB | %.1f | %.1f KiB |\n", r.N, r.StartSeconds, r.DeploySeconds,
			float64(r.FixedHeapBytes)/(1<<20), float64(r.HeapBytes)/(1<<20), r.HeapPerAgent/1024, r.LiveHeapPerAgent/1024, r.StackPerAgent/1024, r.GoroutinesPerAgent, r.RSSPerAgent/1024)
		out = append(out, r)
	}
	return out, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// memory is the process's Go memory after two collections.
type memory struct {
	live  uint64 // bytes of live heap objects (HeapAlloc)
	inuse uint64 // heap spans in use, with their free slots (HeapInuse)
	stack uint64 // goroutine stacks (StackInuse)
}

func readMemory() memory {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{live: ms.HeapAlloc, inuse: ms.HeapInuse, stack: ms.StackInuse}
}

func heapInUse() uint64 { return readMemory().inuse }

// grown is after−before, 0 if it shrank.
func grown(before, after uint64) uint64 { return after - min(before, after) }

// rss is the process's resident set size from /proc/self/status (0 if
// unknown).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func scaleOne(ctx context.Context, o ScaleOptions, n int, rt *infer.Runtime, art *fraud.Artifact) (ScaleResult, error) {
	r := ScaleResult{N: n}
	devs := devicesFor(n)
	f, err := sim.New(sim.Options{
		Dir:                filepath.Join(o.Dir, fmt.Sprintf("scale-%d", n)),
		Devices:            devs,
		Runtime:            rt,
		Transport:          o.Transport,
		HeartbeatInterval:  time.Minute,
		FetchRetryInterval: 2 * time.Second,
	})
	if err != nil {
		return r, err
	}
	defer f.Stop()
	// The control plane and the shared store are a fixed cost (badger's
	// memtables alone are ~160 MiB): measured on their own, so that the
	// per-agent figures are what one more agent costs.
	heapPre := heapInUse()
	if err := f.Prepare(ctx); err != nil {
		return r, err
	}
	mem0, g0, rss0 := readMemory(), runtime.NumGoroutine(), rss()
	r.FixedHeapBytes = grown(heapPre, mem0.inuse)
	t0 := time.Now()
	if err := f.StartAgents(ctx); err != nil {
		return r, err
	}
	r.StartSeconds = time.Since(t0).Seconds()
	cp := f.ControlPlane()
	if _, err := cp.AddModelVersion(ctx, "fraud", "1", art.ONNX, art.Metadata(), false); err != nil {
		return r, err
	}
	all := make([]string, n)
	for i, d := range devs {
		all[i] = d.ID
	}
	t0 = time.Now()
	if _, err := cp.Deploy(ctx, api.DeployRequest{Model: "fraud", Version: "1", Devices: all}); err != nil {
		return r, err
	}
	if err := waitServing(ctx, f, "fraud", "1", 15*time.Minute); err != nil {
		return r, err
	}
	r.DeploySeconds = time.Since(t0).Seconds()
	mem := readMemory()
	r.HeapBytes = grown(mem0.inuse, mem.inuse)
	r.LiveHeapPerAgent = float64(grown(mem0.live, mem.live)) / float64(n)
	r.StackPerAgent = float64(grown(mem0.stack, mem.stack)) / float64(n)
	if o.HeapProfile != "" && n == slices.Max(o.Sizes) {
		if err := writeHeapProfile(o.HeapProfile); err != nil {
			return r, err
		}
	}
	r.Goroutines = runtime.NumGoroutine() - g0
	if now := rss(); now > rss0 {
		r.RSSBytes = now - rss0
	}
	r.HeapPerAgent = float64(r.HeapBytes) / float64(n)
	r.GoroutinesPerAgent = float64(r.Goroutines) / float64(n)
	r.RSSPerAgent = float64(r.RSSBytes) / float64(n)
	if err := f.Stop(); err != nil {
		return r, err
	}
	if _, err := f.LeakCheck(30 * time.Second); err != nil {
		return r, err
	}
	return r, nil
}
