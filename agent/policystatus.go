package agent

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/ebpfnet/ebpfnet/store"
)

// PolicyStatus is how far one NetworkPolicy's current version has reached.
type PolicyStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Version names the policy's content as the store holds it now.
	Version string `json:"version"`
	// Enforcing counts the nodes that enforce that version, of Nodes.
	Enforcing int      `json:"enforcing"`
	Nodes     int      `json:"nodes"`
	Behind    []string `json:"behind,omitempty"`
}

// policyStatus compares every policy in the store with what each node reports enforcing.
func (a *Agent) policyStatus(ctx context.Context) ([]PolicyStatus, error) {
	if err := a.cluster.Sync(ctx); err != nil {
		return nil, err
	}
	nps, err := a.cluster.Policies(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := a.cluster.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	sts, err := a.cluster.Statuses(ctx)
	if err != nil {
		return nil, err
	}
	out := []PolicyStatus{}
	for _, np := range nps {
		key := np.Namespace + "/" + np.Name
		ps := PolicyStatus{Namespace: np.Namespace, Name: np.Name, Version: store.PolicyVersion(np), Nodes: len(nodes)}
		for _, n := range nodes {
			if sts[n.Name].Policies[key] == ps.Version {
				ps.Enforcing++
			} else {
				ps.Behind = append(ps.Behind, n.Name)
			}
		}
		sort.Strings(ps.Behind)
		out = append(out, ps)
	}
	return out, nil
}

func (a *Agent) policyStatusRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/policy-status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.policyStatus(r.Context())
		reply(w, st, err)
	})
}

// PolicyStatus asks how many nodes enforce each policy's current version.
func (c *Client) PolicyStatus(ctx context.Context) ([]PolicyStatus, error) {
	var st []PolicyStatus
	return st, c.Get(ctx, "/v1/policy-status", &st)
}

// Wait returns once every node has programmed everything the store held when it was called
// (policies, pods, labels, namespaces), or fails after timeout naming the nodes that have not.
func (c *Client) Wait(ctx context.Context, timeout time.Duration) error {
	var out struct{}
	return c.do(ctx, "POST", fmt.Sprintf("/v1/sync?timeout=%s", timeout), nil, &out)
}
