package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// Key prefixes of the objects people write (policies, namespaces, pods) and of what agents
// derive and report (identities, status).
const (
	PoliciesPrefix   = Prefix + "policies/"
	NamespacesPrefix = Prefix + "namespaces/"
	PodsPrefix       = Prefix + "pods/"
	identitiesPrefix = Prefix + "identities/"
	identityIDs      = Prefix + "identity-ids/"
	StatusPrefix     = Prefix + "status/"
	GenerationKey    = Prefix + "generation"
)

// PodMeta is what the API server would know of a pod: labels and declared ports. The agent's
// API carries the same (agentapi, which the lean CNI plugin links, so it is declared there).
type PodMeta = agentapi.PodMeta

// PodPort is a declared container port.
type PodPort = agentapi.PodPort

// PutPolicy stores a NetworkPolicy.
func (c *Cluster) PutPolicy(ctx context.Context, np *networkingv1.NetworkPolicy) error {
	return put(ctx, c.KV, PoliciesPrefix+np.Namespace+"/"+np.Name, np, 0)
}

// DeletePolicy removes ns/name and reports whether it existed.
func (c *Cluster) DeletePolicy(ctx context.Context, ns, name string) (bool, error) {
	key := PoliciesPrefix + ns + "/" + name
	_, ok, err := c.KV.Get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return true, c.KV.Delete(ctx, key)
}

// Policies lists every stored policy, by namespace/name.
func (c *Cluster) Policies(ctx context.Context) ([]*networkingv1.NetworkPolicy, error) {
	kvs, err := c.KV.List(ctx, PoliciesPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]*networkingv1.NetworkPolicy, 0, len(kvs))
	for k, v := range kvs {
		np := &networkingv1.NetworkPolicy{}
		if err := json.Unmarshal(v, np); err != nil {
			return nil, fmt.Errorf("policy %s: %w", k, err)
		}
		out = append(out, np)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}

// PutNamespace stores a namespace's labels.
func (c *Cluster) PutNamespace(ctx context.Context, name string, labels map[string]string) error {
	return put(ctx, c.KV, NamespacesPrefix+name, labels, 0)
}

// Namespaces returns namespace -> labels.
func (c *Cluster) Namespaces(ctx context.Context) (map[string]map[string]string, error) {
	kvs, err := c.KV.List(ctx, NamespacesPrefix)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for k, v := range kvs {
		l := map[string]string{}
		if err := json.Unmarshal(v, &l); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", k, err)
		}
		out[strings.TrimPrefix(k, NamespacesPrefix)] = l
	}
	return out, nil
}

// PutPod stores a pod's metadata.
func (c *Cluster) PutPod(ctx context.Context, ns, name string, m PodMeta) error {
	return put(ctx, c.KV, PodsPrefix+ns+"/"+name, m, 0)
}

// Pods returns "ns/name" -> metadata.
func (c *Cluster) Pods(ctx context.Context) (map[string]PodMeta, error) {
	kvs, err := c.KV.List(ctx, PodsPrefix)
	if err != nil {
		return nil, err
	}
	out := map[string]PodMeta{}
	for k, v := range kvs {
		var m PodMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, fmt.Errorf("pod %s: %w", k, err)
		}
		out[strings.TrimPrefix(k, PodsPrefix)] = m
	}
	return out, nil
}

// FirstIdentity is the first identity handed to a label set (below are reserved ones).
const FirstIdentity = 256

// Identity returns the cluster-wide identity of a label set, allocating one the first time:
// every node asks the same store, so every node agrees.
func (c *Cluster) Identity(ctx context.Context, labelKey string) (uint32, error) {
	sum := sha256.Sum256([]byte(labelKey))
	key := identitiesPrefix + hex.EncodeToString(sum[:16])
	for {
		if v, ok, err := c.KV.Get(ctx, key); err != nil {
			return 0, err
		} else if ok {
			id, err := strconv.ParseUint(string(v), 10, 32)
			return uint32(id), err
		}
		ids, err := c.KV.List(ctx, identityIDs)
		if err != nil {
			return 0, err
		}
		next := uint64(FirstIdentity)
		for k := range ids {
			if n, err := strconv.ParseUint(strings.TrimPrefix(k, identityIDs), 10, 32); err == nil && n >= next {
				next = n + 1
			}
		}
		if next >= 1<<24 {
			return 0, fmt.Errorf("identities exhausted")
		}
		idKey := identityIDs + strconv.FormatUint(next, 10)
		if ok, err := c.KV.Create(ctx, idKey, []byte(labelKey)); err != nil || !ok {
			if err != nil {
				return 0, err
			}
			continue // another node took that number: look again
		}
		if ok, err := c.KV.Create(ctx, key, []byte(strconv.FormatUint(next, 10))); err != nil {
			return 0, err
		} else if !ok {
			// Another node gave this label set an identity first: give the number back.
			if err := c.KV.Delete(ctx, idKey); err != nil {
				return 0, err
			}
			continue
		}
		return uint32(next), nil
	}
}

