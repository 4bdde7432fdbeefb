package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/podnet"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

// reconcile makes the maps (and, in native mode, the kernel routes) match the store. Applying
// the same state twice changes nothing; only what differs is written or removed.
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
	errs := []error{a.routesRec.reconcile(ctx, nodes)}
	pol, in, err := a.compilePolicy(ctx, nodes)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("compile policy: %w", err))...)
	}
	if over := a.capacity().overflows(pol, ""); len(over) > 0 {
		// The store wants more than this node's maps hold (a change another agent let in, or
		// one made in the Kubernetes API): programming part of it would enforce something no
		// one asked for, so the policy state stays as programmed and this generation is not
		// reported. Pods still come and go.
		a.holdBackState(gen, over)
		errs = append(errs, a.reconcileEndpoints(ctx, nil, true))
		errs = append(errs, a.reconcilePrefilter(ctx))
		errs = append(errs, a.services.reconcile(ctx, a.cluster), a.reconcileMasquerade())
		return errors.Join(errs...)
	}
	a.metrics.held.release()
	a.lastPolicy.Store(pol)
	a.lastInput.Store(in)
	// Order matters for a datapath that keeps running: new identities and entries first,
	// then the endpoints' flags, and only then what is no longer allowed goes.
	stale, err := a.applyPolicy(pol)
	errs = append(errs, err)
	errs = append(errs, a.reconcileEndpoints(ctx, pol.Endpoints, false))
	errs = append(errs, a.removePolicy(stale))
	errs = append(errs, a.reconcilePrefilter(ctx))
	errs = append(errs, a.services.reconcile(ctx, a.cluster), a.reconcileMasquerade())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	slog.Debug("reconciled", "nodes", len(nodes), "took", time.Since(start))
	a.metrics.reconcile.Observe(time.Since(start).Seconds())
	return a.reportStatus(ctx, gen, pol)
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

// reconcileEndpoints writes the node's endpoints into the map and removes what is stale: an
// endpoint whose pod went away while no agent ran, or a map entry the store does not know.
// With keep, every entry keeps the identity and enforcement flags it has (enf is not used).
func (a *Agent) reconcileEndpoints(ctx context.Context, enf map[netip.Addr]policy.Enforcement, keep bool) error {
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
			slog.Info("remove stale endpoint: its interface is gone", "pod", e.Namespace+"/"+e.Pod, "ip", e.IP, "hostIf", e.HostIf)
			errs = append(errs, a.forget(ctx, e))
			continue
		}
		wanted[e.IP] = true
		mac, _ := net.ParseMAC(e.MAC)
		pe := enf[e.IP]
		want := maps.Endpoint{IP: e.IP, Ifindex: uint32(host.Attrs().Index), ID: e.ID, Local: true,
			MAC: mac, NodeMAC: host.Attrs().HardwareAddr, Identity: pe.Identity,
			IngressEnforced: pe.Ingress, EgressEnforced: pe.Egress}
		have, ok, err := a.dp.Endpoints().Lookup(e.IP)
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
	inMap, err := a.dp.Endpoints().List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, m := range inMap {
		if m.Local && !wanted[m.IP] {
			slog.Info("remove stale map entry", "ip", m.IP)
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
	pod := podnet.Pod{Netns: e.Netns, ContainerID: e.ContainerID, IfName: e.IfName, IP: e.IP}
	return errors.Join(
		podnet.Unplumb(pod, a.dp),
		a.ipam.Release(ctx, e.Owner()),
		a.cluster.DeleteEndpoint(ctx, a.node.Name, e.Owner()),
	)
}
