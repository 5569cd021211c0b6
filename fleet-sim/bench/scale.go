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

	"github.com/edgefleet/edgefleet/controlplane"
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
	N                  int     `json:"n"`
	StartSeconds       float64 `json:"fleet_start_seconds"`
	DeploySeconds      float64 `json:"deploy_to_all_active_seconds"`
	HeapBytes          uint64  `json:"heap_inuse_bytes"`
	HeapPerAgent       float64 `json:"heap_inuse_per_agent_bytes"`
	Goroutines         int     `json:"goroutines"`
	GoroutinesPerAgent float64 `json:"goroutines_per_agent"`
	RSSBytes           uint64  `json:"rss_bytes"`
	RSSPerAgent        float64 `json:"rss_per_agent_bytes"`
}

// Scale starts N agents (plus the control plane) for each size, deploys a
// model to all of them, and measures live heap, goroutines and RSS against
// the process before the fleet started.
func Scale(ctx context.Context, o ScaleOptions) ([]ScaleResult, error) {
	if o.Transport == "" {
		o.Transport = sim.TransportMemory
	}
	rt, err := infer.NewRuntime(o.ORTLibrary, nil)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	art, err := fraud.TrainArtifact(fraud.TrainConfig{Seed: 1, Rows: 4000})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Progress, "| N | start s | deploy→all active s | heap in use | heap / agent | goroutines / agent | RSS / agent |\n|---|---|---|---|---|---|---|\n")
	var out []ScaleResult
	for _, n := range o.Sizes {
		r, err := scaleOne(ctx, o, n, rt, art)
		if err != nil {
			return out, fmt.Errorf("scale N=%d: %w", n, err)
		}
		fmt.Fprintf(o.Progress, "| %d | %.1f | %.2f | %.1f MiB | %.1f KiB | %.1f | %.1f KiB |\n", r.N, r.StartSeconds, r.DeploySeconds,
			float64(r.HeapBytes)/(1<<20), r.HeapPerAgent/1024, r.GoroutinesPerAgent, r.RSSPerAgent/1024)
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

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

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
	heap0, g0, rss0 := heapInUse(), runtime.NumGoroutine(), rss()
	t0 := time.Now()
	if err := f.Start(ctx); err != nil {
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
	if _, err := cp.Deploy(ctx, controlplane.DeployRequest{Model: "fraud", Version: "1", Devices: all}); err != nil {
		return r, err
	}
	if err := waitServing(ctx, f, "fraud", "1", 15*time.Minute); err != nil {
		return r, err
	}
	r.DeploySeconds = time.Since(t0).Seconds()
	r.HeapBytes = heapInUse() - min(heap0, heapInUse())
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
