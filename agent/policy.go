package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

// compilePolicy gathers the cluster from the store and compiles this node's policy state.
func (a *Agent) compilePolicy(ctx context.Context, nodes []store.Node) (*policy.Output, *policy.Input, error) {
	in, err := a.clusterInput(ctx, nodes)
	if err != nil {
		return nil, nil, err
	}
	in.Identity = func(key string) (uint32, error) { return a.identity(ctx, key) }
	out, err := policy.Compile(in)
	if err != nil {
		return nil, nil, err
	}
	pods := map[netip.Addr]string{}
	for _, p := range in.Pods {
		pods[p.IP] = p.Namespace + "/" + p.Name
	}
	a.mon.setPods(pods)
	return out, &in, nil
}

// clusterInput reads the cluster from the store as the policy compiler takes it, from this
// node's point of view, with the endpoints of extra added; Identity is left to the caller.
func (a *Agent) clusterInput(ctx context.Context, nodes []store.Node, extra ...store.Endpoint) (policy.Input, error) {
	eps, err := a.cluster.Endpoints(ctx, "")
	if err != nil {
		return policy.Input{}, err
	}
	metas, err := a.cluster.Pods(ctx)
	if err != nil {
		return policy.Input{}, err
	}
	nss, err := a.cluster.Namespaces(ctx)
	if err != nil {
		return policy.Input{}, err
	}
	nps, err := a.cluster.Policies(ctx)
	if err != nil {
		return policy.Input{}, err
	}
	in := policy.Input{Self: a.node.Name, Namespaces: nss, Policies: nps}
	for _, n := range nodes {
		in.Nodes = append(in.Nodes, policy.Node{Name: n.Name, IP: n.IP})
	}
	for _, e := range append(eps, extra...) {
		p := policy.Pod{Namespace: e.Namespace, Name: e.Pod, Labels: e.Labels, IP: e.IP, Node: e.Node, EndpointID: e.ID}
		if m, ok := metas[e.Namespace+"/"+e.Pod]; ok {
			p.Labels, p.Ports = m.Labels, namedPorts(m)
		}
		in.Pods = append(in.Pods, p)
	}
	return in, nil
}

// podMeta is a pod declared through the API as the store holds it.
func podMeta(m agentapi.PodMeta) store.PodMeta {
	pm := store.PodMeta{Labels: m.Labels}
	for _, p := range m.Ports {
		pm.Ports = append(pm.Ports, store.PodPort(p))
	}
	return pm
}

func namedPorts(m store.PodMeta) []policy.NamedPort {
	var out []policy.NamedPort
	for _, pt := range m.Ports {
		out = append(out, policy.NamedPort{Name: pt.Name, Port: pt.Port, Protocol: pt.Protocol})
	}
	return out
}

// applyPolicy writes the ipcache and the policy entries that are new, and returns the policy
// entries to remove once the endpoints' flags are set.
func (a *Agent) applyPolicy(out *policy.Output) ([]bpf.DatapathPolicyKey, error) {
	var errs []error
	ic := a.dp.IPCache()
	have, err := ic.List()
	if err != nil {
		return nil, err
	}
	wantIC := map[netip.Prefix]maps.IPCacheEntry{}
	for _, e := range out.IPCache {
		wantIC[e.Prefix] = e
	}
	for _, e := range have {
		if w, ok := wantIC[e.Prefix]; ok && w == e {
			delete(wantIC, e.Prefix)
		} else if !ok {
			errs = append(errs, ic.Delete(e.Prefix))
		}
	}
	for _, e := range wantIC {
		errs = append(errs, ic.Upsert(e))
	}
	pol := a.dp.Policy()
	cur, err := pol.List()
	if err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	want := map[bpf.DatapathPolicyKey]maps.PolicyEntry{}
	for _, e := range out.Policy {
		k := e.Key()
		if old, ok := want[k]; !ok || e.Rule < old.Rule {
			want[k] = e
		}
	}
	var stale []bpf.DatapathPolicyKey
	added := len(want)
	for _, e := range cur {
		k := e.Key()
		w, ok := want[k]
		if ok {
			added-- // rewritten in place at most
		}
		if ok && w.Rule == e.Rule {
			delete(want, k)
		} else if !ok {
			stale = append(stale, k)
		}
	}
	// New entries go in before stale ones leave, so that nothing the change keeps allowing is
	// dropped meanwhile. When the map cannot hold both, stale entries leave first: for a moment
	// what the change newly allows is still denied, never the other way round.
	if len(cur)+added > int(a.dp.DatapathMaps.Policy.MaxEntries()) {
		errs = append(errs, a.removePolicy(stale))
		stale = nil
	}
	for _, e := range want {
		errs = append(errs, pol.Put(e))
	}
	return stale, errors.Join(errs...)
}

