//go:build !unix

package retrain

import "os/exec"

// processGroup: without process groups, cancelling kills the trainer
// process only, and there is nothing more to reap.
func processGroup(*exec.Cmd) (reap func()) { return func() {} }
