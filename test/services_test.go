package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// hairpinAddr is the source a pod sees when it reaches itself through a Service.
var hairpinAddr = netip.MustParseAddr("169.254.7.7")

// serviceLab is two nodes: s/a (the client) and s/b on n1, s/c and s/d on n2, with Services
// over them: web (NodePort, b and c, TCP and UDP), solo (NodePort with externalTrafficPolicy
// Local, d only), sticky (ClientIP affinity over b and c) and self (a, for hairpin).
func serviceLab(mode string) *lab.Spec {
	ports := []lab.Port{{Name: "http", Port: 80, Protocol: "TCP"}, {Name: "dns", Port: 80, Protocol: "UDP"}}
	pod := func(name, node, app string) lab.PodSpec {
		return lab.PodSpec{Namespace: "s", Name: name, Node: node, Labels: map[string]string{"app": app}, Ports: ports}
	}
	tcp := func(name string, port, nodePort int) lab.ServicePortSpec {
		return lab.ServicePortSpec{Name: name, Port: port, TargetPort: intstr.FromString("http"), Protocol: "TCP", NodePort: nodePort}
	}
	udp := func(name string, port, nodePort int) lab.ServicePortSpec {
		return lab.ServicePortSpec{Name: name, Port: port, TargetPort: intstr.FromInt32(80), Protocol: "UDP", NodePort: nodePort}
	}
	return &lab.Spec{Mode: mode, Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}}, Namespaces: []lab.Namespace{{Name: "s"}},
		Pods: []lab.PodSpec{pod("a", "n1", "client"), pod("b", "n1", "web"), pod("c", "n2", "web"), pod("d", "n2", "solo")},
		Services: []lab.ServiceSpec{
			{Namespace: "s", Name: "web", Type: "NodePort", Selector: map[string]string{"app": "web"},
				Ports: []lab.ServicePortSpec{tcp("http", 8080, 30080), udp("dns", 8053, 30053)}},
			{Namespace: "s", Name: "solo", Type: "NodePort", ExternalTrafficPolicy: "Local", Selector: map[string]string{"app": "solo"},
				Ports: []lab.ServicePortSpec{tcp("http", 8081, 30081)}},
			{Namespace: "s", Name: "sticky", SessionAffinity: "ClientIP", Selector: map[string]string{"app": "web"},
				Ports: []lab.ServicePortSpec{tcp("http", 8082, 0)}},
			{Namespace: "s", Name: "self", Selector: map[string]string{"app": "client"},
				Ports: []lab.ServicePortSpec{tcp("http", 8083, 0), udp("dns", 8083, 0)}},
		}}
}

// who asks the echo server at addr who answered and whom it saw, failing the test on error.
func who(t *testing.T, netns string, addr netip.AddrPort, proto string) lab.Who {
	t.Helper()
	w, err := lab.AskWho(netns, addr, proto)
	if err != nil {
		t.Fatalf("%s from %s: %v", addr, netns, err)
	}
	return w
}

// backendsSeen asks up to tries times and returns every server that answered, with the
// client addresses each saw.
func backendsSeen(t *testing.T, netns string, addr netip.AddrPort, proto string, tries, want int) map[netip.Addr][]netip.Addr {
	t.Helper()
	seen := map[netip.Addr][]netip.Addr{}
	for i := 0; i < tries && len(seen) < want; i++ {
		w := who(t, netns, addr, proto)
		seen[w.Server] = append(seen[w.Server], w.Client.Addr())
	}
	return seen
}

func serviceAddr(t *testing.T, st *lab.State, key string, port int, proto string) netip.AddrPort {
	t.Helper()
	ip, err := st.ServiceIP(context.Background(), key, port, proto)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(ip, uint16(port))
}

