package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/store"
)

// scaleDeployment is a Deployment of echo servers the scheduler spreads over the lab's nodes.
const scaleDeployment = `apiVersion: v1
kind: Namespace
metadata: {name: scale}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: scale}
spec:
  replicas: 0
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 0
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: echo
        image: ` + kube.EchoImage + `
        imagePullPolicy: Never
        command: [/ebpfnet, lab, serve, --ports, 80/TCP, --ready, /tmp/ready]
        ports: [{name: http, containerPort: 80}]
`

// checkDeploymentScale scales a Deployment 0 -> 30 -> 0 on a kubernetes lab: while up, every
// pod reaches every other; afterwards no veth, lease, endpoint, map entry or identity of
// theirs is left.
func checkDeploymentScale(t *testing.T, st *lab.State) {
	before := map[string]nodeState{}
	for i := range st.Nodes {
		before[st.Nodes[i].Name] = stateOf(t, &st.Nodes[i])
	}
	leases := len(kubeRecords(t, st, "ipam"))
	kubectl(t, st, scaleDeployment, "apply", "-f", "-")
	// The checks after this one count node3's veths against a snapshot: they start only once
	// the namespace and its pods are gone, even when this check failed half-way.
	t.Cleanup(func() {
		kubectl(t, st, "", "delete", "namespace", "scale", "--ignore-not-found", "--timeout=3m")
	})
	kubectl(t, st, "", "scale", "-n", "scale", "deployment/echo", "--replicas=30")
	var eps map[string]store.Endpoint
	eventually(t, 3*time.Minute, "30 pods attached", func() (bool, string) {
		eps = endpointsIn(t, st, "scale")
		return len(eps) == 30, fmt.Sprintf("%d attached", len(eps))
	})
	// Every pod answers its own node (its server may start a moment after its sandbox), then
	// all pairs.
	for key, e := range eps {
		node, err := st.Node(e.Node)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, key+" serving", func() (bool, string) {
			err := lab.ProbeFrom(node.Netns, netipPort(e.IP, 80), "TCP")
			return err == nil, fmt.Sprint(err)
		})
	}
	var wrong, retried []string
	for from, fe := range eps {
		for to, te := range eps {
			if from == to {
				continue
			}
			addr := netipPort(te.IP, 80)
			if err := lab.ProbeFrom(fe.Netns, addr, "TCP"); err != nil {
				retried = append(retried, fmt.Sprintf("%s->%s (%v)", from, to, err))
				if err := probeAgain(fe.Netns, addr, "TCP"); err != nil {
					wrong = append(wrong, fmt.Sprintf("%s->%s: %v", from, to, err))
				}
			}
		}
	}
	if len(retried) > 0 {
		t.Logf("asked again: %s", strings.Join(retried, ", "))
	}
	if len(wrong) > 0 {
		t.Fatalf("%d of 870 pairs unreachable: %s", len(wrong), strings.Join(wrong, "; "))
	}
	kubectl(t, st, "", "scale", "-n", "scale", "deployment/echo", "--replicas=0")
	eventually(t, 3*time.Minute, "every scaled pod gone from every node", func() (bool, string) {
		for i := range st.Nodes {
			n := &st.Nodes[i]
			if now := stateOf(t, n); now != before[n.Name] {
				return false, fmt.Sprintf("%s: %+v, before %+v", n.Name, now, before[n.Name])
			}
		}
		if now := len(kubeRecords(t, st, "ipam")); now != leases {
			return false, fmt.Sprintf("%d lease records, %d before", now, leases)
		}
		return true, ""
	})
	// Their identity goes once no pod and no node has used it for the lab's grace period.
	eventually(t, lab.IdentityGCGrace+time.Minute, "the scaled pods' identity collected", func() (bool, string) {
		for _, labels := range kubeIdentities(t, st) {
			if strings.HasPrefix(labels, "ns=scale;") {
				return false, labels
			}
		}
		return true, ""
	})
}

// endpointsIn lists the endpoints of namespace ns on every node, by "ns/pod", with their
// network namespaces as the host sees them.
func endpointsIn(t *testing.T, st *lab.State, ns string) map[string]store.Endpoint {
	t.Helper()
	out := map[string]store.Endpoint{}
	for _, n := range st.Nodes {
		var eps []store.Endpoint
		if err := agentapi.NewClient(n.Socket).Get(context.Background(), "/v1/endpoints?node="+n.Name, &eps); err != nil {
			t.Fatal(err)
		}
		for _, e := range eps {
			if e.Namespace == ns {
				e.Netns = st.NodeHostPath(e.Node, e.Netns) // the agent's is the node's view
				out[e.Namespace+"/"+e.Pod] = e
			}
		}
	}
	return out
}

// kubeRecords lists the lab's EbpfnetRecords of one kind.
func kubeRecords(t *testing.T, st *lab.State, kind string) []json.RawMessage {
	t.Helper()
	var list struct{ Items []json.RawMessage }
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "ebpfnetrecords", "-l", "ebpfnet.io/kind="+kind, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// kubeIdentities lists the lab's EbpfnetIdentities: number -> labels.
func kubeIdentities(t *testing.T, st *lab.State) map[string]string {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ Labels string }
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "ebpfnetidentities", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, it := range list.Items {
		out[it.Metadata.Name] = it.Spec.Labels
	}
	return out
}

func netipPort(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }
