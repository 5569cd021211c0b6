// Package hostload reads how busy this process and its machine are: the CPU
// time the process used against the CPUs it may use, the load average, CPU
// pressure and how long goroutines waited to be scheduled. It has no
// dependencies. Imported by fleet-sim/scenario (a wait that gives up says how
// loaded the run was).
package hostload

import (
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"time"
)

// Reading is the state of the counters at one moment. Between turns two
// readings into the load over the time between them. The zero Reading has
// nothing available.
type Reading struct {
	at time.Time
	// cpu is the user and system CPU time this process has used.
	cpu   time.Duration
	cpuOK bool
	// sched is the Go scheduler's latency histogram (nil: unavailable).
	sched *metrics.Float64Histogram
	// loadavg is /proc/loadavg.
	loadavg   loadavg
	loadavgOK bool
	// pressure is /proc/pressure/cpu's "some" line.
	pressure   pressure
	pressureOK bool
}

// schedLatencies is the runtime/metrics histogram of the time goroutines
// spent runnable before they ran.
const schedLatencies = "/sched/latencies:seconds"

// Read takes a reading now. What this system cannot tell (no /proc, no
// getrusage) is left out; Read never fails.
func Read() Reading {
	r := Reading{at: time.Now()}
	r.cpu, r.cpuOK = processCPU()
	s := []metrics.Sample{{Name: schedLatencies}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindFloat64Histogram {
		r.sched = s[0].Value.Float64Histogram()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.loadavg, r.loadavgOK = parseLoadavg(string(b))
	}
	if b, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		r.pressure, r.pressureOK = parsePressure(string(b))
	}
	return r
}

// Load is how loaded this process and its host were over a window. A
// reading the system does not offer is nil (left out of JSON and of
// String), never zero.
type Load struct {
	// Seconds is the window's length.
	Seconds float64 `json:"window_seconds"`
	// NumCPU is the CPUs this process may run on (runtime.NumCPU).
	NumCPU int `json:"num_cpu"`
	// ProcessCPUs is the CPU time this process used over the window
	// divided by the window: how many CPUs it kept busy on average.
	ProcessCPUs *float64 `json:"process_cpus,omitempty"`
	// LoadAverage is the host's one-minute load average at the window's
	// end, Runnable its runnable threads then (/proc/loadavg).
	LoadAverage *float64 `json:"load_average_1m,omitempty"`
	Runnable    *int     `json:"runnable_threads,omitempty"`
	// CPUPressure is the percentage of time some runnable thread of the
	// host waited for a CPU (/proc/pressure/cpu): over the window when it
	// lasted at least a second, else the kernel's last 10s average.
	CPUPressure *float64 `json:"cpu_pressure_percent,omitempty"`
	// SchedP99Seconds is the 99th percentile of how long this process's
	// goroutines waited, runnable, before they ran during the window (Go's
	// /sched/latencies:seconds), to the histogram's bucket precision.
	SchedP99Seconds *float64 `json:"sched_latency_p99_seconds,omitempty"`
}

// Between is the load over the window from a to b (b taken after a).
func Between(a, b Reading) Load {
	l := Load{NumCPU: runtime.NumCPU()}
	window := b.at.Sub(a.at)
	if window <= 0 || a.at.IsZero() {
		return l
	}
	l.Seconds = window.Seconds()
	if a.cpuOK && b.cpuOK {
		l.ProcessCPUs = ptr(max(0, (b.cpu-a.cpu).Seconds()) / l.Seconds)
	}
	if b.loadavgOK {
		l.LoadAverage, l.Runnable = ptr(b.loadavg.load1), ptr(b.loadavg.runnable)
	}
	switch {
	case a.pressureOK && b.pressureOK && window >= time.Second && b.pressure.totalMicros >= a.pressure.totalMicros:
		stalled := time.Duration(b.pressure.totalMicros-a.pressure.totalMicros) * time.Microsecond
		l.CPUPressure = ptr(min(100, 100*stalled.Seconds()/l.Seconds))
	case b.pressureOK:
		l.CPUPressure = ptr(b.pressure.avg10)
	}
	if b.sched != nil {
		if p, ok := quantile(diff(a.sched, b.sched), 0.99); ok {
			l.SchedP99Seconds = ptr(p)
		}
	}
	return l
}

// Since is the load from r until now.
func Since(r Reading) Load { return Between(r, Read()) }

func ptr[T any](v T) *T { return &v }

// String says the load in a few words, e.g. "this process used 1.9 of 2
// CPUs, load average 5.1 (7 runnable), CPU pressure 63%, goroutine
// scheduling p99 21ms".
func (l Load) String() string {
	var parts []string
	if l.ProcessCPUs != nil {
		parts = append(parts, fmt.Sprintf("this process used %.1f of %d CPUs", *l.ProcessCPUs, l.NumCPU))
	} else {
		parts = append(parts, fmt.Sprintf("%d CPUs", l.NumCPU))
	}
	if l.LoadAverage != nil {
		s := fmt.Sprintf("load average %.1f", *l.LoadAverage)
		if l.Runnable != nil {
			s += fmt.Sprintf(" (%d runnable)", *l.Runnable)
		}
		parts = append(parts, s)
	}
	if l.CPUPressure != nil {
		parts = append(parts, fmt.Sprintf("CPU pressure %.0f%%", *l.CPUPressure))
	}
	if l.SchedP99Seconds != nil {
		parts = append(parts, "goroutine scheduling p99 "+roundDuration(time.Duration(*l.SchedP99Seconds*float64(time.Second))).String())
	}
	return strings.Join(parts, ", ")
}

// roundDuration keeps two or three significant digits.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= 10*time.Microsecond:
		return d.Round(time.Microsecond)
	default:
		return d
	}
}