func mustPod(t *testing.T, st *lab.State, key string) *lab.Pod {
	t.Helper()
	p, err := st.Pod(key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustNode(t *testing.T, st *lab.State, name string) *lab.Node {
	t.Helper()
	n, err := st.Node(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// underlayAddr is the underlay namespace's own address: a host outside the cluster.
func underlayAddr(t *testing.T, st *lab.State) netip.Addr {
	t.Helper()
	var addr netip.Addr
	err := namespace.Do(st.Underlay, func() error {
		ifs, err := net.InterfaceAddrs()
		for _, a := range ifs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
				addr, _ = netip.AddrFromSlice(ipn.IP.To4())
			}
		}
		return err
	})
	if err != nil || !addr.IsValid() {
		t.Fatalf("underlay address: %v", err)
	}
	return addr
}

// serveOutside runs echo servers in the underlay namespace (outside the cluster) on ports,
// TCP and UDP, until the test ends.
func serveOutside(t *testing.T, st *lab.State, ports ...int) {
	t.Helper()
	serveOutsideFamily(t, st, lab.FamilyIPv4, ports...)
}

// serveOutsideFamily is serveOutside on the underlay namespace's address of family.
func serveOutsideFamily(t *testing.T, st *lab.State, family string, ports ...int) {
	t.Helper()
	v := map[string]string{lab.FamilyIPv4: "4", lab.FamilyIPv6: "6"}[family]
	for _, port := range ports {
		var (
			ln net.Listener
			pc net.PacketConn
		)
		err := namespace.Do(st.Underlay, func() (err error) {
			if ln, err = net.Listen("tcp"+v, fmt.Sprintf(":%d", port)); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp"+v, fmt.Sprintf(":%d", port))
			return err
		})
		if err != nil {
			t.Fatalf("serve outside on %d: %v", port, err)
		}
		t.Cleanup(func() { ln.Close(); pc.Close() })
		go lab.EchoTCP(ln)
		go lab.EchoUDP(pc)
	}
}

// Acceptance (issue 11): in every mode, with no kube-proxy: pods reach ClusterIPs with
// backends on their node, on the other node and themselves (hairpin), over TCP and UDP; the
// node reaches ClusterIPs and remote pods; NodePorts answer from outside the cluster on
// every node (externalTrafficPolicy Cluster) or only where a backend lives, with the
// client's address (Local); ClientIP affinity holds; pods reach outside through
// masquerading.
func TestServices(t *testing.T) {
	for _, mode := range []string{"vxlan", "native", "ipip"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			st := upLab(t, "sv"+mode[:2], serviceLab(mode))
			a, b, c, d := mustPod(t, st, "s/a"), mustPod(t, st, "s/b"), mustPod(t, st, "s/c"), mustPod(t, st, "s/d")
			n1, n2 := mustNode(t, st, "n1"), mustNode(t, st, "n2")

			t.Run("pod to ClusterIP", func(t *testing.T) {
				for _, sp := range []struct {
					port  int
					proto string
				}{{8080, "TCP"}, {8053, "UDP"}} {
					addr := serviceAddr(t, st, "s/web", sp.port, sp.proto)
					seen := backendsSeen(t, a.Netns, addr, sp.proto, 60, 2)
					if len(seen[b.IP]) == 0 || len(seen[c.IP]) == 0 || len(seen) != 2 {
						t.Errorf("%s %s: answered by %v, want %s (same node) and %s (other node)", addr, sp.proto, seen, b.IP, c.IP)
					}
					for server, clients := range seen {
						for _, cl := range clients {
							if cl != a.IP {
								t.Errorf("%s %s: backend %s saw client %s, want the pod's own %s", addr, sp.proto, server, cl, a.IP)
							}
						}
					}
				}
			})

			t.Run("hairpin", func(t *testing.T) {
				for _, proto := range []string{"TCP", "UDP"} {
					w := who(t, a.Netns, serviceAddr(t, st, "s/self", 8083, proto), proto)
					if w.Server != a.IP || w.Client.Addr() != hairpinAddr {
						t.Errorf("%s: %s answered, seeing %s; want %s seeing %s", proto, w.Server, w.Client, a.IP, hairpinAddr)
					}
				}
			})

			t.Run("affinity", func(t *testing.T) {
				addr := serviceAddr(t, st, "s/sticky", 8082, "TCP")
				first := who(t, a.Netns, addr, "TCP").Server
				for i := 0; i < 15; i++ {
					if w := who(t, a.Netns, addr, "TCP"); w.Server != first {
						t.Fatalf("connection %d went to %s, the client's first to %s", i+2, w.Server, first)
					}
				}
				// Another client may land elsewhere, but keeps its own backend too.
				other := who(t, c.Netns, addr, "TCP").Server
				for i := 0; i < 5; i++ {
					if w := who(t, c.Netns, addr, "TCP"); w.Server != other {
						t.Fatalf("s/c: connection went to %s, its first to %s", w.Server, other)
					}
				}
			})

			t.Run("node to ClusterIP", func(t *testing.T) {
				for _, n := range []*lab.Node{n1, n2} {
					seen := backendsSeen(t, n.Netns, serviceAddr(t, st, "s/web", 8080, "TCP"), "TCP", 60, 2)
					if len(seen) != 2 {
						t.Errorf("from %s: answered by %v, want both backends", n.Name, seen)
					}
					w := who(t, n.Netns, serviceAddr(t, st, "s/web", 8053, "UDP"), "UDP")
					if w.Client.Addr() != n.IP {
						t.Errorf("from %s over UDP: backend saw %s, want the node's %s", n.Name, w.Client, n.IP)
					}
				}
			})

			t.Run("node to remote pod", func(t *testing.T) {
				for _, tc := range []struct {
					from *lab.Node
					to   *lab.Pod
				}{{n1, c}, {n1, d}, {n2, a}, {n2, b}} {
					for _, proto := range []string{"TCP", "UDP"} {
						w := who(t, tc.from.Netns, netip.AddrPortFrom(tc.to.IP, 80), proto)
						if w.Server != tc.to.IP || w.Client.Addr() != tc.from.IP {
							t.Errorf("%s -> %s/%s %s: %s answered seeing %s", tc.from.Name, tc.to.Namespace, tc.to.Name, proto, w.Server, w.Client)
						}
					}
				}
			})

			outside := underlayAddr(t, st)
			t.Run("NodePort externalTrafficPolicy Cluster", func(t *testing.T) {
				for _, n := range []*lab.Node{n1, n2} {
					for _, sp := range []struct {
						port  int
						proto string
					}{{30080, "TCP"}, {30053, "UDP"}} {
						seen := backendsSeen(t, st.Underlay, netip.AddrPortFrom(n.IP, uint16(sp.port)), sp.proto, 60, 2)
						if len(seen) != 2 {
							t.Errorf("%s:%d/%s answered by %v, want both backends", n.IP, sp.port, sp.proto, seen)
						}
						for server, clients := range seen {
							local := (server == b.IP) == (n == n1)
							for _, cl := range clients {
								// A backend on the node itself sees the client; one elsewhere sees the node.
								if want := map[bool]netip.Addr{true: outside, false: n.IP}[local]; cl != want {
									t.Errorf("%s:%d/%s: backend %s saw %s, want %s", n.IP, sp.port, sp.proto, server, cl, want)
								}
							}
						}
					}
				}
			})

			t.Run("NodePort externalTrafficPolicy Local", func(t *testing.T) {
				w := who(t, st.Underlay, netip.AddrPortFrom(n2.IP, 30081), "TCP")
				if w.Server != d.IP || w.Client.Addr() != outside {
					t.Errorf("%s:30081: %s answered seeing %s, want %s seeing the client %s", n2.IP, w.Server, w.Client, d.IP, outside)
				}
				if err := st.ProbeNodePort("n1", 30081, "TCP"); err == nil {
					t.Errorf("%s:30081 answered, but n1 has no backend of a Local service", n1.IP)
				}
			})

			t.Run("datagrams larger than the MTU through the ClusterIP", func(t *testing.T) {
				// Both ways they travel as fragments, and only the first carries the ports
				// the translation is keyed by; each flow is a socket of its own, so both
				// backends (this node's and the other's) answer some.
				addr := serviceAddr(t, st, "s/web", 8053, "UDP")
				if err := largeUDPEchoes(a.Netns, addr, 20); err != nil {
					t.Error(err)
				}
			})

			t.Run("backends churn", func(t *testing.T) { checkBackendChurn(t, st) })

			t.Run("masquerade", func(t *testing.T) {
				serveOutside(t, st, 7001)
				for _, proto := range []string{"TCP", "UDP"} {
					w := who(t, a.Netns, netip.AddrPortFrom(outside, 7001), proto)
					if w.Client.Addr() != n1.IP || w.Client.Port() < 20000 || w.Client.Port() > 29999 {
						t.Errorf("%s: outside saw %s, want %s with a port in 20000-29999", proto, w.Client, n1.IP)
					}
				}
				// The translation is there for operators to see.
				out, code := ebpfnet(t, "--pin-dir", n1.PinDir, "nat", "list", "-o", "json")
				var ts []struct {
					From       [2]netip.AddrPort
					To         [2]netip.AddrPort
					Masquerade bool
					Reply      bool
				}
				if err := jsonUnmarshal(out, &ts); code != 0 || err != nil {
					t.Fatalf("nat list: exit %d, %v: %s", code, err, out)
				}
				found := false
				for _, tr := range ts {
					found = found || (tr.Masquerade && !tr.Reply && tr.From[0].Addr() == a.IP && tr.From[1] == netip.AddrPortFrom(outside, 7001) && tr.To[0].Addr() == n1.IP)
				}
				if !found {
					t.Errorf("nat list shows no masquerade of %s to %s:7001: %s", a.IP, outside, out)
				}
				if err := largeUDPEchoes(a.Netns, netip.AddrPortFrom(outside, 7001), 5); err != nil {
					t.Errorf("masqueraded: %v", err)
				}
				if err := pingFrom(a.Netns, outside); err != nil {
					t.Errorf("ping outside: %v", err)
				}
				if err := pingFrom(c.Netns, n1.IP); err != nil {
					t.Errorf("ping the other node: %v", err)
				}
			})
		})
	}
}

