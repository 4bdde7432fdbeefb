package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/store"
)

// ServiceObjects is the body of POST /v1/services and its answer: Services, and
// EndpointSlices (discovery.k8s.io/v1) giving the backends of selectorless ones, applied
// together, all or nothing.
type ServiceObjects struct {
	Services       []corev1.Service            `json:"services,omitempty"`
	EndpointSlices []discoveryv1.EndpointSlice `json:"endpointSlices,omitempty"`
}

// serviceRoutes registers the Service API: POST and GET /v1/services, DELETE
// /v1/services/{namespace}/{name} and /v1/endpointslices/{namespace}/{name}.
func (a *Agent) serviceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/services", handle(a.applyServices))
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		views, err := a.serviceViews(r.Context())
		reply(w, views, err)
	})
	mux.HandleFunc("DELETE /v1/services/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		replyDeleted(w, a.deleteService(r.Context(), r.PathValue("namespace"), r.PathValue("name")))
	})
	mux.HandleFunc("DELETE /v1/endpointslices/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		replyDeleted(w, a.deleteEndpointSlice(r.Context(), r.PathValue("namespace"), r.PathValue("name")))
	})
}

// replyDeleted answers a DELETE: 404 when there was nothing to delete.
func replyDeleted(w http.ResponseWriter, err error) {
	var nf *notFound
	if errors.As(err, &nf) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		writeJSON(w, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: err.Error()})
		return
	}
	reply(w, struct{}{}, err)
}

// notFound is a DELETE of an object the store does not hold.
type notFound struct{ kind, ns, name string }

func (e *notFound) Error() string { return fmt.Sprintf("%s %s/%s not found", e.kind, e.ns, e.name) }

// apiServerAllocates says the store has an API server, which allocates cluster IPs and node
// ports itself.
func (a *Agent) apiServerAllocates() bool { return a.cfg.Store.Type == "kubernetes" }

