package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/sys/unix"
)

// rootOnly accepts only connections whose peer is root, by the credentials the kernel recorded
// when the peer connected (SO_PEERCRED); any other connection is closed with a log line and
// never reaches the API. The socket's mode (0600 in a 0700 directory) keeps others out too,
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
		if err != nil {
			slog.Warn("api socket: refused a connection whose peer is unknown", "err", err)
		} else {
			slog.Warn("api socket: refused a connection from a non-root peer", "uid", cred.Uid, "pid", cred.Pid)
		}
		c.Close()
	}
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
