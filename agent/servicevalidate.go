package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/ebpfnet/ebpfnet/store"
)

// NormalizeService fills what Kubernetes defaults (namespace, type, protocols, target ports,
// session affinity, traffic policies) and drops what only the API server writes (uid,
// resource version, status…), so that applying a file twice stores the same object.
func NormalizeService(s *corev1.Service) {
	if s.Namespace == "" {
		s.Namespace = metav1.NamespaceDefault
	}
	if s.APIVersion == "" && s.Kind == "" {
		s.APIVersion, s.Kind = "v1", "Service"
	}
	s.UID, s.ResourceVersion, s.Generation, s.ManagedFields = "", "", 0, nil
	s.CreationTimestamp, s.DeletionTimestamp, s.DeletionGracePeriodSeconds = metav1.Time{}, nil, nil
	s.Status = corev1.ServiceStatus{}
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if s.Spec.ClusterIP == "" && len(s.Spec.ClusterIPs) > 0 {
		s.Spec.ClusterIP = s.Spec.ClusterIPs[0]
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone && len(s.Spec.ClusterIPs) == 0 {
		s.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
	}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == (intstr.IntOrString{}) {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if s.Spec.SessionAffinity == "" {
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		cfg := s.Spec.SessionAffinityConfig
		if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
			timeout := int32(store.DefaultClientIPTimeout.Seconds())
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}
	}
	if s.Spec.InternalTrafficPolicy == nil {
		cluster := corev1.ServiceInternalTrafficPolicyCluster
		s.Spec.InternalTrafficPolicy = &cluster
	}
	if s.Spec.Type != corev1.ServiceTypeClusterIP && s.Spec.ExternalTrafficPolicy == "" {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
}

// validateFamilies checks the dual-stack fields as the API server does: clusterIPs agree with
// clusterIP and have one address per family, ipFamilies name each family at most once, in the
// order of clusterIPs, and ipFamilyPolicy allows as many as there are.
func validateFamilies(spec *corev1.ServiceSpec) error {
	if len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] != spec.ClusterIP {
		return fmt.Errorf("spec.clusterIPs: %v must start with spec.clusterIP %q", spec.ClusterIPs, spec.ClusterIP)
	}
	if len(spec.ClusterIPs) > 2 {
		return fmt.Errorf("spec.clusterIPs: %v: at most one address per family", spec.ClusterIPs)
	}
	var ipFamilies []corev1.IPFamily
	for i, s := range spec.ClusterIPs {
		if s == corev1.ClusterIPNone && i == 0 && len(spec.ClusterIPs) == 1 {
			break
		}
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Is4In6() {
			return fmt.Errorf("spec.clusterIPs[%d]: %q is not an IPv4 or IPv6 address", i, s)
		}
		ipFamilies = append(ipFamilies, familyOf(ip))
	}
	if len(ipFamilies) == 2 && ipFamilies[0] == ipFamilies[1] {
		return fmt.Errorf("spec.clusterIPs: %v: two addresses of one family", spec.ClusterIPs)
	}
	if len(spec.IPFamilies) > 2 {
		return fmt.Errorf("spec.ipFamilies: %v: at most two", spec.IPFamilies)
	}
	for i, f := range spec.IPFamilies {
		if f != corev1.IPv4Protocol && f != corev1.IPv6Protocol {
			return fmt.Errorf("spec.ipFamilies[%d]: %q must be IPv4 or IPv6", i, f)
		}
		if i == 1 && f == spec.IPFamilies[0] {
			return fmt.Errorf("spec.ipFamilies: %v names %s twice", spec.IPFamilies, f)
		}
		if i < len(ipFamilies) && ipFamilies[i] != f {
			return fmt.Errorf("spec.ipFamilies[%d]: %s, but spec.clusterIPs[%d] is %s", i, f, i, ipFamilies[i])
		}
	}
	if p := spec.IPFamilyPolicy; p != nil {
		switch *p {
		case corev1.IPFamilyPolicySingleStack:
			if len(spec.IPFamilies) > 1 || len(ipFamilies) > 1 {
				return errors.New("spec.ipFamilyPolicy: SingleStack, but two families are given")
			}
		case corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack:
		default:
			return fmt.Errorf("spec.ipFamilyPolicy: %q must be SingleStack, PreferDualStack or RequireDualStack", *p)
		}
	} else if len(spec.IPFamilies) > 1 || len(ipFamilies) > 1 {
		return errors.New("spec.ipFamilyPolicy: two families need PreferDualStack or RequireDualStack")
	}
	return nil
}

// familyOf is ip's family, as a Service names it.
func familyOf(ip netip.Addr) corev1.IPFamily {
	if ip.Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

// ValidateService applies the API server's rules for what ebpfnet serves, in one line naming
// the service and the field. LoadBalancer services are served as NodePort ones.
func ValidateService(s *corev1.Service) error {
	if err := validateService(s); err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

func validateService(s *corev1.Service) error {
	if s.APIVersion != "" && s.APIVersion != "v1" {
		return fmt.Errorf("apiVersion: %q must be v1", s.APIVersion)
	}
	if s.Kind != "" && s.Kind != "Service" {
		return fmt.Errorf("kind: %q must be Service", s.Kind)
	}
	if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
		return fmt.Errorf("metadata.name: %q: %s", s.Name, errs[0])
	}
	ns := s.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("metadata.namespace: %q: %s", ns, errs[0])
	}
	spec := &s.Spec
	typ := spec.Type
	if typ == "" {
		typ = corev1.ServiceTypeClusterIP
	}
	switch typ {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		if errs := validation.IsDNS1123Subdomain(strings.TrimSuffix(spec.ExternalName, ".")); len(errs) > 0 {
			return fmt.Errorf("spec.externalName: %q: %s", spec.ExternalName, errs[0])
		}
		if spec.ClusterIP != "" {
			return fmt.Errorf("spec.clusterIP: must be empty for type ExternalName")
		}
	default:
		return fmt.Errorf("spec.type: %q must be ClusterIP, NodePort, LoadBalancer or ExternalName", spec.Type)
	}
	nodePorts := typ == corev1.ServiceTypeNodePort || typ == corev1.ServiceTypeLoadBalancer
	switch spec.ClusterIP {
	case "":
	case corev1.ClusterIPNone:
		if nodePorts {
			return fmt.Errorf("spec.clusterIP: None (headless) is not allowed for type %s", typ)
		}
	default:
		if ip, err := netip.ParseAddr(spec.ClusterIP); err != nil || ip.Is4In6() {
			return fmt.Errorf("spec.clusterIP: %q is not an IPv4 or IPv6 address, or None", spec.ClusterIP)
		}
	}
	if err := validateFamilies(spec); err != nil {
		return err
	}
	if errs := metav1validation.ValidateLabels(spec.Selector, field.NewPath("spec", "selector")); len(errs) > 0 {
		return errors.New(errs[0].Error())
	}
	if typ != corev1.ServiceTypeExternalName && spec.ClusterIP != corev1.ClusterIPNone && len(spec.Ports) == 0 {
		return errors.New("spec.ports: at least one port is required")
	}
	if err := validateServicePorts(spec.Ports, nodePorts); err != nil {
		return err
	}
	switch spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone:
		if spec.SessionAffinityConfig != nil && spec.SessionAffinityConfig.ClientIP != nil {
			return errors.New("spec.sessionAffinityConfig: only with sessionAffinity ClientIP")
		}
	case corev1.ServiceAffinityClientIP:
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t < 1 || t > 86400 {
				return fmt.Errorf("spec.sessionAffinityConfig.clientIP.timeoutSeconds: %d is not in 1-86400", t)
			}
		}
	default:
		return fmt.Errorf("spec.sessionAffinity: %q must be None or ClientIP", spec.SessionAffinity)
	}
	switch spec.ExternalTrafficPolicy {
	case "":
	case corev1.ServiceExternalTrafficPolicyLocal, corev1.ServiceExternalTrafficPolicyCluster:
		if !nodePorts {
			return fmt.Errorf("spec.externalTrafficPolicy: only for type NodePort or LoadBalancer, not %s", typ)
		}
	default:
		return fmt.Errorf("spec.externalTrafficPolicy: %q must be Local or Cluster", spec.ExternalTrafficPolicy)
	}
	if p := spec.InternalTrafficPolicy; p != nil && *p != corev1.ServiceInternalTrafficPolicyLocal && *p != corev1.ServiceInternalTrafficPolicyCluster {
		return fmt.Errorf("spec.internalTrafficPolicy: %q must be Local or Cluster", *p)
	}
	return nil
}

