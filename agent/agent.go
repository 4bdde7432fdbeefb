package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/store/kubestore"
)

// Agent is one node's agent.
type Agent struct {
	cfg     *settled
	kv      store.KV
	cluster *store.Cluster
	dp      *loader.Datapath
	ipam    *ipam.IPAM
	node    store.Node
	ready   atomic.Bool
	cniMu   sync.Mutex // CNI operations one at a time: each is short, and ordering is simple
	// roomBase is the compiled state a CNI ADD's capacity check counts from (podRoom).
	roomBase atomic.Pointer[demandBase]
	kick     chan struct{}
	// programmed is the newest store generation this node has programmed.
	programmed atomic.Int64
	// lastStatus is what this node last reported to the store.
	lastStatus atomic.Pointer[store.NodeStatus]
	// lastPolicy is the last compiled policy, for explain and the CLI.
	lastPolicy atomic.Pointer[policy.Output]
	lastInput  atomic.Pointer[policy.Input]
	recMu      sync.Mutex  // one reconcile at a time
	retrying   atomic.Bool // a retry of a failed reconcile is scheduled
	failures   int         // reconciles failed in a row (reconcileLoop only)
	metrics    *agentMetrics
	mon        monitor
	nodeCfg    maps.NodeConfig // what setupNode wrote to the config map
	// identities caches label key -> identity; emptied when the store deletes an identity.
	identities sync.Map
	idGC       identityGC
	// log carries the node's name; each reconciler's adds its stage.
	log *slog.Logger
	// The reconcilers, each owning its maps; stages is them in the order a pass runs them.
	routesRec  *routeReconciler
	bgp        *bgpReconciler // nil unless routing is bgp: the routes' source
	services   *serviceReconciler
	prefilter  *prefilterReconciler
	masquerade *masqueradeReconciler
	stages     []stage
	health     *storeHealth
	hooks      nodeHooks    // the node's own attachments, for liveness
	loopBeat   atomic.Int64 // unix ns the reconcile loop last came round, for liveness
}

// Run starts the agent from cfg and serves until ctx ends. Pinned maps and links stay when
// it returns, so the datapath keeps forwarding while no agent runs.
func Run(ctx context.Context, cfg Config) error {
	s, err := cfg.validate()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	// Listen first: a socket that cannot be made is an error at start, not a log line later.
	ln, err := listenUnix(s.Socket)
	if err != nil {
		return err
	}
	defer ln.Close()
	a := &Agent{cfg: s, kick: make(chan struct{}, 1), mon: monitor{subs: map[chan agentapi.MonitorEvent]string{}},
		idGC: identityGC{grace: s.identityGCGrace, unused: map[uint32]time.Time{}},
		log:  slog.Default().With("node", s.NodeName)}
	a.mon.verdicts = func(on bool) {
		cfg := a.nodeCfg
		cfg.MonitorVerdicts = on
		if err := a.dp.SetNodeConfig(cfg); err != nil {
			a.log.Warn("switch verdict events", "on", on, "err", err)
		}
	}
	a.metrics = newAgentMetrics(a)
	a.health = newStoreHealth(a.metrics.reg)
	// The process's own figures (goroutines, heap, RSS, descriptors): what a soak watches.
	a.metrics.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := a.start(ctx); err != nil {
		return err
	}
	defer a.close()
	a.beat() // the loop starts below
	if s.MetricsAddress != "" {
		mln, err := a.serveMetrics(s.MetricsAddress)
		if err != nil {
			return err
		}
		defer mln.Close()
	}
	srv := a.apiServer()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); a.health.watch(ctx, a.kv, a.trigger) }()
	go func() { defer wg.Done(); a.readEvents(ctx) }()
	go func() { defer wg.Done(); a.watch(ctx) }()
	go func() { defer wg.Done(); a.reconcileLoop(ctx) }()
	a.ready.Store(true)
	a.log.Info("agent ready", "ip", a.node.IP, "podCIDR", a.node.PodCIDR,
		"mode", s.mode, "store", s.Store.Type, "socket", s.Socket)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("api server: %w", err)
		}
	}
	a.ready.Store(false)
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		a.log.Warn("agent api: connections still open at shutdown", "err", err)
	}
	wg.Wait()
	a.log.Info("agent stopped; the datapath keeps running from its pins", "pinDir", s.PinDir)
	return nil
}

