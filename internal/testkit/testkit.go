// Package testkit holds the parts of the test harness that import nothing of
// edgefleet, so any package's own tests can use them: Run and Start (a daemon
// until the test ends), a settable Clock, a throwaway CA, a real mosquitto on
// free ports, and the Chromium the browser tests drive. Imported by
// internal/fleettest and tests.
package testkit

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Run runs a daemon (run blocks until its context ends) until the test
// ends: it waits until ready is closed (or fails the test after 30 s, or
// if run returns first), and at cleanup cancels it and checks it returned
// nil within 20 s.
func Run(t testing.TB, what string, run func(context.Context) error, ready <-chan struct{}) {
	t.Helper()
	Start(t, what, run, ready)
}

// Start is Run that also returns a stop function, which stops the daemon
// at once and checks it returned nil; it is idempotent, and the test's
// cleanup calls it too.
func Start(t testing.TB, what string, run func(context.Context) error, ready <-chan struct{}) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s stopped with %v", what, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("%s did not stop within 20s", what)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-ready:
	case err := <-done:
		done <- err // for stop
		t.Fatalf("%s stopped before it was ready: %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready within 30s", what)
	}
	return stop
}

// Clock is a settable clock for code that takes a func() time.Time.
type Clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

// NewClock returns a clock standing at t (in UTC).
func NewClock(t time.Time) *Clock { return &Clock{now: t.UTC()} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock by d and returns the new time.
func (c *Clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Set puts the clock at t (in UTC).
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t.UTC()
}