func validateServicePorts(ports []corev1.ServicePort, nodePorts bool) error {
	names := map[string]bool{}
	served := map[string]bool{}
	nodePortsUsed := map[string]bool{}
	for i, p := range ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if len(ports) > 1 && p.Name == "" {
			return fmt.Errorf("%s.name: required when the service has more than one port", f)
		}
		if p.Name != "" {
			if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
				return fmt.Errorf("%s.name: %q: %s", f, p.Name, errs[0])
			}
			if names[p.Name] {
				return fmt.Errorf("%s.name: duplicate port name %q", f, p.Name)
			}
			names[p.Name] = true
		}
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		switch proto {
		case corev1.ProtocolTCP, corev1.ProtocolUDP:
		case corev1.ProtocolSCTP:
			// Kubernetes takes it, but the datapath translates only TCP and UDP frontends:
			// an SCTP Service would be stored and never reachable.
			return fmt.Errorf("%s.protocol: SCTP is not supported by ebpfnet's datapath (TCP and UDP only)", f)
		default:
			return fmt.Errorf("%s.protocol: %q must be TCP or UDP", f, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not in 1-65535", f, p.Port)
		}
		key := fmt.Sprintf("%d/%s", p.Port, proto)
		if served[key] {
			return fmt.Errorf("%s: %s is given twice", f, key)
		}
		served[key] = true
		switch tp := p.TargetPort; {
		case tp.Type == intstr.Int && tp.IntVal != 0 && (tp.IntVal < 1 || tp.IntVal > 65535):
			return fmt.Errorf("%s.targetPort: %d is not in 1-65535", f, tp.IntVal)
		case tp.Type == intstr.String:
			if errs := validation.IsValidPortName(tp.StrVal); len(errs) > 0 {
				return fmt.Errorf("%s.targetPort: %q is neither a number nor a port name: %s", f, tp.StrVal, errs[0])
			}
		}
		if p.NodePort == 0 {
			continue
		}
		if !nodePorts {
			return fmt.Errorf("%s.nodePort: only for type NodePort or LoadBalancer", f)
		}
		if p.NodePort < store.MinNodePort || p.NodePort > store.MaxNodePort {
			return fmt.Errorf("%s.nodePort: %d is not in %d-%d", f, p.NodePort, store.MinNodePort, store.MaxNodePort)
		}
		np := fmt.Sprintf("%d/%s", p.NodePort, proto)
		if nodePortsUsed[np] {
			return fmt.Errorf("%s.nodePort: %s is given twice", f, np)
		}
		nodePortsUsed[np] = true
	}
	return nil
}

