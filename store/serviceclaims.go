package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ServiceClaimSet allocates the cluster IPs and node ports of many services at once, as one
// request of the Service API does: it reads the claims once, keeps who holds what in memory,
// and from then on only creates and deletes claim keys, so n services cost O(n) store calls.
// KV.Create stays the arbiter between agents: a key another agent created since the read
// loses its Create, and the set takes it as held and moves on. A set is not safe for
// concurrent use.
type ServiceClaimSet struct {
	kv KV
	// ips and ports are the holders of the claims the set knows of: those it read, and those
	// it made or lost since. A holder is "" when a lost Create is all the set knows.
	ips   map[netip.Addr]string
	ports map[NodePortClaim]string
	owned map[string]*ServiceClaims // what each owner holds, as far as ips and ports say
	// nextIP (by service CIDR) and nextPort (by protocol) are where the next scan starts:
	// below them the set knows of no free address or port.
	nextIP   map[netip.Prefix]netip.Addr
	nextPort map[string]int
}

// LoadServiceClaims reads every service IP and node port claim into a ServiceClaimSet.
func (c *Cluster) LoadServiceClaims(ctx context.Context) (*ServiceClaimSet, error) {
	s := newServiceClaimSet(c.KV)
	if err := s.read(ctx, serviceIPsPrefix); err != nil {
		return nil, err
	}
	if err := s.read(ctx, nodePortsPrefix); err != nil {
		return nil, err
	}
	return s, nil
}

// newServiceClaimSet is a set that has read nothing yet: it still claims correctly, through
// Create, only with more calls.
func newServiceClaimSet(kv KV) *ServiceClaimSet {
	return &ServiceClaimSet{kv: kv, ips: map[netip.Addr]string{}, ports: map[NodePortClaim]string{},
		owned: map[string]*ServiceClaims{}, nextIP: map[netip.Prefix]netip.Addr{}, nextPort: map[string]int{}}
}

// read records the claims under prefix (serviceIPsPrefix, nodePortsPrefix or one protocol's
// node ports); keys it cannot parse are skipped.
func (s *ServiceClaimSet) read(ctx context.Context, prefix string) error {
	kvs, err := s.kv.List(ctx, prefix)
	if err != nil {
		return err
	}
	for k, v := range kvs {
		if rest, ok := strings.CutPrefix(k, serviceIPsPrefix); ok {
			if ip, err := netip.ParseAddr(rest); err == nil {
				s.setIP(ip, string(v))
			}
			continue
		}
		if n, ok := parseNodePortKey(k); ok {
			s.setPort(n, string(v))
		}
	}
	return nil
}

// parseNodePortKey reads nodeports/PROTO/PORT.
func parseNodePortKey(k string) (NodePortClaim, bool) {
	rest, ok := strings.CutPrefix(k, nodePortsPrefix)
	if !ok {
		return NodePortClaim{}, false
	}
	proto, port, ok := strings.Cut(rest, "/")
	n, err := strconv.Atoi(port)
	if !ok || err != nil {
		return NodePortClaim{}, false
	}
	return NodePortClaim{Protocol: proto, Port: n}, true
}

