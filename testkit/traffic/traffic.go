// Package traffic runs echo servers and clients inside network namespaces for tests.
package traffic

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// Timeout bounds every probe: a reachable peer answers in well under it.
const Timeout = 2 * time.Second

// ServeTCP runs a TCP echo server in ns on addr until the test ends.
func ServeTCP(tb testing.TB, ns *nstest.NS, addr netip.AddrPort) {
	tb.Helper()
	var ln net.Listener
	ns.Do(tb, func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	tb.Cleanup(func() { ln.Close() })
	go lab.EchoTCP(ln)
}

// ServeUDP runs a UDP echo server in ns on addr until the test ends.
func ServeUDP(tb testing.TB, ns *nstest.NS, addr netip.AddrPort) {
	tb.Helper()
	var pc net.PacketConn
	ns.Do(tb, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr.String())
		return err
	})
	tb.Cleanup(func() { pc.Close() })
	go lab.EchoUDP(pc)
}

// TCPEcho connects from ns to addr, sends payload and checks it comes back.
func TCPEcho(ns *nstest.NS, addr netip.AddrPort, payload []byte) error {
	var c net.Conn
	err := nsDo(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr.String(), Timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(Timeout))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo from %s: %w", addr, err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write to %s: %w", addr, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo from %s differs", addr)
	}
	return nil
}

// UDPEcho sends one datagram from ns to addr and waits for the echo, retrying a few times.
func UDPEcho(ns *nstest.NS, addr netip.AddrPort, payload []byte) error {
	var c net.Conn
	if err := nsDo(ns, func() (err error) {
		c, err = net.Dial("udp4", addr.String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, len(payload)+1)
	for try := 0; try < 3; try++ {
		if _, err := c.Write(payload); err != nil {
			return fmt.Errorf("send to %s: %w", addr, err)
		}
		c.SetReadDeadline(time.Now().Add(Timeout / 3))
		n, err := c.Read(buf)
		if err == nil && bytes.Equal(buf[:n], payload) {
			return nil
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return fmt.Errorf("read echo from %s: %w", addr, err)
		}
	}
	return fmt.Errorf("no udp echo from %s", addr)
}

// Ping sends count ICMP echo requests from ns to ip and needs every reply.
func Ping(ns *nstest.NS, ip netip.Addr, count int) error {
	out, err := ns.Command("ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.05", "-W", "2", ip.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w: %s", ip, ns.Name, err, bytes.TrimSpace(out))
	}
	if !bytes.Contains(out, []byte(fmt.Sprintf("%d received", count))) {
		return fmt.Errorf("ping %s from %s lost replies: %s", ip, ns.Name, bytes.TrimSpace(out))
	}
	return nil
}

// nsDo runs fn in ns and returns its error, so probes can report unreachability.
func nsDo(ns *nstest.NS, fn func() error) error {
	return namespace.DoHandle(ns.Handle(), fn)
}
