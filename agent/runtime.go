package agent

import (
	"fmt"

	"github.com/edgefleet/edgefleet/internal/infer"
)

// runtime returns the onnxruntime models are loaded with, opening it at the
// first load: an agent with nothing to serve does not map the library (tens
// of MiB) nor start its environment. Options.Runtime, when set, is used as
// it is. open has already checked that the library can be found.
func (a *Agent) runtime() (*infer.Runtime, error) {
	a.rtMu.Lock()
	defer a.rtMu.Unlock()
	if a.rt != nil {
		return a.rt, nil
	}
	if a.opts.Runtime != nil {
		a.rt = a.opts.Runtime
		return a.rt, nil
	}
	rt, err := infer.NewRuntime(a.opts.ORTLibrary, a.opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.rt, a.ownRT = rt, true
	return rt, nil
}

// RuntimeLoaded reports whether the agent has opened its onnxruntime (or
// taken Options.Runtime): not before its first model load.
func (a *Agent) RuntimeLoaded() bool {
	a.rtMu.Lock()
	defer a.rtMu.Unlock()
	return a.rt != nil
}
