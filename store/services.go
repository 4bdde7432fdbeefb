package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Key prefixes of Services and EndpointSlices, as Kubernetes holds them.
const (
	ServicesPrefix       = Prefix + "services/"       // value: JSON of corev1.Service, key services/NS/NAME
	EndpointSlicesPrefix = Prefix + "endpointslices/" // value: JSON of discoveryv1.EndpointSlice, key endpointslices/NS/NAME
)

// Key prefixes of the allocations a store without an API server keeps for Services.
const (
	serviceIPsPrefix = Prefix + "serviceips/" // serviceips/IP holds "ns/name"
	nodePortsPrefix  = Prefix + "nodeports/"  // nodeports/PROTO/PORT holds "ns/name"
)

// The node port range, as Kubernetes' default --service-node-port-range.
const (
	MinNodePort = 30000
	MaxNodePort = 32767
)

// DefaultClientIPTimeout is sessionAffinity ClientIP's timeout when the Service gives none.
const DefaultClientIPTimeout = 10800 * time.Second

// Service is a Service resolved for the datapath: its frontends' facts and its backends.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// ClusterIP is invalid for headless services (clusterIP None), which the datapath skips.
	ClusterIP netip.Addr `json:"clusterIP"`
	// ClusterIPv6 is a dual-stack (or IPv6) service's IPv6 cluster IP, else invalid.
	ClusterIPv6 netip.Addr `json:"clusterIPv6,omitzero"`
	// NodePort: type NodePort or LoadBalancer: Ports[i].NodePort are open on every node.
	NodePort bool          `json:"nodePort,omitempty"`
	Ports    []ServicePort `json:"ports"`
	// ClientIPAffinity is sessionAffinity ClientIP's timeout (default 10800s); 0 without affinity.
	ClientIPAffinity time.Duration `json:"clientIPAffinity,omitempty"`
	ExternalLocal    bool          `json:"externalLocal,omitempty"` // externalTrafficPolicy Local
	InternalLocal    bool          `json:"internalLocal,omitempty"` // internalTrafficPolicy Local
	Backends         []Backend     `json:"backends"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `json:"name,omitempty"` // may be "" for a single-port service
	Protocol string `json:"protocol"`       // "TCP" or "UDP" (SCTP passed through; the datapath ignores it)
	Port     int    `json:"port"`
	NodePort int    `json:"nodePort,omitempty"` // 0 unless NodePort
}

// Backend is one address serving a Service.
type Backend struct {
	IP   netip.Addr `json:"ip"`
	Node string     `json:"node,omitempty"` // node name holding it, "" when unknown
	// Ports maps ServicePort.Name to the target port number; a port missing here is not
	// served by this backend.
	Ports       map[string]int `json:"ports"`
	Ready       bool           `json:"ready"`
	Serving     bool           `json:"serving"`
	Terminating bool           `json:"terminating"`
}

func serviceKey(ns, name string) string { return ServicesPrefix + ns + "/" + name }

// PutService stores a Service as given: allocating its cluster IP and node ports is the
// caller's (AllocateServiceIP, AllocateNodePort), or the API server's in the kubernetes store.
func (c *Cluster) PutService(ctx context.Context, svc *corev1.Service) error {
	if svc.Namespace == "" || svc.Name == "" {
		return fmt.Errorf("service %q/%q: namespace and name are required", svc.Namespace, svc.Name)
	}
	return put(ctx, c.KV, serviceKey(svc.Namespace, svc.Name), svc, 0)
}

// DeleteService removes ns/name and reports whether it existed. Its allocations stay until
// ReleaseService.
func (c *Cluster) DeleteService(ctx context.Context, ns, name string) (bool, error) {
	key := serviceKey(ns, name)
	_, ok, err := c.KV.Get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return true, c.KV.Delete(ctx, key)
}

// ServiceObject returns the stored Service ns/name, if there is one.
func (c *Cluster) ServiceObject(ctx context.Context, ns, name string) (*corev1.Service, bool, error) {
	v, ok, err := c.KV.Get(ctx, serviceKey(ns, name))
	if err != nil || !ok {
		return nil, false, err
	}
	svc := &corev1.Service{}
	if err := json.Unmarshal(v, svc); err != nil {
		return nil, false, fmt.Errorf("service %s/%s: %w", ns, name, err)
	}
	return svc, true, nil
}

// lookupAllAt is how many names LookupServices looks up before one read of every service
// costs less than a read of each.
const lookupAllAt = 32

// LookupServices returns those of the Services names ("ns/name") that the store holds, by
// name: a read of each for a few names, one read of every service for many.
func (c *Cluster) LookupServices(ctx context.Context, names []string) (map[string]*corev1.Service, error) {
	out := map[string]*corev1.Service{}
	if len(names) < lookupAllAt {
		for _, n := range names {
			ns, name, _ := strings.Cut(n, "/")
			svc, ok, err := c.ServiceObject(ctx, ns, name)
			if err != nil {
				return nil, err
			}
			if ok {
				out[n] = svc
			}
		}
		return out, nil
	}
	kvs, err := c.KV.List(ctx, ServicesPrefix)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		v, ok := kvs[ServicesPrefix+n]
		if !ok {
			continue
		}
		svc := &corev1.Service{}
		if err := json.Unmarshal(v, svc); err != nil {
			return nil, fmt.Errorf("service %s: %w", n, err)
		}
		out[n] = svc
	}
	return out, nil
}

// ServiceObjects lists every stored Service, by namespace/name.
func (c *Cluster) ServiceObjects(ctx context.Context) ([]*corev1.Service, error) {
	kvs, err := c.KV.List(ctx, ServicesPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Service, 0, len(kvs))
	for k, v := range kvs {
		svc := &corev1.Service{}
		if err := json.Unmarshal(v, svc); err != nil {
			return nil, fmt.Errorf("service %s: %w", k, err)
		}
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}

// PutEndpointSlice stores an EndpointSlice, as Kubernetes' EndpointSlice controller would
// (the kubernetes store refuses it: the controller manager writes them there).
func (c *Cluster) PutEndpointSlice(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	if es.Namespace == "" || es.Name == "" {
		return fmt.Errorf("endpointslice %q/%q: namespace and name are required", es.Namespace, es.Name)
	}
	return put(ctx, c.KV, EndpointSlicesPrefix+es.Namespace+"/"+es.Name, es, 0)
}

// DeleteEndpointSlice removes the EndpointSlice ns/name and reports whether it existed.
func (c *Cluster) DeleteEndpointSlice(ctx context.Context, ns, name string) (bool, error) {
	key := EndpointSlicesPrefix + ns + "/" + name
	_, ok, err := c.KV.Get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return true, c.KV.Delete(ctx, key)
}

// Services lists every Service resolved for the datapath, by namespace/name; ExternalName
// services are left out.
func (c *Cluster) Services(ctx context.Context) ([]Service, error) {
	objs, err := c.ServiceObjects(ctx)
	if err != nil {
		return nil, err
	}
	return c.ResolveServices(ctx, objs)
}

// ResolveServices resolves objs (as ServiceObjects lists them) with their backends: from
// the EndpointSlices of each service when the store holds any, else, for a service with a
// selector, from the store's endpoints whose pods it selects (nobody runs an endpoint
// controller for the local and etcd stores).
func (c *Cluster) ResolveServices(ctx context.Context, objs []*corev1.Service) ([]Service, error) {
	slices, err := c.endpointSlices(ctx)
	if err != nil {
		return nil, err
	}
	var pods map[string][]podBackend // by namespace
	podsLoaded := false
	out := make([]Service, 0, len(objs))
	for _, o := range objs {
		if o.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		s := serviceOf(o)
		if sl, ok := slices[o.Namespace+"/"+o.Name]; ok {
			s.Backends = backendsFromSlices(s.Ports, sl)
		} else if len(o.Spec.Selector) > 0 {
			if !podsLoaded {
				if pods, err = c.podBackends(ctx); err != nil {
					return nil, err
				}
				podsLoaded = true
			}
			s.Backends = backendsFromPods(o, s.Ports, pods[o.Namespace])
		}
		if s.Backends == nil {
			s.Backends = []Backend{}
		}
		out = append(out, s)
	}
	return out, nil
}

// serviceOf is a Service's frontend facts, without backends.
func serviceOf(o *corev1.Service) Service {
	s := Service{Namespace: o.Namespace, Name: o.Name,
		NodePort:      o.Spec.Type == corev1.ServiceTypeNodePort || o.Spec.Type == corev1.ServiceTypeLoadBalancer,
		ExternalLocal: o.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		InternalLocal: o.Spec.InternalTrafficPolicy != nil && *o.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		Ports:         []ServicePort{}}
	s.ClusterIP, s.ClusterIPv6 = clusterIPOf(o, false), clusterIPOf(o, true)
	if o.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.ClientIPAffinity = DefaultClientIPTimeout
		if cfg := o.Spec.SessionAffinityConfig; cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil && *cfg.ClientIP.TimeoutSeconds > 0 {
			s.ClientIPAffinity = time.Duration(*cfg.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	for _, p := range o.Spec.Ports {
		sp := ServicePort{Name: p.Name, Protocol: protocolOf(p.Protocol), Port: int(p.Port)}
		if s.NodePort {
			sp.NodePort = int(p.NodePort)
		}
		s.Ports = append(s.Ports, sp)
	}
	return s
}

// clusterIPOf is the Service's IPv4 (v6 false) or IPv6 cluster IP: invalid when headless,
// not yet allocated, or not of the Service's families.
func clusterIPOf(o *corev1.Service, v6 bool) netip.Addr {
	ips := o.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{o.Spec.ClusterIP}
	}
	ip, _ := firstOf(ips, v6)
	return ip
}

func protocolOf(p corev1.Protocol) string {
	if p == "" {
		return string(corev1.ProtocolTCP)
	}
	return string(p)
}

// endpointSlices returns the stored EndpointSlices by "ns/service", each service's by name.
func (c *Cluster) endpointSlices(ctx context.Context) (map[string][]*discoveryv1.EndpointSlice, error) {
	kvs, err := c.KV.List(ctx, EndpointSlicesPrefix)
	if err != nil {
		return nil, err
	}
	out := map[string][]*discoveryv1.EndpointSlice{}
	for k, v := range kvs {
		es := &discoveryv1.EndpointSlice{}
		if err := json.Unmarshal(v, es); err != nil {
			return nil, fmt.Errorf("endpointslice %s: %w", k, err)
		}
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		out[key] = append(out[key], es)
	}
	for _, sl := range out {
		sort.Slice(sl, func(i, j int) bool { return sl[i].Name < sl[j].Name })
	}
	return out, nil
}

// backendsFromSlices reads the backends of a service from its EndpointSlices: IPv4 and IPv6
// slices, each endpoint's first address of its slice's type, each slice's ports for its own
// endpoints. An
// address in several slices (the controller moving it) takes the first slice's conditions
// and every slice's ports.
func backendsFromSlices(ports []ServicePort, slices []*discoveryv1.EndpointSlice) []Backend {
	names := map[string]bool{}
	for _, p := range ports {
		names[p.Name] = true
	}
	byIP := map[netip.Addr]*Backend{}
	for _, es := range slices {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		target := map[string]int{}
		for _, p := range es.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if p.Port != nil && names[name] {
				target[name] = int(*p.Port)
			}
		}
		for _, ep := range es.Endpoints {
			ip, ok := firstOf(ep.Addresses, es.AddressType == discoveryv1.AddressTypeIPv6)
			if !ok {
				continue
			}
			b := byIP[ip]
			if b == nil {
				b = &Backend{IP: ip, Ports: map[string]int{}}
				b.Ready = ep.Conditions.Ready == nil || *ep.Conditions.Ready
				b.Serving = b.Ready
				if ep.Conditions.Serving != nil {
					b.Serving = *ep.Conditions.Serving
				}
				b.Terminating = ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
				if ep.NodeName != nil {
					b.Node = *ep.NodeName
				}
				byIP[ip] = b
			}
			for n, p := range target {
				if _, ok := b.Ports[n]; !ok {
					b.Ports[n] = p
				}
			}
		}
	}
	return sortedBackends(byIP)
}

// firstOf is the first IPv4 (v6 false) or IPv6 address of addrs.
func firstOf(addrs []string, v6 bool) (netip.Addr, bool) {
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil && !ip.Is4In6() && ip.Is6() == v6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func sortedBackends(byIP map[netip.Addr]*Backend) []Backend {
	out := make([]Backend, 0, len(byIP))
	for _, b := range byIP {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// podBackend is an attached pod as a service selects it.
type podBackend struct {
	namespace string
	ip        netip.Addr
	ipv6      netip.Addr // in a dual-stack cluster
	node      string
	labels    map[string]string
	ports     []PodPort
}

// podBackends gathers every registered node's endpoints with their pods' labels and ports,
// by namespace.
func (c *Cluster) podBackends(ctx context.Context) (map[string][]podBackend, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	metas, err := c.Pods(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]podBackend{}
	for _, n := range nodes {
		eps, err := c.Endpoints(ctx, n.Name)
		if err != nil {
			return nil, err
		}
		for _, e := range eps {
			if !e.IP.IsValid() || e.Pod == "" {
				continue
			}
			pb := podBackend{namespace: e.Namespace, ip: e.IP, ipv6: e.IPv6, node: e.Node, labels: e.Labels}
			if m, ok := metas[e.Namespace+"/"+e.Pod]; ok {
				pb.labels, pb.ports = m.Labels, m.Ports
			}
			out[e.Namespace] = append(out[e.Namespace], pb)
		}
	}
	return out, nil
}

// backendsFromPods is what Kubernetes' endpoint controller would make of the pods (of its
// namespace) o selects: a backend per pod address of each of the service's families.
func backendsFromPods(o *corev1.Service, ports []ServicePort, pods []podBackend) []Backend {
	byIP := map[netip.Addr]*Backend{}
	v4, v6 := servesFamily(o, corev1.IPv4Protocol), servesFamily(o, corev1.IPv6Protocol)
	for _, p := range pods {
		if p.namespace != o.Namespace || !selects(o.Spec.Selector, p.labels) {
			continue
		}
		for _, ip := range []netip.Addr{p.ip, p.ipv6} {
			if !ip.IsValid() || ip.Is4() && !v4 || ip.Is6() && !v6 {
				continue
			}
			b := &Backend{IP: ip, Node: p.node, Ports: map[string]int{}, Ready: true, Serving: true}
			for i, sp := range o.Spec.Ports {
				if port, ok := targetPort(sp.TargetPort, ports[i], p.ports); ok {
					b.Ports[sp.Name] = port
				}
			}
			byIP[ip] = b
		}
	}
	return sortedBackends(byIP)
}

// servesFamily says whether o's families include f; a service that names none is IPv4.
func servesFamily(o *corev1.Service, f corev1.IPFamily) bool {
	if len(o.Spec.IPFamilies) == 0 {
		return f == corev1.IPv4Protocol
	}
	for _, g := range o.Spec.IPFamilies {
		if g == f {
			return true
		}
	}
	return false
}

// selects says whether every key=value of a (non-empty) selector is among labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if l, ok := labels[k]; !ok || l != v {
			return false
		}
	}
	return true
}

// targetPort resolves a service port's targetPort on a pod: a number as is, a name through
// the pod's declared ports of that name and protocol, unset as the service port.
func targetPort(tp intstr.IntOrString, sp ServicePort, declared []PodPort) (int, bool) {
	switch {
	case tp.Type == intstr.String && tp.StrVal != "":
		for _, d := range declared {
			if d.Name == tp.StrVal && protocolOf(corev1.Protocol(d.Protocol)) == sp.Protocol {
				return d.Port, true
			}
		}
		return 0, false // Kubernetes leaves a pod without the named port out of that port
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return int(tp.IntVal), true
	default:
		return sp.Port, true
	}
}

// ServiceClaims is what one service holds: cluster IPs and node ports.
type ServiceClaims struct {
	IPs       []netip.Addr    `json:"ips,omitempty"`
	NodePorts []NodePortClaim `json:"nodePorts,omitempty"`
}

// NodePortClaim is a node port of one protocol.
type NodePortClaim struct {
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

func (n NodePortClaim) key() string {
	return nodePortsPrefix + n.Protocol + "/" + strconv.Itoa(n.Port)
}

// AllocateServiceIP picks a free address of cidr for owner, as ServiceClaimSet.AllocateIP
// does, after one read of the service IP claims. Each address is a key made with Create, so
// two agents never hand out the same one. To allocate for many services, load a
// ServiceClaimSet once instead.
func (c *Cluster) AllocateServiceIP(ctx context.Context, cidr netip.Prefix, owner string) (netip.Addr, error) {
	if err := checkServiceCIDR(cidr.Masked()); err != nil {
		return netip.Addr{}, err
	}
	s := newServiceClaimSet(c.KV)
	if err := s.read(ctx, serviceIPsPrefix); err != nil {
		return netip.Addr{}, err
	}
	return s.AllocateIP(ctx, cidr, owner)
}

// lastAddr is the last address of a prefix (IPv4's broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	for bit := p.Bits(); bit < len(a)*8; bit++ {
		a[bit/8] |= 0x80 >> (bit % 8)
	}
	ip, _ := netip.AddrFromSlice(a)
	return ip
}

// ClaimServiceIP records that owner uses ip (given in its spec), refusing one another service
// holds.
func (c *Cluster) ClaimServiceIP(ctx context.Context, ip netip.Addr, owner string) error {
	return newServiceClaimSet(c.KV).ClaimIP(ctx, ip, owner)
}

// AllocateNodePort picks a free node port (30000-32767) of proto for owner, after one read of
// that protocol's node port claims.
func (c *Cluster) AllocateNodePort(ctx context.Context, proto string, owner string) (int, error) {
	if err := checkProtocol(proto); err != nil {
		return 0, err
	}
	s := newServiceClaimSet(c.KV)
	if err := s.read(ctx, nodePortsPrefix+proto+"/"); err != nil {
		return 0, err
	}
	return s.AllocateNodePort(ctx, proto, owner)
}

// ClaimNodePort records that owner uses node port port/proto (given in its spec), refusing
// one another service holds.
func (c *Cluster) ClaimNodePort(ctx context.Context, proto string, port int, owner string) error {
	return newServiceClaimSet(c.KV).ClaimNodePort(ctx, proto, port, owner)
}

// ServiceClaims lists the cluster IPs and node ports owner holds.
func (c *Cluster) ServiceClaims(ctx context.Context, owner string) (ServiceClaims, error) {
	s, err := c.LoadServiceClaims(ctx)
	if err != nil {
		return ServiceClaims{}, err
	}
	return s.Held(owner), nil
}

// ReleaseClaims frees those of claims that owner still holds.
func (c *Cluster) ReleaseClaims(ctx context.Context, owner string, claims ServiceClaims) error {
	keys := make([]string, 0, len(claims.IPs)+len(claims.NodePorts))
	for _, ip := range claims.IPs {
		keys = append(keys, serviceIPsPrefix+ip.String())
	}
	for _, n := range claims.NodePorts {
		keys = append(keys, n.key())
	}
	var errs []error
	for _, k := range keys {
		v, ok, err := c.KV.Get(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok && string(v) == owner {
			errs = append(errs, c.KV.Delete(ctx, k))
		}
	}
	return errors.Join(errs...)
}

// ReleaseService frees every IP and node port ns/name holds.
func (c *Cluster) ReleaseService(ctx context.Context, owner string) error {
	claims, err := c.ServiceClaims(ctx, owner)
	if err != nil {
		return err
	}
	return c.ReleaseClaims(ctx, owner, claims)
}

// ClaimsOf is what svc uses: its cluster IPs (of both families) and its node ports.
func ClaimsOf(svc *corev1.Service) ServiceClaims {
	var out ServiceClaims
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && checkServiceIP(ip) == nil {
			out.IPs = append(out.IPs, ip)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			out.NodePorts = append(out.NodePorts, NodePortClaim{Protocol: protocolOf(p.Protocol), Port: int(p.NodePort)})
		}
	}
	return out
}

// Minus is what c holds that other does not.
func (c ServiceClaims) Minus(other ServiceClaims) ServiceClaims {
	var out ServiceClaims
	ips := map[netip.Addr]bool{}
	for _, ip := range other.IPs {
		ips[ip] = true
	}
	ports := map[NodePortClaim]bool{}
	for _, n := range other.NodePorts {
		ports[n] = true
	}
	for _, ip := range c.IPs {
		if !ips[ip] {
			out.IPs = append(out.IPs, ip)
		}
	}
	for _, n := range c.NodePorts {
		if !ports[n] {
			out.NodePorts = append(out.NodePorts, n)
		}
	}
	return out
}
