package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
)

// The bgp suite's setups, both in a native lab of two racks joined only by BIRD (issue 12).
const (
	NodeToNodeViaRouter = "node-to-node-via-router"
	BGPCrossRack        = "ebpfnet-bgp-cross-rack"
)

// BGPSetups put a pod reaching a pod in another rack beside the two nodes talking through the
// same router: plain kernel routing of node addresses, the limit.
func BGPSetups() []Builder {
	return []Builder{
		{NodeToNodeViaRouter, func(p string) (*Topology, error) { return buildBGPLab(p, false) }},
		{BGPCrossRack, func(p string) (*Topology, error) { return buildBGPLab(p, true) }},
	}
}

// bgpPollEvery is how often the convergence figures look at the agents and BIRD.
const bgpPollEvery = 20 * time.Millisecond

// benchBGP is every bench lab's bgp block: eBGP between the nodes and the router.
func benchBGP() *lab.BGPSpec { return &lab.BGPSpec{ASN: 64512, RouterASN: 64500} }

// bgpLabName keeps the bgp suite's labs apart from the tests' ("bb", never "eb").
func bgpLabName(prefix string) string { return "bb" + strings.TrimPrefix(prefix, "eb") }

// buildBGPLab is a two-rack lab, node a1 in rack a and b1 in rack b: between pod c on a1 and
// pod s on b1 when pods, else between the two nodes' own addresses.
func buildBGPLab(prefix string, pods bool) (t *Topology, err error) {
	t = &Topology{Name: NodeToNodeViaRouter}
	if pods {
		t.Name = BGPCrossRack
	}
	defer closeOnError(t, &err)
	spec := &lab.Spec{Mode: "native", BGP: benchBGP(),
		Nodes: []lab.NodeSpec{{Name: "a1", Rack: "a"}, {Name: "b1", Rack: "b"}}}
	if pods {
		spec.Namespaces = []lab.Namespace{{Name: "b"}}
		spec.Pods = []lab.PodSpec{{Namespace: "b", Name: "c", Node: "a1"}, {Namespace: "b", Name: "s", Node: "b1"}}
	}
	st, err := upBenchLab(t, bgpLabName(prefix), spec)
	if err != nil {
		return nil, err
	}
	if pods {
		c, _ := st.Pod("b/c")
		s, _ := st.Pod("b/s")
		t.Client, t.Server, t.ServerIP = nsName(c.Netns), nsName(s.Netns), s.IP
		return t, nil
	}
	a, _ := st.Node("a1")
	b, _ := st.Node("b1")
	t.Client, t.Server, t.ServerIP = nsName(a.Netns), nsName(b.Netns), b.IP
	return t, nil
}

// Spread is the median and the maximum of a figure over rounds, in milliseconds.
type Spread struct {
	P50ms float64 `json:"p50ms"`
	MaxMs float64 `json:"maxMs"`
}

func spread(ms []float64) Spread {
	if len(ms) == 0 {
		return Spread{}
	}
	return Spread{P50ms: round2(median(ms)), MaxMs: round2(slices.Max(ms))}
}

// BGPRound is one join and one leave, in milliseconds (see BGPConvergence for what each is).
type BGPRound struct {
	AgentReadyMs      float64 `json:"agentReadyMs"`
	BirdMs            float64 `json:"birdMs"`
	RoutesConvergedMs float64 `json:"routesConvergedMs"`
	AddNodeMs         float64 `json:"addNodeMs"`
	AddPodMs          float64 `json:"addPodMs"`
	FirstTCPMs        float64 `json:"firstTCPMs"`
	LeaveMs           float64 `json:"leaveMs"`
	RemoveNodeMs      float64 `json:"removeNodeMs"`
}