func (a *Agent) removePolicy(stale []bpf.DatapathPolicyKey) error {
	var errs []error
	for _, k := range stale {
		if err := a.dp.DatapathMaps.Policy.Delete(&k); err != nil {
			errs = append(errs, fmt.Errorf("delete policy entry: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ProgrammedTimeout bounds how long a change may take to reach every node.
const ProgrammedTimeout = 30 * time.Second

// waitProgrammed bumps the generation and waits until every registered node has programmed
// it, or names the nodes that have not.
func (a *Agent) waitProgrammed(ctx context.Context) error {
	return a.waitProgrammedWithin(ctx, ProgrammedTimeout)
}

// waitProgrammedWithin is waitProgrammed with its own bound.
func (a *Agent) waitProgrammedWithin(ctx context.Context, timeout time.Duration) error {
	gen, err := a.cluster.BumpGeneration(ctx)
	if err != nil {
		return err
	}
	a.trigger()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := a.cluster.Nodes(ctx)
		if err != nil {
			return err
		}
		st, err := a.cluster.Statuses(ctx)
		if err != nil {
			return err
		}
		var behind []string
		if !hasNode(nodes, a.node.Name) {
			behind = append(behind, a.node.Name) // the store's view is not complete yet
		}
		for _, n := range nodes {
			if st[n.Name].Generation < gen {
				behind = append(behind, n.Name)
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if err := a.metrics.held.heldSince(gen); err != nil && slices.Contains(behind, a.node.Name) {
			return &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: fmt.Sprintf("node %s has not programmed the change: %v", a.node.Name, err)}
		}
		if time.Now().After(deadline) {
			sort.Strings(behind)
			return fmt.Errorf("timed out after %s: nodes %s have not programmed the change", timeout, strings.Join(behind, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond): // polling the nodes' reports, bounded above
		}
	}
}

func hasNode(nodes []store.Node, name string) bool {
	for _, n := range nodes {
		if n.Name == name {
			return true
		}
	}
	return false
}

func (a *Agent) policyRoutes(mux *http.ServeMux) {
	a.policyStatusRoutes(mux)
	mux.HandleFunc("POST /v1/policies", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			reply(w, nil, err)
			return
		}
		nps, err := policy.Parse(body)
		if err != nil {
			reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: err.Error()})
			return
		}
		if err := a.storeChecked(r.Context(), "policy apply", withPolicies(nps), func() error {
			for _, np := range nps {
				if err := a.cluster.PutPolicy(r.Context(), np); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			reply(w, nil, err)
			return
		}
		names := make([]string, 0, len(nps))
		for _, np := range nps {
			names = append(names, np.Namespace+"/"+np.Name)
		}
		reply(w, names, a.waitProgrammed(r.Context()))
	})
	mux.HandleFunc("DELETE /v1/policies/{ns}/{name}", func(w http.ResponseWriter, r *http.Request) {
		ok, err := a.cluster.DeletePolicy(r.Context(), r.PathValue("ns"), r.PathValue("name"))
		if err == nil && !ok {
			err = &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no policy %s/%s", r.PathValue("ns"), r.PathValue("name"))}
		}
		if err == nil {
			err = a.waitProgrammed(r.Context())
		}
		reply(w, struct{}{}, err)
	})
	mux.HandleFunc("GET /v1/policies", func(w http.ResponseWriter, r *http.Request) {
		nps, err := a.cluster.Policies(r.Context())
		if err != nil {
			reply(w, nil, err)
			return
		}
		sel := map[string][]string{}
		if out := a.lastPolicy.Load(); out != nil {
			for pod, pols := range out.PodSelected {
				for _, p := range pols {
					sel[p] = append(sel[p], pod)
				}
			}
		}
		list := agentapi.PolicyList{Policies: []agentapi.PolicySummary{}}
		for _, np := range nps {
			s := agentapi.PolicySummary{Namespace: np.Namespace, Name: np.Name, Selects: sel[np.Namespace+"/"+np.Name]}
			in, eg := policy.Types(np)
			if in {
				s.PolicyTypes = append(s.PolicyTypes, "Ingress")
			}
			if eg {
				s.PolicyTypes = append(s.PolicyTypes, "Egress")
			}
			sort.Strings(s.Selects)
			list.Policies = append(list.Policies, s)
		}
		reply(w, list, nil)
	})
	mux.HandleFunc("POST /v1/labels", handle(func(ctx context.Context, req agentapi.LabelRequest) (struct{}, error) {
		return struct{}{}, a.label(ctx, req)
	}))
	mux.HandleFunc("PUT /v1/objects", handle(func(ctx context.Context, req agentapi.ObjectsRequest) (struct{}, error) {
		for key := range req.Pods {
			if _, _, ok := strings.Cut(key, "/"); !ok {
				return struct{}{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("pod %q is not namespace/name", key)}
			}
		}
		return struct{}{}, a.storeChecked(ctx, "objects", withObjects(req), func() error {
			for name, labels := range req.Namespaces {
				if err := a.cluster.PutNamespace(ctx, name, labels); err != nil {
					return err
				}
			}
			for key, m := range req.Pods {
				ns, name, _ := strings.Cut(key, "/")
				if err := a.cluster.PutPod(ctx, ns, name, podMeta(m)); err != nil {
					return err
				}
			}
			return nil
		})
	}))
	mux.HandleFunc("POST /v1/sync", func(w http.ResponseWriter, r *http.Request) {
		timeout := ProgrammedTimeout
		if t := r.URL.Query().Get("timeout"); t != "" {
			d, err := time.ParseDuration(t)
			if err != nil || d <= 0 {
				reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("timeout %q is not a positive duration", t)})
				return
			}
			timeout = d
		}
		reply(w, struct{}{}, a.waitProgrammedWithin(r.Context(), timeout))
	})
	mux.HandleFunc("POST /v1/explain", handle(func(ctx context.Context, req agentapi.ExplainRequest) (policy.Explanation, error) {
		in := a.lastInput.Load()
		if in == nil {
			return policy.Explanation{}, &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: "no policy compiled yet"}
		}
		from, err := endpointOf(in, req.From)
		if err != nil {
			return policy.Explanation{}, err
		}
		to, err := endpointOf(in, req.To)
		if err != nil {
			return policy.Explanation{}, err
		}
		return policy.Explain(*in, from, to, req.Port, req.Protocol), nil
	}))
	mux.HandleFunc("GET /v1/pod-policy", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.podPolicy(r.Context(), r.URL.Query().Get("pod"))
		reply(w, res, err)
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		ids, err := a.cluster.Identities(r.Context())
		reply(w, ids, err)
	})
}

