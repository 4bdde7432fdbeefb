package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// ProbeTimeout bounds one probe: a reachable pod answers in well under it.
const ProbeTimeout = time.Second

// ErrUnreachable says the probe got no answer.
var ErrUnreachable = errors.New("unreachable")

// Probe checks whether pod from reaches to on port/protocol: TCP connects and echoes a line,
// UDP sends a datagram and waits for its echo. To is a pod, "ns/name", or a Service,
// "svc/ns/name", probed at its cluster IP.
func (s *State) Probe(from, to string, port int, protocol string) error {
	return s.ProbeFamily(from, to, port, protocol, s.Families()[0])
}

// Families are the address families the lab's pods have: IPv4, and IPv6 in a dual-stack lab;
// IPv6 alone in an IPv6-only one.
func (s *State) Families() []string {
	switch {
	case s.DualStack():
		return []string{FamilyIPv4, FamilyIPv6}
	case s.IPv6Only():
		return []string{FamilyIPv6}
	}
	return []string{FamilyIPv4}
}

// CheckFamily refuses a family the lab's pods do not have, naming those they do.
func (s *State) CheckFamily(family string) error {
	for _, f := range s.Families() {
		if strings.EqualFold(f, family) {
			return nil
		}
	}
	return fmt.Errorf("family %q: lab %s has %s", family, s.Name, strings.Join(s.Families(), " and "))
}

