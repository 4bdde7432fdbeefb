package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/maps"
)

// Pod is a pod as policy sees it.
type Pod struct {
	Namespace  string
	Name       string
	Labels     map[string]string
	IP         netip.Addr
	IPv6       netip.Addr // zero unless the cluster is dual stack
	Node       string
	Ports      []NamedPort
	EndpointID uint32
}

// NamedPort is a port a pod's container declares.
type NamedPort struct {
	Name     string `json:"name,omitempty"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol,omitempty"`
}

// Node is a node's address, which the ipcache marks as host or remote node.
type Node struct {
	Name string
	IP   netip.Addr
	IPv6 netip.Addr // its IPv6 underlay address, if it has one
}

// Input is the whole cluster, from one node's point of view.
type Input struct {
	Self       string                       // this node's name
	Namespaces map[string]map[string]string // namespace -> labels
	Pods       []Pod                        // every pod with an address, on every node
	Nodes      []Node
	Policies   []*networkingv1.NetworkPolicy
	// Identity returns the cluster-wide identity of a label set key (see LabelKey).
	Identity func(key string) (uint32, error)
}

// Rule names one rule, for `policy explain` and the drop monitor.
type Rule struct {
	Policy    string `json:"policy"` // namespace/name
	Direction string `json:"direction"`
	Index     int    `json:"index"`
}

// Enforcement is what the endpoints map needs to know of a local pod.
type Enforcement struct {
	Identity uint32
	Ingress  bool
	Egress   bool
}

// Output is what the node programs.
type Output struct {
	IPCache     []maps.IPCacheEntry
	Policy      []maps.PolicyEntry
	Endpoints   map[netip.Addr]Enforcement // local pods
	Rules       []Rule                     // PolicyEntry.Rule-1 indexes this
	Identities  map[string]uint32          // pod "ns/name" -> identity
	CIDRs       map[uint32]netip.Prefix    // CIDR identity -> prefix
	PodSelected map[string][]string        // pod "ns/name" -> policies selecting it
	Policies    int                        // how many policies were compiled
}

// LabelKey is the identity's definition: namespace, pod labels and namespace labels.
func LabelKey(namespace string, pod, ns map[string]string) string {
	var b strings.Builder
	b.WriteString("ns=" + namespace)
	for _, part := range []struct {
		tag string
		m   map[string]string
	}{{"pod", pod}, {"nsl", ns}} {
		keys := make([]string, 0, len(part.m))
		for k := range part.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, ";%s:%s=%s", part.tag, k, part.m[k])
		}
	}
	return b.String()
}

type compiler struct {
	in       Input
	out      *Output
	podID    map[*Pod]uint32
	cidrs    []netip.Prefix          // every policy CIDR and except, sorted
	cidrID   map[netip.Prefix]uint32 // prefix -> CIDR identity
	entries  map[maps.PolicyEntry]bool
	ruleByID map[Rule]uint32
	// selectors and peerSets memoise parsing and matching, which otherwise repeat per pod.
	selectors map[*metav1.LabelSelector]labels.Selector
	peerSets  map[*networkingv1.NetworkPolicyPeer]peerSet
	nsLabelsC map[string]map[string]string
}