// label applies a label change and waits until every node has programmed it.
func (a *Agent) label(ctx context.Context, req agentapi.LabelRequest) error {
	switch req.Kind {
	case "namespace":
		nss, err := a.cluster.Namespaces(ctx)
		if err != nil {
			return err
		}
		l, ok := nss[req.Namespace]
		if !ok {
			return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no namespace %q", req.Namespace)}
		}
		err = a.storeChecked(ctx, "label", withLabels(req), func() error {
			return a.cluster.PutNamespace(ctx, req.Namespace, relabel(l, req))
		})
		if err != nil {
			return err
		}
	case "pod":
		pods, err := a.cluster.Pods(ctx)
		if err != nil {
			return err
		}
		m, ok := pods[req.Namespace+"/"+req.Name]
		if !ok {
			return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no pod %s/%s", req.Namespace, req.Name)}
		}
		m.Labels = relabel(m.Labels, req)
		err = a.storeChecked(ctx, "label", withLabels(req), func() error {
			return a.cluster.PutPod(ctx, req.Namespace, req.Name, m)
		})
		if err != nil {
			return err
		}
	default:
		return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("kind %q must be pod or namespace", req.Kind)}
	}
	return a.waitProgrammed(ctx)
}

func relabel(l map[string]string, req agentapi.LabelRequest) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		out[k] = v
	}
	for k, v := range req.Set {
		out[k] = v
	}
	for _, k := range req.Remove {
		delete(out, k)
	}
	return out
}

