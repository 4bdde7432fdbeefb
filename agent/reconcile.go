package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/podnet"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

// A reconciler makes one concern of the datapath match the store. It owns that concern's maps
// (and kernel state: routes, the XDP hook), which nothing else writes, and given the same state
// twice it changes nothing the second time.
type reconciler interface {
	reconcile(ctx context.Context, p *pass) error
}

// pass is what one reconcile read from the store, and what its earlier reconcilers decided for
// the later ones.
type pass struct {
	gen   int64
	nodes []store.Node
	// pol is this node's compiled policy; nil while it is held back (the store asks for more
	// than the maps hold): endpoints then keep the flags they have and the policy maps stay.
	pol *policy.Output
	// stale are the policy entries to remove once the endpoints no longer need them.
	stale []bpf.DatapathPolicyKey
}

// stopPass is an error after which the rest of a pass cannot run: the reconcilers after the one
// that returned it would act on what it failed to produce.
type stopPass struct{ error }

func (s stopPass) Unwrap() error { return s.error }

// stage is one reconciler of the pass; name is the stage attribute of its log lines.
type stage struct {
	name string
	rec  reconciler
}

// newStages returns the agent's reconcilers in the order a pass runs them. The datapath
// forwards while it changes, so the order is the one in which no packet meets a half-made state:
//   - routes: from the node list alone, first, so that a policy which fails to compile never
//     keeps a new node unreachable;
//   - policy: compiled, then its new identities and entries written before any endpoint refers
//     to them (a compile error stops the pass: what follows would act on no policy);
//   - endpoints: each local pod's entry, with the identity and enforcement flags just compiled;
//   - policy-prune: the entries no longer allowed, only now that no endpoint's flags need them,
//     so nothing the change keeps allowing is dropped meanwhile;
//   - prefilter, services, masquerade: maps none of the stages above reads, in any order.
//
// BGP is no stage of its own: it is the routes stage's source of remote routes.
func (a *Agent) newStages() []stage {
	pol := &policyReconciler{a: a, log: a.log.With("stage", "policy")}
	return []stage{
		{"routes", a.routesRec},
		{"policy", pol},
		{"endpoints", &endpointReconciler{a: a, log: a.log.With("stage", "endpoints")}},
		{"policy-prune", policyPruner{pol}},
		{"prefilter", a.prefilter},
		{"services", a.services},
		{"masquerade", a.masquerade},
	}
}

// reconcile makes the maps (and, in native mode, the kernel routes) match the store: one pass
// of every stage in order. Applying the same state twice changes nothing; only what differs is
// written or removed.
func (a *Agent) reconcile(ctx context.Context) error {
	a.recMu.Lock()
	defer a.recMu.Unlock()
	start := time.Now()
	gen, err := a.cluster.Generation(ctx)
	if err != nil {
		return err
	}
	if gen > a.programmed.Load() {
		// Someone waits for this node to program all that the store held when they asked:
		// a store that reads from caches must catch up first.
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := a.cluster.Sync(sctx)
		cancel()
		if err != nil {
			return err
		}
	}
	nodes, err := a.cluster.Nodes(ctx)
	if err != nil {
		return err
	}
	p := &pass{gen: gen, nodes: nodes}
	var errs []error
	for _, st := range a.stages {
		err := st.rec.reconcile(ctx, p)
		errs = append(errs, err)
		var stop stopPass
		if errors.As(err, &stop) {
			return errors.Join(errs...)
		}
	}
	if err := errors.Join(errs...); err != nil || p.pol == nil {
		return err // a held-back state is not reported as programmed
	}
	a.log.Debug("reconciled", "nodes", len(nodes), "took", time.Since(start))
	a.metrics.reconcile.Observe(time.Since(start).Seconds())
	return a.reportStatus(ctx, gen, p.pol)
}

