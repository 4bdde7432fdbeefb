package agent

import (
	"context"
	"net/http"
	"sort"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/store"
)

// policyStatus compares every policy in the store with what each node reports enforcing.
func (a *Agent) policyStatus(ctx context.Context) ([]agentapi.PolicyStatus, error) {
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
	out := []agentapi.PolicyStatus{}
	for _, np := range nps {
		key := np.Namespace + "/" + np.Name
		ps := agentapi.PolicyStatus{Namespace: np.Namespace, Name: np.Name, Version: store.PolicyVersion(np), Nodes: len(nodes)}
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