// Explain asks the agent behind c which policies decide a flow. It lives here rather than on
// agentapi.Client because its answer is the policy compiler's.
func Explain(ctx context.Context, c *agentapi.Client, r agentapi.ExplainRequest) (policy.Explanation, error) {
	var ex policy.Explanation
	return ex, c.Call(ctx, "POST", "/v1/explain", r, &ex)
}

func endpointOf(in *policy.Input, s string) (policy.Endpoint, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		for i := range in.Pods {
			if in.Pods[i].IP == ip {
				return policy.Endpoint{Pod: &in.Pods[i], IP: ip}, nil
			}
		}
		return policy.Endpoint{IP: ip}, nil
	}
	for i := range in.Pods {
		if in.Pods[i].Namespace+"/"+in.Pods[i].Name == s {
			return policy.Endpoint{Pod: &in.Pods[i], IP: in.Pods[i].IP}, nil
		}
	}
	return policy.Endpoint{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("%q is neither a known pod (namespace/name) nor an IP address", s)}
}

func (a *Agent) podPolicy(ctx context.Context, pod string) (agentapi.PodPolicy, error) {
	ns, name, _ := strings.Cut(pod, "/")
	eps, err := a.cluster.Endpoints(ctx, a.node.Name)
	if err != nil {
		return agentapi.PodPolicy{}, err
	}
	for _, e := range eps {
		if e.Namespace != ns || e.Pod != name {
			continue
		}
		m, ok, err := a.dp.Endpoints().Lookup(e.IP)
		if err != nil || !ok {
			return agentapi.PodPolicy{}, fmt.Errorf("no datapath entry for %s (%v)", pod, err)
		}
		res := agentapi.PodPolicy{Node: a.node.Name, Endpoint: m.ID, Identity: m.Identity, IngressEnforced: m.IngressEnforced,
			EgressEnforced: m.EgressEnforced, Entries: []agentapi.PolicyShown{}}
		entries, err := a.dp.Policy().List()
		if err != nil {
			return res, err
		}
		out := a.lastPolicy.Load()
		for _, pe := range entries {
			if pe.Endpoint != m.ID {
				continue
			}
			s := agentapi.PolicyShown{Direction: pe.Direction.String(), Peer: fmt.Sprint(pe.Peer), Protocol: "any", Ports: "any"}
			if pe.Peer == maps.IdentityAny {
				s.Peer = "any"
			} else if out != nil && out.CIDRs[pe.Peer].IsValid() {
				s.Peer = out.CIDRs[pe.Peer].String()
			}
			if pe.Protocol != 0 {
				s.Protocol = fmt.Sprint(pe.Protocol)
				if pe.PortBits > 0 {
					size := 1 << (16 - pe.PortBits)
					s.Ports = fmt.Sprintf("%d-%d", pe.Port, int(pe.Port)+size-1)
				}
			}
			if out != nil && int(pe.Rule) >= 1 && int(pe.Rule) <= len(out.Rules) {
				r := out.Rules[pe.Rule-1]
				s.Rule = fmt.Sprintf("%s %s rule %d", r.Policy, r.Direction, r.Index)
			}
			res.Entries = append(res.Entries, s)
		}
		return res, nil
	}
	return agentapi.PodPolicy{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no pod %s on node %s", pod, a.node.Name)}
}

// identity is the cluster-wide identity of a label set, asked of the store only once.
func (a *Agent) identity(ctx context.Context, key string) (uint32, error) {
	if id, ok := a.identities.Load(key); ok {
		return id.(uint32), nil
	}
	id, err := a.cluster.Identity(ctx, key)
	if err == nil {
		a.identities.Store(key, id)
	}
	return id, err
}
