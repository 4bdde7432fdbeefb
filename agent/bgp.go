package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ebpfnet/ebpfnet/bgp"
	"github.com/ebpfnet/ebpfnet/store"
)

// bgpReconciler owns the embedded BGP speaker (routing: bgp): it keeps the neighbours (the
// explicit peers and, with meshNodes, every other node), advertises the node's pod CIDRs with
// the node's address as next hop, and is the route source that judges what neighbours
// announce.
type bgpReconciler struct {
	cfg *bgpSettings
	log *slog.Logger
	// clusters are the cluster CIDRs: IPv4's, and IPv6's in a dual-stack cluster.
	clusters []netip.Prefix
	node     store.Node
	speaker  *bgp.Speaker
	// restartedAt is set when the agent came back over a running datapath: until every
	// neighbour sent its End-of-RIB (or the restart time passed), no learned route is removed.
	restartedAt time.Time
	synced      bool
	refused     *prometheus.CounterVec
	installed   prometheus.Gauge

	mu     sync.Mutex
	judged []judgedPath
	// seenRefused remembers refused paths already counted, so each is counted once.
	seenRefused map[refusedKey]bool
}

type refusedKey struct {
	prefix netip.Prefix
	peer   netip.Addr
	reason string
}

// newBGPReconciler starts the speaker; kick is called whenever routes or sessions change.
func newBGPReconciler(ctx context.Context, cfg *settled, node store.Node, restarting bool, m *agentMetrics, kick func(), log *slog.Logger) (*bgpReconciler, error) {
	clusters := []netip.Prefix{cfg.cluster}
	if cfg.clusterV6.IsValid() {
		clusters = append(clusters, cfg.clusterV6)
	}
	b := &bgpReconciler{log: log, cfg: cfg.bgp, clusters: clusters, node: node, seenRefused: map[refusedKey]bool{},
		refused: m.bgpRefused, installed: m.bgpInstalled}
	routerID := cfg.bgp.routerID
	if !routerID.IsValid() {
		routerID = node.IP
	}
	if restarting {
		b.restartedAt = time.Now()
		time.AfterFunc(cfg.bgp.restartTime, kick) // the restart time ends: whatever was not re-learned goes
	} else {
		b.synced = true
	}
	var err error
	b.speaker, err = bgp.Start(ctx, bgp.Config{ASN: cfg.bgp.ASN, RouterID: routerID, ListenPort: cfg.bgp.ListenPort,
		HoldTime: cfg.bgp.holdTime, RestartTime: cfg.bgp.restartTime, Restarting: restarting, IPv6: cfg.hasIPv6()}, kick)
	if err != nil {
		return nil, err
	}
	b.log.Info("bgp speaker started", "asn", cfg.bgp.ASN, "routerID", routerID, "port", cfg.bgp.ListenPort,
		"peers", len(cfg.bgp.peers), "meshNodes", cfg.bgp.MeshNodes, "restarting", restarting)
	return b, nil
}

func (b *bgpReconciler) close() { b.speaker.Stop() }

// neighbors are the explicit peers and, with meshNodes, every other node.
func (b *bgpReconciler) neighbors(nodes []store.Node) []bgp.Neighbor {
	var out []bgp.Neighbor
	seen := map[netip.Addr]bool{}
	for _, p := range b.cfg.peers {
		out = append(out, bgp.Neighbor{Address: p.addr, ASN: p.asn, Password: p.password, Port: p.port})
		seen[p.addr] = true
	}
	if b.cfg.MeshNodes {
		for _, n := range nodes {
			if n.Name != b.node.Name && n.IP.IsValid() && !seen[n.IP] {
				out = append(out, bgp.Neighbor{Address: n.IP, ASN: b.cfg.ASN, Password: b.cfg.MeshPassword, Node: n.Name})
			}
		}
	}
	return out
}

// remoteRoutes is the route source: neighbours and advertisement made current, then the
// learned paths judged; the installed ones are the node's remote routes.
func (b *bgpReconciler) remoteRoutes(ctx context.Context, nodes []store.Node) ([]remoteRoute, bool, error) {
	if err := b.speaker.SetNeighbors(ctx, b.neighbors(nodes)); err != nil {
		return nil, false, err
	}
	// A node's IPv6 pod CIDR (dual stack, or the only one in an IPv6-only cluster) goes with
	// its IPv6 address as next hop, for routers to install; without one, with its IPv4
	// address (IPv4-mapped). Either way the datapath sends IPv6 pod traffic to the MAC of the
	// way to the owner's IPv4 address.
	own := map[netip.Prefix]netip.Addr{}
	for _, p := range []netip.Prefix{b.node.PodCIDR, b.node.PodCIDRv6} {
		switch {
		case !p.IsValid():
		case p.Addr().Is6() && b.node.IPv6.IsValid():
			own[p] = b.node.IPv6
		default:
			own[p] = b.node.IP
		}
	}
	if err := b.speaker.Advertise(own); err != nil {
		return nil, false, err
	}
	paths, err := b.speaker.Paths()
	if err != nil {
		return nil, false, err
	}
	judged := judgePaths(paths, nodes, b.node, b.clusters, b.cfg.ASN)
	var out []remoteRoute
	owners := map[string]store.Node{}
	for _, n := range nodes {
		owners[n.Name] = n
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, j := range judged {
		switch j.Verdict {
		case pathInstalled:
			out = append(out, remoteRoute{Prefix: j.Prefix, Node: owners[j.Node], Via: j.NextHop})
			if gw, err := gateway(j.NextHop); err == nil {
				judged[i].Kernel = fmt.Sprintf("%s via %s", j.Prefix, gw)
			}
		case pathRefused:
			k := refusedKey{j.Prefix, j.Peer, j.Reason}
			if !b.seenRefused[k] {
				b.seenRefused[k] = true
				b.refused.WithLabelValues(j.Reason).Inc()
				b.log.Warn("bgp route refused", "prefix", j.Prefix, "peer", j.Peer, "nextHop", j.NextHop, "asPath", j.ASPath, "reason", j.Reason)
			}
		}
	}
	b.judged = judged
	b.installed.Set(float64(len(out)))
	complete, err := b.complete(ctx)
	return out, complete, err
}

// complete says whether the learned routes are the whole truth: always, unless the agent
// restarted and some neighbour has not yet re-sent all its routes within the restart time.
func (b *bgpReconciler) complete(ctx context.Context) (bool, error) {
	if b.synced {
		return true, nil
	}
	if time.Since(b.restartedAt) >= b.cfg.restartTime {
		b.log.Info("bgp restart time over; routes not re-learned go")
		b.synced = true
		return true, nil
	}
	peers, err := b.speaker.Peers(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range peers {
		if p.State != bgp.Established || !p.EndOfRIB {
			return false, nil
		}
	}
	b.log.Info("bgp re-learned every neighbour's routes after the restart", "took", time.Since(b.restartedAt))
	b.synced = true
	return true, nil
}

// routes is what `ebpfnet bgp routes` shows.
func (b *bgpReconciler) routes() []judgedPath {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]judgedPath{}, b.judged...)
}
