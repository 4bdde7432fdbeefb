package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/store"
)

// serviceReconciler programs this node's view of the cluster's Services: every ClusterIP
// frontend, a NodePort frontend on this node's address, and the backends they choose from.
// It owns the services and backends maps; the datapath owns affinity and nat.
type serviceReconciler struct {
	maps    *maps.Services
	node    store.Node
	cluster *store.Cluster
	log     *slog.Logger
	mu      sync.Mutex
	// ids are the backend ids in the map, by backend address; next is the next free one.
	ids  map[netip.AddrPort]uint32
	next uint32
	// slots is how many backend slots each frontend has in the map.
	slots map[frontendKey]int
}

type frontendKey struct {
	addr  netip.AddrPort
	proto uint8
}

// newServiceReconciler adopts what the maps hold, so a restarted agent keeps backend ids
// (and with them the flows translated to them).
func newServiceReconciler(m *maps.Services, node store.Node, cluster *store.Cluster, log *slog.Logger) (*serviceReconciler, error) {
	r := &serviceReconciler{maps: m, node: node, cluster: cluster, log: log, ids: map[netip.AddrPort]uint32{}, slots: map[frontendKey]int{}, next: 1}
	bes, err := m.Backends()
	if err != nil {
		return nil, err
	}
	for id, b := range bes {
		r.ids[b.Addr] = id
		r.next = max(r.next, id+1)
	}
	fronts, err := m.List()
	if err != nil {
		return nil, err
	}
	for _, f := range fronts {
		r.slots[frontendKey{f.Addr, f.Protocol}] = len(f.Backends)
	}
	return r, nil
}

var protocols = map[string]uint8{"TCP": 6, "UDP": 17}

// serviceID names a Service in affinity keys: stable across restarts without being stored.
func serviceID(ns, name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(ns + "/" + name))
	return h.Sum32()
}

