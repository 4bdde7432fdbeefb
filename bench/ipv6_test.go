package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// TestIPv6Setups builds both IPv6 suites and checks that every setup carries IPv6 end to end
// the way its name says, then that one brief round gives each row its figures.
func TestIPv6Setups(t *testing.T) {
	nstest.RequireRoot(t)
	ebpfnetBeside(t)
	// Which setups' nodes forward the pods' IPv6 in the kernel (true), and which carry it in
	// BPF, the nodes' IPv6 stacks untouched (false). The bridge's node bridges it through
	// ip6tables; direct and node-to-node have no node between.
	kernelForwards := map[string]bool{"kernel-route": true, "kernel-vxlan": true, "ebpfnet": false, "ebpfnet-vxlan": false}
	cfg := Config{Rounds: 1, Throughput: time.Second, Latency: 300 * time.Millisecond}
	for _, name := range []string{"same-node-ipv6", "cross-node-ipv6"} {
		t.Run(name, func(t *testing.T) {
			def := Suites[name]
			builders := def.Builders()
			suite := newSuite(name, def.Baseline, def.Limit, builders)
			topos, err := buildAll(builders)
			t.Cleanup(func() { closeAll(topos) })
			if err != nil {
				t.Fatal(err)
			}
			before := make([]pathCounts, len(topos))
			for i, tp := range topos {
				if !tp.ServerIP.Is6() {
					t.Fatalf("%s: the server's address %s is not IPv6", tp.Name, tp.ServerIP)
				}
				who, err := lab.AskWho(namespace.Path(tp.Client), netip.AddrPortFrom(tp.ServerIP, latencyPort), "TCP")
				if err != nil {
					t.Fatalf("%s: %v", tp.Name, err)
				}
				if who.Server != tp.ServerIP || !who.Client.Addr().Is6() || who.Client.Addr().Is4In6() || who.Client.Addr().IsLinkLocalUnicast() {
					t.Errorf("%s: the echo server at %s saw itself at %s and the client at %s, want an IPv6 client", tp.Name, tp.ServerIP, who.Server, who.Client)
				}
				before[i] = countPath(t, tp)
			}
			if err := measure(&suite, topos, cfg); err != nil {
				t.Fatal(err)
			}
			for i, tp := range topos {
				d := countPath(t, tp).since(before[i])
				t.Logf("%s: %+v", tp.Name, d)
				const many = 1000 // a round sends tens of thousands of packets
				if d.clientOut6 < many || d.serverIn6 < many {
					t.Errorf("%s: %d IPv6 packets out of the client, %d into the server; want %d or more each", tp.Name, d.clientOut6, d.serverIn6, many)
				}
				if d.clientOut4 > d.clientOut6/100 || d.serverIn4 > d.serverIn6/100 {
					t.Errorf("%s: %d IPv4 packets out of the client and %d into the server, beside %d and %d IPv6 ones",
						tp.Name, d.clientOut4, d.serverIn4, d.clientOut6, d.serverIn6)
				}
				if kernel, ok := kernelForwards[tp.Name]; ok {
					if kernel && d.forwarded6 < many {
						t.Errorf("%s: the nodes forwarded %d IPv6 packets, want %d or more", tp.Name, d.forwarded6, many)
					}
					if !kernel && d.forwarded6 > d.clientOut6/100 {
						t.Errorf("%s: the nodes forwarded %d IPv6 packets of %d: not BPF's path", tp.Name, d.forwarded6, d.clientOut6)
					}
				}
				if tp.Name == "kernel-vxlan" && d.vxlanOut < many {
					t.Errorf("kernel-vxlan: flannel.1 sent %d packets, want %d or more", d.vxlanOut, many)
				}
				if tp.Name == "bridge" && d.ip6tables < many {
					t.Errorf("bridge: ip6tables FORWARD saw %d packets, want %d or more", d.ip6tables, many)
				}
			}
			if suite.Family != IPv6 {
				t.Errorf("suite family %q, want IPv6", suite.Family)
			}
			md := (&Report{Suites: []Suite{suite}}).Markdown()
			for _, st := range suite.Setups {
				if len(st.ThroughputGbps) != 1 || st.MedianGbps <= 0 || st.MedianP50us <= 0 || st.MedianP99us < st.MedianP50us || st.MedianCRRus <= 0 {
					t.Errorf("setup %+v", st)
				}
				if !strings.Contains(md, fmt.Sprintf("| %s | %.2f |", st.Name, st.MedianGbps)) {
					t.Errorf("no row for %s in\n%s", st.Name, md)
				}
			}
			if !strings.Contains(md, "TCP_CRR × "+def.Baseline) {
				t.Errorf("no TCP_CRR column in\n%s", md)
			}
		})
	}
}

// pathCounts are packet counters along a topology: IP packets out of the client and into the
// server by family, IPv6 forwarded by the nodes, sent by the nodes' flannel.1 and seen by
// their ip6tables FORWARD chains.
type pathCounts struct {
	clientOut4, clientOut6, serverIn4, serverIn6 uint64
	forwarded6, vxlanOut, ip6tables              uint64
}

