package fdpass

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serve runs an HTTP server on a fresh socket whose handler answers with the inode of the
// passed descriptor ("none" without one); take=false leaves the descriptor to the connection.
func serve(t *testing.T, take bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ConnContext: ConnContext, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !take {
			_, _ = io.WriteString(w, "ignored")
			return
		}
		fd := FDFrom(r.Context())
		if fd < 0 {
			_, _ = io.WriteString(w, "none")
			return
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, st.Ino)
	})}
	go func() { _ = srv.Serve(NewListener(ln)) }() // ErrServerClosed once the test closes it
	t.Cleanup(func() { srv.Close() })
	return sock
}

// get sends GET / over a connection made by dial and returns the body.
func get(t *testing.T, dial func(context.Context) (net.Conn, error)) string {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dial(ctx)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func inode(t *testing.T, f *os.File) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(st.Ino)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settled waits until the process holds at most want descriptors (connections close async).
func settled(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > want {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, want at most %d: a descriptor leaks", openFDs(t), want)
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by the deadline
	}
}

func TestPassesDescriptorAndPlainHTTPWorks(t *testing.T) {
	sock := serve(t, true)
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := get(t, func(ctx context.Context) (net.Conn, error) { return Dial(ctx, sock, f) }); got != inode(t, f) {
		t.Fatalf("with a descriptor the handler saw %q, want inode %s", got, inode(t, f))
	}
	if got := get(t, func(ctx context.Context) (net.Conn, error) { return Dial(ctx, sock, nil) }); got != "none" {
		t.Fatalf("a plain HTTP request saw %q, want none", got)
	}
}

func TestDescriptorsAreAlwaysClosed(t *testing.T) {
	sockTake, sockLeave := serve(t, true), serve(t, false)
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	get(t, func(ctx context.Context) (net.Conn, error) { return Dial(ctx, sockTake, f) }) // warm up
	before := openFDs(t)
	for i := 0; i < 50; i++ {
		for _, s := range []string{sockTake, sockLeave} {
			get(t, func(ctx context.Context) (net.Conn, error) { return Dial(ctx, s, f) })
		}
	}
	settled(t, before)
}

// rawSend writes data, with f's descriptor attached when f is set, and returns what comes back.
func rawSend(t *testing.T, sock string, data string, f *os.File) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()), int(f.Fd()))
	}
	if _, _, err := c.(*net.UnixConn).WriteMsgUnix([]byte(data), oob, nil); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestBadFramesAndStrayDescriptors(t *testing.T) {
	sock := serve(t, true)
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rawSend(t, sock, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", f) // warm up
	before := openFDs(t)
	for i := 0; i < 20; i++ {
		// Descriptors on an ordinary request are dropped; the request is served as ever.
		if out := rawSend(t, sock, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", f); !strings.HasSuffix(out, "none") {
			t.Fatalf("ordinary request with stray descriptors got %q", out)
		}
		// A frame of another kind, or with two descriptors, never reaches a handler.
		if out := rawSend(t, sock, "\x00something-else\nGET / HTTP/1.1\r\n\r\n", f); strings.Contains(out, " 200 ") {
			t.Fatalf("an unknown frame was served: %q", out)
		}
		if out := rawSend(t, sock, frame+"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", f); strings.Contains(out, " 200 ") {
			t.Fatalf("a frame with two descriptors was served: %q", out)
		}
	}
	settled(t, before)
}
