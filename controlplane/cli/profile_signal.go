package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// profileOnSignal profiles the process into path from each SIGUSR1 to the
// next SIGUSR2 (a later window overwrites the file), so a benchmark can
// profile just what it measures. The returned stop ends the watching and a
// window still open, and returns once the file is written.
func profileOnSignal(ctx context.Context, path string, log *slog.Logger) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		var end func() // the open window's stop; nil: none open
		defer func() {
			if end != nil {
				end()
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				switch {
				case s == syscall.SIGUSR1 && end == nil:
					var err error
					if end, err = startCPUProfile(path); err != nil {
						log.Warn("cpu profile not started", "err", err)
					}
				case s == syscall.SIGUSR2 && end != nil:
					end()
					end = nil
				}
			}
		}
	})
	return func() {
		signal.Stop(sigs)
		cancel()
		wg.Wait()
	}
}
