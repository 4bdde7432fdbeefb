package policy

import (
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Side is what policy says about one end of a flow.
type Side struct {
	Pod        string   `json:"pod,omitempty"`
	Enforced   bool     `json:"enforced"`             // some policy selects the pod in this direction
	SelectedBy []string `json:"selectedBy,omitempty"` // those policies
	AllowedBy  []Rule   `json:"allowedBy,omitempty"`  // the rules that let this flow through
}

// Explanation says whether a flow passes and why.
type Explanation struct {
	Allowed bool `json:"allowed"`
	Egress  Side `json:"egress"`  // the sender's egress policies
	Ingress Side `json:"ingress"` // the receiver's ingress policies
}

// Endpoint is one end of a flow to explain: a pod of the input, or a bare address.
type Endpoint struct {
	Pod *Pod
	IP  netip.Addr
}

// Explain evaluates the policies of in for a flow from -> to on port/protocol, exactly as
// the compiled datapath decides it (own-node traffic aside).
func Explain(in Input, from, to Endpoint, port uint16, protocol string) Explanation {
	c := &compiler{in: in, selectors: map[*metav1.LabelSelector]labels.Selector{}, nsLabelsC: map[string]map[string]string{}}
	ex := Explanation{}
	if from.Pod != nil {
		ex.Egress = c.side(from.Pod, to, port, protocol, networkingv1.PolicyTypeEgress)
	}
	if to.Pod != nil {
		ex.Ingress = c.side(to.Pod, from, port, protocol, networkingv1.PolicyTypeIngress)
	}
	ex.Allowed = (!ex.Egress.Enforced || len(ex.Egress.AllowedBy) > 0) && (!ex.Ingress.Enforced || len(ex.Ingress.AllowedBy) > 0)
	return ex
}

// side evaluates every policy selecting pod for dir against the peer.
func (c *compiler) side(pod *Pod, peer Endpoint, port uint16, protocol string, dir networkingv1.PolicyType) Side {
	s := Side{Pod: pod.Namespace + "/" + pod.Name}
	dst := peer.Pod // whose named ports count: the destination's
	if dir == networkingv1.PolicyTypeIngress {
		dst = pod
	}
	for _, np := range c.in.Policies {
		ingress, egress := Types(np)
		if np.Namespace != pod.Namespace || !c.selects(&np.Spec.PodSelector, pod.Labels) {
			continue
		}
		if (dir == networkingv1.PolicyTypeIngress && !ingress) || (dir == networkingv1.PolicyTypeEgress && !egress) {
			continue
		}
		key := np.Namespace + "/" + np.Name
		s.Enforced = true
		s.SelectedBy = append(s.SelectedBy, key)
		type rule struct {
			peers []networkingv1.NetworkPolicyPeer
			ports []networkingv1.NetworkPolicyPort
		}
		var rules []rule
		direction := "ingress"
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range np.Spec.Ingress {
				rules = append(rules, rule{r.From, r.Ports})
			}
		} else {
			direction = "egress"
			for _, r := range np.Spec.Egress {
				rules = append(rules, rule{r.To, r.Ports})
			}
		}
		for i, r := range rules {
			if c.peerMatches(np.Namespace, r.peers, peer) && portMatches(r.ports, dst, port, protocol) {
				s.AllowedBy = append(s.AllowedBy, Rule{Policy: key, Direction: direction, Index: i})
			}
		}
	}
	return s
}

func (c *compiler) peerMatches(ns string, peers []networkingv1.NetworkPolicyPeer, p Endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			cidr := netip.MustParsePrefix(peer.IPBlock.CIDR).Masked()
			ip := p.IP
			if p.Pod != nil {
				ip = p.Pod.IP
			}
			in := cidr.Contains(ip)
			for _, e := range peer.IPBlock.Except {
				in = in && !netip.MustParsePrefix(e).Masked().Contains(ip)
			}
			if in {
				return true
			}
			continue
		}
		if p.Pod == nil {
			continue
		}
		if peer.NamespaceSelector != nil {
			if !c.selects(peer.NamespaceSelector, c.nsLabels(p.Pod.Namespace)) {
				continue
			}
		} else if p.Pod.Namespace != ns {
			continue
		}
		if peer.PodSelector == nil || c.selects(peer.PodSelector, p.Pod.Labels) {
			return true
		}
	}
	return false
}

func portMatches(ports []networkingv1.NetworkPolicyPort, dst *Pod, port uint16, protocol string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pt := range ports {
		proto := "TCP"
		if pt.Protocol != nil {
			proto = string(*pt.Protocol)
		}
		if proto != protocol {
			continue
		}
		switch {
		case pt.Port == nil:
			return true
		case pt.Port.Type == intstr.Int:
			end := pt.Port.IntVal
			if pt.EndPort != nil {
				end = *pt.EndPort
			}
			if int32(port) >= pt.Port.IntVal && int32(port) <= end {
				return true
			}
		default:
			if dst != nil {
				if n, ok := namedPort(dst, pt.Port.StrVal, protocols[protocol]); ok && n == port {
					return true
				}
			}
		}
	}
	return false
}