// NormalizeEndpointSlice fills what Kubernetes defaults (namespace, port protocols) and drops
// what only the API server writes, as NormalizeService does.
func NormalizeEndpointSlice(es *discoveryv1.EndpointSlice) {
	if es.Namespace == "" {
		es.Namespace = metav1.NamespaceDefault
	}
	if es.APIVersion == "" && es.Kind == "" {
		es.APIVersion, es.Kind = discoveryv1.SchemeGroupVersion.String(), "EndpointSlice"
	}
	es.UID, es.ResourceVersion, es.Generation, es.ManagedFields = "", "", 0, nil
	es.CreationTimestamp, es.DeletionTimestamp, es.DeletionGracePeriodSeconds = metav1.Time{}, nil, nil
	for i := range es.Ports {
		if es.Ports[i].Protocol == nil {
			tcp := corev1.ProtocolTCP
			es.Ports[i].Protocol = &tcp
		}
	}
}

// ValidateEndpointSlice applies the API server's rules for what ebpfnet serves (IPv4 slices
// of numbered ports), in one line naming the slice and the field.
func ValidateEndpointSlice(es *discoveryv1.EndpointSlice) error {
	if err := validateEndpointSlice(es); err != nil {
		return fmt.Errorf("endpointslice %s/%s: %w", es.Namespace, es.Name, err)
	}
	return nil
}

func validateEndpointSlice(es *discoveryv1.EndpointSlice) error {
	if v := discoveryv1.SchemeGroupVersion.String(); es.APIVersion != "" && es.APIVersion != v {
		return fmt.Errorf("apiVersion: %q must be %s", es.APIVersion, v)
	}
	if es.Kind != "" && es.Kind != "EndpointSlice" {
		return fmt.Errorf("kind: %q must be EndpointSlice", es.Kind)
	}
	if errs := validation.IsDNS1123Subdomain(es.Name); len(errs) > 0 {
		return fmt.Errorf("metadata.name: %q: %s", es.Name, errs[0])
	}
	ns := es.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return fmt.Errorf("metadata.namespace: %q: %s", ns, errs[0])
	}
	if errs := metav1validation.ValidateLabels(es.Labels, field.NewPath("metadata", "labels")); len(errs) > 0 {
		return errors.New(errs[0].Error())
	}
	svc, ok := es.Labels[discoveryv1.LabelServiceName]
	if !ok {
		return fmt.Errorf("metadata.labels: %s is required: it names the slice's service", discoveryv1.LabelServiceName)
	}
	if errs := validation.IsDNS1035Label(svc); len(errs) > 0 {
		return fmt.Errorf("metadata.labels[%s]: %q is not a service name: %s", discoveryv1.LabelServiceName, svc, errs[0])
	}
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6:
	case "":
		return errors.New("addressType: required, and must be IPv4 or IPv6")
	default:
		return fmt.Errorf("addressType: %q is not served: must be IPv4 or IPv6", es.AddressType)
	}
	v6 := es.AddressType == discoveryv1.AddressTypeIPv6
	for i, ep := range es.Endpoints {
		f := fmt.Sprintf("endpoints[%d]", i)
		if len(ep.Addresses) == 0 {
			return fmt.Errorf("%s.addresses: at least one address is required", f)
		}
		for j, a := range ep.Addresses {
			if ip, err := netip.ParseAddr(a); err != nil || ip.Is4In6() || ip.Is6() != v6 {
				return fmt.Errorf("%s.addresses[%d]: %q is not an %s address", f, j, a, es.AddressType)
			}
		}
		if ep.NodeName != nil {
			if errs := validation.IsDNS1123Subdomain(*ep.NodeName); len(errs) > 0 {
				return fmt.Errorf("%s.nodeName: %q: %s", f, *ep.NodeName, errs[0])
			}
		}
	}
	names := map[string]bool{}
	for i, p := range es.Ports {
		f := fmt.Sprintf("ports[%d]", i)
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != "" {
			if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
				return fmt.Errorf("%s.name: %q: %s", f, name, errs[0])
			}
		}
		if names[name] {
			return fmt.Errorf("%s.name: duplicate port name %q", f, name)
		}
		names[name] = true
		if p.Port == nil {
			return fmt.Errorf("%s.port: required (a slice port without a number is not served)", f)
		}
		if *p.Port < 1 || *p.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not in 1-65535", f, *p.Port)
		}
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				return fmt.Errorf("%s.protocol: %q must be TCP, UDP or SCTP", f, *p.Protocol)
			}
		}
	}
	return nil
}
