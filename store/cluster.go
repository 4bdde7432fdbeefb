package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Node is a node as registered in the store.
type Node struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// IPv6 is the node's IPv6 underlay address in a dual-stack cluster, if it has one.
	IPv6    netip.Addr   `json:"ipv6,omitzero"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	// PodCIDRv6 is the node's IPv6 pod CIDR in a dual-stack cluster; zero in an IPv4 one.
	PodCIDRv6 netip.Prefix `json:"podCIDRv6,omitzero"`
}

// Endpoint is a pod attachment as registered in the store.
type Endpoint struct {
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifName"`
	Node        string     `json:"node"`
	Namespace   string     `json:"namespace"`
	Pod         string     `json:"pod"`
	IP          netip.Addr `json:"ip"`
	// IPv6 is the pod's IPv6 address in a dual-stack cluster; zero in an IPv4 one.
	IPv6   netip.Addr        `json:"ipv6,omitzero"`
	MAC    string            `json:"mac"`
	HostIf string            `json:"hostIf"`
	Netns  string            `json:"netns"`
	Labels map[string]string `json:"labels,omitempty"`
	ID     uint32            `json:"id"`
	MTU    int               `json:"mtu"`
}

// Addrs are the endpoint's addresses: IPv4, then IPv6 in a dual-stack cluster.
func (e Endpoint) Addrs() []netip.Addr {
	if e.IPv6.IsValid() {
		return []netip.Addr{e.IP, e.IPv6}
	}
	return []netip.Addr{e.IP}
}

// Owner names an attachment the way IPAM and CNI GC do: "containerID/ifName".
func (e Endpoint) Owner() string { return e.ContainerID + "/" + e.IfName }

// Cluster is the typed view of the store.
type Cluster struct{ KV KV }

func nodeKey(name string) string { return Prefix + "nodes/" + name }

// EndpointsPrefix is where a node's endpoints live.
func EndpointsPrefix(node string) string { return Prefix + "endpoints/" + node + "/" }

func endpointKey(node, owner string) string { return EndpointsPrefix(node) + owner }

// NodesPrefix is where nodes live.
const NodesPrefix = Prefix + "nodes/"

func put(ctx context.Context, kv KV, key string, v any, ttl time.Duration) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return kv.Put(ctx, key, b, ttl)
}

// PutNode registers n; ttl > 0 makes the registration expire unless renewed by this process.
func (c *Cluster) PutNode(ctx context.Context, n Node, ttl time.Duration) error {
	return put(ctx, c.KV, nodeKey(n.Name), n, ttl)
}

// DeleteNode deregisters a node and frees its pod CIDR.
func (c *Cluster) DeleteNode(ctx context.Context, name string) error {
	claims, err := c.KV.List(ctx, podCIDRPrefix)
	if err != nil {
		return err
	}
	for k, v := range claims {
		if string(v) == name {
			if err := c.KV.Delete(ctx, k); err != nil {
				return err
			}
		}
	}
	return c.KV.Delete(ctx, nodeKey(name))
}

// Node returns one registered node, if there is one of that name.
func (c *Cluster) Node(ctx context.Context, name string) (Node, bool, error) {
	v, ok, err := c.KV.Get(ctx, nodeKey(name))
	if err != nil || !ok {
		return Node{}, false, err
	}
	var n Node
	return n, true, json.Unmarshal(v, &n)
}

// Nodes lists the registered nodes by name.
func (c *Cluster) Nodes(ctx context.Context) ([]Node, error) {
	kvs, err := c.KV.List(ctx, NodesPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]Node, 0, len(kvs))
	for k, v := range kvs {
		var n Node
		if err := json.Unmarshal(v, &n); err != nil {
			return nil, fmt.Errorf("node %s: %w", k, err)
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// PutEndpoint records an attachment.
func (c *Cluster) PutEndpoint(ctx context.Context, e Endpoint) error {
	return put(ctx, c.KV, endpointKey(e.Node, e.Owner()), e, 0)
}

// DeleteEndpoint forgets an attachment.
func (c *Cluster) DeleteEndpoint(ctx context.Context, node, owner string) error {
	return c.KV.Delete(ctx, endpointKey(node, owner))
}

// Endpoint returns one attachment of node, if recorded.
func (c *Cluster) Endpoint(ctx context.Context, node, owner string) (Endpoint, bool, error) {
	v, ok, err := c.KV.Get(ctx, endpointKey(node, owner))
	if err != nil || !ok {
		return Endpoint{}, ok, err
	}
	var e Endpoint
	return e, true, json.Unmarshal(v, &e)
}

// Endpoints lists node's attachments; an empty node lists every node's.
func (c *Cluster) Endpoints(ctx context.Context, node string) ([]Endpoint, error) {
	prefix := Prefix + "endpoints/"
	if node != "" {
		prefix = EndpointsPrefix(node)
	}
	kvs, err := c.KV.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]Endpoint, 0, len(kvs))
	for k, v := range kvs {
		var e Endpoint
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", k, err)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

const podCIDRPrefix = Prefix + "podcidrs/"

// AllocatePodCIDR gives node a /bits out of cluster, the same one every time it asks, and
// never one another node holds.
func (c *Cluster) AllocatePodCIDR(ctx context.Context, node string, cluster netip.Prefix, bits int) (netip.Prefix, error) {
	claims, err := c.KV.List(ctx, podCIDRPrefix)
	if err != nil {
		return netip.Prefix{}, err
	}
	for k, v := range claims {
		p, err := netip.ParsePrefix(strings.ReplaceAll(strings.TrimPrefix(k, podCIDRPrefix), "_", "/"))
		// A dual-stack node holds one CIDR of each family: the one of cluster's is its answer.
		if string(v) == node && err == nil && cluster.Contains(p.Addr()) {
			return p, nil
		}
	}
	for p := netip.PrefixFrom(cluster.Masked().Addr(), bits); cluster.Contains(p.Addr()); p = NextPrefix(p) {
		ok, err := c.KV.Create(ctx, podCIDRPrefix+strings.ReplaceAll(p.String(), "/", "_"), []byte(node))
		if err != nil {
			return netip.Prefix{}, err
		}
		if ok {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("cluster CIDR %s has no free /%d left for node %s", cluster, bits, node)
}

// ClaimPodCIDR records that node uses p (given in its config), refusing one held by another.
func (c *Cluster) ClaimPodCIDR(ctx context.Context, node string, p netip.Prefix) error {
	key := podCIDRPrefix + strings.ReplaceAll(p.String(), "/", "_")
	if ok, err := c.KV.Create(ctx, key, []byte(node)); err != nil || ok {
		return err
	}
	owner, _, err := c.KV.Get(ctx, key)
	if err != nil {
		return err
	}
	if string(owner) != node {
		return fmt.Errorf("pod CIDR %s belongs to node %s", p, owner)
	}
	return nil
}

// NextPrefix is the prefix of the same size right after p, in either family (past the
// family's last prefix it is no longer in the family, so no cluster CIDR contains it).
func NextPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr().As16()
	bit := p.Addr().BitLen() - p.Bits() // the prefix's lowest bit, counted from the right
	// Add 1 at that bit, carrying to the left.
	for i := 15 - bit/8; i >= 0; i-- {
		inc := byte(1)
		if i == 15-bit/8 {
			inc = 1 << (bit % 8)
		}
		old := a[i]
		a[i] += inc
		if a[i] > old {
			break
		}
	}
	addr := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, p.Bits())
}
