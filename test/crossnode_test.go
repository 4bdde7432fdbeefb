package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// threeNodeLab is three nodes with two pods each, every pod serving 80/TCP and 80/UDP.
func threeNodeLab(mode string) *lab.Spec {
	s := &lab.Spec{Mode: mode, Namespaces: []lab.Namespace{{Name: "x"}}}
	ports := []lab.Port{{Name: "tcp", Port: 80, Protocol: "TCP"}, {Name: "udp", Port: 80, Protocol: "UDP"}}
	for n := 1; n <= 3; n++ {
		node := fmt.Sprintf("node%d", n)
		s.Nodes = append(s.Nodes, lab.NodeSpec{Name: node})
		for p := 1; p <= 2; p++ {
			s.Pods = append(s.Pods, lab.PodSpec{Namespace: "x", Name: fmt.Sprintf("p%d%d", n, p), Node: node,
				Labels: map[string]string{"pod": fmt.Sprintf("p%d%d", n, p)}, Ports: ports})
		}
	}
	return s
}

// upLab brings a lab up through the Go API with the test-built CLI as its server binary, and
// takes it down when the test ends.
func upLab(t *testing.T, prefix string, spec *lab.Spec) *lab.State {
	t.Helper()
	nstest.RequireRoot(t)
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	name := prefix + nstest.Suffix(4)
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	st, err := lab.Up(context.Background(), name, spec, lab.Options{Exe: ebpfnetBin})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return st
}

// Acceptance: in every mode, all pairs reach each other over TCP and UDP; the underlay carries
// the mode's encapsulation; a 100 MB transfer between nodes completes.
func TestCrossNodeModes(t *testing.T) {
	for _, mode := range []string{"vxlan", "native", "ipip"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			st := upLab(t, mode[:2], threeNodeLab(mode))
			t.Run("all pairs", func(t *testing.T) {
				for _, proto := range []string{"TCP", "UDP"} {
					m, err := st.Matrix(80, proto)
					if err != nil {
						t.Fatal(err)
					}
					for from, row := range m {
						for to, ok := range row {
							if !ok {
								t.Errorf("%s: %s does not reach %s", proto, from, to)
							}
						}
					}
					if len(m) != 6 {
						t.Fatalf("matrix has %d rows, want 6", len(m))
					}
				}
			})
			t.Run("underlay encapsulation", func(t *testing.T) { checkUnderlay(t, st, mode) })
			t.Run("100MB transfer", func(t *testing.T) {
				if mode != "vxlan" {
					transfer(t, st, "x/p11", "x/p31", 100<<20)
					return
				}
				// VXLAN is BPF's both ways: the kernel's VXLAN device on either node sees
				// none of it, while the underlay devices carry it all.
				n1, _ := st.Node("node1")
				n3, _ := st.Node("node3")
				before := map[string][2]uint64{}
				for _, n := range []*lab.Node{n1, n3} {
					for _, dev := range []string{"ebpfnet_vxlan", lab.UnderlayIf} {
						before[n.Name+"/"+dev] = linkPackets(t, n.Netns, dev)
					}
				}
				transfer(t, st, "x/p11", "x/p31", 100<<20)
				for _, n := range []*lab.Node{n1, n3} {
					u, v := n.Name+"/"+lab.UnderlayIf, n.Name+"/ebpfnet_vxlan"
					under, dev := linkPackets(t, n.Netns, lab.UnderlayIf), linkPackets(t, n.Netns, "ebpfnet_vxlan")
					du := [2]uint64{under[0] - before[u][0], under[1] - before[u][1]}
					dv := [2]uint64{dev[0] - before[v][0], dev[1] - before[v][1]}
					t.Logf("%s: %s rx %d tx %d packets; ebpfnet_vxlan rx %d tx %d", n.Name, lab.UnderlayIf, du[0], du[1], dv[0], dv[1])
					if du[0] < 1000 || du[1] < 1000 {
						t.Errorf("%s: %s counted rx %d tx %d packets for 100 MB each way: the counters do not see the traffic", n.Name, lab.UnderlayIf, du[0], du[1])
					}
					if dv != [2]uint64{} {
						t.Errorf("%s: ebpfnet_vxlan counted rx %d tx %d packets: the kernel's VXLAN device is in the path", n.Name, dv[0], dv[1])
					}
				}
			})
			t.Run("counted by BPF", func(t *testing.T) {
				node, _ := st.Node("node1")
				c := nodeCounters(t, node)
				out := maps.ReasonForwardTunnel
				if mode == "native" {
					out = maps.ReasonForwardUnder
				}
				if c[key(out, maps.DirFromPod)] == 0 {
					t.Errorf("no packet left node1 as %s", maps.ReasonName(out))
				}
				in := maps.DirFromUnderlay
				if mode == "vxlan" {
					in = maps.DirFromOverlay
				}
				if c[key(maps.ReasonForwardLocal, in)] == 0 {
					t.Errorf("no packet arrived at node1's pods through %s", maps.DirectionName(in))
				}
			})
		})
	}
}

