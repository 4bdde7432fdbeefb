package agent

import (
	"context"
	"errors"
	"fmt"
	stdmaps "maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

// Full maps. Before a policy, a label change or a pod reaches the store, the agent compiles the
// cluster as it would be and refuses the change as a whole when the endpoints, ipcache or policy
// map could not hold it. A reconcile that finds the store's state too large all the same (a
// change another agent let in, a NetworkPolicy written to the Kubernetes API directly) keeps
// what is programmed, and reports it.

// MapFullError says that a change needs more entries of a map than the map holds.
type MapFullError struct {
	Map string // endpoints, ipcache or policy
	// Node is the node whose map it is, when not this agent's.
	Node     string
	Need     int
	Capacity int
}

func (e *MapFullError) Error() string {
	where := ""
	if e.Node != "" {
		where = " on node " + e.Node
	}
	// The maps' names are also their fields in mapSizes.
	return fmt.Sprintf("%s map full%s: the change needs %d entries, the map holds %d (mapSizes.%s)",
		e.Map, where, e.Need, e.Capacity, e.Map)
}

// capacity is how many entries the maps that changes are checked against hold.
type capacity struct{ endpoints, ipcache, policy int }

// capacity reads the sizes of the loaded maps: what the kernel holds, not what a config says.
func (a *Agent) capacity() capacity {
	m := a.dp.DatapathMaps
	return capacity{endpoints: int(m.Endpoints.MaxEntries()), ipcache: int(m.Ipcache.MaxEntries()), policy: int(m.Policy.MaxEntries())}
}

// demand is what a compiled state takes of the ipcache and the policy map: one entry per
// distinct key, as applyPolicy writes them.
func demand(out *policy.Output) (ipcache, policyEntries int) {
	prefixes := map[netip.Prefix]bool{}
	for _, e := range out.IPCache {
		prefixes[e.Prefix] = true
	}
	keys := map[bpf.DatapathPolicyKey]bool{}
	for _, e := range out.Policy {
		keys[e.Key()] = true
	}
	return len(prefixes), len(keys)
}

// overflows lists the maps that out does not fit in, ipcache first; node names whose maps
// they are (empty: this agent's).
func (c capacity) overflows(out *policy.Output, node string) []*MapFullError {
	ic, pol := demand(out)
	var over []*MapFullError
	if ic > c.ipcache {
		over = append(over, &MapFullError{Map: maps.IPCacheName, Node: node, Need: ic, Capacity: c.ipcache})
	}
	if pol > c.policy {
		over = append(over, &MapFullError{Map: maps.PolicyName, Node: node, Need: pol, Capacity: c.policy})
	}
	return over
}

// checkChange compiles the cluster as it would be after edit (and with the pods of extra
// added), for this node and, with everyNode, every node that holds pods, and returns the first
// map that could not hold it. Nothing is written: label sets without an identity get a
// provisional one. Other nodes are taken to have this node's map sizes (one agent config for
// all); a node whose maps are smaller holds the change back when it reconciles.
func (a *Agent) checkChange(ctx context.Context, caps capacity, everyNode bool, edit func(*policy.Input), extra ...store.Endpoint) error {
	in, err := a.changedInput(ctx, edit, extra...)
	if err != nil {
		return err
	}
	return a.checkInput(in, caps, everyNode)
}

// changedInput is the cluster as the store has it, with edit applied and the pods of extra
// added, and provisional identities for label sets without one.
func (a *Agent) changedInput(ctx context.Context, edit func(*policy.Input), extra ...store.Endpoint) (policy.Input, error) {
	nodes, err := a.cluster.Nodes(ctx)
	if err != nil {
		return policy.Input{}, err
	}
	in, err := a.clusterInput(ctx, nodes, extra...)
	if err != nil {
		return policy.Input{}, err
	}
	// Read when first asked: the incremental check of a CNI ADD needs no identity.
	var (
		once  sync.Once
		ids   func(string) (uint32, error)
		idErr error
	)
	in.Identity = func(key string) (uint32, error) {
		once.Do(func() { ids, idErr = a.provisionalIdentities(ctx) })
		if idErr != nil {
			return 0, idErr
		}
		return ids(key)
	}
	if edit != nil {
		edit(&in)
	}
	return in, nil
}

// checkInput compiles in for this node and, with everyNode, every node that holds pods, and
// returns the first map that could not hold it.
func (a *Agent) checkInput(in policy.Input, caps capacity, everyNode bool) error {
	selves := []string{a.node.Name}
	for _, p := range in.Pods {
		if everyNode && !slices.Contains(selves, p.Node) {
			selves = append(selves, p.Node)
		}
	}
	for _, self := range selves {
		in.Self = self
		out, err := policy.Compile(in)
		if err != nil {
			return fmt.Errorf("compile policy: %w", err)
		}
		node := self
		if self == a.node.Name {
			node = ""
		}
		if over := caps.overflows(out, node); len(over) > 0 {
			return over[0]
		}
	}
	return nil
}

// provisionalIdentities answers with the identities the store holds and, for a label set it
// does not know yet, a number of its own above every real one.
func (a *Agent) provisionalIdentities(ctx context.Context) (func(string) (uint32, error), error) {
	ids, err := a.cluster.Identities(ctx)
	if err != nil {
		return nil, err
	}
	known := map[string]uint32{}
	for id, key := range ids {
		known[key] = id
	}
	next := uint32(1 << 31)
	return func(key string) (uint32, error) {
		if id, ok := known[key]; ok {
			return id, nil
		}
		known[key] = next
		next++
		return known[key], nil
	}, nil
}

// refuse counts a change refused for want of room and gives it the answer CNI and the API
// use: try again later, since the room comes back as pods and policies go.
func (a *Agent) refuse(what string, err error) error {
	var full *MapFullError
	if !errors.As(err, &full) {
		return err
	}
	a.metrics.mapRefusals.WithLabelValues(full.Map).Inc()
	a.log.Info("change refused: a map is full", "change", what, "err", err)
	return &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: err.Error()}
}

