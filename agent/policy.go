package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

// The policy reconciler's side: the cluster read from the store and compiled for this node,
// then written to the ipcache and policy maps. The API is policyapi.go.

// policyReconciler owns the ipcache and policy maps. Its first stage compiles the cluster for
// this node and writes what is new; its second (policyPruner) removes what is stale, once the
// endpoints between them carry the new flags. When the store wants more than the maps hold,
// programming part of it would enforce something no one asked for: the policy state stays as
// programmed and the pass goes on without it (pass.pol nil).
type policyReconciler struct {
	a   *Agent
	log *slog.Logger
}

func (r *policyReconciler) reconcile(ctx context.Context, p *pass) error {
	a := r.a
	pol, in, err := a.compilePolicy(ctx, p.nodes)
	if err != nil {
		return stopPass{fmt.Errorf("compile policy: %w", err)}
	}
	if over := a.capacity().overflows(pol, ""); len(over) > 0 {
		// A change another agent let in, or one made in the Kubernetes API. Pods still come
		// and go.
		a.holdBackState(p.gen, over)
		return nil
	}
	a.metrics.held.release()
	a.lastPolicy.Store(pol)
	a.lastInput.Store(in)
	p.pol = pol
	p.stale, err = a.applyPolicy(pol)
	return err
}

// policyPruner is the policy reconciler's second stage: the entries no longer allowed go.
type policyPruner struct{ r *policyReconciler }

func (pr policyPruner) reconcile(_ context.Context, p *pass) error {
	if p.pol == nil {
		return nil
	}
	return pr.r.a.removePolicy(p.stale)
}

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
		if p.IPv6.IsValid() {
			pods[p.IPv6] = p.Namespace + "/" + p.Name
		}
	}
	a.mon.setPods(pods)
	return out, &in, nil
}

// clusterInput reads the cluster from the store as the policy compiler takes it, from this
// node's point of view, with the endpoints of extra added; Identity is left to the caller.
func (a *Agent) clusterInput(ctx context.Context, nodes []store.Node, extra ...store.Endpoint) (policy.Input, error) {
	// Four reads at once: against etcd each is a round trip, and a CNI ADD waits for them.
	var (
		eps   []store.Endpoint
		metas map[string]store.PodMeta
		nss   map[string]map[string]string
		nps   []*networkingv1.NetworkPolicy
		errs  [4]error
		wg    sync.WaitGroup
	)
	for i, read := range []func() error{
		func() (err error) { eps, err = a.cluster.Endpoints(ctx, ""); return err },
		func() (err error) { metas, err = a.cluster.Pods(ctx); return err },
		func() (err error) { nss, err = a.cluster.Namespaces(ctx); return err },
		func() (err error) { nps, err = a.cluster.Policies(ctx); return err },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = read() }()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return policy.Input{}, err
	}
	in := policy.Input{Self: a.node.Name, Namespaces: nss, Policies: nps}
	for _, n := range nodes {
		in.Nodes = append(in.Nodes, policy.Node{Name: n.Name, IP: n.IP, IPv6: n.IPv6})
	}
	for _, e := range append(eps, extra...) {
		p := policy.Pod{Namespace: e.Namespace, Name: e.Pod, Labels: e.Labels, IP: e.IP, IPv6: e.IPv6, Node: e.Node, EndpointID: e.ID}
		if m, ok := metas[e.Namespace+"/"+e.Pod]; ok {
			p.Labels, p.Ports = m.Labels, namedPorts(m)
		}
		in.Pods = append(in.Pods, p)
	}
	return in, nil
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