func key(r maps.Reason, d maps.Direction) string {
	return maps.ReasonName(r) + "/" + maps.DirectionName(d)
}

func nodeCounters(t *testing.T, n *lab.Node) map[string]uint64 {
	t.Helper()
	out, code := ebpfnet(t, "--pin-dir", n.PinDir, "metrics", "-o", "json")
	if code != 0 {
		t.Fatalf("ebpfnet metrics: %s", out)
	}
	var rows []struct {
		Reason, Direction string
		Packets           uint64
	}
	if err := jsonUnmarshal(out, &rows); err != nil {
		t.Fatal(err)
	}
	c := map[string]uint64{}
	for _, r := range rows {
		c[r.Reason+"/"+r.Direction] = r.Packets
	}
	return c
}

// checkUnderlay captures on node1's eth0 while node1's pod talks to node2's pod.
func checkUnderlay(t *testing.T, st *lab.State, mode string) {
	src, _ := st.Pod("x/p11")
	dst, _ := st.Pod("x/p21")
	node, _ := st.Node("node1")
	filters := map[string]string{
		"vxlan":  fmt.Sprintf("udp port %d", st.VXLANPort),
		"ipip":   "ip proto 4",
		"native": fmt.Sprintf("ip src %s and ip dst %s and tcp port 80", src.IP, dst.IP),
	}
	probe := func() { _ = st.Probe(src.Key(), dst.Key(), 80, "TCP") } // only its packets count: the capture looks for them
	if !seen(t, node.Netns, filters[mode], probe) {
		t.Fatalf("%s mode: no %q packets on node1's eth0", mode, filters[mode])
	}
	if mode == "vxlan" {
		// tcpdump decodes what BPF wrote as VXLAN, down to the probe's own TCP inside.
		n1, _ := st.Node("node1")
		var id uint64
		if out, code := ebpfnet(t, "--pin-dir", n1.PinDir, "endpoint", "list", "-o", "json"); code == 0 {
			var eps []struct {
				IP       string
				Identity uint64
			}
			if err := jsonUnmarshal(out, &eps); err != nil {
				t.Fatal(err)
			}
			for _, e := range eps {
				if e.IP == src.IP.String() {
					id = e.Identity
				}
			}
		}
		if id == 0 {
			t.Fatalf("no identity for %s in node1's endpoint map", src.IP)
		}
		pcap := filepath.Join(t.TempDir(), "vxlan.pcap")
		want := []string{"VXLAN, flags [I] (0x08), vni " + fmt.Sprint(id), src.IP.String() + ".", " > " + dst.IP.String() + ".80:"}
		decoded := decodeCapture(t, node.Netns, pcap, fmt.Sprintf("udp dst port %d", st.VXLANPort), probe, want, "-T", "vxlan")
		for _, w := range want {
			if !strings.Contains(decoded, w) {
				t.Fatalf("tcpdump -T vxlan does not show %q:\n%s", w, decoded)
			}
		}
	}
	if mode == "native" {
		// Natively routed traffic must not be encapsulated.
		checkNotEncapsulated(t, st, node.Netns, filters["native"], probe)
	}
}

// checkNotEncapsulated captures on netns's eth0 while probe runs once and fails if any packet
// was encapsulated (VXLAN or IP-in-IP). The same capture must see the probe's own packets
// (plain, a filter for them): the positive control that it would have seen encapsulated ones.
func checkNotEncapsulated(t *testing.T, st *lab.State, netns, plain string, probe func()) {
	t.Helper()
	encap := fmt.Sprintf("udp port %d or ip proto 4", st.VXLANPort)
	n := capture(t, netns, probe, encap, plain)
	if n[1] == 0 {
		t.Fatalf("the capture on %s saw none of the probe's own packets (%q), so its count of encapsulated ones proves nothing", filepath.Base(netns), plain)
	}
	if n[0] != 0 {
		t.Fatalf("%d encapsulated packets on the underlay (and %d plain ones)", n[0], n[1])
	}
}

// startTcpdump runs tcpdump on eth0 inside netns, writing to pcap, and returns once its filter
// is in place.
func startTcpdump(t *testing.T, ctx context.Context, netns, filter, pcap string, extra ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	args := append([]string{"netns", "exec", filepath.Base(netns), "tcpdump", "-i", lab.UnderlayIf, "-n", "-U",
		"--immediate-mode", "-w", pcap}, extra...)
	cmd := exec.CommandContext(ctx, "ip", append(args, filter)...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stderr)
	for { // tcpdump says "listening on" once its filter is in place
		line, err := r.ReadString('\n')
		if strings.Contains(line, "listening on") {
			return cmd, r
		}
		if err != nil {
			t.Fatalf("tcpdump did not start: %s %v", line, err)
		}
	}
}

