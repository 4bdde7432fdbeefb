package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Serve answers on every port (TCP: accept and echo; UDP: echo), writes readyFile once all
// are bound, and runs until ctx ends. It is what `ebpfnet lab serve` runs inside each pod.
func Serve(ctx context.Context, ports, readyFile string) error {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, spec := range strings.Split(ports, ",") {
		num, proto, ok := strings.Cut(spec, "/")
		port, err := strconv.Atoi(num)
		if !ok || err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("bad port %q (want PORT/PROTOCOL)", spec)
		}
		// Both families: an IPv6 socket that takes IPv4 too, where the pod has IPv6.
		addr := fmt.Sprintf(":%d", port)
		switch proto {
		case "TCP":
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			closers = append(closers, ln)
			go EchoTCP(ln)
		case "UDP":
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			closers = append(closers, pc)
			// Datagrams wait in the socket while this process is descheduled (a busy node, a
			// BestEffort pod): room for seconds of a stream, so that what a test finds missing
			// is what the network lost.
			if err := GrowReadBuffer(pc.(*net.UDPConn), EchoReadBuffer); err != nil {
				slog.Warn("UDP receive buffer", "port", port, "err", err)
			}
			go EchoUDP(pc)
		case "SCTP":
			// This kernel has no SCTP sockets; SCTP rules are covered by BPF unit tests.
			slog.Info("not serving SCTP: no SCTP sockets on this kernel", "port", port)
		default:
			return fmt.Errorf("bad protocol %q in %q", proto, spec)
		}
	}
	if err := os.WriteFile(readyFile, []byte("ready\n"), 0o600); err != nil {
		return err
	}
	slog.Info("serving", "ports", ports)
	<-ctx.Done()
	return nil
}

// WhoRequest asks an echo server, instead of an echo, who it is and who it sees: it answers
// "SERVER-IP CLIENT-IP:PORT", which tells tests which backend a Service chose and what
// source address reached it.
const WhoRequest = "WHO?\n"

// EchoTCP accepts on ln and echoes every connection until ln closes, each read as it comes; a
// connection whose first read begins with WhoRequest is told who answered instead (its
// writer sends it whole, in one write).
func EchoTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			first := make([]byte, 32<<10)
			n, err := c.Read(first)
			rest := first[:n]
			if bytes.HasPrefix(rest, []byte(WhoRequest)) {
				local, _ := netip.ParseAddrPort(c.LocalAddr().String())
				fmt.Fprintf(c, "%s %s\n", local.Addr(), c.RemoteAddr())
				rest = rest[len(WhoRequest):]
			}
			if _, werr := c.Write(rest); werr != nil || err != nil {
				return
			}
			_, _ = io.Copy(c, c) // echoes until the peer closes or resets: nothing to report either way
		}()
	}
}

// EchoReadBuffer is the receive buffer of the lab's UDP sockets: 4 MiB, some 5,000 small
// datagrams.
const EchoReadBuffer = 4 << 20

// GrowReadBuffer sets c's receive buffer to n bytes: past net.core.rmem_max where the process
// may (SO_RCVBUFFORCE needs CAP_NET_ADMIN), else as far as rmem_max allows.
func GrowReadBuffer(c *net.UDPConn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	if serr != nil {
		return c.SetReadBuffer(n)
	}
	return nil
}

// EchoUDP echoes every datagram on pc until pc closes; WhoRequest is answered with who
// answered (the first address of the namespace) and who asked.
func EchoUDP(pc net.PacketConn) {
	buf := make([]byte, 65536)
	self := firstAddress()
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		if string(buf[:n]) == WhoRequest {
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", self, from)), from) // UDP: the asker asks again
			continue
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// firstAddress is the namespace's first global IPv4 address, or without one (an IPv6-only
// pod) its first global IPv6 address: a pod's own.
func firstAddress() netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	var v6 netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().IsGlobalUnicast() {
			if ip = ip.Unmap(); ip.Is4() {
				return ip
			}
			if !v6.IsValid() {
				v6 = ip
			}
		}
	}
	return v6
}