// withPolicies is an edit that stores nps: each replaces the policy of its name or joins them.
func withPolicies(nps []*networkingv1.NetworkPolicy) func(*policy.Input) {
	return func(in *policy.Input) {
		for _, np := range nps {
			i := slices.IndexFunc(in.Policies, func(old *networkingv1.NetworkPolicy) bool {
				return old.Namespace == np.Namespace && old.Name == np.Name
			})
			if i >= 0 {
				in.Policies[i] = np
			} else {
				in.Policies = append(in.Policies, np)
			}
		}
	}
}

// withLabels is an edit that applies a label change.
func withLabels(req agentapi.LabelRequest) func(*policy.Input) {
	return func(in *policy.Input) {
		if req.Kind == "namespace" {
			in.Namespaces[req.Namespace] = relabel(in.Namespaces[req.Namespace], req)
			return
		}
		for i := range in.Pods {
			if p := &in.Pods[i]; p.Namespace == req.Namespace && p.Name == req.Name {
				p.Labels = relabel(p.Labels, req)
			}
		}
	}
}

// withObjects is an edit that declares namespaces and pods as PUT /v1/objects does.
func withObjects(req agentapi.ObjectsRequest) func(*policy.Input) {
	return func(in *policy.Input) {
		for name, labels := range req.Namespaces {
			in.Namespaces[name] = labels
		}
		for i := range in.Pods {
			p := &in.Pods[i]
			if m, ok := req.Pods[p.Namespace+"/"+p.Name]; ok {
				p.Labels, p.Ports = m.Labels, namedPorts(m)
			}
		}
	}
}

// holdBack is what this node's last reconcile did not program because a map was too small:
// what ebpfnet_bpf_map_full reports and a wait for this node's programming answers with.
type holdBack struct {
	mu sync.Mutex
	// gen is the store generation held back; 0 when the last reconcile programmed everything.
	gen  int64
	over []*MapFullError
}

// hold records that the state of generation gen does not fit; it says whether this is news:
// nothing was held back before, or what is held back needs other room. A later generation
// that still does not fit the same way (any unrelated change) is no news.
func (h *holdBack) hold(gen int64, over []*MapFullError) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	news := fmt.Sprint(over) != fmt.Sprint(h.over)
	h.gen, h.over = gen, over
	return news
}

func (h *holdBack) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen, h.over = 0, nil
}

// full says whether map name is held back.
func (h *holdBack) full(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(h.over, func(e *MapFullError) bool { return e.Map == name })
}

// heldSince returns why this node holds back a state of generation gen or newer, or nil.
func (h *holdBack) heldSince(gen int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen == 0 || h.gen < gen || len(h.over) == 0 {
		return nil
	}
	return h.over[0]
}

// holdBackState records a reconcile that found the store's state too large for this node's
// maps: counted and logged when it starts and whenever what it needs changes.
func (a *Agent) holdBackState(gen int64, over []*MapFullError) {
	if !a.metrics.held.hold(gen, over) {
		return
	}
	for _, e := range over {
		a.metrics.mapRefusals.WithLabelValues(e.Map).Inc()
	}
	a.log.Warn("the store's state does not fit this node's maps; keeping what is programmed",
		"err", over[0], "generation", gen)
}

// storeChecked runs write, a change to the store, once the cluster as it would be after edit
// fits the maps; refused, the store is left as it was. Checks and writes go one at a time and
// never while this node programs, so two changes on this agent are never checked against the
// same state.
func (a *Agent) storeChecked(ctx context.Context, what string, edit func(*policy.Input), write func() error) error {
	a.recMu.Lock()
	defer a.recMu.Unlock()
	if err := a.checkChange(ctx, a.capacity(), true, edit); err != nil {
		return a.refuse(what, err)
	}
	return write()
}