// BGPConvergence is how fast a two-rack lab's routes follow a node joining rack b and leaving
// it again, seen from rack a (node a1 with pod b/c; b1 stays in rack b throughout). Polls every
// 20 ms: a time is when the poll that first saw the state returned.
type BGPConvergence struct {
	Joins  int        `json:"joins"`
	Rounds []BGPRound `json:"rounds"`
	// AgentReady: from AddNode's start to the new agent answering ready on its socket
	// (namespace, underlay, BIRD reconfigured with the new session, agent started).
	AgentReady Spread `json:"agentReady"`
	// Bird: from the new agent ready to BIRD's `show route` holding its pod CIDR.
	Bird Spread `json:"bird"`
	// RoutesConverged: from the new agent ready until both BIRD and a1's routes map hold it.
	RoutesConverged Spread `json:"routesConverged"`
	// AddNode: the whole call, which returns once every node's routes map holds every pod CIDR.
	AddNode Spread `json:"addNode"`
	// AddPod: a pod on the new node, added as soon as AddNode returns, until its server runs.
	AddPod Spread `json:"addPod"`
	// FirstTCP: from AddNode's start to pod b/c's first TCP connection to that pod.
	FirstTCP Spread `json:"firstTCP"`
	// Leave: from RemoveNode's start until neither BIRD nor any remaining node's routes map
	// holds the node's pod CIDR.
	Leave Spread `json:"leave"`
	// RemoveNode: the whole call.
	RemoveNode Spread `json:"removeNode"`
}

// MeasureBGPConvergence joins a node to rack b of a two-rack lab and removes it again, joins
// times, timing how the routes follow.
func MeasureBGPConvergence(ctx context.Context, joins int) (res BGPConvergence, err error) {
	t := &Topology{Name: "bgp-convergence"}
	defer func() {
		if cerr := t.Close(); err == nil {
			err = cerr
		}
	}()
	spec := &lab.Spec{Mode: "native", BGP: benchBGP(),
		Nodes:      []lab.NodeSpec{{Name: "a1", Rack: "a"}, {Name: "b1", Rack: "b"}},
		Namespaces: []lab.Namespace{{Name: "b"}},
		Pods:       []lab.PodSpec{{Namespace: "b", Name: "c", Node: "a1"}}}
	st, err := upBenchLab(t, fmt.Sprintf("bbc%d", time.Now().UnixNano()%1000), spec)
	if err != nil {
		return res, err
	}
	opts, err := benchLabOptions()
	if err != nil {
		return res, err
	}
	res.Joins = joins
	for i := 1; i <= joins; i++ {
		name := fmt.Sprintf("j%d", i)
		var r BGPRound
		cidr, err := measureJoin(ctx, st, name, opts, &r)
		if err != nil {
			return res, fmt.Errorf("join %d: %w", i, err)
		}
		if err := measureLeave(ctx, st, name, cidr, &r); err != nil {
			return res, fmt.Errorf("leave %d: %w", i, err)
		}
		slog.Info("bgp convergence", "round", i, "agentReadyMs", r.AgentReadyMs, "routesMs", r.RoutesConvergedMs,
			"firstTCPMs", r.FirstTCPMs, "leaveMs", r.LeaveMs)
		res.Rounds = append(res.Rounds, r)
	}
	pick := func(f func(BGPRound) float64) Spread {
		var ms []float64
		for _, r := range res.Rounds {
			ms = append(ms, f(r))
		}
		return spread(ms)
	}
	res.AgentReady = pick(func(r BGPRound) float64 { return r.AgentReadyMs })
	res.Bird = pick(func(r BGPRound) float64 { return r.BirdMs })
	res.RoutesConverged = pick(func(r BGPRound) float64 { return r.RoutesConvergedMs })
	res.AddNode = pick(func(r BGPRound) float64 { return r.AddNodeMs })
	res.AddPod = pick(func(r BGPRound) float64 { return r.AddPodMs })
	res.FirstTCP = pick(func(r BGPRound) float64 { return r.FirstTCPMs })
	res.Leave = pick(func(r BGPRound) float64 { return r.LeaveMs })
	res.RemoveNode = pick(func(r BGPRound) float64 { return r.RemoveNodeMs })
	return res, nil
}

// joinSeen is when a join's watcher first saw each step.
type joinSeen struct {
	ready, bird, routes time.Time
	cidr                netip.Prefix
	err                 error
}

