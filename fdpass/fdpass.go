// Package fdpass hands one file descriptor across a unix stream socket ahead of the stream it
// opens: the client sends a short frame carrying the descriptor (SCM_RIGHTS), then speaks its
// protocol (HTTP) on the same connection; the server's listener takes the frame off and keeps
// the descriptor on the connection until a handler takes it or the connection closes. Taken
// descriptors are plain ints, with no finalizer to hide a missing Close.
//
// The frame starts with a NUL byte, which no HTTP request can start with, so a connection
// without a frame is passed through unchanged.
package fdpass

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// frame is what a client sends, with the descriptor attached, before any other byte.
const frame = "\x00ebpfnet-fd/1\n"

// maxFDs bounds the descriptors read with the frame; more are closed and the frame refused.
const maxFDs = 4

// ErrBadFrame says a connection opened with something that looked like a frame but was not one.
var ErrBadFrame = errors.New("malformed descriptor frame")

// Dial connects to the unix socket at path; with a non-nil f it first sends f's descriptor.
func Dial(ctx context.Context, path string, f *os.File) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil || f == nil {
		return c, err
	}
	if err := send(ctx, c.(*net.UnixConn), f); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// send writes the frame with f's descriptor attached.
func send(ctx context.Context, c *net.UnixConn, f *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetWriteDeadline(dl); err != nil {
			return fmt.Errorf("pass %s: %w", f.Name(), err)
		}
		defer c.SetWriteDeadline(time.Time{}) //nolint:errcheck // the write's own error is the one to report

	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("pass %s: %w", f.Name(), err)
	}
	var n, oobn int
	cerr := rc.Control(func(fd uintptr) {
		rights := unix.UnixRights(int(fd))
		n, oobn, err = c.WriteMsgUnix([]byte(frame), rights, nil)
		if err == nil && (n != len(frame) || oobn != len(rights)) {
			err = io.ErrShortWrite
		}
	})
	if err = errors.Join(cerr, err); err != nil {
		return fmt.Errorf("pass %s: %w", f.Name(), err)
	}
	return nil
}

// Listener accepts Conns: connections that may carry a descriptor.
type Listener struct {
	net.Listener
}

// NewListener wraps a unix listener.
func NewListener(ln net.Listener) *Listener { return &Listener{Listener: ln} }

// Accept returns the next connection, as a *Conn when it is a unix one.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	return &Conn{Conn: uc, uc: uc, fd: -1}, nil
}

// Conn is a server-side connection: its first Read takes a frame off, if the client sent one.
// Only the methods of net.Conn (and CloseWrite) are exposed, so no reader bypasses Read.
type Conn struct {
	net.Conn
	uc *net.UnixConn

	readMu  sync.Mutex // guards the read state below; never held by Close
	started bool
	pending []byte // bytes read with the frame that belong to the stream
	err     error  // the first read's error, returned once pending is drained

	mu     sync.Mutex
	fd     int // the passed descriptor until taken or closed; -1 for none
	closed bool
}

// Read returns the stream without the frame.
func (c *Conn) Read(b []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if !c.started {
		c.started = true
		c.pending, c.err = c.readFrame()
	}
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.uc.Read(b)
}

// readFrame does the first read; it keeps a passed descriptor and returns the stream's bytes.
func (c *Conn) readFrame() ([]byte, error) {
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(buf, oob)
	fds, ferr := rights(oob[:oobn])
	if n == 0 || buf[0] != frame[0] {
		closeAll(fds) // descriptors sent without a frame are never used
		if n > 0 {
			err = nil
		}
		return buf[:n], err
	}
	if n < len(frame) {
		m, rerr := io.ReadFull(c.uc, buf[n:len(frame)])
		n += m
		if rerr != nil {
			closeAll(fds)
			return nil, fmt.Errorf("%w: %w", ErrBadFrame, rerr)
		}
	}
	switch {
	case !bytes.Equal(buf[:len(frame)], []byte(frame)):
		err = fmt.Errorf("%w: unknown header %q", ErrBadFrame, buf[:len(frame)])
	case ferr != nil:
		err = fmt.Errorf("%w: %w", ErrBadFrame, ferr)
	case flags&unix.MSG_CTRUNC != 0 || len(fds) != 1:
		err = fmt.Errorf("%w: it carries %d descriptors, want 1", ErrBadFrame, len(fds))
	}
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed { // closed while the frame was on its way: nobody will take it
		unix.Close(fds[0])
		return nil, net.ErrClosed
	}
	c.fd = fds[0]
	return buf[len(frame):n], nil
}

// rights returns the descriptors the SCM_RIGHTS messages in oob brought.
func rights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var all []int
	var errs []error
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			all = append(all, fd)
		}
	}
	return all, errors.Join(errs...)
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// TakeFD returns the passed descriptor, or -1; the caller owns and closes it from then on.
func (c *Conn) TakeFD() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	fd := c.fd
	c.fd = -1
	return fd
}

// Close closes the connection and a descriptor nobody took.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
	c.mu.Unlock()
	return c.uc.Close()
}

// CloseWrite shuts down the writing side.
func (c *Conn) CloseWrite() error { return c.uc.CloseWrite() }

type connKey struct{}

// ConnContext is an http.Server ConnContext: it puts the connection where FDFrom finds it.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*Conn); ok {
		return context.WithValue(ctx, connKey{}, fc)
	}
	return ctx
}

// FDFrom takes the descriptor passed on the connection of a request's context, or -1; the
// caller closes it.
func FDFrom(ctx context.Context) int {
	c, _ := ctx.Value(connKey{}).(*Conn)
	if c == nil {
		return -1
	}
	return c.TakeFD()
}