// seen reports whether a packet matching filter crosses eth0 while traffic repeats: tcpdump
// exits by itself on the first one.
func seen(t *testing.T, netns, filter string, traffic func()) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd, r := startTcpdump(t, ctx, netns, filter, filepath.Join(t.TempDir(), "cap.pcap"), "-c", "1")
	done := make(chan error, 1)
	go func() {
		_, _ = io.ReadAll(r) // drains the pipe until the process exits; Wait reports how
		done <- cmd.Wait()
	}()
	for {
		traffic()
		select {
		case err := <-done:
			return err == nil
		case <-time.After(200 * time.Millisecond): // try again until tcpdump has its packet or ctx ends
		}
	}
}

// capture runs traffic once under tcpdump on netns's eth0 and counts the packets matching each
// of filters. tcpdump must exit cleanly, or the test fails: a capture that did not run counts 0.
func capture(t *testing.T, netns string, traffic func(), filters ...string) []int {
	t.Helper()
	pcap := filepath.Join(t.TempDir(), "cap.pcap")
	captureTo(t, netns, pcap, "("+strings.Join(filters, ") or (")+")", traffic)
	counts := make([]int, len(filters))
	for i, f := range filters {
		out, err := exec.Command("tcpdump", "-n", "-r", pcap, f).Output()
		if err != nil {
			t.Fatalf("tcpdump -r %s %q: %v", pcap, f, err)
		}
		counts[i] = strings.Count(string(out), "\n")
	}
	return counts
}

// captureTo writes what crosses netns's eth0 matching filter into pcap while traffic runs once.
// tcpdump must exit cleanly, or the test fails.
func captureTo(t *testing.T, netns, pcap, filter string, traffic func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd, r := startTcpdump(t, ctx, netns, filter, pcap)
	traffic()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	rest, _ := io.ReadAll(r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tcpdump on %s: %v: %s", filepath.Base(netns), err, rest)
	}
}

// transfer sends size bytes from one pod to another's echo server and checks every byte
// comes back.
func transfer(t *testing.T, st *lab.State, from, to string, size int) {
	t.Helper()
	transferFamily(t, st, from, to, st.Families()[0], size)
}

// transferFamily is transfer to the pod's address of family.
func transferFamily(t *testing.T, st *lab.State, from, to, family string, size int) {
	t.Helper()
	src, _ := st.Pod(from)
	dst, _ := st.Pod(to)
	ip, err := dst.Addr(family)
	if err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	err = namespace.Do(src.Netns, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(ip, 80).String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	sent, got := sha256.New(), sha256.New()
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 1<<16)
		for i := range chunk {
			chunk[i] = byte(i * 7)
		}
		for n := 0; n < size; n += len(chunk) {
			sent.Write(chunk)
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	n, err := io.Copy(got, c)
	if werr := <-errc; werr != nil {
		t.Fatalf("send: %v", werr)
	}
	if err != nil || n != int64(size) {
		t.Fatalf("received %d of %d bytes: %v", n, size, err)
	}
	if string(sent.Sum(nil)) != string(got.Sum(nil)) {
		t.Fatal("the bytes that came back differ from those sent")
	}
}

// decodeCapture runs traffic once under tcpdump on netns's eth0 with filter and returns
// tcpdump's decoding (with decode's options) of what it caught, once that shows every string
// of want: tcpdump, stopped, drops what it has not read yet, so the capture runs until the
// packets looked for are in the file; past 20 s the test fails.
func decodeCapture(t *testing.T, netns, pcap, filter string, traffic func(), want []string, decode ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, r := startTcpdump(t, ctx, netns, filter, pcap)
	read := func() string {
		out, _ := exec.Command("tcpdump", append(append([]string{"-n", "-r", pcap}, decode...), filter)...).Output()
		return string(out)
	}
	traffic()
	eventually(t, 20*time.Second, "the capture to show "+strings.Join(want, ", "), func() (bool, string) {
		got := read()
		for _, w := range want {
			if !strings.Contains(got, w) {
				return false, fmt.Sprintf("no %q in\n%s", w, got)
			}
		}
		return true, ""
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	rest, _ := io.ReadAll(r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tcpdump on %s: %v: %s", filepath.Base(netns), err, rest)
	}
	out, err := exec.Command("tcpdump", append(append([]string{"-n", "-r", pcap}, decode...), filter)...).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v", pcap, err)
	}
	return string(out)
}

// linkPackets is dev's received and sent packet counts in netns.
func linkPackets(t *testing.T, netns, dev string) [2]uint64 {
	t.Helper()
	var out [2]uint64
	err := namespace.Do(netns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		s := l.Attrs().Statistics
		out = [2]uint64{s.RxPackets, s.TxPackets}
		return nil
	})
	if err != nil {
		t.Fatalf("%s in %s: %v", dev, filepath.Base(netns), err)
	}
	return out
}
