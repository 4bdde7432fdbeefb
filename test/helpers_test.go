package test

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func mustAddr(t *testing.T, ip net.IP) netip.Addr {
	t.Helper()
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok {
		t.Fatalf("%v is not IPv4", ip)
	}
	return a
}

// labProbe probes a lab pod from any namespace.
func labProbe(netns string, to *lab.Pod, port int, proto string) error {
	return lab.ProbeFrom(netns, netip.AddrPortFrom(to.IP, uint16(port)), proto)
}

// cnitoolContainerID is the container ID cnitool derives from a netns path.
func cnitoolContainerID(netns string) string {
	abs, _ := filepath.Abs(netns)
	s := sha512.Sum512([]byte(abs))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// eventually polls cond until it holds; past timeout it fails the test with what and cond's
// last word. Tests wait on conditions this way, never on fixed sleeps.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	nstest.Eventually(t, timeout, what, cond)
}

// probeAgain asks a pair that should connect and did not up to three more times, as the
// upstream suite's probes do: one lost SYN fails a one-second probe on a loaded machine. It
// returns nil once one answers, or the last probe's error.
func probeAgain(netns string, addr netip.AddrPort, proto string) error {
	var err error
	for try := 0; try < 3; try++ {
		if err = lab.ProbeFrom(netns, addr, proto); err == nil {
			return nil
		}
	}
	return err
}
