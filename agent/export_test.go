package agent

import (
	"context"
	"testing"
	"time"
)

// RunInTest runs a daemon's Run until the test ends: it waits until ready
// is closed, and at cleanup cancels and waits for a nil return. Exported
// from a _test file so the external agent_test package shares it.
func RunInTest(t *testing.T, what string, run func(context.Context) error, ready <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
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
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("%s stopped before it was ready: %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready within 30s", what)
	}
}