// applyServices validates every service and endpoint slice first, then gives each service its
// cluster IP and node ports (the ones it names, the ones it held, or new ones), stores the
// slices, then the services (a new service has its backends from the start), and bumps the
// generation. A failure before anything is stored releases what the request allocated. The
// store calls grow with the request, not with its square: the stored services and the claims
// are read once (ServiceClaimSet), then each claim is one Create and each service one Put.
func (a *Agent) applyServices(ctx context.Context, req ServiceObjects) (ServiceObjects, error) {
	svcs, slices := req.Services, req.EndpointSlices
	if len(svcs)+len(slices) == 0 {
		return ServiceObjects{}, invalid("no Service or EndpointSlice in the request")
	}
	seen := map[string]bool{}
	for i := range svcs {
		s := &svcs[i]
		NormalizeService(s)
		if err := ValidateService(s); err != nil {
			return ServiceObjects{}, invalid(err.Error())
		}
		key := s.Namespace + "/" + s.Name
		if seen[key] {
			return ServiceObjects{}, invalid(fmt.Sprintf("service %s: given twice", key))
		}
		seen[key] = true
		if !a.apiServerAllocates() {
			if err := settleFamilies(s, a.cfg.serviceFamilies()); err != nil {
				return ServiceObjects{}, invalid(fmt.Sprintf("service %s: %v", key, err))
			}
		}
		if err := checkClusterIPs(s, a.cfg); err != nil {
			return ServiceObjects{}, invalid(err.Error())
		}
	}
	seen = map[string]bool{}
	for i := range slices {
		es := &slices[i]
		NormalizeEndpointSlice(es)
		key := es.Namespace + "/" + es.Name
		if a.apiServerAllocates() {
			return ServiceObjects{}, invalid(kubectlSlices(key))
		}
		if err := ValidateEndpointSlice(es); err != nil {
			return ServiceObjects{}, invalid(err.Error())
		}
		if seen[key] {
			return ServiceObjects{}, invalid(fmt.Sprintf("endpointslice %s: given twice", key))
		}
		seen[key] = true
	}
	names := make([]string, len(svcs))
	for i := range svcs {
		names[i] = svcs[i].Namespace + "/" + svcs[i].Name
	}
	olds, err := a.cluster.LookupServices(ctx, names)
	if err != nil {
		return ServiceObjects{}, err
	}
	var claims *store.ServiceClaimSet // every claim, read once for the whole request
	if !a.apiServerAllocates() {
		if claims, err = a.cluster.LoadServiceClaims(ctx); err != nil {
			return ServiceObjects{}, err
		}
	}
	for i := range svcs {
		if old, ok := olds[names[i]]; ok {
			if err := keepAllocated(&svcs[i], old); err != nil {
				return ServiceObjects{}, invalid(err.Error())
			}
		}
	}
	held := make([]store.ServiceClaims, len(svcs)) // what each held before this request
	// undo releases what the request claimed for the services that keep does not keep.
	undo := func(keep func(i int) bool) {
		for i := range held {
			if claims == nil {
				return
			}
			if keep != nil && keep(i) {
				continue
			}
			if err := claims.Release(ctx, names[i], claims.Held(names[i]).Minus(held[i])); err != nil {
				a.log.Warn("release a failed service's allocations", "service", names[i], "err", err)
			}
		}
	}
	if claims != nil {
		for i := range svcs {
			held[i] = claims.Held(names[i])
		}
		if err := allocateServices(ctx, claims, a.cfg, svcs); err != nil {
			undo(nil)
			return ServiceObjects{}, invalid(err.Error())
		}
	}
	var stored []string // what this request stored, named in an error half-way
	failed := func(what string, err error) error {
		if len(stored) > 0 {
			return fmt.Errorf("%s: %w (stored before it: %s)", what, err, listSome(stored))
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	for i := range slices {
		what := "endpointslice " + slices[i].Namespace + "/" + slices[i].Name
		if err := a.cluster.PutEndpointSlice(ctx, &slices[i]); err != nil {
			undo(nil)
			return ServiceObjects{}, failed(what, err)
		}
		stored = append(stored, what)
	}
	if put, i, err := a.putServices(ctx, svcs); err != nil {
		undo(func(j int) bool { return put[j] }) // those stored keep what they were given
		for j := range svcs {
			if put[j] {
				stored = append(stored, "service "+names[j])
			}
		}
		return ServiceObjects{}, failed("service "+names[i], err)
	}
	for i := range held { // what an updated service no longer uses
		if claims == nil {
			break
		}
		if err := claims.Release(ctx, names[i], held[i].Minus(store.ClaimsOf(&svcs[i]))); err != nil {
			a.log.Warn("release a service's former allocations", "service", names[i], "err", err)
		}
	}
	if _, err := a.cluster.BumpGeneration(ctx); err != nil {
		return ServiceObjects{}, err
	}
	a.trigger()
	if !a.apiServerAllocates() {
		return ServiceObjects{Services: svcs, EndpointSlices: slices}, nil
	}
	// The API server allocated: read back what it stored.
	if err := a.cluster.Sync(ctx); err != nil {
		return ServiceObjects{}, err
	}
	out := make([]corev1.Service, 0, len(svcs))
	for _, s := range svcs {
		got, ok, err := a.cluster.ServiceObject(ctx, s.Namespace, s.Name)
		if err != nil {
			return ServiceObjects{}, err
		}
		if !ok {
			return ServiceObjects{}, fmt.Errorf("service %s/%s: stored but not read back", s.Namespace, s.Name)
		}
		out = append(out, *got)
	}
	return ServiceObjects{Services: out}, nil
}

// putWorkers is how many Services applyServices writes at once: each write is a store round
// trip, and etcd serves concurrent ones several times faster than one after another.
const putWorkers = 16

// putServices stores svcs, putWorkers at a time: their order does not matter, as the
// generation bump comes after them all. After a failure it starts no more writes; it returns
// which services it stored, and the failure of the lowest index with that index.
func (a *Agent) putServices(ctx context.Context, svcs []corev1.Service) ([]bool, int, error) {
	put := make([]bool, len(svcs))
	errs := make([]error, len(svcs))
	var failed atomic.Bool
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(putWorkers, len(svcs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if errs[i] = a.cluster.PutService(ctx, &svcs[i]); errs[i] != nil {
					failed.Store(true)
				}
				put[i] = errs[i] == nil
			}
		}()
	}
	for i := range svcs {
		if failed.Load() {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return put, i, err
		}
	}
	return put, 0, nil
}

// listSome joins names, the first few of many and how many more.
func listSome(names []string) string {
	const few = 10
	if len(names) <= few {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:few], ", "), len(names)-few)
}

func invalid(msg string) error {
	return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: msg}
}

// kubectlSlices refuses to write an EndpointSlice to the kubernetes store.
func kubectlSlices(key string) string {
	return fmt.Sprintf("endpointslice %s: with the kubernetes store, EndpointSlices are the API server's "+
		"(its controller manager writes them): use kubectl", key)
}