// roomFor refuses a pod that the node's maps cannot take: its endpoints entry, and the ipcache
// and policy entries this node would have with it (other nodes' are theirs to hold back). An
// attachment that already holds a lease (a repeated ADD) takes no new room.
func (a *Agent) roomFor(ctx context.Context, req agentapi.AttachRequest) error {
	caps := a.capacity()
	// Its address is not known yet: the pod CIDRs' network addresses and endpoint id 0 stand
	// in, which no pod gets.
	pod := store.Endpoint{Namespace: req.Namespace, Pod: req.Pod, Labels: req.Labels, Node: a.node.Name, IP: a.node.PodCIDR.Addr()}
	if a.node.PodCIDRv6.IsValid() {
		pod.IPv6 = a.node.PodCIDRv6.Addr()
	}
	// The lease is looked up while the cluster is read: two round trips to the store at once.
	var (
		leased   bool
		leaseErr error
		looked   = make(chan struct{})
	)
	go func() {
		defer close(looked)
		_, leased, leaseErr = a.leaseOf(ctx, owner(req))
	}()
	_, roomErr := a.podRoom(ctx, caps, pod)
	<-looked
	if leaseErr != nil || leased {
		return leaseErr
	}
	need := len(pod.Addrs()) // an endpoints entry per address
	if n := countEntries(a.dp.DatapathMaps.Endpoints); n+need > caps.endpoints {
		return a.refuse("CNI ADD", &MapFullError{Map: maps.EndpointsName, Need: n + need, Capacity: caps.endpoints})
	}
	if roomErr != nil {
		return a.refuse("CNI ADD", roomErr)
	}
	return nil
}

// podRoom is checkChange(ctx, caps, false, nil, pod), pod being the cluster's last, without
// compiling the cluster again when it can: it keeps the demand of a compiled state (roomBase)
// and adds what the pods added since, pod among them, bring. When the store changed otherwise,
// it compiles the cluster as it is now without pod and keeps that; only a pod that brings a
// label set no pod has yet needs the whole cluster compiled with it. It says whether the
// answer came without that compile.
func (a *Agent) podRoom(ctx context.Context, caps capacity, pod store.Endpoint) (incremental bool, err error) {
	in, err := a.changedInput(ctx, nil, pod)
	if err != nil {
		return false, err
	}
	b := a.roomBase.Load()
	ic, pol, ok := b.with(in)
	if !ok && len(in.Pods) > 0 {
		now := in
		now.Pods = in.Pods[:len(in.Pods)-1] // clusterInput puts pod last
		out, err := policy.Compile(now)
		if err != nil {
			return false, fmt.Errorf("compile policy: %w", err)
		}
		b = newDemandBase(&now, out)
		a.roomBase.Store(b)
		ic, pol, ok = b.with(in)
	}
	if ok {
		return true, caps.over(ic, pol, "")
	}
	return false, a.checkInput(in, caps, false)
}

// over is overflows for a demand already counted: the first map it does not fit in, ipcache
// first, or nil.
func (c capacity) over(ic, pol int, node string) error {
	if ic > c.ipcache {
		return &MapFullError{Map: maps.IPCacheName, Node: node, Need: ic, Capacity: c.ipcache}
	}
	if pol > c.policy {
		return &MapFullError{Map: maps.PolicyName, Node: node, Need: pol, Capacity: c.policy}
	}
	return nil
}

// demandBase is a compiled state as the incremental capacity check needs it. Adding a pod to
// a cluster changes this node's demand by the pod's own addresses in the ipcache and, for a
// pod on this node, its own policy entries, as long as its label set is one some pod already
// has (the rules' peers are then the same identities) and no policy names a port (a named port
// is resolved against each pod's own ports). Its own entries are then as many as another pod
// of this node with the same label set has, since the same policies select it.
type demandBase struct {
	in  *policy.Input
	out *policy.Output
	// prefixes are the ipcache's keys, keys the number of distinct policy map keys.
	prefixes map[netip.Prefix]bool
	keys     int
	// pods counts the pods compiled, by podKey.
	pods map[string]int
	// labelSets are the pods' identity keys (policy.LabelKey); own gives, for those a pod of
	// this node has, how many policy keys such a pod has.
	labelSets map[string]bool
	own       map[string]int
	// localIDs are the endpoint ids of this node's pods.
	localIDs map[uint32]bool
	// namedPorts says whether a policy names a port; unique whether endpoint ids are.
	namedPorts, unique bool
}