// TestMasqueradeManyFlows: 10,000 concurrent UDP flows from one pod leave through
// masquerading: each takes its own port of the node and every answer comes back to its
// socket.
func TestMasqueradeManyFlows(t *testing.T) {
	t.Parallel()
	st := upLab(t, "mq", serviceLab("vxlan"))
	a, n1 := mustPod(t, st, "s/a"), mustNode(t, st, "n1")
	outside := underlayAddr(t, st)
	ports := []int{7101, 7102, 7103, 7104, 7105, 7106, 7107, 7108, 7109, 7110}
	serveOutside(t, st, ports...)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 20000 {
		lim.Cur = max(lim.Max, 20000)
		lim.Max = lim.Cur
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("raise the open files limit: %v", err)
		}
	}
	const flows = 10000
	conns := make([]net.Conn, flows)
	err := namespace.Do(a.Netns, func() error {
		for i := range conns {
			c, err := net.Dial("udp4", netip.AddrPortFrom(outside, uint16(ports[i%len(ports)])).String())
			if err != nil {
				return err
			}
			conns[i] = c
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// Every socket is open at once; ask in waves so the echo servers' buffers keep up.
	answers := make([]lab.Who, flows)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	for i, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			buf := make([]byte, 128)
			for try := 0; try < 5; try++ {
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte(lab.WhoRequest)); err != nil {
					continue
				}
				n, err := c.Read(buf)
				if err != nil {
					continue
				}
				var server, client string
				if _, err := fmt.Sscan(string(buf[:n]), &server, &client); err == nil {
					answers[i].Client, _ = netip.ParseAddrPort(client)
					return
				}
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	missing := 0
	for i, w := range answers {
		if !w.Client.IsValid() {
			missing++
			continue
		}
		if w.Client.Addr() != n1.IP {
			t.Fatalf("flow %d reached outside as %s, want the node's %s", i, w.Client, n1.IP)
		}
		key := fmt.Sprintf("%d<-%s", ports[i%len(ports)], w.Client)
		if j, dup := seen[key]; dup {
			t.Fatalf("flows %d and %d share the translated source %s", j, i, key)
		}
		seen[key] = i
	}
	if missing > 0 {
		t.Fatalf("%d of %d flows got no answer back", missing, flows)
	}
	t.Logf("%d concurrent UDP flows, each with its own port of %s, all translated back", flows, n1.IP)
}

// pingFrom sends one echo request from the namespace at netns and waits for the reply.
// largeUDPEchoes sends flows datagrams of 4,000 bytes from netns to the echo server at addr,
// each from a socket of its own, and checks that each comes back whole. 4,000 bytes is more
// than the namespace's MTU (checked), so each travels as fragments both ways. A datagram may
// be lost: each is asked up to three times.
func largeUDPEchoes(netns string, addr netip.AddrPort, flows int) error {
	const size = 4000
	return namespace.Do(netns, func() error {
		mtu, err := largestMTU()
		if err != nil {
			return err
		}
		if mtu >= size {
			return fmt.Errorf("%s: the MTU is %d: a datagram of %d bytes would not be fragmented", netns, mtu, size)
		}
		msg := make([]byte, size)
		got := make([]byte, size+1)
		for i := range flows {
			for j := range msg {
				msg[j] = byte(i + j*7)
			}
			c, err := net.Dial("udp4", addr.String())
			if err != nil {
				return err
			}
			var n int
			for try := 0; try < 3; try++ {
				if _, err = c.Write(msg); err != nil {
					break
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				if n, err = c.Read(got); err == nil {
					break
				}
			}
			c.Close()
			if err != nil {
				return fmt.Errorf("datagram %d of %d bytes to %s (from %s): no echo: %w", i+1, size, addr, c.LocalAddr(), err)
			}
			if !bytes.Equal(got[:n], msg) {
				return fmt.Errorf("datagram %d of %d bytes to %s: echo of %d bytes differs", i+1, size, addr, n)
			}
		}
		return nil
	})
}

// largestMTU is the largest MTU of the namespace's interfaces but loopback.
func largestMTU() (int, error) {
	ifs, err := net.Interfaces()
	mtu := 0
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && i.MTU > mtu {
			mtu = i.MTU
		}
	}
	return mtu, err
}

// pingFrom sends an ICMP (or, to an IPv6 address, ICMPv6) echo request from netns and waits
// for the reply, asking three times.
func pingFrom(netns string, to netip.Addr) error {
	network, request, reply, header := "ip4:icmp", byte(8), byte(0), 20
	if to.Is6() {
		// Raw ICMPv6 sockets hand back no IP header; the kernel fills in the checksum.
		network, request, reply, header = "ip6:ipv6-icmp", 128, 129, 0
	}
	return namespace.Do(netns, func() error {
		c, err := net.Dial(network, to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		req := []byte{request, 0, 0, 0, 0x12, 0x34, 0, 1}
		if !to.Is6() {
			sum := icmpChecksum(req)
			req[2], req[3] = byte(sum>>8), byte(sum)
		}
		buf := make([]byte, 1500)
		for try := 0; try < 3; try++ {
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(req); err != nil {
				return err
			}
			for {
				n, err := c.Read(buf)
				if err != nil {
					break
				}
				// Raw IPv4 sockets hand back the IP header.
				if n >= header+8 && buf[header] == reply {
					return nil
				}
			}
		}
		return fmt.Errorf("no echo reply from %s", to)
	})
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// manualService is a selectorless Service whose backends are the EndpointSlice given.
func manualService(eps map[netip.Addr]string) agent.ServiceObjects {
	svc := corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "s", Name: "manual"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9090, Protocol: corev1.ProtocolTCP,
			TargetPort: intstr.FromInt32(80)}}}}
	name, port, proto := "http", int32(80), corev1.ProtocolTCP
	slice := discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Namespace: "s", Name: "manual-1", Labels: map[string]string{"kubernetes.io/service-name": "manual"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}}}
	for ip, state := range eps {
		ready, serving, terminating := state == "ready", true, state == "terminating"
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating}})
	}
	return agent.ServiceObjects{Services: []corev1.Service{svc}, EndpointSlices: []discoveryv1.EndpointSlice{slice}}
}

