package test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// The streams' loss count (lostSince) is what the DaemonSet lifecycle holds at zero: here an
// echo server that leaves out every 100th datagram shows it counts exactly those, and nothing
// for the datagrams still in flight.
func TestStreamCountsLostDatagrams(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t, "loss")
	var ln net.Listener
	var pc net.PacketConn
	ns.Do(t, func() (err error) {
		if ln, err = net.Listen("tcp4", "127.0.0.1:80"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", "127.0.0.1:81")
		return err
	})
	defer ln.Close()
	defer pc.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c) }()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil && (n != 8 || binary.BigEndian.Uint64(buf)%100 != 50) {
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}
	}()
	pod := &lab.Pod{Netns: ns.Path, IP: netip.MustParseAddr("127.0.0.1")}
	s := startStream(t, pod, pod)
	defer s.stop()
	s.udpProgress(t, 400, "echoes")
	lost, upTo := s.lostSince(0)
	if upTo < 375 {
		t.Fatalf("judged datagrams 0 to %d after 400 echoes", upTo)
	}
	if want := (upTo + 50) / 100; lost != want {
		t.Errorf("datagrams 0 to %d: %d counted lost, want %d (every 100th, from 50)", upTo, lost, want)
	}
	t.Logf("datagrams 0 to %d: %d lost", upTo, lost)
}
