package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// The API socket serves root only, whatever its file mode: with the socket 0666 in a directory
// anyone may search, a peer of uid 65534 is told in one line that only root is answered, with
// nothing served; root is served.
func TestAPISocketServesOnlyRoot(t *testing.T) {
	nstest.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "agent.sock")
	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "{}") })}
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed once the test shuts it down
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
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
	reply, err := nstest.StatusAs(65534, path)
	if errors.Is(err, fs.ErrPermission) {
		t.Fatalf("uid 65534 could not even connect, so the peer check went untested: %v", err)
	}
	want := "the ebpfnet agent answers only root (uid 0); you are uid 65534"
	if err != nil || !strings.HasPrefix(reply, "HTTP/1.1 403 ") || !strings.HasSuffix(reply, `{"code":4,"error":"`+want+`"}`) {
		t.Fatalf("uid 65534 through a 0666 socket: %q, %v; want a 403 saying %q", reply, err, want)
	}
	status, err := nstest.StatusAs(0, path)
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("root: %q, %v; want HTTP/1.1 200", status, err)
	}
}
