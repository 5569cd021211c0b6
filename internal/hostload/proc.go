package hostload

import (
	"strconv"
	"strings"
)

// loadavg is what /proc/loadavg says: "0.52 0.58 0.59 3/1234 56789" is the
// 1, 5 and 15-minute load averages, runnable/total scheduling entities and
// the last pid.
type loadavg struct {
	load1           float64
	runnable, total int
}

func parseLoadavg(s string) (loadavg, bool) {
	f := strings.Fields(s)
	if len(f) < 4 {
		return loadavg{}, false
	}
	load1, err := strconv.ParseFloat(f[0], 64)
	if err != nil || load1 < 0 {
		return loadavg{}, false
	}
	run, tot, ok := strings.Cut(f[3], "/")
	if !ok {
		return loadavg{}, false
	}
	r, err1 := strconv.Atoi(run)
	t, err2 := strconv.Atoi(tot)
	if err1 != nil || err2 != nil || r < 0 || t < r {
		return loadavg{}, false
	}
	return loadavg{load1: load1, runnable: r, total: t}, true
}

// pressure is the "some" line of /proc/pressure/cpu:
//
//	some avg10=1.23 avg60=0.87 avg300=0.10 total=123456
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//
// avg10 is the percentage of the last 10 seconds in which some runnable
// task waited for a CPU; total is that time since boot, in microseconds.
type pressure struct {
	avg10       float64
	totalMicros uint64
}

func parsePressure(s string) (pressure, bool) {
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "some" {
			continue
		}
		var p pressure
		var haveAvg, haveTotal bool
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "avg10":
				x, err := strconv.ParseFloat(v, 64)
				if err != nil || x < 0 {
					return pressure{}, false
				}
				p.avg10, haveAvg = x, true
			case "total":
				x, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return pressure{}, false
				}
				p.totalMicros, haveTotal = x, true
			}
		}
		if !haveAvg || !haveTotal {
			return pressure{}, false
		}
		return p, true
	}
	return pressure{}, false
}