// Held is what owner holds: cluster IPs and node ports, sorted.
func (s *ServiceClaimSet) Held(owner string) ServiceClaims {
	var out ServiceClaims
	if o := s.owned[owner]; o != nil {
		out.IPs = append(out.IPs, o.IPs...) // nil when empty, as for an owner never seen
		out.NodePorts = append(out.NodePorts, o.NodePorts...)
	}
	slices.SortFunc(out.IPs, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(out.NodePorts, func(a, b NodePortClaim) int {
		if c := strings.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		return a.Port - b.Port
	})
	return out
}

// AllocateIP picks a free address of cidr for owner, the lowest it already holds in cidr if
// any. It skips the network address, the first host (Kubernetes' own kubernetes Service has
// it) and, as Kubernetes does, the broadcast address.
func (s *ServiceClaimSet) AllocateIP(ctx context.Context, cidr netip.Prefix, owner string) (netip.Addr, error) {
	cidr = cidr.Masked()
	if err := checkServiceCIDR(cidr); err != nil {
		return netip.Addr{}, err
	}
	if ip, ok := s.heldIn(cidr, owner); ok {
		return ip, nil
	}
	for {
		ip, ok := s.pickIP(cidr, nil)
		if !ok {
			return netip.Addr{}, noFreeIP(cidr, owner)
		}
		created, err := s.kv.Create(ctx, serviceIPsPrefix+ip.String(), []byte(owner))
		if err != nil {
			s.lowerIP(ip)
			return netip.Addr{}, err
		}
		if created {
			s.setIP(ip, owner)
			return ip, nil
		}
		s.setIP(ip, "") // another agent's since the read
	}
}

// ClaimIP records that owner uses ip (given in its spec), refusing one another service holds.
func (s *ServiceClaimSet) ClaimIP(ctx context.Context, ip netip.Addr, owner string) error {
	if err := checkServiceIP(ip); err != nil {
		return err
	}
	if s.ips[ip] == owner {
		return nil
	}
	return s.claimIP(ctx, ip, owner)
}

// claimIP settles through the store who holds ip, owner if it was free.
func (s *ServiceClaimSet) claimIP(ctx context.Context, ip netip.Addr, owner string) error {
	holder, err := claimKey(ctx, s.kv, serviceIPsPrefix+ip.String(), owner)
	if err != nil {
		return err
	}
	s.forgetIP(ip)
	s.setIP(ip, holder)
	if holder != owner {
		return fmt.Errorf("service IP %s is held by service %s", ip, holder)
	}
	return nil
}

// AllocateNodePort picks a free node port (30000-32767) of proto for owner.
func (s *ServiceClaimSet) AllocateNodePort(ctx context.Context, proto string, owner string) (int, error) {
	if err := checkProtocol(proto); err != nil {
		return 0, err
	}
	for {
		n, ok := s.pickPort(proto, nil)
		if !ok {
			return 0, noFreePort(proto, owner)
		}
		created, err := s.kv.Create(ctx, n.key(), []byte(owner))
		if err != nil {
			s.lowerPort(n)
			return 0, err
		}
		if created {
			s.setPort(n, owner)
			return n.Port, nil
		}
		s.setPort(n, "")
	}
}

// ClaimNodePort records that owner uses node port port/proto (given in its spec), refusing
// one another service holds.
func (s *ServiceClaimSet) ClaimNodePort(ctx context.Context, proto string, port int, owner string) error {
	n := NodePortClaim{Protocol: proto, Port: port}
	if err := checkNodePort(n); err != nil {
		return err
	}
	if s.ports[n] == owner {
		return nil
	}
	return s.claimPort(ctx, n, owner)
}

func (s *ServiceClaimSet) claimPort(ctx context.Context, n NodePortClaim, owner string) error {
	holder, err := claimKey(ctx, s.kv, n.key(), owner)
	if err != nil {
		return err
	}
	s.forgetPort(n)
	s.setPort(n, holder)
	if holder != owner {
		return fmt.Errorf("node port %d/%s is held by service %s", n.Port, n.Protocol, holder)
	}
	return nil
}

// Release frees those of claims that owner holds.
func (s *ServiceClaimSet) Release(ctx context.Context, owner string, claims ServiceClaims) error {
	var errs []error
	for _, ip := range claims.IPs {
		if h, ok := s.ips[ip]; !ok || h != owner {
			continue
		}
		if err := s.kv.Delete(ctx, serviceIPsPrefix+ip.String()); err != nil {
			errs = append(errs, err)
			continue
		}
		s.freeIP(ip)
	}
	for _, n := range claims.NodePorts {
		if h, ok := s.ports[n]; !ok || h != owner {
			continue
		}
		if err := s.kv.Delete(ctx, n.key()); err != nil {
			errs = append(errs, err)
			continue
		}
		s.freePort(n)
	}
	return errors.Join(errs...)
}

// A ClaimWant is one claim ClaimAll makes for a service (Owner): a cluster IP, the given IP or
// when IP is unset a free one of CIDR; or, with neither set, a node port, the given NodePort
// or when its Port is 0 a free one of its Protocol.
type ClaimWant struct {
	Owner    string
	IP       netip.Addr
	CIDR     netip.Prefix
	NodePort NodePortClaim
}

func (w *ClaimWant) isIP() bool { return w.IP.IsValid() || w.CIDR.IsValid() }

func (w *ClaimWant) key() string {
	if w.isIP() {
		return serviceIPsPrefix + w.IP.String()
	}
	return w.NodePort.key()
}

// claimWorkers is how many Creates ClaimAll has in flight: etcd serves concurrent ones
// several times faster than one after another.
const claimWorkers = 16

// ClaimAll makes every claim of wants, as ClaimIP, AllocateIP, ClaimNodePort and
// AllocateNodePort would one after another, and fills in the IP or NodePort.Port of each:
// the same addresses and ports, unless another agent takes some meanwhile. It picks them in
// memory first, then makes the Creates claimWorkers at a time; an allocation whose Create
// loses picks again. On failure it returns the index of the first failed want; what it
// claimed stays claimed (Held says what), for the caller to Release.
func (s *ServiceClaimSet) ClaimAll(ctx context.Context, wants []ClaimWant) (int, error) {
	// Pick an address or port for each want, holding them in reserved until created.
	reserved := map[string]string{}    // key → owner
	var creates []int                  // the wants to Create, by index
	picked := make([]bool, len(wants)) // allocated, not given
	for i := range wants {
		w := &wants[i]
		switch {
		case w.IP.IsValid():
			if err := checkServiceIP(w.IP); err != nil {
				return i, err
			}
			if s.ips[w.IP] == w.Owner {
				continue
			}
		case w.CIDR.IsValid():
			w.CIDR = w.CIDR.Masked()
			if err := checkServiceCIDR(w.CIDR); err != nil {
				return i, err
			}
			if ip, ok := s.heldIn(w.CIDR, w.Owner); ok {
				w.IP = ip
				continue
			}
			ip, ok := s.pickIP(w.CIDR, reserved)
			if !ok {
				return i, noFreeIP(w.CIDR, w.Owner)
			}
			w.IP, picked[i] = ip, true
		case w.NodePort.Port != 0:
			if err := checkNodePort(w.NodePort); err != nil {
				return i, err
			}
			if s.ports[w.NodePort] == w.Owner {
				continue
			}
		default:
			if err := checkProtocol(w.NodePort.Protocol); err != nil {
				return i, err
			}
			n, ok := s.pickPort(w.NodePort.Protocol, reserved)
			if !ok {
				return i, noFreePort(w.NodePort.Protocol, w.Owner)
			}
			w.NodePort, picked[i] = n, true
		}
		key := w.key()
		if other, ok := reserved[key]; ok { // given twice in this request
			what := "service IP " + w.IP.String()
			if !w.isIP() {
				what = fmt.Sprintf("node port %d/%s", w.NodePort.Port, w.NodePort.Protocol)
			}
			return i, fmt.Errorf("%s is held by service %s", what, other)
		}
		reserved[key] = w.Owner
		creates = append(creates, i)
	}

	created, errs := createAll(ctx, s.kv, wants, creates)
	for k, i := range creates { // first what is now known held, so that nothing below picks it
		if created[k] {
			s.set(&wants[i], wants[i].Owner)
		}
	}
	for k, i := range creates {
		w := &wants[i]
		switch {
		case created[k]:
			continue
		case errs[k] != nil:
			if picked[i] {
				s.lower(w)
			}
			return i, errs[k]
		}
		// Lost to another agent: an allocation moves on, a given claim settles who holds it.
		var err error
		switch {
		case picked[i] && w.isIP():
			s.set(w, "")
			w.IP, err = s.AllocateIP(ctx, w.CIDR, w.Owner)
		case picked[i]:
			s.set(w, "")
			w.NodePort.Port, err = s.AllocateNodePort(ctx, w.NodePort.Protocol, w.Owner)
		case w.isIP():
			err = s.claimIP(ctx, w.IP, w.Owner)
		default:
			err = s.claimPort(ctx, w.NodePort, w.Owner)
		}
		if err != nil {
			return i, err
		}
	}
	return 0, nil
}

// createAll creates the keys of wants[creates], claimWorkers at a time, and says which
// it created and which failed.
func createAll(ctx context.Context, kv KV, wants []ClaimWant, creates []int) ([]bool, []error) {
	created, errs := make([]bool, len(creates)), make([]error, len(creates))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(claimWorkers, len(creates)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				w := &wants[creates[k]]
				created[k], errs[k] = kv.Create(ctx, w.key(), []byte(w.Owner))
			}
		}()
	}
	for k := range creates {
		next <- k
	}
	close(next)
	wg.Wait()
	return created, errs
}