// allocateServices claims the cluster IPs and node ports svcs name and allocates those they
// leave empty, in the service CIDR of each family (settleFamilies chose them) and the node
// port range: in order, as if one service after another.
func allocateServices(ctx context.Context, claims *store.ServiceClaimSet, cfg *settled, svcs []corev1.Service) error {
	type field struct{ svc, port int } // port -1-k: spec.clusterIPs[k]
	var wants []store.ClaimWant
	var fields []field
	for i := range svcs {
		s := &svcs[i]
		owner := s.Namespace + "/" + s.Name
		if needsClusterIP(s) {
			for k, fam := range s.Spec.IPFamilies {
				w := store.ClaimWant{Owner: owner, CIDR: cfg.serviceCIDRFor(fam)}
				if k < len(s.Spec.ClusterIPs) {
					w.IP, _ = netip.ParseAddr(s.Spec.ClusterIPs[k]) // ValidateService checked it
				}
				wants, fields = append(wants, w), append(fields, field{i, -1 - k})
			}
		}
		if !needsNodePorts(s) {
			continue
		}
		for j, p := range s.Spec.Ports {
			n := store.NodePortClaim{Protocol: string(p.Protocol), Port: int(p.NodePort)}
			wants, fields = append(wants, store.ClaimWant{Owner: owner, NodePort: n}), append(fields, field{i, j})
		}
	}
	if k, err := claims.ClaimAll(ctx, wants); err != nil {
		s, f := &svcs[fields[k].svc], clusterIPField(-1-fields[k].port)
		if fields[k].port >= 0 {
			f = fmt.Sprintf("spec.ports[%d].nodePort", fields[k].port)
		}
		return fmt.Errorf("service %s/%s: %s: %w", s.Namespace, s.Name, f, err)
	}
	for k, w := range wants {
		s := &svcs[fields[k].svc]
		if fields[k].port >= 0 {
			s.Spec.Ports[fields[k].port].NodePort = int32(w.NodePort.Port)
			continue
		}
		if c := -1 - fields[k].port; c == 0 {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = w.IP.String(), []string{w.IP.String()}
		} else {
			s.Spec.ClusterIPs = append(s.Spec.ClusterIPs[:c], w.IP.String())
		}
	}
	return nil
}

// settleFamilies decides a service's families as the API server does, where no API server
// does: the ones it names (or its cluster IPs' families; the cluster's first family when it
// names none), one more for PreferDualStack in a dual-stack cluster, both for
// RequireDualStack, which needs one. cluster lists the cluster's families, its default first.
func settleFamilies(s *corev1.Service, cluster []corev1.IPFamily) error {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	policy := corev1.IPFamilyPolicySingleStack
	if s.Spec.IPFamilyPolicy != nil {
		policy = *s.Spec.IPFamilyPolicy
	}
	if len(s.Spec.ClusterIPs) == 0 && s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	fams := slices.Clone(s.Spec.IPFamilies)
	for i, c := range s.Spec.ClusterIPs {
		if ip, err := netip.ParseAddr(c); err == nil && i >= len(fams) {
			fams = append(fams, familyOf(ip))
		}
	}
	if len(fams) == 0 {
		fams = cluster[:1]
	}
	dual := len(cluster) == 2
	if len(fams) == 1 && (policy == corev1.IPFamilyPolicyRequireDualStack || policy == corev1.IPFamilyPolicyPreferDualStack && dual) {
		other := corev1.IPv6Protocol
		if fams[0] == corev1.IPv6Protocol {
			other = corev1.IPv4Protocol
		}
		fams = append(fams, other)
	}
	for i, f := range fams {
		if !slices.Contains(cluster, f) {
			what := fmt.Sprintf("spec.ipFamilies[%d]: %s", i, f)
			if policy == corev1.IPFamilyPolicyRequireDualStack {
				what = "spec.ipFamilyPolicy: RequireDualStack"
			}
			return fmt.Errorf("%s, but %s", what, singleFamily(cluster[0]))
		}
	}
	s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = fams, &policy
	return nil
}

// singleFamily says which family a single-stack cluster's Services have.
func singleFamily(f corev1.IPFamily) string {
	if f == corev1.IPv6Protocol {
		return "the cluster is IPv6-only (clusterCIDR is IPv6)"
	}
	return "the cluster has IPv4 services only (no clusterCIDRv6)"
}

// needsClusterIP: every service but ExternalName and headless ones has a cluster IP.
func needsClusterIP(s *corev1.Service) bool {
	return s.Spec.Type != corev1.ServiceTypeExternalName && s.Spec.ClusterIP != corev1.ClusterIPNone
}