// checkBackendChurn changes a Service's backends while a client keeps connecting: once a
// change is programmed on every node, no new connection reaches a terminating or removed
// backend, a terminating backend's established connection goes on, and an added backend
// takes connections.
func checkBackendChurn(t *testing.T, st *lab.State) {
	ctx := context.Background()
	a, b, c, d := mustPod(t, st, "s/a"), mustPod(t, st, "s/b"), mustPod(t, st, "s/c"), mustPod(t, st, "s/d")
	apply := func(eps map[netip.Addr]string) {
		t.Helper()
		if _, err := agent.ApplyServices(ctx, st.Client(), manualService(eps)); err != nil {
			t.Fatal(err)
		}
		if err := st.Client().Wait(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	apply(map[netip.Addr]string{b.IP: "ready", c.IP: "ready"})
	addr := serviceAddr(t, st, "s/manual", 9090, "TCP")
	held := openWho(t, a.Netns, addr)
	doomed := held.server
	other := map[netip.Addr]netip.Addr{b.IP: c.IP, c.IP: b.IP}[doomed]

	apply(map[netip.Addr]string{doomed: "terminating", other: "ready"})
	for i := 0; i < 20; i++ {
		if w := who(t, a.Netns, addr, "TCP"); w.Server != other {
			t.Fatalf("new connection %d went to %s, want %s (%s is terminating)", i, w.Server, other, doomed)
		}
	}
	held.stillEchoes(t)

	apply(map[netip.Addr]string{other: "ready", d.IP: "ready"})
	seen := backendsSeen(t, a.Netns, addr, "TCP", 60, 2)
	if len(seen[d.IP]) == 0 || len(seen[other]) == 0 || len(seen[doomed]) != 0 {
		t.Errorf("after %s left and %s joined: answered by %v", doomed, d.IP, seen)
	}
	for i := 0; i < 20; i++ {
		if w := who(t, a.Netns, addr, "TCP"); w.Server == doomed {
			t.Fatalf("new connection %d went to the removed %s", i, doomed)
		}
	}
}

// TestMasqueradeOff: with masquerading off, or the destination in noMasqueradeCIDRs, a pod's
// traffic leaves with its own address, which the outside cannot answer in the lab.
func TestMasqueradeOff(t *testing.T) {
	t.Parallel()
	off := false
	for _, tc := range []struct {
		name string
		edit func(*lab.Spec)
	}{
		{"masquerade false", func(s *lab.Spec) { s.Masquerade = &off }},
		{"destination in noMasqueradeCIDRs", func(s *lab.Spec) { s.NoMasqueradeCIDRs = []string{"10.250.0.254/32"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := serviceLab("vxlan")
			spec.Services = nil
			tc.edit(spec)
			st := upLab(t, "mo", spec)
			outside := underlayAddr(t, st)
			if outside != netip.MustParseAddr("10.250.0.254") {
				t.Fatalf("the underlay is %s; the noMasqueradeCIDRs case expects 10.250.0.254", outside)
			}
			serveOutside(t, st, 7001)
			a := mustPod(t, st, "s/a")
			if w, err := lab.AskWho(a.Netns, netip.AddrPortFrom(outside, 7001), "TCP"); err == nil {
				t.Fatalf("outside answered, seeing %s: traffic was masqueraded", w.Client)
			}
			// Pods still reach each other and their node.
			if _, err := lab.AskWho(a.Netns, netip.AddrPortFrom(mustPod(t, st, "s/c").IP, 80), "TCP"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// heldConn is a TCP connection kept open to an echo server, which told it who answered.
type heldConn struct {
	net.Conn
	rd     *bufio.Reader
	server netip.Addr
}

// openWho connects from netns to addr, asks who answered, and keeps the connection open.
func openWho(t *testing.T, netns string, addr netip.AddrPort) *heldConn {
	t.Helper()
	var c net.Conn
	if err := namespace.Do(netns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr.String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &heldConn{Conn: c, rd: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(lab.WhoRequest)); err != nil {
		t.Fatal(err)
	}
	line, err := h.rd.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if h.server, err = netip.ParseAddr(strings.Fields(line)[0]); err != nil {
		t.Fatalf("who answered %s: %q", addr, line)
	}
	return h
}

// stillEchoes fails the test unless the connection still carries data both ways.
func (h *heldConn) stillEchoes(t *testing.T) {
	t.Helper()
	h.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.Write([]byte("still here\n")); err != nil {
		t.Fatalf("held connection: %v", err)
	}
	if got, err := h.rd.ReadString('\n'); err != nil || got != "still here\n" {
		t.Fatalf("the established connection to %s: %q, %v", h.server, got, err)
	}
}