// claimKey creates key for owner, or finds who holds it, and returns the holder.
func claimKey(ctx context.Context, kv KV, key, owner string) (string, error) {
	for range 2 { // a key released between the Create and the Get: try once more
		if ok, err := kv.Create(ctx, key, []byte(owner)); err != nil || ok {
			return owner, err
		}
		v, ok, err := kv.Get(ctx, key)
		if err != nil {
			return "", err
		}
		if ok {
			return string(v), nil
		}
	}
	return "", fmt.Errorf("claim %s: it keeps changing hands", key)
}

// pickIP is the first address of cidr from where the last scan stopped that neither the set
// nor reserved knows to be held; the next scan starts after it.
func (s *ServiceClaimSet) pickIP(cidr netip.Prefix, reserved map[string]string) (netip.Addr, bool) {
	last := lastAddr(cidr)
	ip, ok := s.nextIP[cidr]
	if !ok {
		ip = cidr.Addr().Next().Next()
	}
	for ; ip.Less(last); ip = ip.Next() {
		if _, held := s.ips[ip]; held {
			continue
		}
		if _, held := reserved[serviceIPsPrefix+ip.String()]; held {
			continue
		}
		s.nextIP[cidr] = ip.Next()
		return ip, true
	}
	s.nextIP[cidr] = last
	return netip.Addr{}, false
}