// Compile turns the cluster's policies into this node's datapath state.
func Compile(in Input) (*Output, error) {
	c := &compiler{in: in, out: &Output{Endpoints: map[netip.Addr]Enforcement{}, Identities: map[string]uint32{},
		CIDRs: map[uint32]netip.Prefix{}, PodSelected: map[string][]string{}},
		podID: map[*Pod]uint32{}, cidrID: map[netip.Prefix]uint32{}, entries: map[maps.PolicyEntry]bool{}, ruleByID: map[Rule]uint32{},
		selectors: map[*metav1.LabelSelector]labels.Selector{}, peerSets: map[*networkingv1.NetworkPolicyPeer]peerSet{},
		nsLabelsC: map[string]map[string]string{}}
	for i := range in.Pods {
		p := &in.Pods[i]
		id, err := in.Identity(LabelKey(p.Namespace, p.Labels, c.nsLabels(p.Namespace)))
		if err != nil {
			return nil, fmt.Errorf("identity of %s/%s: %w", p.Namespace, p.Name, err)
		}
		c.podID[p] = id
		c.out.Identities[p.Namespace+"/"+p.Name] = id
	}
	c.collectCIDRs()
	c.ipcache()
	for _, np := range in.Policies {
		c.policy(np)
	}
	c.out.Policies = len(in.Policies)
	for i := range in.Pods {
		p := &in.Pods[i]
		if p.Node != in.Self {
			continue
		}
		e := c.out.Endpoints[p.IP]
		e.Identity = c.podID[p]
		c.out.Endpoints[p.IP] = e
	}
	for e := range c.entries {
		c.out.Policy = append(c.out.Policy, e)
	}
	sort.Slice(c.out.Policy, func(i, j int) bool { return fmt.Sprint(c.out.Policy[i]) < fmt.Sprint(c.out.Policy[j]) })
	return c.out, nil
}

func (c *compiler) nsLabels(ns string) map[string]string {
	if l, ok := c.nsLabelsC[ns]; ok {
		return l
	}
	l := map[string]string{}
	defer func() { c.nsLabelsC[ns] = l }()
	for k, v := range c.in.Namespaces[ns] {
		l[k] = v
	}
	l["kubernetes.io/metadata.name"] = ns
	return l
}

// collectCIDRs numbers every distinct CIDR that an ipBlock names.
func (c *compiler) collectCIDRs() {
	seen := map[netip.Prefix]bool{}
	add := func(s string) {
		if p, err := netip.ParsePrefix(s); err == nil && !seen[p.Masked()] {
			seen[p.Masked()] = true
			c.cidrs = append(c.cidrs, p.Masked())
		}
	}
	for _, np := range c.in.Policies {
		for _, p := range allPeers(np) {
			if p.IPBlock != nil {
				add(p.IPBlock.CIDR)
				for _, e := range p.IPBlock.Except {
					add(e)
				}
			}
		}
	}
	sort.Slice(c.cidrs, func(i, j int) bool { return c.cidrs[i].String() < c.cidrs[j].String() })
	for i, p := range c.cidrs {
		id := maps.IdentityCIDRFirst + uint32(i) + 1
		c.cidrID[p] = id
		c.out.CIDRs[id] = p
	}
}

// allPeers lists the peers of every ingress and egress rule of np.
func allPeers(np *networkingv1.NetworkPolicy) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for _, r := range np.Spec.Ingress {
		out = append(out, r.From...)
	}
	for _, r := range np.Spec.Egress {
		out = append(out, r.To...)
	}
	return out
}

// longestCIDR is the identity of the most specific policy CIDR holding ip, or 0.
func (c *compiler) longestCIDR(ip netip.Addr) uint32 {
	best, id := -1, uint32(0)
	for _, p := range c.cidrs {
		if p.Contains(ip) && p.Bits() > best {
			best, id = p.Bits(), c.cidrID[p]
		}
	}
	return id
}

// ipcache: pods and nodes by /32 (/128) with their identities, every policy CIDR with its own. An
// address's longest match is then either itself or the tightest policy CIDR around it.
func (c *compiler) ipcache() {
	entries := map[netip.Prefix]maps.IPCacheEntry{}
	for _, p := range c.cidrs {
		entries[p] = maps.IPCacheEntry{Prefix: p, Identity: maps.IdentityWorld, CIDRIdentity: c.cidrID[p]}
	}
	host := func(ip netip.Addr, id uint32) {
		pfx := netip.PrefixFrom(ip, ip.BitLen())
		entries[pfx] = maps.IPCacheEntry{Prefix: pfx, Identity: id, CIDRIdentity: c.longestCIDR(ip)}
	}
	for _, n := range c.in.Nodes {
		id := maps.IdentityRemoteNode
		if n.Name == c.in.Self {
			id = maps.IdentityHost
		}
		for _, ip := range []netip.Addr{n.IP, n.IPv6} {
			if ip.IsValid() {
				host(ip, id)
			}
		}
	}
	for i := range c.in.Pods {
		host(c.in.Pods[i].IP, c.podID[&c.in.Pods[i]])
		if v6 := c.in.Pods[i].IPv6; v6.IsValid() {
			host(v6, c.podID[&c.in.Pods[i]]) // one identity for both families
		}
	}
	for _, e := range entries {
		c.out.IPCache = append(c.out.IPCache, e)
	}
	sort.Slice(c.out.IPCache, func(i, j int) bool { return c.out.IPCache[i].Prefix.String() < c.out.IPCache[j].Prefix.String() })
}