func (c pathCounts) since(b pathCounts) pathCounts {
	return pathCounts{c.clientOut4 - b.clientOut4, c.clientOut6 - b.clientOut6, c.serverIn4 - b.serverIn4,
		c.serverIn6 - b.serverIn6, c.forwarded6 - b.forwarded6, c.vxlanOut - b.vxlanOut, c.ip6tables - b.ip6tables}
}

func countPath(t *testing.T, tp *Topology) pathCounts {
	t.Helper()
	client, server := snmp(t, tp.Client), snmp(t, tp.Server)
	c := pathCounts{clientOut4: client["IpOutRequests"], clientOut6: client["Ip6OutRequests"],
		serverIn4: server["IpInDelivers"], serverIn6: server["Ip6InDelivers"]}
	for _, n := range tp.Nodes {
		c.forwarded6 += snmp(t, n)["Ip6OutForwDatagrams"]
		if h, err := handle(n); err == nil {
			if l, err := h.LinkByName("flannel.1"); err == nil {
				c.vxlanOut += l.Attrs().Statistics.TxPackets
			}
			h.Close()
		}
		c.ip6tables += chainPackets(t, n)
	}
	return c
}

// snmp reads a namespace's IP counters: IPv4's (/proc/net/snmp) as "Ip" and the name,
// IPv6's (/proc/net/snmp6) as they are.
func snmp(t *testing.T, ns string) map[string]uint64 {
	t.Helper()
	c := map[string]uint64{}
	err := namespace.Do(namespace.Path(ns), func() error {
		v4, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(v4), "\n") {
			fields := strings.Fields(line)
			if len(fields) == 0 || fields[0] != "Ip:" {
				continue
			}
			if names == nil {
				names = fields[1:]
				continue
			}
			for i, v := range fields[1:] {
				c["Ip"+names[i]], _ = strconv.ParseUint(v, 10, 64)
			}
		}
		v6, err := os.Open("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		defer v6.Close()
		sc := bufio.NewScanner(v6)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 {
				c[f[0]], _ = strconv.ParseUint(f[1], 10, 64)
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatalf("counters of %s: %v", ns, err)
	}
	return c
}

// chainPackets is how many packets the rules of ip6tables' FORWARD chain in ns have matched.
func chainPackets(t *testing.T, ns string) uint64 {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "ip6tables", "-w", "-nvx", "-L", "FORWARD").CombinedOutput()
	if err != nil {
		t.Fatalf("ip6tables in %s: %v: %s", ns, err, out)
	}
	var n uint64
	for _, line := range strings.Split(string(out), "\n")[2:] {
		if f := strings.Fields(line); len(f) > 0 {
			p, _ := strconv.ParseUint(f[0], 10, 64)
			n += p
		}
	}
	return n
}

// ebpfnetBeside puts ebpfnet and ebpfnet-cni beside the test binary, where the lab and the
// IPv6 echo server look for them: built into a directory kept between runs (go build does
// nothing when they are up to date) and linked there. Binaries already there that are not
// such links (a test binary run from bin/) are left alone and used.
func ebpfnetBeside(t *testing.T) {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "ebpfnet-bench-test-bin")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"ebpfnet", "ebpfnet-cni"} {
		link := filepath.Join(filepath.Dir(exe), bin)
		if fi, err := os.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
			t.Logf("using %s", link)
			continue
		}
		build := exec.Command("go", "build", "-o", dir+"/", "../cmd/"+bin)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v: %s", bin, err, out)
		}
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, bin), link); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIPv4TableUnchanged: an IPv4 suite's table and JSON are what they were before the IPv6
// suites came, with no TCP_CRR column or family.
func TestIPv4TableUnchanged(t *testing.T) {
	s := Suite{Name: "same-node", Baseline: "kernel-route", Limit: "direct", Setups: []Setup{
		{Name: "direct", MedianGbps: 12, MedianP50us: 30, MedianP99us: 40},
		{Name: "kernel-route", MedianGbps: 10, MedianP50us: 33, MedianP99us: 50}}}
	want := `## same-node

| setup | TCP Gbit/s | × kernel-route | × direct | p50 µs | p99 µs | p50 × kernel-route |
|---|---:|---:|---:|---:|---:|---:|
| direct | 12.00 | 1.200 | 1.000 | 30.0 | 40.0 | 0.909 |
| kernel-route | 10.00 | 1.000 | 0.833 | 33.0 | 50.0 | 1.000 |

Throughput: one iperf3 TCP stream; latency: sockperf TCP ping-pong (one-way, µs). Lower latency ratio is better.

`
	if md := (&Report{Suites: []Suite{s}}).Markdown(); !strings.Contains(md, want) {
		t.Errorf("markdown\n%s\nlacks\n%s", md, want)
	}
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), "family") || strings.Contains(strings.ToLower(string(js)), "crr") {
		t.Errorf("IPv4 suite in JSON: %s", js)
	}
}