// eligible lists the backends a frontend of the family of frontend chooses from for port: the
// ready ones (only this node's when local), or, when none is ready, the serving ones that are
// terminating, as kube-proxy does.
func (r *serviceReconciler) eligible(s store.Service, frontend netip.Addr, port store.ServicePort, local bool) []netip.AddrPort {
	var ready, terminating []netip.AddrPort
	for _, b := range s.Backends {
		target, ok := b.Ports[port.Name]
		if !ok || target < 1 || target > 65535 || b.IP.Is6() != frontend.Is6() || (local && !r.isLocal(b)) {
			continue
		}
		addr := netip.AddrPortFrom(b.IP, uint16(target))
		switch {
		case b.Ready && !b.Terminating:
			ready = append(ready, addr)
		case b.Serving && b.Terminating:
			terminating = append(terminating, addr)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

func (r *serviceReconciler) isLocal(b store.Backend) bool {
	return b.Node == r.node.Name || r.inPodCIDR(b.IP)
}

// inPodCIDR says whether ip is in one of this node's pod CIDRs.
func (r *serviceReconciler) inPodCIDR(ip netip.Addr) bool {
	return r.node.PodCIDR.Contains(ip) || r.node.PodCIDRv6.Contains(ip)
}

// nodePortAddrs are the addresses of node on which s's node ports answer: its IPv4 one if s
// has an IPv4 cluster IP, its IPv6 one (if it has one) if s has an IPv6 cluster IP. None
// unless s is a NodePort Service.
func nodePortAddrs(node store.Node, s store.Service) []netip.Addr {
	var out []netip.Addr
	if s.NodePort && node.IP.Is4() && s.ClusterIP.IsValid() {
		out = append(out, node.IP)
	}
	if s.NodePort && node.IPv6.Is6() && s.ClusterIPv6.IsValid() {
		out = append(out, node.IPv6)
	}
	return out
}

// wantFrontend is a frontend with its backends by address (ids come later).
type wantFrontend struct {
	maps.Frontend
	addrs []netip.AddrPort
}

// desired computes the frontends and backends this node should hold.
func (r *serviceReconciler) desired(svcs []store.Service) (map[frontendKey]wantFrontend, map[netip.AddrPort]maps.Backend) {
	fronts := map[frontendKey]wantFrontend{}
	bes := map[netip.AddrPort]maps.Backend{}
	use := func(addrs []netip.AddrPort) []netip.AddrPort {
		for _, a := range addrs {
			bes[a] = maps.Backend{Addr: a, Local: r.inPodCIDR(a.Addr())}
		}
		return addrs
	}
	for _, s := range svcs {
		if !s.ClusterIP.IsValid() && !s.ClusterIPv6.IsValid() {
			continue // headless
		}
		id := serviceID(s.Namespace, s.Name)
		for _, p := range s.Ports {
			proto, ok := protocols[p.Protocol]
			if !ok || p.Port < 1 || p.Port > 65535 {
				continue
			}
			// A frontend per cluster IP, each choosing among the backends of its family.
			for _, cip := range []netip.Addr{s.ClusterIP, s.ClusterIPv6} {
				if !cip.IsValid() {
					continue
				}
				f := maps.Frontend{Addr: netip.AddrPortFrom(cip, uint16(p.Port)), Protocol: proto, ServiceID: id,
					Affinity: s.ClientIPAffinity}
				fronts[frontendKey{f.Addr, proto}] = wantFrontend{f, use(r.eligible(s, cip, p, s.InternalLocal))}
			}
			// A node port on each of the node's addresses whose family the Service has,
			// leading to the backends of that family.
			for _, nip := range nodePortAddrs(r.node, s) {
				if p.NodePort < 1 {
					break
				}
				n := maps.Frontend{Addr: netip.AddrPortFrom(nip, uint16(p.NodePort)), Protocol: proto, ServiceID: id,
					Affinity: s.ClientIPAffinity, NodePort: true, ExternalLocal: s.ExternalLocal}
				fronts[frontendKey{n.Addr, proto}] = wantFrontend{n, use(r.eligible(s, nip, p, s.ExternalLocal))}
			}
		}
		// A terminating backend keeps its established flows: it stays in the backends map.
		for _, b := range s.Backends {
			if !b.Terminating || !b.IP.IsValid() {
				continue
			}
			for _, target := range b.Ports {
				a := netip.AddrPortFrom(b.IP, uint16(target))
				if _, ok := bes[a]; !ok {
					bes[a] = maps.Backend{Addr: a, Local: r.inPodCIDR(b.IP), Terminating: true}
				}
			}
		}
	}
	return fronts, bes
}

// reconcile makes the maps hold the store's Services. Order keeps running flows right:
// backends first, then frontends (new slots before larger counts), then stale frontends,
// and only then stale backends, whose flows then choose again.
func (r *serviceReconciler) reconcile(ctx context.Context, _ *pass) error {
	svcs, err := r.cluster.Services(ctx)
	if err != nil {
		return fmt.Errorf("read services: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fronts, bes := r.desired(svcs)
	have, err := r.maps.Backends()
	if err != nil {
		return err
	}
	var errs []error
	for addr, b := range bes {
		id, ok := r.ids[addr]
		if !ok {
			id = r.next
			r.next++
			r.ids[addr] = id
		}
		b.ID = id
		if h, ok := have[id]; !ok || h != b {
			errs = append(errs, r.maps.UpsertBackend(b))
		}
	}
	inMap, err := r.maps.List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	current := map[frontendKey]maps.Frontend{}
	for _, f := range inMap {
		current[frontendKey{f.Addr, f.Protocol}] = f
	}
	for k, w := range fronts {
		w.Backends = make([]uint32, len(w.addrs))
		for i, a := range w.addrs {
			w.Backends[i] = r.ids[a]
		}
		if cur, ok := current[k]; ok && sameFrontend(cur, w.Frontend) {
			continue
		}
		if err := r.maps.Upsert(w.Frontend, r.slots[k]); err != nil {
			errs = append(errs, err)
			continue
		}
		r.slots[k] = len(w.Backends)
	}
	for k := range current {
		if _, ok := fronts[k]; ok {
			continue
		}
		r.log.Info("remove service frontend", "frontend", k.addr, "protocol", k.proto)
		if err := r.maps.Delete(k.addr, k.proto, max(r.slots[k], len(current[k].Backends))); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.slots, k)
	}
	for id, b := range have {
		if _, ok := bes[b.Addr]; ok && r.ids[b.Addr] == id {
			continue
		}
		errs = append(errs, r.maps.DeleteBackend(id))
		if r.ids[b.Addr] == id {
			delete(r.ids, b.Addr)
		}
	}
	return errors.Join(errs...)
}

func sameFrontend(a, b maps.Frontend) bool {
	return a.ServiceID == b.ServiceID && a.Affinity == b.Affinity && a.NodePort == b.NodePort &&
		a.ExternalLocal == b.ExternalLocal && slices.Equal(a.Backends, b.Backends)
}
