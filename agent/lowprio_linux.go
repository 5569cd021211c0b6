package agent

import (
	"runtime"
	"syscall"
)

// stagingNice is the nice value models are hashed, loaded, checked and
// warmed at: well below the threads answering inference, so activating a
// large version beside a serving one takes the CPU the requests leave
// (p99 during a swap, docs/benchmarks.md).
const stagingNice = 10

// lowPriority runs fn on a thread of its own at stagingNice and returns
// when fn does. The thread is locked to fn's goroutine and never unlocked,
// so the Go runtime ends it afterwards instead of reusing it at that
// priority (raising it back would need privileges). Threads the runtime
// starts meanwhile are cloned by its template thread, not this one. If the
// priority cannot be set, fn runs at the normal one.
func lowPriority(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: see above
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), stagingNice)
		fn()
	}()
	<-done
}