// Addr is the pod's address of family (IPv4 or IPv6, any case).
func (p Pod) Addr(family string) (netip.Addr, error) {
	for _, ip := range []netip.Addr{p.IP, p.IPv6} {
		if ip.IsValid() && strings.EqualFold(familyOf(ip), family) {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod %s has no %s address", p.Key(), family)
}

// ProbeFamily is Probe to a pod's address of family (IPv4 or IPv6).
func (s *State) ProbeFamily(from, to string, port int, protocol, family string) error {
	src, err := s.Pod(from)
	if err != nil {
		return err
	}
	if key, ok := strings.CutPrefix(to, "svc/"); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ip, err := s.ServiceIPFamily(ctx, key, port, protocol, family)
		if err != nil {
			return err
		}
		return probe(src.Netns, netip.AddrPortFrom(ip, uint16(port)), protocol)
	}
	dst, err := s.Pod(to)
	if err != nil {
		return err
	}
	ip, err := dst.Addr(family)
	if err != nil {
		return err
	}
	return probe(src.Netns, netip.AddrPortFrom(ip, uint16(port)), protocol)
}

// ServiceIP is the cluster IP (of the lab's first family) of Service key ("ns/name"), as the store holds it
// (through the agents: the same for every kind of lab), checking that it serves port/protocol.
func (s *State) ServiceIP(ctx context.Context, key string, port int, protocol string) (netip.Addr, error) {
	return s.ServiceIPFamily(ctx, key, port, protocol, s.Families()[0])
}

// ServiceIPFamily is ServiceIP of family (IPv4 or IPv6).
func (s *State) ServiceIPFamily(ctx context.Context, key string, port int, protocol, family string) (netip.Addr, error) {
	views, err := s.Client().Services(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, v := range views {
		if v.Namespace+"/"+v.Name != key {
			continue
		}
		cip := v.ClusterIP
		if strings.EqualFold(family, FamilyIPv6) {
			cip = v.ClusterIPv6
		}
		ip, err := netip.ParseAddr(cip)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("service %s has no %s cluster IP to probe (%q)", key, family, cip)
		}
		var ports []string
		for _, p := range v.Ports {
			if p.Port == port && p.Protocol == protocol {
				return ip, nil
			}
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		return netip.Addr{}, fmt.Errorf("service %s does not serve %d/%s (its ports: %s)", key, port, protocol, strings.Join(ports, ", "))
	}
	return netip.Addr{}, fmt.Errorf("lab %s has no service %q", s.Name, key)
}

// ProbeNodePort checks whether node's node port port/protocol answers. NodePort probes are
// made from the underlay namespace (State.Underlay, the bridge every node plugs into): a
// client outside the cluster, reaching the node at its underlay address (`lab nodes`).
func (s *State) ProbeNodePort(node string, port int, protocol string) error {
	return s.ProbeNodePortFamily(node, port, protocol, s.Families()[0])
}

// ProbeNodePortFamily is ProbeNodePort at the node's address of family: in a dual-stack lab
// nodes have an IPv6 underlay address too.
func (s *State) ProbeNodePortFamily(node string, port int, protocol, family string) error {
	n, err := s.Node(node)
	if err != nil {
		return err
	}
	ip, err := n.Addr(family)
	if err != nil {
		return err
	}
	return probe(s.Underlay, netip.AddrPortFrom(ip, uint16(port)), protocol)
}

// Addr is the node's underlay address of family (IPv4 or IPv6, any case).
func (n *Node) Addr(family string) (netip.Addr, error) {
	ip := n.IP
	if strings.EqualFold(family, FamilyIPv6) {
		ip = n.IPv6
	}
	if !ip.IsValid() {
		return ip, fmt.Errorf("node %s has no %s underlay address", n.Name, family)
	}
	return ip, nil
}

// dialIn connects from the namespace at netnsPath to addr over TCP or UDP.
func dialIn(netnsPath string, addr netip.AddrPort, protocol string) (c net.Conn, err error) {
	err = namespace.Do(netnsPath, func() (err error) {
		switch protocol {
		case "TCP":
			c, err = net.DialTimeout("tcp", addr.String(), ProbeTimeout)
		case "UDP":
			c, err = net.Dial("udp", addr.String())
		default:
			err = fmt.Errorf("protocol %q cannot be probed (TCP or UDP)", protocol)
		}
		return err
	})
	return c, err
}

func probe(netnsPath string, addr netip.AddrPort, protocol string) error {
	payload := []byte("ebpfnet-probe\n")
	c, err := dialIn(netnsPath, addr, protocol)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) {
			return fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(ProbeTimeout)
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	got := make([]byte, len(payload))
	if protocol == "UDP" {
		// Datagrams may be lost; ask three times within the timeout.
		for try := 0; try < 3; try++ {
			if err := c.SetReadDeadline(time.Now().Add(ProbeTimeout / 3)); err != nil {
				return err
			}
			if _, err := c.Write(payload); err != nil {
				return fmt.Errorf("%w: %w", ErrUnreachable, err)
			}
			if n, err := c.Read(got); err == nil && bytes.Equal(got[:n], payload) {
				return nil
			}
		}
		return fmt.Errorf("%w: no echo from %s", ErrUnreachable, addr)
	}
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		return fmt.Errorf("%w: no echo from %s", ErrUnreachable, addr)
	}
	return nil
}

// Matrix is who reaches whom: Matrix[from][to].
type Matrix map[string]map[string]bool

// Matrix probes every pod from every other pod, in parallel, at their addresses of the lab's
// first family.
func (s *State) Matrix(port int, protocol string) (Matrix, error) {
	return s.MatrixFamily(port, protocol, s.Families()[0])
}

// MatrixFamily is Matrix at the pods' addresses of family (IPv4 or IPv6).
func (s *State) MatrixFamily(port int, protocol, family string) (Matrix, error) {
	if err := s.CheckFamily(family); err != nil {
		return nil, err
	}
	m := Matrix{}
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)
	sem := make(chan struct{}, 32)
	// Every row exists before any probe writes into one: the probes only read m itself.
	for _, from := range s.Pods {
		m[from.Key()] = map[string]bool{}
	}
	for _, from := range s.Pods {
		for _, to := range s.Pods {
			if from.Key() == to.Key() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				ip, _ := to.Addr(family) // every pod has each of the lab's families
				err := probe(from.Netns, netip.AddrPortFrom(ip, uint16(port)), protocol)
				mu.Lock()
				defer mu.Unlock()
				m[from.Key()][to.Key()] = err == nil
				if err != nil && !errors.Is(err, ErrUnreachable) && firstErr == nil {
					firstErr = err
				}
			}()
		}
	}
	wg.Wait()
	return m, firstErr
}

// Keys lists the pods in order.
func (m Matrix) Keys() []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// String renders the matrix the way the Kubernetes NetworkPolicy e2e tests print theirs:
// "." reachable, "X" blocked, "-" the pod itself (not probed).
func (m Matrix) String() string {
	keys := m.Keys()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "-")
	for _, k := range keys {
		fmt.Fprint(tw, "\t"+k)
	}
	fmt.Fprintln(tw)
	for _, from := range keys {
		fmt.Fprint(tw, from)
		for _, to := range keys {
			switch {
			case from == to:
				fmt.Fprint(tw, "\t-")
			case m[from][to]:
				fmt.Fprint(tw, "\t.")
			default:
				fmt.Fprint(tw, "\tX")
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return b.String()
}

// ProbeFrom probes addr from any network namespace (a pod made outside the lab, say).
func ProbeFrom(netnsPath string, addr netip.AddrPort, protocol string) error {
	return probe(netnsPath, addr, protocol)
}