// measureJoin adds node name to rack b while a watcher follows it, then a pod on it, and probes
// that pod from b/c until it answers; it returns the node's pod CIDR.
func measureJoin(ctx context.Context, st *lab.State, name string, opts lab.Options, r *BGPRound) (netip.Prefix, error) {
	a1, err := st.Node("a1")
	if err != nil {
		return netip.Prefix{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	seen := make(chan joinSeen, 1)
	router := routerOf(st)
	start := time.Now()
	go func() { seen <- watchJoin(ctx, st.Name, name, a1.Socket, router) }()
	n, err := st.AddNode(ctx, lab.NodeSpec{Name: name, Rack: "b"}, opts)
	added := time.Now()
	if err != nil {
		cancel()
		<-seen
		return netip.Prefix{}, err
	}
	cidr := n.PodCIDR
	p, err := st.AddPod(ctx, lab.PodSpec{Namespace: "b", Name: name, Node: name, Ports: []lab.Port{{Port: 80}}}, opts)
	podAdded := time.Now()
	if err != nil {
		cancel()
		<-seen
		return cidr, err
	}
	for st.Probe("b/c", p.Key(), 80, "TCP") != nil {
		if err := sleepCtx(ctx, bgpPollEvery); err != nil {
			<-seen
			return cidr, fmt.Errorf("b/c never reached %s: %w", p.Key(), err)
		}
	}
	connected := time.Now()
	s := <-seen
	if s.err != nil {
		return cidr, s.err
	}
	if s.cidr != cidr {
		return cidr, fmt.Errorf("the watcher followed pod CIDR %s, AddNode gave %s", s.cidr, cidr)
	}
	r.AgentReadyMs = ms(s.ready.Sub(start))
	r.BirdMs = ms(s.bird.Sub(s.ready))
	r.RoutesConvergedMs = ms(later(s.bird, s.routes).Sub(s.ready))
	r.AddNodeMs = ms(added.Sub(start))
	r.AddPodMs = ms(podAdded.Sub(added))
	r.FirstTCPMs = ms(connected.Sub(start))
	return cidr, nil
}

// watchJoin follows node name joining the lab from outside AddNode: the state file names its
// socket, its agent's status says when it is ready and which pod CIDR it has, then BIRD and the
// rack-a node's routes map say when they hold that CIDR.
func watchJoin(ctx context.Context, labName, name, rackA string, router *lab.State) (s joinSeen) {
	var c *agentapi.Client
	tick := time.NewTicker(bgpPollEvery)
	defer tick.Stop()
	for {
		switch {
		case c == nil:
			if st, err := lab.Load(labName); err == nil {
				if n, err := st.Node(name); err == nil {
					c = agentapi.NewClient(n.Socket)
				}
			}
		case s.ready.IsZero():
			if status, err := c.Status(ctx); err == nil && status.Ready {
				s.ready = time.Now()
				if s.cidr, s.err = netip.ParsePrefix(status.PodCIDR); s.err != nil {
					return s
				}
			}
		default:
			if held, err := birdHolds(ctx, router, s.cidr); err == nil && held && s.bird.IsZero() {
				s.bird = time.Now()
			}
			if held, err := routesHold(ctx, rackA, s.cidr); err == nil && held && s.routes.IsZero() {
				s.routes = time.Now()
			}
			if !s.bird.IsZero() && !s.routes.IsZero() {
				return s
			}
		}
		select {
		case <-ctx.Done():
			s.err = fmt.Errorf("watching %s join: %w (agent ready at %v, BIRD at %v, a1's routes at %v)",
				name, ctx.Err(), !s.ready.IsZero(), !s.bird.IsZero(), !s.routes.IsZero())
			return s
		case <-tick.C:
		}
	}
}

// measureLeave removes node name while watching BIRD and every remaining node's routes map
// until none holds its pod CIDR.
func measureLeave(ctx context.Context, st *lab.State, name string, cidr netip.Prefix, r *BGPRound) error {
	// The watcher gets its own copies: RemoveNode changes st's nodes as it goes.
	var sockets []string
	for _, n := range st.Nodes {
		if n.Name != name {
			sockets = append(sockets, n.Socket)
		}
	}
	router := routerOf(st)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	gone := make(chan error, 1)
	var goneAt time.Time
	start := time.Now()
	go func() {
		tick := time.NewTicker(bgpPollEvery)
		defer tick.Stop()
		for {
			// An unanswered query counts as still held: gone is only what every one says.
			held, err := birdHolds(ctx, router, cidr)
			for _, sock := range sockets {
				h, e := routesHold(ctx, sock, cidr)
				held, err = held || h, errors.Join(err, e)
			}
			if !held && err == nil {
				goneAt = time.Now()
				gone <- nil
				return
			}
			select {
			case <-ctx.Done():
				gone <- fmt.Errorf("%s still routed (last answers' errors: %w): %w", cidr, err, ctx.Err())
				return
			case <-tick.C:
			}
		}
	}()
	if err := st.RemoveNode(ctx, name); err != nil {
		cancel()
		<-gone //nolint:errcheck // the watcher's error is the cancellation; RemoveNode's is the one to report
		return err
	}
	removed := time.Now()
	if err := <-gone; err != nil {
		return err
	}
	r.LeaveMs = ms(goneAt.Sub(start))
	r.RemoveNodeMs = ms(removed.Sub(start))
	return nil
}

// routerOf is a copy of st that only reaches BIRD, for a watcher running beside st's changes.
func routerOf(st *lab.State) *lab.State {
	r := *st.Router
	return &lab.State{Name: st.Name, Router: &r}
}

// birdHolds says whether BIRD's `show route` has prefix p.
func birdHolds(ctx context.Context, router *lab.State, p netip.Prefix) (bool, error) {
	out, err := router.Birdc(ctx, "show", "route")
	return err == nil && slices.Contains(birdPrefixes(string(out)), p), err
}

// birdPrefixes are the networks of `birdc show route`: the first field of its route lines.
func birdPrefixes(out string) []netip.Prefix {
	var ps []netip.Prefix
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			if p, err := netip.ParsePrefix(f[0]); err == nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// routesHold says whether the routes map of the agent at socket has prefix p.
func routesHold(ctx context.Context, socket string, p netip.Prefix) (bool, error) {
	var routes []maps.Route
	if err := agentapi.NewClient(socket).Get(ctx, "/v1/routes", &routes); err != nil {
		return false, err
	}
	return slices.ContainsFunc(routes, func(r maps.Route) bool { return r.Prefix == p }), nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// markdown is the report's section on BGP convergence.
func (c *BGPConvergence) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "## BGP route convergence (two racks joined by BIRD; a node joins rack b and leaves, %d times)\n\n", c.Joins)
	b.WriteString("| step | from | until | p50 | max |\n|---|---|---|---:|---:|\n")
	rows := []struct {
		step, from, until string
		s                 Spread
	}{
		{"agent ready", "AddNode starts", "the new agent answers ready", c.AgentReady},
		{"BIRD learns", "new agent ready", "BIRD's `show route` holds its pod CIDR", c.Bird},
		{"routes converged", "new agent ready", "BIRD and rack a's node's routes map both hold it", c.RoutesConverged},
		{"AddNode", "AddNode starts", "it returns (every node routes every pod CIDR)", c.AddNode},
		{"AddPod", "AddNode returns", "a pod on the new node serves", c.AddPod},
		{"join, end to end", "AddNode starts", "the rack-a pod's first TCP connection to that pod", c.FirstTCP},
		{"leave", "RemoveNode starts", "no remaining node's routes map nor BIRD holds the CIDR", c.Leave},
		{"RemoveNode", "RemoveNode starts", "it returns", c.RemoveNode},
	}
	for _, r := range rows {
		fmt.Fprintf(b, "| %s | %s | %s | %.0f ms | %.0f ms |\n", r.step, r.from, r.until, r.s.P50ms, r.s.MaxMs)
	}
	b.WriteString("\nAgents, BIRD and probes are polled every 20 ms: each time is when the poll that first saw the state returned.\n\n")
}
