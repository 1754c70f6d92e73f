//go:build unix

package hook

import (
	"os/exec"
	"syscall"
)

// inGroup runs cmd in a process group of its own, the whole of which is
// killed when its context ends: what the hook started dies with it.
func inGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
