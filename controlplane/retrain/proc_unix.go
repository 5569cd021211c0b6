//go:build unix

package retrain

import (
	"os/exec"
	"syscall"
)

// processGroup starts cmd in a process group of its own and makes
// cancelling it kill the whole group: a trainer's children (a shell
// script's python) die with it.
func processGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