// selects reports whether sel matches l; selectors were validated when applied.
func (c *compiler) selects(sel *metav1.LabelSelector, l map[string]string) bool {
	s, ok := c.selectors[sel]
	if !ok {
		var err error
		if s, err = metav1.LabelSelectorAsSelector(sel); err != nil {
			s = labels.Nothing()
		}
		c.selectors[sel] = s
	}
	return s.Matches(labels.Set(l))
}

// Types applies Kubernetes' defaulting: Ingress always, Egress when there are egress rules.
func Types(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
		egress = egress || t == networkingv1.PolicyTypeEgress
	}
	return ingress, egress
}

func (c *compiler) policy(np *networkingv1.NetworkPolicy) {
	ingress, egress := Types(np)
	key := np.Namespace + "/" + np.Name
	for i := range c.in.Pods {
		p := &c.in.Pods[i]
		if p.Namespace != np.Namespace || !c.selects(&np.Spec.PodSelector, p.Labels) {
			continue
		}
		c.out.PodSelected[p.Namespace+"/"+p.Name] = append(c.out.PodSelected[p.Namespace+"/"+p.Name], key)
		if p.Node != c.in.Self {
			continue
		}
		e := c.out.Endpoints[p.IP]
		e.Ingress = e.Ingress || ingress
		e.Egress = e.Egress || egress
		c.out.Endpoints[p.IP] = e
		if ingress {
			for ri, r := range np.Spec.Ingress {
				rule := c.rule(Rule{Policy: key, Direction: "ingress", Index: ri})
				c.rule1(p, maps.Ingress, np.Namespace, r.From, r.Ports, rule)
			}
		}
		if egress {
			for ri, r := range np.Spec.Egress {
				rule := c.rule(Rule{Policy: key, Direction: "egress", Index: ri})
				c.rule1(p, maps.Egress, np.Namespace, r.To, r.Ports, rule)
			}
		}
	}
}

func (c *compiler) rule(r Rule) uint32 {
	if id, ok := c.ruleByID[r]; ok {
		return id
	}
	c.out.Rules = append(c.out.Rules, r)
	id := uint32(len(c.out.Rules))
	c.ruleByID[r] = id
	return id
}

// peerSet is who a rule's peers are: identities, plus the pods behind them for egress
// named-port resolution.
type peerSet struct {
	any   bool
	ids   map[uint32]bool
	pods  []*Pod // pods whose identities are in ids (for named ports)
	cidrs map[uint32]bool
}

func (c *compiler) peers(policyNS string, peers []networkingv1.NetworkPolicyPeer) peerSet {
	ps := peerSet{ids: map[uint32]bool{}, cidrs: map[uint32]bool{}}
	if len(peers) == 0 {
		ps.any = true
		return ps
	}
	for i := range peers {
		one := c.peer(policyNS, &peers[i])
		for id := range one.ids {
			ps.ids[id] = true
		}
		for id := range one.cidrs {
			ps.cidrs[id] = true
		}
		ps.pods = append(ps.pods, one.pods...)
	}
	return ps
}

