package sim

import (
	"fmt"
	"time"
)

// MaxSpeed is the fastest a simulated clock may run: an hour per second.
const MaxSpeed = 3600

// Clock is a simulated clock that runs Speed times faster than real time
// from the moment it is made: Now is the start plus Speed times the real
// time elapsed since, measured on the monotonic clock (so a step of the
// machine's wall clock does not move it). The in-process control plane and
// every agent of a fleet read the same Clock (Options.Clock), so bake
// times, rate limits, maintenance windows, monitoring windows and expiries
// all pass Speed times faster; timers and tickers do not, they stay real.
//
// A nil *Clock is real time: Now is time.Now and conversions are the
// identity. A Clock is safe for concurrent use (it is never modified).
type Clock struct {
	start time.Time // real, with its monotonic reading
	speed float64
}

// NewClock returns a clock starting now at speed (1 to MaxSpeed).
func NewClock(speed float64) (*Clock, error) {
	if !(speed >= 1 && speed <= MaxSpeed) {
		return nil, fmt.Errorf("sim: clock speed %v is outside [1, %d]", speed, MaxSpeed)
	}
	return &Clock{start: time.Now(), speed: speed}, nil
}

// Now is the simulated time. It carries no monotonic reading: it is a wall
// clock reading of the simulated world, compared and subtracted as such.
func (c *Clock) Now() time.Time {
	if c == nil {
		return time.Now()
	}
	return c.start.Add(c.Simulated(time.Since(c.start))).Round(0)
}

// Speed is how many simulated seconds pass per real second (1 for nil).
func (c *Clock) Speed() float64 {
	if c == nil {
		return 1
	}
	return c.speed
}

// Real converts a simulated duration to the real time it takes: d/Speed,
// at least 1ns for a positive d (a positive wait stays a wait).
func (c *Clock) Real(d time.Duration) time.Duration {
	if c == nil || c.speed == 1 {
		return d
	}
	r := time.Duration(float64(d) / c.speed)
	if r == 0 && d > 0 {
		r = 1
	}
	return r
}

// Simulated converts a real duration to the simulated time that passes
// meanwhile: d×Speed.
func (c *Clock) Simulated(d time.Duration) time.Duration {
	if c == nil || c.speed == 1 {
		return d
	}
	return time.Duration(float64(d) * c.speed)
}

// Clock is the fleet's clock (Options.Clock; nil is real time).
func (f *Fleet) Clock() *Clock { return f.opts.Clock }