// start opens the store, settles the node's identity, adopts the datapath and reconciles once.
func (a *Agent) start(ctx context.Context) (err error) {
	s := a.cfg
	switch s.Store.Type {
	case "local":
		a.kv, err = store.OpenLocal(s.Store.Path)
	case "etcd":
		a.kv, err = store.OpenEtcd(ctx, s.Store.Endpoints)
	case "kubernetes":
		a.kv, err = kubestore.Open(ctx, s.Store.Kubeconfig)
	}
	if err != nil {
		return err
	}
	a.cluster = &store.Cluster{KV: a.kv}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	underlay, err := netlink.LinkByName(s.UnderlayInterface)
	if err != nil {
		return fmt.Errorf("underlayInterface: %q: %w", s.UnderlayInterface, err)
	}
	nodeIP := s.nodeIP
	if !nodeIP.IsValid() {
		if nodeIP, err = firstIPv4(underlay); err != nil {
			return err
		}
	}
	podCIDR := s.podCIDR
	if !podCIDR.IsValid() {
		// The store may already know this node's pod CIDR (a Node's spec.podCIDR, or what an
		// earlier run of this agent recorded): keep it.
		if n, ok, err := a.cluster.Node(ctx, s.NodeName); err != nil {
			return fmt.Errorf("read node %s: %w", s.NodeName, err)
		} else if ok && n.PodCIDR.IsValid() {
			podCIDR = n.PodCIDR
		}
	}
	if podCIDR.IsValid() {
		err = a.cluster.ClaimPodCIDR(ctx, s.NodeName, podCIDR)
	} else {
		podCIDR, err = a.cluster.AllocatePodCIDR(ctx, s.NodeName, s.cluster, s.PodCIDRBits)
	}
	if err != nil {
		return fmt.Errorf("pod CIDR: %w", err)
	}
	podCIDRv6, err := a.podCIDRv6(ctx, s)
	if err != nil {
		return fmt.Errorf("pod CIDR (IPv6): %w", err)
	}
	nodeIPv6 := s.nodeIPv6
	if (s.hasIPv6() || s.underlayV6) && !nodeIPv6.IsValid() {
		if nodeIPv6, err = firstIPv6(underlay); err != nil {
			return err
		}
	}
	if s.underlayV6 && !nodeIPv6.IsValid() {
		return fmt.Errorf("underlayFamily: IPv6, but %s has no global IPv6 address; set nodeIPv6", s.UnderlayInterface)
	}
	a.node = store.Node{Name: s.NodeName, IP: nodeIP, IPv6: nodeIPv6, PodCIDR: podCIDR, PodCIDRv6: podCIDRv6}
	a.ipam = ipam.New(a.kv, s.NodeName, podCIDR)
	// Adopt what is pinned: maps are reused, every pinned link switches to the new programs.
	if a.dp, err = loader.Load(loader.Config{PinDir: s.PinDir, Sizes: s.MapSizes}); err != nil {
		return err
	}
	adopted, err := a.dp.Upgrade()
	if err != nil {
		return err
	} else if adopted > 0 {
		a.log.Info("adopted pinned datapath", "links", adopted)
	}
	if err := a.setupNode(underlay); err != nil {
		return err
	}
	a.routesRec = &routeReconciler{cfg: s, node: a.node, routes: a.dp.Routes(), source: storeRoutes{self: a.node.Name},
		log: a.log.With("stage", "routes")}
	if s.bgp != nil {
		// Over a running datapath this is a restart: neighbours are asked to keep our routes.
		if a.bgp, err = newBGPReconciler(ctx, s, a.node, adopted > 0, a.metrics, a.trigger, a.log.With("stage", "bgp")); err != nil {
			return err
		}
		a.routesRec.source = a.bgp
	}
	if a.services, err = newServiceReconciler(a.dp.Services(), a.node, a.cluster, a.log.With("stage", "services")); err != nil {
		return err
	}
	a.prefilter = newPrefilterReconciler(a.cluster, a.dp, s, a.log.With("stage", "prefilter"))
	a.masquerade = &masqueradeReconciler{set: a.dp.NoMasquerade(), keep: s.noMasquerade}
	a.stages = a.newStages()
	if err := a.cluster.PutNode(ctx, a.node, s.leaseTTL); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	return a.reconcile(ctx)
}

func (a *Agent) close() {
	if a.bgp != nil {
		a.bgp.close()
	}
	if a.dp != nil {
		a.dp.Close()
	}
	if a.kv != nil {
		a.kv.Close()
	}
}

