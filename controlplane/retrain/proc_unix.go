//go:build unix

package retrain

import (
	"os/exec"
	"syscall"
)

// processGroup starts cmd in a process group of its own and makes
// cancelling it kill the whole group: a trainer's children (a shell
// script's python) die with it. The trainer itself gets SIGKILL if the
// thread that started it ends (the caller runs it on a locked thread), as
// when the control plane dies. reap kills whatever of the group is left
// once the trainer has exited: a child it started in the background must
// not outlive the job.
func processGroup(cmd *exec.Cmd) (reap func()) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // ESRCH: none left
		}
	}
}