// reportStatus publishes what this node now enforces when it differs from what it last said.
func (a *Agent) reportStatus(ctx context.Context, gen int64, pol *policy.Output) error {
	st := store.NodeStatus{Generation: max(gen, a.programmed.Load()), Policies: map[string]string{}}
	if in := a.lastInput.Load(); in != nil {
		for _, np := range in.Policies {
			st.Policies[np.Namespace+"/"+np.Name] = store.PolicyVersion(np)
		}
	}
	seen := map[uint32]bool{}
	for _, id := range pol.Identities {
		if !seen[id] {
			seen[id] = true
			st.Identities = append(st.Identities, id)
		}
	}
	slices.Sort(st.Identities)
	if prev := a.lastStatus.Load(); prev != nil && reflect.DeepEqual(*prev, st) {
		return nil
	}
	if prev := a.programmed.Load(); gen > prev && prev != 0 {
		// Generations are the change's wall-clock time: their age is the implementation delay
		// (not for the first one after start, which may be old).
		a.metrics.policyDelay.Observe(time.Since(time.Unix(0, gen)).Seconds())
	}
	if err := a.cluster.PutStatus(ctx, a.node.Name, st); err != nil {
		return err
	}
	a.programmed.Store(st.Generation)
	a.lastStatus.Store(&st)
	return nil
}

// endpointReconciler owns the endpoints map: it writes the node's endpoints, with the identity
// and flags the pass's policy gives them, and removes what is stale: an endpoint whose pod went
// away while no agent ran, or a map entry the store does not know. While policy is held back
// every entry keeps the identity and enforcement flags it has.
type endpointReconciler struct {
	a   *Agent
	log *slog.Logger
}

func (r *endpointReconciler) reconcile(ctx context.Context, p *pass) error {
	a := r.a
	var enf map[netip.Addr]policy.Enforcement
	keep := p.pol == nil
	if !keep {
		enf = p.pol.Endpoints
	}
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	eps, err := a.cluster.Endpoints(ctx, a.node.Name)
	if err != nil {
		return err
	}
	wanted := map[netip.Addr]bool{}
	var errs []error
	for _, e := range eps {
		host, err := netlink.LinkByName(e.HostIf)
		if err != nil {
			r.log.Info("remove stale endpoint: its interface is gone", "pod", e.Namespace+"/"+e.Pod, "ip", e.IP, "hostIf", e.HostIf)
			errs = append(errs, a.forget(ctx, e))
			continue
		}
		mac, _ := net.ParseMAC(e.MAC)
		// Policy names an endpoint by its IPv4 address; its IPv6 one is the same endpoint.
		pe := enf[e.IP]
		for _, ip := range e.Addrs() {
			wanted[ip] = true
			want := maps.Endpoint{IP: ip, Ifindex: uint32(host.Attrs().Index), ID: e.ID, Local: true,
				MAC: mac, NodeMAC: host.Attrs().HardwareAddr, Identity: pe.Identity,
				IngressEnforced: pe.Ingress, EgressEnforced: pe.Egress}
			have, ok, err := a.dp.Endpoints().Lookup(ip)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if keep {
				want.Identity, want.IngressEnforced, want.EgressEnforced = have.Identity, have.IngressEnforced, have.EgressEnforced
			}
			if !ok || !sameEndpoint(have, want) {
				errs = append(errs, a.dp.Endpoints().Upsert(want))
			}
		}
	}
	inMap, err := a.dp.Endpoints().List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, m := range inMap {
		if m.Local && !wanted[m.IP] {
			r.log.Info("remove stale map entry", "ip", m.IP)
			errs = append(errs, a.dp.Endpoints().Delete(m.IP))
		}
	}
	return errors.Join(errs...)
}

func sameEndpoint(a, b maps.Endpoint) bool {
	return a.Ifindex == b.Ifindex && a.ID == b.ID && a.Identity == b.Identity && a.Local == b.Local &&
		a.IngressEnforced == b.IngressEnforced && a.EgressEnforced == b.EgressEnforced &&
		a.MAC.String() == b.MAC.String() && a.NodeMAC.String() == b.NodeMAC.String()
}

// forget removes every trace of an endpoint: plumbing, hooks, map entry, lease, record.
func (a *Agent) forget(ctx context.Context, e store.Endpoint) error {
	pod := podnet.Pod{Netns: e.Netns, ContainerID: e.ContainerID, IfName: e.IfName, IP: e.IP, IPv6: e.IPv6}
	return errors.Join(
		podnet.Unplumb(pod, a.dp),
		a.ipam.Release(ctx, e.Owner()),
		a.cluster.DeleteEndpoint(ctx, a.node.Name, e.Owner()),
	)
}
