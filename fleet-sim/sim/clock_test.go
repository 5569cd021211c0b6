package sim

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewClockRejectsBadSpeeds(t *testing.T) {
	for _, speed := range []float64{0, 0.5, -1, math.NaN(), math.Inf(1), MaxSpeed + 1} {
		_, err := NewClock(speed)
		assert.Error(t, err, "NewClock(%v)", speed)
	}
	for _, speed := range []float64{1, 1.5, 600, MaxSpeed} {
		c, err := NewClock(speed)
		require.NoError(t, err, "NewClock(%v)", speed)
		assert.Equal(t, speed, c.Speed())
	}
}

func TestClockConversions(t *testing.T) {
	c, err := NewClock(600)
	require.NoError(t, err)
	var real *Clock
	for _, tt := range []struct {
		clock       *Clock
		in, real    time.Duration
		simFromReal time.Duration
	}{
		{c, 30 * time.Minute, 3 * time.Second, 300 * time.Hour},
		{c, time.Minute, 100 * time.Millisecond, 600 * time.Minute},
		{c, time.Nanosecond, time.Nanosecond, 600 * time.Nanosecond}, // a positive wait stays one
		{c, 0, 0, 0},
		{c, -time.Minute, -100 * time.Millisecond, -600 * time.Minute},
		{real, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute},
	} {
		assert.Equal(t, tt.real, tt.clock.Real(tt.in), "Real(%v) at speed %v", tt.in, tt.clock.Speed())
		assert.Equal(t, tt.simFromReal, tt.clock.Simulated(tt.in), "Simulated(%v) at speed %v", tt.in, tt.clock.Speed())
	}
	assert.Equal(t, 1.0, real.Speed())
}

// TestClockRunsAtItsSpeed brackets two readings of the simulated clock
// between real ones: the simulated time between them is speed times the
// real time, within the brackets.
func TestClockRunsAtItsSpeed(t *testing.T) {
	const speed = 600
	before := time.Now()
	c, err := NewClock(speed)
	require.NoError(t, err)
	r0 := time.Now()
	s0 := c.Now()
	r1 := time.Now()
	for time.Since(r1) < 20*time.Millisecond { // poll: nothing to wait on
		time.Sleep(time.Millisecond)
	}
	r2 := time.Now()
	s1 := c.Now()
	r3 := time.Now()

	const slack = time.Microsecond // float rounding
	got := s1.Sub(s0)
	assert.GreaterOrEqual(t, got, speed*r2.Sub(r1)-slack, "simulated time passed, at least speed × the inner real interval")
	assert.LessOrEqual(t, got, speed*r3.Sub(r0)+slack, "simulated time passed, at most speed × the outer real interval")
	assert.GreaterOrEqual(t, got, 12*time.Second, "20ms of real time is 12s at speed 600")

	// It started at the real time it was made.
	assert.False(t, s0.Before(before.Round(0)), "starts at the real now: %v before %v", s0, before)
	assert.LessOrEqual(t, s0.Sub(before.Round(0)), speed*r1.Sub(before)+slack)
	// A wall-clock reading, without a monotonic one.
	assert.NotContains(t, s1.String(), "m=")
	assert.True(t, s1.Equal(s1.Round(0)))
}

func TestNilClockIsRealTime(t *testing.T) {
	var c *Clock
	before := time.Now()
	now := c.Now()
	after := time.Now()
	assert.False(t, now.Before(before) || now.After(after), "nil clock: %v outside [%v, %v]", now, before, after)
	assert.True(t, strings.Contains(now.String(), "m="), "nil clock is time.Now, monotonic reading included")
}
