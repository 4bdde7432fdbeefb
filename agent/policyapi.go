package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
)

// The policy API: NetworkPolicies in and out of the store, labels and declared objects, and
// what the compiled policy says (explain, a pod's entries). Its wire types are agentapi's;
// the reconcile side is policy.go.

func (a *Agent) policyRoutes(mux *http.ServeMux) {
	a.policyStatusRoutes(mux)
	mux.HandleFunc("POST /v1/policies", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			reply(w, nil, err)
			return
		}
		nps, err := policy.Parse(body)
		if err != nil {
			reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: err.Error()})
			return
		}
		if err := a.storeChecked(r.Context(), "policy apply", withPolicies(nps), func() error {
			for _, np := range nps {
				if err := a.cluster.PutPolicy(r.Context(), np); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			reply(w, nil, err)
			return
		}
		names := make([]string, 0, len(nps))
		for _, np := range nps {
			names = append(names, np.Namespace+"/"+np.Name)
		}
		reply(w, names, a.waitProgrammed(r.Context()))
	})
	mux.HandleFunc("DELETE /v1/policies/{ns}/{name}", func(w http.ResponseWriter, r *http.Request) {
		ok, err := a.cluster.DeletePolicy(r.Context(), r.PathValue("ns"), r.PathValue("name"))
		if err == nil && !ok {
			err = &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no policy %s/%s", r.PathValue("ns"), r.PathValue("name"))}
		}
		if err == nil {
			err = a.waitProgrammed(r.Context())
		}
		reply(w, struct{}{}, err)
	})
	mux.HandleFunc("GET /v1/policies", func(w http.ResponseWriter, r *http.Request) {
		nps, err := a.cluster.Policies(r.Context())
		if err != nil {
			reply(w, nil, err)
			return
		}
		sel := map[string][]string{}
		if out := a.lastPolicy.Load(); out != nil {
			for pod, pols := range out.PodSelected {
				for _, p := range pols {
					sel[p] = append(sel[p], pod)
				}
			}
		}
		list := agentapi.PolicyList{Policies: []agentapi.PolicySummary{}}
		for _, np := range nps {
			s := agentapi.PolicySummary{Namespace: np.Namespace, Name: np.Name, Selects: sel[np.Namespace+"/"+np.Name]}
			in, eg := policy.Types(np)
			if in {
				s.PolicyTypes = append(s.PolicyTypes, "Ingress")
			}
			if eg {
				s.PolicyTypes = append(s.PolicyTypes, "Egress")
			}
			sort.Strings(s.Selects)
			list.Policies = append(list.Policies, s)
		}
		reply(w, list, nil)
	})
	mux.HandleFunc("POST /v1/labels", handle(func(ctx context.Context, req agentapi.LabelRequest) (struct{}, error) {
		return struct{}{}, a.label(ctx, req)
	}))
	mux.HandleFunc("PUT /v1/objects", handle(func(ctx context.Context, req agentapi.ObjectsRequest) (struct{}, error) {
		for key := range req.Pods {
			if _, _, ok := strings.Cut(key, "/"); !ok {
				return struct{}{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("pod %q is not namespace/name", key)}
			}
		}
		return struct{}{}, a.storeChecked(ctx, "objects", withObjects(req), func() error {
			for name, labels := range req.Namespaces {
				if err := a.cluster.PutNamespace(ctx, name, labels); err != nil {
					return err
				}
			}
			for key, m := range req.Pods {
				ns, name, _ := strings.Cut(key, "/")
				if err := a.cluster.PutPod(ctx, ns, name, m); err != nil {
					return err
				}
			}
			return nil
		})
	}))
	mux.HandleFunc("POST /v1/sync", func(w http.ResponseWriter, r *http.Request) {
		timeout := ProgrammedTimeout
		if t := r.URL.Query().Get("timeout"); t != "" {
			d, err := time.ParseDuration(t)
			if err != nil || d <= 0 {
				reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("timeout %q is not a positive duration", t)})
				return
			}
			timeout = d
		}
		reply(w, struct{}{}, a.waitProgrammedWithin(r.Context(), timeout))
	})
	mux.HandleFunc("POST /v1/explain", handle(func(ctx context.Context, req agentapi.ExplainRequest) (policy.Explanation, error) {
		in := a.lastInput.Load()
		if in == nil {
			return policy.Explanation{}, &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: "no policy compiled yet"}
		}
		from, err := endpointOf(in, req.From)
		if err != nil {
			return policy.Explanation{}, err
		}
		to, err := endpointOf(in, req.To)
		if err != nil {
			return policy.Explanation{}, err
		}
		return policy.Explain(*in, from, to, req.Port, req.Protocol), nil
	}))
	mux.HandleFunc("GET /v1/pod-policy", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.podPolicy(r.Context(), r.URL.Query().Get("pod"))
		reply(w, res, err)
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		ids, err := a.cluster.Identities(r.Context())
		reply(w, ids, err)
	})
}

