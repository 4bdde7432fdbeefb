package nstest

import (
	"io"
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// StatusAs connects to the agent's unix socket at path from an OS thread whose effective uid
// and gid are uid (what SO_PEERCRED reports), sends an HTTP request for /v1/status and returns
// the whole reply it got back (status line, headers and body), or the error. The thread is never handed back to the runtime,
// so its credentials die with it.
func StatusAs(uid int, path string) (string, error) {
	type result struct {
		status string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		// Raw system calls change this thread only (syscall.Setresuid changes them all): no
		// supplementary groups, then the effective gid and uid.
		keep := ^uintptr(0)
		for _, call := range [][4]uintptr{{unix.SYS_SETGROUPS, 0, 0, 0}, {unix.SYS_SETRESGID, keep, uintptr(uid), keep},
			{unix.SYS_SETRESUID, keep, uintptr(uid), keep}} {
			if _, _, errno := unix.RawSyscall(call[0], call[1], call[2], call[3]); errno != 0 {
				done <- result{err: errno}
				return
			}
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"); err != nil {
			done <- result{err: err}
			return
		}
		reply, err := io.ReadAll(c) // the request asked the server to close after its reply
		if err != nil {
			done <- result{err: err}
			return
		}
		done <- result{status: string(reply)}
	}()
	r := <-done
	return r.status, r.err
}
