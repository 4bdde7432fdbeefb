package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// rootOnly accepts only connections whose peer is root, by the credentials the kernel recorded
// when the peer connected (SO_PEERCRED); any other connection is answered with one line saying
// so (refuse), logged, and never reaches the API. The socket's mode (0600 in a 0700 directory) keeps others out too,
// but this holds whatever the mode becomes: a chmod, a bind mount, a descriptor passed on.
type rootOnly struct {
	net.Listener
}

// Accept returns the next connection from root, closing those of anyone else.
func (l rootOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err == nil && cred.Uid == 0 {
			return c, nil
		}
		why := "the ebpfnet agent answers only root (uid 0) and could not tell who you are"
		if err != nil {
			slog.Warn("api socket: refused a connection whose peer is unknown", "err", err)
		} else {
			why = fmt.Sprintf("the ebpfnet agent answers only root (uid 0); you are uid %d", cred.Uid)
			slog.Warn("api socket: refused a connection from a non-root peer", "uid", cred.Uid, "pid", cred.Pid)
		}
		go refuse(c, why)
	}
}

// How long and how much of a refused peer's request is read before its connection closes.
const (
	refuseReadTime  = 2 * time.Second
	refuseReadBytes = 1 << 20
)

// refuse answers a refused connection with a 403 whose body is the API's error, then reads
// (and throws away) what the peer is still sending until it closes or the bounds pass: a unix
// socket closed with unread data resets its peer, who would then see "connection reset by
// peer" instead of why.
func refuse(c net.Conn, why string) {
	defer c.Close()
	body, _ := json.Marshal(&agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: why})
	// Best effort: a peer that does not read or stops sending only loses the explanation.
	_ = c.SetDeadline(time.Now().Add(refuseReadTime))
	fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	_, _ = io.CopyN(io.Discard, c, refuseReadBytes)
}

// peerCred returns the credentials of the process at the other end of a unix connection.
func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("a %T is not a unix connection", c)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if cred == nil {
		return nil, errors.New("SO_PEERCRED: no credentials")
	}
	return cred, nil
}