// peer resolves one peer of a rule, once per compile.
func (c *compiler) peer(policyNS string, peerp *networkingv1.NetworkPolicyPeer) peerSet {
	if ps, ok := c.peerSets[peerp]; ok {
		return ps
	}
	ps := peerSet{ids: map[uint32]bool{}, cidrs: map[uint32]bool{}}
	defer func() { c.peerSets[peerp] = ps }()
	for _, peer := range []networkingv1.NetworkPolicyPeer{*peerp} {
		if peer.IPBlock != nil {
			cidr := netip.MustParsePrefix(peer.IPBlock.CIDR).Masked()
			var excepts []netip.Prefix
			for _, e := range peer.IPBlock.Except {
				excepts = append(excepts, netip.MustParsePrefix(e).Masked())
			}
			// An address matches exactly when its longest policy CIDR lies inside cidr and
			// inside no except: the CIDR identities that do so are the ones allowed.
			for _, p := range c.cidrs {
				if !cidr.Contains(p.Addr()) || p.Bits() < cidr.Bits() {
					continue
				}
				excluded := false
				for _, e := range excepts {
					excluded = excluded || (e.Contains(p.Addr()) && p.Bits() >= e.Bits())
				}
				if !excluded {
					ps.cidrs[c.cidrID[p]] = true
				}
			}
			continue
		}
		for i := range c.in.Pods {
			p := &c.in.Pods[i]
			if peer.NamespaceSelector != nil {
				if !c.selects(peer.NamespaceSelector, c.nsLabels(p.Namespace)) {
					continue
				}
			} else if p.Namespace != policyNS {
				continue
			}
			if peer.PodSelector != nil && !c.selects(peer.PodSelector, p.Labels) {
				continue
			}
			ps.ids[c.podID[p]] = true
			ps.pods = append(ps.pods, p)
		}
	}
	return ps
}

var protocols = map[string]uint8{"TCP": 6, "UDP": 17, "SCTP": 132}

// rule1 turns one rule of a policy selecting local pod p into entries.
func (c *compiler) rule1(p *Pod, dir maps.PolicyDirection, ns string, peers []networkingv1.NetworkPolicyPeer,
	ports []networkingv1.NetworkPolicyPort, rule uint32) {
	ps := c.peers(ns, peers)
	add := func(peer uint32, proto uint8, port uint16, bits uint8) {
		c.entries[maps.PolicyEntry{Endpoint: p.EndpointID, Peer: peer, Direction: dir, Protocol: proto, Port: port, PortBits: bits, Rule: rule}] = true
	}
	everyPeer := func(fn func(peer uint32)) {
		if ps.any {
			fn(maps.IdentityAny)
		}
		for id := range ps.ids {
			fn(id)
		}
		for id := range ps.cidrs {
			fn(id)
		}
	}
	if len(ports) == 0 {
		everyPeer(func(peer uint32) { add(peer, 0, 0, 0) })
		return
	}
	for _, pt := range ports {
		proto := protocols["TCP"]
		if pt.Protocol != nil {
			proto = protocols[string(*pt.Protocol)]
		}
		switch {
		case pt.Port == nil:
			everyPeer(func(peer uint32) { add(peer, proto, 0, 0) })
		case pt.Port.Type == intstr.Int:
			end := pt.Port.IntVal
			if pt.EndPort != nil {
				end = *pt.EndPort
			}
			for _, b := range maps.PortBlocks(uint16(pt.Port.IntVal), uint16(end)) {
				everyPeer(func(peer uint32) { add(peer, proto, b[0], uint8(b[1])) })
			}
		case dir == maps.Ingress:
			// A named port is the destination's: here, the selected pod's own.
			if num, ok := namedPort(p, pt.Port.StrVal, proto); ok {
				everyPeer(func(peer uint32) { add(peer, proto, num, 16) })
			}
		default:
			// Egress: the name is resolved against each destination pod.
			for i := range c.in.Pods {
				dst := &c.in.Pods[i]
				num, ok := namedPort(dst, pt.Port.StrVal, proto)
				if !ok {
					continue
				}
				id := c.podID[dst]
				if ps.any || ps.ids[id] || ps.cidrs[c.longestCIDR(dst.IP)] {
					add(id, proto, num, 16)
				}
			}
		}
	}
}

func namedPort(p *Pod, name string, proto uint8) (uint16, bool) {
	for _, np := range p.Ports {
		pr := np.Protocol
		if pr == "" {
			pr = "TCP"
		}
		if np.Name == name && protocols[pr] == proto {
			return uint16(np.Port), true
		}
	}
	return 0, false
}
