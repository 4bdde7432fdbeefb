package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/test/nstest"
)

// dialAs connects to the unix socket at path from an OS thread whose effective uid and gid are
// uid (what SO_PEERCRED reports), then sends an HTTP request for /v1/status and returns the
// status line it got back, or the error. The thread is never handed back to the runtime, so
// its credentials die with it.
func dialAs(uid int, path string) (string, error) {
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
		buf := make([]byte, 64)
		n, err := io.ReadAtLeast(c, buf, len("HTTP/1.1 200"))
		if err != nil {
			done <- result{err: err}
			return
		}
		done <- result{status: string(buf[:n])}
	}()
	r := <-done
	return r.status, r.err
}

// The API socket serves root only, whatever its file mode: with the socket 0666 in a directory
// anyone may search, a peer of uid 65534 is connected and closed at once, with nothing served;
// root is served.
func TestAPISocketServesOnlyRoot(t *testing.T) {
	nstest.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "agent.sock")
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	// Open every file mode on the way to the socket: only the peer check is left.
	for p := path; p != "/"; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm() | 0o005; fi.IsDir() && mode != fi.Mode().Perm() {
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if status, err := dialAs(65534, path); err == nil {
		t.Fatalf("uid 65534 was served through a 0666 socket: %q", status)
	} else if errors.Is(err, fs.ErrPermission) {
		t.Fatalf("uid 65534 could not even connect, so the peer check went untested: %v", err)
	}
	status, err := dialAs(0, path)
	if err != nil || status[:12] != "HTTP/1.1 200" {
		t.Fatalf("root: %q, %v; want HTTP/1.1 200", status, err)
	}
}
