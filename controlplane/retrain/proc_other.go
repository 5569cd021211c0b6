//go:build !unix

package retrain

import "os/exec"

// processGroup: without process groups, cancelling kills the trainer
// process only.
func processGroup(*exec.Cmd) {}