// needsNodePorts: NodePort services, and LoadBalancer ones unless they opt out.
func needsNodePorts(s *corev1.Service) bool {
	switch s.Spec.Type {
	case corev1.ServiceTypeNodePort:
		return true
	case corev1.ServiceTypeLoadBalancer:
		return s.Spec.AllocateLoadBalancerNodePorts == nil || *s.Spec.AllocateLoadBalancerNodePorts
	}
	return false
}

// keepAllocated fills what an update leaves empty with what old was given, as the API server
// does (a re-applied file keeps its cluster IP and node ports), and refuses a changed cluster
// IP.
func keepAllocated(s, old *corev1.Service) error {
	if needsClusterIP(old) && old.Spec.ClusterIP != "" && s.Spec.Type != corev1.ServiceTypeExternalName {
		switch s.Spec.ClusterIP {
		case "":
			s.Spec.ClusterIP, s.Spec.ClusterIPs = old.Spec.ClusterIP, old.Spec.ClusterIPs
		case old.Spec.ClusterIP:
		default:
			return fmt.Errorf("service %s/%s: spec.clusterIP: may not change from %s to %s (delete the service first)",
				s.Namespace, s.Name, old.Spec.ClusterIP, s.Spec.ClusterIP)
		}
	}
	if !needsNodePorts(old) || !needsNodePorts(s) {
		return nil
	}
	used := map[int32]bool{}
	for _, p := range s.Spec.Ports {
		used[p.NodePort] = true
	}
	byName := map[string]int32{}
	for _, p := range old.Spec.Ports {
		byName[p.Name] = p.NodePort
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if was := byName[p.Name]; p.NodePort == 0 && was != 0 && !used[was] {
			p.NodePort, used[was] = was, true
		}
	}
	return nil
}

// clusterIPField names a service's k-th cluster IP as an error does: the first is spec.clusterIP.
func clusterIPField(k int) string {
	if k == 0 {
		return "spec.clusterIP"
	}
	return fmt.Sprintf("spec.clusterIPs[%d]", k)
}

// checkClusterIPs refuses a given cluster IP outside its family's service CIDR, or that CIDR's
// network or broadcast address.
func checkClusterIPs(s *corev1.Service, cfg *settled) error {
	if !needsClusterIP(s) || s.Spec.ClusterIP == "" {
		return nil
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{s.Spec.ClusterIP}
	}
	for i, c := range ips {
		f := clusterIPField(i)
		ip, err := netip.ParseAddr(c)
		if err != nil {
			return fmt.Errorf("service %s/%s: %s: %q is not an IP address", s.Namespace, s.Name, f, c)
		}
		cidr := cfg.serviceCIDRFor(familyOf(ip))
		if !cidr.IsValid() {
			return fmt.Errorf("service %s/%s: %s: %s is %s, but %s", s.Namespace, s.Name, f, ip, familyOf(ip), singleFamily(cfg.serviceFamilies()[0]))
		}
		if !cidr.Contains(ip) {
			return fmt.Errorf("service %s/%s: %s: %s is not in the service CIDR %s", s.Namespace, s.Name, f, ip, cidr)
		}
		if ip == cidr.Masked().Addr() || (cidr.Bits() < cidr.Addr().BitLen()-1 && !cidr.Contains(ip.Next())) {
			return fmt.Errorf("service %s/%s: %s: %s is the service CIDR's network or broadcast address", s.Namespace, s.Name, f, ip)
		}
	}
	return nil
}

// serviceViews is GET /v1/services: each service's frontends and backends.
func (a *Agent) serviceViews(ctx context.Context) ([]agentapi.ServiceView, error) {
	objs, err := a.cluster.ServiceObjects(ctx)
	if err != nil {
		return nil, err
	}
	resolved, err := a.cluster.ResolveServices(ctx, objs)
	if err != nil {
		return nil, err
	}
	byKey := map[string]store.Service{}
	for _, s := range resolved {
		byKey[s.Namespace+"/"+s.Name] = s
	}
	out := make([]agentapi.ServiceView, 0, len(objs))
	for _, o := range objs {
		s, ok := byKey[o.Namespace+"/"+o.Name]
		if !ok { // ExternalName: no frontend of ebpfnet's
			v := agentapi.ServiceView{Namespace: o.Namespace, Name: o.Name, Type: string(o.Spec.Type), Ports: []agentapi.ServicePort{},
				Frontends: []string{}, Backends: []agentapi.BackendView{}}
			for _, p := range o.Spec.Ports {
				proto := p.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				v.Ports = append(v.Ports, agentapi.ServicePort{Name: p.Name, Protocol: string(proto), Port: int(p.Port)})
			}
			out = append(out, v)
			continue
		}
		out = append(out, viewOf(o, s, a.node))
	}
	return out, nil
}