// label applies a label change and waits until every node has programmed it.
func (a *Agent) label(ctx context.Context, req agentapi.LabelRequest) error {
	switch req.Kind {
	case "namespace":
		nss, err := a.cluster.Namespaces(ctx)
		if err != nil {
			return err
		}
		l, ok := nss[req.Namespace]
		if !ok {
			return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no namespace %q", req.Namespace)}
		}
		err = a.storeChecked(ctx, "label", withLabels(req), func() error {
			return a.cluster.PutNamespace(ctx, req.Namespace, relabel(l, req))
		})
		if err != nil {
			return err
		}
	case "pod":
		pods, err := a.cluster.Pods(ctx)
		if err != nil {
			return err
		}
		m, ok := pods[req.Namespace+"/"+req.Name]
		if !ok {
			return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no pod %s/%s", req.Namespace, req.Name)}
		}
		m.Labels = relabel(m.Labels, req)
		err = a.storeChecked(ctx, "label", withLabels(req), func() error {
			return a.cluster.PutPod(ctx, req.Namespace, req.Name, m)
		})
		if err != nil {
			return err
		}
	default:
		return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("kind %q must be pod or namespace", req.Kind)}
	}
	return a.waitProgrammed(ctx)
}

func relabel(l map[string]string, req agentapi.LabelRequest) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		out[k] = v
	}
	for k, v := range req.Set {
		out[k] = v
	}
	for _, k := range req.Remove {
		delete(out, k)
	}
	return out
}

// Explain asks the agent behind c which policies decide a flow. It lives here rather than on
// agentapi.Client because its answer is the policy compiler's.
func Explain(ctx context.Context, c *agentapi.Client, r agentapi.ExplainRequest) (policy.Explanation, error) {
	var ex policy.Explanation
	return ex, c.Call(ctx, "POST", "/v1/explain", r, &ex)
}

func endpointOf(in *policy.Input, s string) (policy.Endpoint, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		for i := range in.Pods {
			if in.Pods[i].IP == ip || in.Pods[i].IPv6 == ip {
				return policy.Endpoint{Pod: &in.Pods[i], IP: ip}, nil
			}
		}
		return policy.Endpoint{IP: ip}, nil
	}
	for i := range in.Pods {
		if in.Pods[i].Namespace+"/"+in.Pods[i].Name == s {
			return policy.Endpoint{Pod: &in.Pods[i], IP: in.Pods[i].IP}, nil
		}
	}
	return policy.Endpoint{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("%q is neither a known pod (namespace/name) nor an IP address", s)}
}

func (a *Agent) podPolicy(ctx context.Context, pod string) (agentapi.PodPolicy, error) {
	ns, name, _ := strings.Cut(pod, "/")
	eps, err := a.cluster.Endpoints(ctx, a.node.Name)
	if err != nil {
		return agentapi.PodPolicy{}, err
	}
	for _, e := range eps {
		if e.Namespace != ns || e.Pod != name {
			continue
		}
		m, ok, err := a.dp.Endpoints().Lookup(e.IP)
		if err != nil || !ok {
			return agentapi.PodPolicy{}, fmt.Errorf("no datapath entry for %s (%w)", pod, err)
		}
		res := agentapi.PodPolicy{Node: a.node.Name, Endpoint: m.ID, Identity: m.Identity, IngressEnforced: m.IngressEnforced,
			EgressEnforced: m.EgressEnforced, Entries: []agentapi.PolicyShown{}}
		entries, err := a.dp.Policy().List()
		if err != nil {
			return res, err
		}
		out := a.lastPolicy.Load()
		for _, pe := range entries {
			if pe.Endpoint != m.ID {
				continue
			}
			s := agentapi.PolicyShown{Direction: pe.Direction.String(), Peer: fmt.Sprint(pe.Peer), Protocol: "any", Ports: "any"}
			if pe.Peer == maps.IdentityAny {
				s.Peer = "any"
			} else if out != nil && out.CIDRs[pe.Peer].IsValid() {
				s.Peer = out.CIDRs[pe.Peer].String()
			}
			if pe.Protocol != 0 {
				s.Protocol = fmt.Sprint(pe.Protocol)
				if pe.PortBits > 0 {
					size := 1 << (16 - pe.PortBits)
					s.Ports = fmt.Sprintf("%d-%d", pe.Port, int(pe.Port)+size-1)
				}
			}
			if out != nil && int(pe.Rule) >= 1 && int(pe.Rule) <= len(out.Rules) {
				r := out.Rules[pe.Rule-1]
				s.Rule = fmt.Sprintf("%s %s rule %d", r.Policy, r.Direction, r.Index)
			}
			res.Entries = append(res.Entries, s)
		}
		return res, nil
	}
	return agentapi.PodPolicy{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("no pod %s on node %s", pod, a.node.Name)}
}