func newDemandBase(in *policy.Input, out *policy.Output) *demandBase {
	b := &demandBase{in: in, out: out, prefixes: map[netip.Prefix]bool{}, pods: map[string]int{},
		labelSets: map[string]bool{}, own: map[string]int{}, localIDs: map[uint32]bool{}, unique: true}
	for _, e := range out.IPCache {
		b.prefixes[e.Prefix] = true
	}
	keys := map[bpf.DatapathPolicyKey]bool{}
	perEndpoint := map[uint32]int{}
	for _, e := range out.Policy {
		if k := e.Key(); !keys[k] {
			keys[k] = true
			perEndpoint[e.Endpoint]++
		}
	}
	b.keys = len(keys)
	for _, p := range in.Pods {
		b.pods[podKey(p)]++
		ls := labelSet(in, p)
		b.labelSets[ls] = true
		if p.Node != in.Self {
			continue
		}
		if b.localIDs[p.EndpointID] {
			b.unique = false
		}
		b.localIDs[p.EndpointID] = true
		b.own[ls] = perEndpoint[p.EndpointID]
	}
	for _, np := range in.Policies {
		for _, r := range np.Spec.Ingress {
			b.namedPorts = b.namedPorts || namesPort(r.Ports)
		}
		for _, r := range np.Spec.Egress {
			b.namedPorts = b.namedPorts || namesPort(r.Ports)
		}
	}
	return b
}

func namesPort(ports []networkingv1.NetworkPolicyPort) bool {
	return slices.ContainsFunc(ports, func(p networkingv1.NetworkPolicyPort) bool {
		return p.Port != nil && p.Port.Type == intstr.String
	})
}

// podKey is all that the compiler reads of a pod.
func podKey(p policy.Pod) string {
	return fmt.Sprintf("%s/%s|%s|%s|%s|%d|%s|%v", p.Namespace, p.Name, p.IP, p.IPv6, p.Node, p.EndpointID,
		policy.LabelKey("", p.Labels, nil), p.Ports)
}

// labelSet is the identity key of p, as the compiler makes it.
func labelSet(in *policy.Input, p policy.Pod) string {
	ns := stdmaps.Clone(in.Namespaces[p.Namespace])
	if ns == nil {
		ns = map[string]string{}
	}
	ns["kubernetes.io/metadata.name"] = p.Namespace
	return policy.LabelKey(p.Namespace, p.Labels, ns)
}

// with is this node's demand for in, when in is the base's cluster with pods added and
// nothing else changed, and each added pod is one whose demand the base tells (see
// demandBase); otherwise ok is false and only a compile can tell.
func (b *demandBase) with(in policy.Input) (ipcache, policyKeys int, ok bool) {
	if b == nil || b.namedPorts || !b.unique || in.Self != b.in.Self || !slices.Equal(in.Nodes, b.in.Nodes) ||
		!stdmaps.EqualFunc(in.Namespaces, b.in.Namespaces, stdmaps.Equal) || !samePolicies(in.Policies, b.in.Policies) {
		return 0, 0, false
	}
	left := stdmaps.Clone(b.pods)
	var added []policy.Pod
	for _, p := range in.Pods {
		if k := podKey(p); left[k] > 0 {
			left[k]--
		} else {
			added = append(added, p)
		}
	}
	for _, n := range left {
		if n > 0 {
			return 0, 0, false // a pod went: its label set may be gone with it
		}
	}
	newPrefixes := map[netip.Prefix]bool{}
	ids := map[uint32]bool{}
	policyKeys = b.keys
	for _, p := range added {
		ls := labelSet(&in, p)
		if !b.labelSets[ls] {
			return 0, 0, false // a new identity: rules may gain it as a peer
		}
		addrs := []netip.Addr{p.IP} // as the compiler does: the IPv4 address always, IPv6 if any
		if p.IPv6.IsValid() {
			addrs = append(addrs, p.IPv6)
		}
		for _, ip := range addrs {
			if pfx := netip.PrefixFrom(ip, ip.BitLen()); !b.prefixes[pfx] {
				newPrefixes[pfx] = true
			}
		}
		if p.Node != in.Self {
			continue
		}
		own, known := b.own[ls]
		if !known || b.localIDs[p.EndpointID] || ids[p.EndpointID] {
			return 0, 0, false
		}
		ids[p.EndpointID] = true
		policyKeys += own
	}
	return len(b.prefixes) + len(newPrefixes), policyKeys, true
}

// samePolicies says whether two lists hold the same policies, in any order.
func samePolicies(x, y []*networkingv1.NetworkPolicy) bool {
	if len(x) != len(y) {
		return false
	}
	byName := map[string]*networkingv1.NetworkPolicy{}
	for _, np := range y {
		byName[np.Namespace+"/"+np.Name] = np
	}
	for _, np := range x {
		other, ok := byName[np.Namespace+"/"+np.Name]
		if !ok || !reflect.DeepEqual(np.Spec, other.Spec) {
			return false
		}
	}
	return len(byName) == len(x)
}