// podCIDRv6 is this node's IPv6 pod CIDR: none in an IPv4-only cluster, else the configured
// one, the one the store already holds for the node, or a /64 allocated from the cluster's.
func (a *Agent) podCIDRv6(ctx context.Context, s *settled) (netip.Prefix, error) {
	if !s.clusterV6.IsValid() {
		return netip.Prefix{}, nil
	}
	p := s.podCIDRv6
	if !p.IsValid() {
		if n, ok, err := a.cluster.Node(ctx, s.NodeName); err != nil {
			return p, fmt.Errorf("read node %s: %w", s.NodeName, err)
		} else if ok && n.PodCIDRv6.IsValid() {
			p = n.PodCIDRv6
		}
	}
	if p.IsValid() {
		return p, a.cluster.ClaimPodCIDR(ctx, s.NodeName, p)
	}
	return a.cluster.AllocatePodCIDR(ctx, s.NodeName, s.clusterV6, PodCIDRv6Bits)
}

func firstIPv4(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("nodeIP: %s has no IPv4 address; set nodeIP", l.Attrs().Name)
}

// firstIPv6 is the first global IPv6 address of l, or none (not an error: the node then has
// no IPv6 NodePorts and no IPv6 masquerading).
func firstIPv6(l netlink.Link) (netip.Addr, error) {
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && usableIPv6(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}

// usableIPv6 says whether ip can be a node's IPv6 address: a global unicast one (unique
// local included), not IPv4-mapped.
func usableIPv6(ip netip.Addr) bool {
	return ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast()
}

// watch turns store changes into reconcile kicks: nodes, endpoints, policies, namespaces,
// pods and the generation; not what agents write for themselves (leases, status). The watch's
// first, empty-keyed event also kicks: whatever changed before it went live is picked up.
func (a *Agent) watch(ctx context.Context) {
	events := a.kv.Watch(ctx, store.Prefix)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Deleted && isIdentityKey(ev.Key) {
				// A collected identity may come back under another number: ask again.
				a.identities.Clear()
				a.trigger()
			}
			if !ownBookkeeping(ev.Key) {
				a.trigger()
			}
		}
	}
}

func ownBookkeeping(key string) bool {
	for _, p := range []string{"ipam/", "status/", "identities/", "identity-ids/", "podcidrs/", "serviceips/", "nodeports/"} { // not prefilter/
		if strings.HasPrefix(key, store.Prefix+p) {
			return true
		}
	}
	return false
}

// Retries of a failed reconcile back off from reconcileBackoffMin to reconcileBackoffMax.
const (
	reconcileBackoffMin = time.Second
	reconcileBackoffMax = 30 * time.Second
)

// generationPoll is how often the agent reads the store's generation besides watching it.
const generationPoll = 3 * time.Second

func isIdentityKey(key string) bool {
	return strings.HasPrefix(key, store.Prefix+"identities/") || strings.HasPrefix(key, store.Prefix+"identity-ids/")
}

func (a *Agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop reconciles on every kick and every resync period.
func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	// Someone waiting for every node (policy wait) must not depend on this node's watch alone:
	// a watch can lag (a client backing off after its server restarted), so the generation is
	// also read directly, cheaply, every few seconds.
	g := time.NewTicker(generationPoll)
	defer g.Stop()
	for {
		a.beat()
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
		case <-g.C:
			if gen, err := a.cluster.Generation(ctx); err != nil || gen <= a.programmed.Load() {
				continue
			}
		}
		if err := a.reconcile(ctx); err != nil && ctx.Err() == nil {
			a.metrics.reconcileError.Inc()
			// Retries back off, doubling up to reconcileBackoffMax, while failures go on.
			delay := min(reconcileBackoffMin<<min(a.failures, 8), reconcileBackoffMax)
			a.failures++
			if a.failures == 1 || a.health.up() {
				a.log.Warn("reconcile failed; retrying", "in", delay, "err", err)
			}
			if a.retrying.CompareAndSwap(false, true) { // one retry pending at a time
				time.AfterFunc(delay, func() { a.retrying.Store(false); a.trigger() })
			}
		} else if err == nil {
			a.failures = 0
		}
		if next, err := a.collectIdentities(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("identity gc", "err", err)
		} else if next > 0 {
			time.AfterFunc(next, a.trigger)
		}
		a.collectNAT()
		removed, left, err := a.dp.Conntrack().GC()
		a.metrics.ctGCRuns.Inc()
		a.metrics.ctGCRemoved.Add(float64(removed))
		if err != nil {
			a.log.Warn("conntrack gc", "err", err)
		} else if removed > 0 {
			a.log.Debug("conntrack gc", "removed", removed, "left", left)
		}
	}
}
