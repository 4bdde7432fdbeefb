package namespace

import (
	"context"
	"net"
)

// Dialer makes connections from inside the network namespace at path, for clients (HTTP,
// client-go) in a process that lives elsewhere: a socket stays in the namespace it was made in,
// whichever thread uses it later.
func Dialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = Do(path, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