// Identities lists identity -> label key.
func (c *Cluster) Identities(ctx context.Context) (map[uint32]string, error) {
	kvs, err := c.KV.List(ctx, identityIDs)
	if err != nil {
		return nil, err
	}
	out := map[uint32]string{}
	for k, v := range kvs {
		if n, err := strconv.ParseUint(strings.TrimPrefix(k, identityIDs), 10, 32); err == nil {
			out[uint32(n)] = string(v)
		}
	}
	return out, nil
}

// BumpGeneration marks a change that every node must program, and returns its number.
func (c *Cluster) BumpGeneration(ctx context.Context) (int64, error) {
	g := time.Now().UnixNano()
	return g, c.KV.Put(ctx, GenerationKey, []byte(strconv.FormatInt(g, 10)), 0)
}

// Generation is the latest generation, 0 if none.
func (c *Cluster) Generation(ctx context.Context) (int64, error) {
	v, ok, err := c.KV.Get(ctx, GenerationKey)
	if err != nil || !ok {
		return 0, err
	}
	return strconv.ParseInt(string(v), 10, 64)
}

// NodeStatus is what a node reports it has programmed.
type NodeStatus struct {
	// Generation is the newest generation the node programmed everything up to.
	Generation int64 `json:"generation"`
	// Policies is the version (PolicyVersion) of each policy the node enforces, by ns/name.
	Policies map[string]string `json:"policies,omitempty"`
	// Identities are the identities the node's endpoints carry, which must not be collected.
	Identities []uint32 `json:"identities,omitempty"`
}

// PolicyVersion names a policy's content: two nodes enforcing the same version enforce the same rules.
func PolicyVersion(np *networkingv1.NetworkPolicy) string {
	b, _ := json.Marshal(np.Spec)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// PutStatus records what node has programmed.
func (c *Cluster) PutStatus(ctx context.Context, node string, st NodeStatus) error {
	return put(ctx, c.KV, StatusPrefix+node, st, 0)
}

// Statuses returns node -> what it has programmed.
func (c *Cluster) Statuses(ctx context.Context) (map[string]NodeStatus, error) {
	kvs, err := c.KV.List(ctx, StatusPrefix)
	if err != nil {
		return nil, err
	}
	out := map[string]NodeStatus{}
	for k, v := range kvs {
		var st NodeStatus
		if g, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			st.Generation = g // written by an agent from before statuses were objects
		} else if err := json.Unmarshal(v, &st); err != nil {
			return nil, fmt.Errorf("status %s: %w", k, err)
		}
		out[strings.TrimPrefix(k, StatusPrefix)] = st
	}
	return out, nil
}

// DeleteIdentity forgets an identity no pod carries any more.
func (c *Cluster) DeleteIdentity(ctx context.Context, id uint32, labelKey string) error {
	sum := sha256.Sum256([]byte(labelKey))
	if err := c.KV.Delete(ctx, identitiesPrefix+hex.EncodeToString(sum[:16])); err != nil {
		return err
	}
	return c.KV.Delete(ctx, identityIDs+strconv.FormatUint(uint64(id), 10))
}

// Syncer is a KV whose reads come from caches: Sync returns once they hold at least what the
// source of truth held when it was called.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Sync makes later reads at least as fresh as the store was now (a no-op for stores that
// read the source of truth).
func (c *Cluster) Sync(ctx context.Context) error {
	if s, ok := c.KV.(Syncer); ok {
		return s.Sync(ctx)
	}
	return nil
}

// podWaiter is a KV whose pods are made elsewhere (by the API server), so a CNI ADD may arrive
// before the store has seen its pod.
type podWaiter interface {
	WaitPod(ctx context.Context, ns, name string, timeout time.Duration) error
}

// PodWaitTimeout bounds how long a CNI ADD waits for its pod to reach the store.
const PodWaitTimeout = 10 * time.Second

// WaitPod returns once the store knows pod ns/name, where pods come from outside ebpfnet;
// elsewhere at once.
func (c *Cluster) WaitPod(ctx context.Context, ns, name string) error {
	if w, ok := c.KV.(podWaiter); ok && ns != "" && name != "" {
		return w.WaitPod(ctx, ns, name, PodWaitTimeout)
	}
	return nil
}

// PrefilterPrefix holds the CIDRs every node's XDP prefilter drops.
const PrefilterPrefix = Prefix + "prefilter/"

// PutPrefilter adds a CIDR to the cluster's deny list.
func (c *Cluster) PutPrefilter(ctx context.Context, cidr string) error {
	return c.KV.Put(ctx, PrefilterPrefix+strings.ReplaceAll(cidr, "/", "_"), []byte(cidr), 0)
}

// DeletePrefilter removes a CIDR and reports whether it was there.
func (c *Cluster) DeletePrefilter(ctx context.Context, cidr string) (bool, error) {
	key := PrefilterPrefix + strings.ReplaceAll(cidr, "/", "_")
	_, ok, err := c.KV.Get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	return true, c.KV.Delete(ctx, key)
}

// Prefilters lists the deny list.
func (c *Cluster) Prefilters(ctx context.Context) ([]string, error) {
	kvs, err := c.KV.List(ctx, PrefilterPrefix)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, v := range kvs {
		out = append(out, string(v))
	}
	sort.Strings(out)
	return out, nil
}