// pickPort is pickIP for the node ports of proto.
func (s *ServiceClaimSet) pickPort(proto string, reserved map[string]string) (NodePortClaim, bool) {
	port, ok := s.nextPort[proto]
	if !ok {
		port = MinNodePort
	}
	for ; port <= MaxNodePort; port++ {
		n := NodePortClaim{Protocol: proto, Port: port}
		if _, held := s.ports[n]; held {
			continue
		}
		if _, held := reserved[n.key()]; held {
			continue
		}
		s.nextPort[proto] = port + 1
		return n, true
	}
	s.nextPort[proto] = MaxNodePort + 1
	return NodePortClaim{}, false
}

// heldIn is the lowest address of cidr that owner holds.
func (s *ServiceClaimSet) heldIn(cidr netip.Prefix, owner string) (netip.Addr, bool) {
	for _, ip := range s.Held(owner).IPs {
		if cidr.Contains(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// setIP records that holder holds ip, or with holder "" that somebody does.
func (s *ServiceClaimSet) setIP(ip netip.Addr, holder string) {
	s.ips[ip] = holder
	if holder != "" {
		o := s.ownedBy(holder)
		o.IPs = append(o.IPs, ip)
	}
}

func (s *ServiceClaimSet) setPort(n NodePortClaim, holder string) {
	s.ports[n] = holder
	if holder != "" {
		o := s.ownedBy(holder)
		o.NodePorts = append(o.NodePorts, n)
	}
}

func (s *ServiceClaimSet) ownedBy(owner string) *ServiceClaims {
	o := s.owned[owner]
	if o == nil {
		o = &ServiceClaims{}
		s.owned[owner] = o
	}
	return o
}

// forgetIP drops what the set knows of ip.
func (s *ServiceClaimSet) forgetIP(ip netip.Addr) {
	if o := s.owned[s.ips[ip]]; o != nil {
		o.IPs = slices.DeleteFunc(o.IPs, func(a netip.Addr) bool { return a == ip })
	}
	delete(s.ips, ip)
}

func (s *ServiceClaimSet) forgetPort(n NodePortClaim) {
	if o := s.owned[s.ports[n]]; o != nil {
		o.NodePorts = slices.DeleteFunc(o.NodePorts, func(p NodePortClaim) bool { return p == n })
	}
	delete(s.ports, n)
}

// freeIP records ip as free: scans start at it again.
func (s *ServiceClaimSet) freeIP(ip netip.Addr) {
	s.forgetIP(ip)
	s.lowerIP(ip)
}

func (s *ServiceClaimSet) freePort(n NodePortClaim) {
	s.forgetPort(n)
	s.lowerPort(n)
}

// lowerIP makes the scans of the CIDRs holding ip start at it, if they start after it.
func (s *ServiceClaimSet) lowerIP(ip netip.Addr) {
	for cidr, next := range s.nextIP {
		if cidr.Contains(ip) && ip.Less(next) {
			s.nextIP[cidr] = ip
		}
	}
}

func (s *ServiceClaimSet) lowerPort(n NodePortClaim) {
	if next, ok := s.nextPort[n.Protocol]; ok && n.Port < next {
		s.nextPort[n.Protocol] = n.Port
	}
}

// set records holder as holding w's address or port.
func (s *ServiceClaimSet) set(w *ClaimWant, holder string) {
	if w.isIP() {
		s.setIP(w.IP, holder)
	} else {
		s.setPort(w.NodePort, holder)
	}
}

// lower makes the scan for w's address or port start at it again.
func (s *ServiceClaimSet) lower(w *ClaimWant) {
	if w.isIP() {
		s.lowerIP(w.IP)
	} else {
		s.lowerPort(w.NodePort)
	}
}

func checkServiceCIDR(cidr netip.Prefix) error {
	if cidr.Addr().Is4() && cidr.Bits() <= 30 || cidr.Addr().Is6() && !cidr.Addr().Is4In6() && cidr.Bits() >= MinServiceCIDRv6Bits && cidr.Bits() <= 126 {
		return nil
	}
	return fmt.Errorf("service CIDR %s: want an IPv4 network of /30 or larger, or an IPv6 one of /%d to /126", cidr, MinServiceCIDRv6Bits)
}

// MinServiceCIDRv6Bits bounds an IPv6 service CIDR, as the API server's
// --service-cluster-ip-range does (at most 2^24 addresses).
const MinServiceCIDRv6Bits = 104

func checkServiceIP(ip netip.Addr) error {
	if !ip.IsValid() || ip.Is4In6() {
		return fmt.Errorf("service IP %s is not an IPv4 or IPv6 address", ip)
	}
	return nil
}

func checkProtocol(proto string) error {
	switch proto {
	case "TCP", "UDP", "SCTP":
		return nil
	}
	return fmt.Errorf("protocol %q must be TCP, UDP or SCTP", proto)
}

func checkNodePort(n NodePortClaim) error {
	if err := checkProtocol(n.Protocol); err != nil {
		return err
	}
	if n.Port < MinNodePort || n.Port > MaxNodePort {
		return fmt.Errorf("node port %d is not in %d-%d", n.Port, MinNodePort, MaxNodePort)
	}
	return nil
}

func noFreeIP(cidr netip.Prefix, owner string) error {
	return fmt.Errorf("service CIDR %s has no free address left for service %s", cidr, owner)
}

func noFreePort(proto, owner string) error {
	return fmt.Errorf("no free %s node port left in %d-%d for service %s", proto, MinNodePort, MaxNodePort, owner)
}