// portViews is ports as a ServiceView shows them.
func portViews(ports []store.ServicePort) []agentapi.ServicePort {
	out := make([]agentapi.ServicePort, len(ports))
	for i, p := range ports {
		out[i] = agentapi.ServicePort(p)
	}
	return out
}

// viewOf is a resolved service as ServiceView shows it, node ports on node's addresses.
func viewOf(o *corev1.Service, s store.Service, node store.Node) agentapi.ServiceView {
	typ := string(o.Spec.Type)
	if typ == "" {
		typ = string(corev1.ServiceTypeClusterIP)
	}
	v := agentapi.ServiceView{Namespace: s.Namespace, Name: s.Name, Type: typ, Ports: portViews(s.Ports), Frontends: []string{}, Backends: []agentapi.BackendView{}}
	if o.Spec.ClusterIP == corev1.ClusterIPNone {
		v.ClusterIP = corev1.ClusterIPNone
	}
	for _, cip := range []netip.Addr{s.ClusterIP, s.ClusterIPv6} {
		if !cip.IsValid() {
			continue
		}
		if cip.Is4() {
			v.ClusterIP = cip.String()
		} else {
			v.ClusterIPv6 = cip.String()
		}
		for _, p := range s.Ports {
			v.Frontends = append(v.Frontends, fmt.Sprintf("%s/%s", netip.AddrPortFrom(cip, uint16(p.Port)), p.Protocol))
		}
	}
	for _, nodeIP := range nodePortAddrs(node, s) {
		for _, p := range s.Ports {
			if p.NodePort != 0 {
				v.Frontends = append(v.Frontends, fmt.Sprintf("%s/%s", netip.AddrPortFrom(nodeIP, uint16(p.NodePort)), p.Protocol))
			}
		}
	}
	for _, b := range s.Backends {
		v.Backends = append(v.Backends, agentapi.BackendView{IP: b.IP.String(), Node: b.Node, Ports: b.Ports, State: backendState(b)})
	}
	return v
}

func backendState(b store.Backend) string {
	switch {
	case b.Ready:
		return "ready"
	case b.Serving:
		return "serving"
	case b.Terminating:
		return "terminating"
	}
	return "not-ready"
}

// deleteService removes a service and frees its allocations.
func (a *Agent) deleteService(ctx context.Context, ns, name string) error {
	ok, err := a.cluster.DeleteService(ctx, ns, name)
	if err == nil && !ok && a.apiServerAllocates() {
		// The informer may not have seen a service created a moment ago.
		if err = a.cluster.Sync(ctx); err == nil {
			ok, err = a.cluster.DeleteService(ctx, ns, name)
		}
	}
	if err != nil {
		return err
	}
	if !ok {
		return &notFound{"service", ns, name}
	}
	if err := a.cluster.ReleaseService(ctx, ns+"/"+name); err != nil {
		return err
	}
	if _, err := a.cluster.BumpGeneration(ctx); err != nil {
		return err
	}
	a.trigger()
	return nil
}

// deleteEndpointSlice removes an EndpointSlice the local or etcd store holds.
func (a *Agent) deleteEndpointSlice(ctx context.Context, ns, name string) error {
	if a.apiServerAllocates() {
		return invalid(kubectlSlices(ns + "/" + name))
	}
	ok, err := a.cluster.DeleteEndpointSlice(ctx, ns, name)
	if err != nil {
		return err
	}
	if !ok {
		return &notFound{"endpointslice", ns, name}
	}
	if _, err := a.cluster.BumpGeneration(ctx); err != nil {
		return err
	}
	a.trigger()
	return nil
}

// ApplyServices stores services (validated, given cluster IPs and node ports) and endpoint
// slices, all or none, and returns them as stored. The nodes program them after it returns:
// Wait waits for that.
// It lives here rather than on agentapi.Client because its types are Kubernetes'.
func ApplyServices(ctx context.Context, c *agentapi.Client, objs ServiceObjects) (ServiceObjects, error) {
	var out ServiceObjects
	return out, c.Call(ctx, "POST", "/v1/services", objs, &out)
}
