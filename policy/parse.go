// Package policy reads Kubernetes NetworkPolicies (networking.k8s.io/v1) exactly as kubectl
// would take them, and compiles them, with the cluster's pods and namespaces, into what the
// datapath looks up: identities, ipcache entries and per-endpoint policy entries.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/yamlguard"
)

// Parse reads one or more YAML (or JSON) documents of NetworkPolicies. Every document is
// checked before any is returned: one error refuses them all, naming the field. A document
// over yamlguard.MaxDocumentBytes, or whose aliases would expand it past that, is refused unparsed.
func Parse(data []byte) ([]*networkingv1.NetworkPolicy, error) {
	var out []*networkingv1.NetworkPolicy
	for i, doc := range splitDocs(data) {
		if err := yamlguard.Check(doc); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		np := &networkingv1.NetworkPolicy{}
		if err := yaml.UnmarshalStrict(doc, np); err != nil {
			return nil, fmt.Errorf("document %d: %s", i+1, strings.TrimPrefix(strings.TrimPrefix(err.Error(),
				"error unmarshaling JSON: while decoding JSON: "), "json: "))
		}
		if np.Namespace == "" {
			np.Namespace = "default"
		}
		if err := Validate(np); err != nil {
			return nil, fmt.Errorf("document %d (%s/%s): %w", i+1, np.Namespace, np.Name, err)
		}
		out = append(out, np)
	}
	if len(out) == 0 {
		return nil, errors.New("no NetworkPolicy in the input")
	}
	return out, nil
}

// splitDocs splits a YAML stream on "---" lines, dropping empty documents. The documents are
// slices of data: nothing is copied.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	add := func(d []byte) {
		if !blank(d) {
			docs = append(docs, d)
		}
	}
	start := 0
	for pos := 0; pos < len(data); {
		end, next := len(data), len(data)
		if i := bytes.IndexByte(data[pos:], '\n'); i >= 0 {
			end, next = pos+i, pos+i+1
		}
		if line := data[pos:end]; bytes.HasPrefix(line, []byte("---")) && len(bytes.TrimSpace(line[3:])) == 0 {
			add(data[start:pos])
			start = next
		}
		pos = next
	}
	add(data[start:])
	return docs
}

// blank says whether a document holds nothing but blank lines and comments.
func blank(doc []byte) bool {
	for len(doc) > 0 {
		line := doc
		if i := bytes.IndexByte(doc, '\n'); i >= 0 {
			line, doc = doc[:i], doc[i+1:]
		} else {
			doc = nil
		}
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			return false
		}
	}
	return true
}

var (
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	portName     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// Validate applies the API server's rules for NetworkPolicy.
func Validate(np *networkingv1.NetworkPolicy) error {
	if np.APIVersion != "networking.k8s.io/v1" {
		return fmt.Errorf("apiVersion: %q must be networking.k8s.io/v1", np.APIVersion)
	}
	if np.Kind != "NetworkPolicy" {
		return fmt.Errorf("kind: %q must be NetworkPolicy", np.Kind)
	}
	if np.Name == "" || len(np.Name) > 253 || !dnsSubdomain.MatchString(np.Name) {
		return fmt.Errorf("metadata.name: %q is not a DNS subdomain", np.Name)
	}
	if len(np.Namespace) > 63 || !dnsLabel.MatchString(np.Namespace) {
		return fmt.Errorf("metadata.namespace: %q is not a DNS label", np.Namespace)
	}
	spec := &np.Spec
	if err := validSelector(&spec.PodSelector); err != nil {
		return fmt.Errorf("spec.podSelector: %w", err)
	}
	for i, t := range spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			return fmt.Errorf("spec.policyTypes[%d]: %q must be Ingress or Egress", i, t)
		}
	}
	for i, r := range spec.Ingress {
		f := fmt.Sprintf("spec.ingress[%d]", i)
		if err := validPeers(f+".from", r.From); err != nil {
			return err
		}
		if err := validPorts(f+".ports", r.Ports); err != nil {
			return err
		}
	}
	for i, r := range spec.Egress {
		f := fmt.Sprintf("spec.egress[%d]", i)
		if err := validPeers(f+".to", r.To); err != nil {
			return err
		}
		if err := validPorts(f+".ports", r.Ports); err != nil {
			return err
		}
	}
	return nil
}

func validSelector(s *metav1.LabelSelector) error {
	_, err := metav1.LabelSelectorAsSelector(s)
	return err
}

func validPeers(field string, peers []networkingv1.NetworkPolicyPeer) error {
	for i, p := range peers {
		f := fmt.Sprintf("%s[%d]", field, i)
		n := 0
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			n++
		}
		if p.IPBlock != nil {
			n++
		}
		if n != 1 {
			return fmt.Errorf("%s: must give either ipBlock or podSelector/namespaceSelector", f)
		}
		if p.PodSelector != nil {
			if err := validSelector(p.PodSelector); err != nil {
				return fmt.Errorf("%s.podSelector: %w", f, err)
			}
		}
		if p.NamespaceSelector != nil {
			if err := validSelector(p.NamespaceSelector); err != nil {
				return fmt.Errorf("%s.namespaceSelector: %w", f, err)
			}
		}
		if p.IPBlock != nil {
			cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
			if err != nil {
				return fmt.Errorf("%s.ipBlock.cidr: %q is not a CIDR", f, p.IPBlock.CIDR)
			}
			for j, e := range p.IPBlock.Except {
				ex, err := netip.ParsePrefix(e)
				if err != nil {
					return fmt.Errorf("%s.ipBlock.except[%d]: %q is not a CIDR", f, j, e)
				}
				if ex.Addr().Is4() != cidr.Addr().Is4() || !cidr.Masked().Contains(ex.Addr()) || ex.Bits() <= cidr.Bits() {
					return fmt.Errorf("%s.ipBlock.except[%d]: %s must lie strictly inside cidr %s", f, j, e, cidr)
				}
			}
		}
	}
	return nil
}

func validPorts(field string, ports []networkingv1.NetworkPolicyPort) error {
	for i, p := range ports {
		f := fmt.Sprintf("%s[%d]", field, i)
		if p.Protocol != nil {
			switch *p.Protocol {
			case "TCP", "UDP", "SCTP":
			default:
				return fmt.Errorf("%s.protocol: %q must be TCP, UDP or SCTP", f, *p.Protocol)
			}
		}
		if p.Port != nil {
			if p.Port.Type == intstr.Int {
				if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
					return fmt.Errorf("%s.port: %d is not in 1-65535", f, p.Port.IntVal)
				}
			} else if len(p.Port.StrVal) > 15 || !portName.MatchString(p.Port.StrVal) || !strings.ContainsAny(p.Port.StrVal, "abcdefghijklmnopqrstuvwxyz") {
				return fmt.Errorf("%s.port: %q is neither a number nor a port name", f, p.Port.StrVal)
			}
		}
		if p.EndPort != nil {
			if p.Port == nil || p.Port.Type != intstr.Int {
				return fmt.Errorf("%s.endPort: needs a numeric port", f)
			}
			if *p.EndPort < p.Port.IntVal || *p.EndPort > 65535 {
				return fmt.Errorf("%s.endPort: %d must be between port %d and 65535", f, *p.EndPort, p.Port.IntVal)
			}
		}
	}
	return nil
}
