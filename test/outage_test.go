package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// storeOutage is how long the store outage tests keep etcd (or the API server) down.
const storeOutage = 60 * time.Second

// Acceptance (issue 13): etcd stopped for 60 s under traffic. The datapath keeps forwarding
// and enforcing; every agent reports not-ready (its status, CNI STATUS code 50,
// ebpfnet_store_up 0, /readyz, a log line) and lives on (/healthz); a pod that goes away meanwhile is cleaned up
// once etcd is back, and the streams lose nothing.
func TestStoreOutage(t *testing.T) {
	t.Parallel()
	spec := twoNodes("native")
	spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: "x", Name: "c", Node: "node1", Ports: spec.Pods[0].Ports})
	st := upLab(t, "so", spec)
	ctx := context.Background()
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	c := *must(st.Pod("x/c"))
	node1 := *must(st.Node("node1"))
	if err := st.Label(ctx, "pod", "x/a", map[string]string{"pod": "a"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().ApplyPolicies(ctx, []byte(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-closed, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
`)); err != nil {
		t.Fatal(err)
	}
	s := startStream(t, a, b)
	defer s.stop()
	s.progress(t, 64<<10, "before the outage")
	for _, n := range st.Nodes {
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := getMetricsPort(t, &n, path); code != http.StatusOK {
				t.Fatalf("%s %s before the outage: %d %s", n.Name, path, code, body)
			}
		}
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := st.StartEtcd(context.Background(), labOpts()); err != nil {
				t.Error(err)
			}
		}
	})
	if err := st.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	for _, n := range st.Nodes {
		eventually(t, 20*time.Second, n.Name+" to report not-ready", func() (bool, string) {
			stat, err := agentapi.NewClient(n.Socket).Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			up := sample(t, scrape(t, &n), "ebpfnet_store_up", nil)
			code, body := getMetricsPort(t, &n, "/readyz")
			return !stat.Ready && up == 0 && code == http.StatusServiceUnavailable && strings.Contains(string(body), "the store does not answer"),
				fmt.Sprintf("ready %v, ebpfnet_store_up %v, /readyz %d %s", stat.Ready, up, code, body)
		})
		// Not ready, but alive: kubelet must not restart an agent for its store's outage.
		if code, body := getMetricsPort(t, &n, "/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz with the store down: %d %s", n.Name, code, body)
		}
		out, exit := plugin(t, &n, cniEnv("STATUS", "s", ""), cniConf(n.Socket, ""))
		var e struct {
			Code int `json:"code"`
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil || exit == 0 || e.Code != 50 {
			t.Errorf("%s: CNI STATUS with the store down: exit %d, %s; want code 50", n.Name, exit, out)
		}
	}
	// A pod goes away while the store is down: its server, then its namespace and veth.
	if err := syscall.Kill(c.ServerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "c's server to die", func() (bool, string) { return !nstest.ProcessAlive(c.ServerPID), "alive" })
	if err := namespace.Delete(filepath.Base(c.Netns)); err != nil {
		t.Fatal(err)
	}
	rounds := 0
	for time.Since(down) < storeOutage {
		s.progress(t, 32<<10, "with the store down")
		if err := st.Probe("x/b", "x/a", 80, "TCP"); err == nil {
			t.Fatalf("with the store down %s, b reaches a: the policy is not enforced", time.Since(down).Round(time.Second))
		}
		if err := probeAllowed(st, "x/a", "x/b"); err != nil {
			t.Fatalf("with the store down %s, a does not reach b: %v", time.Since(down).Round(time.Second), err)
		}
		rounds++
	}
	if err := st.StartEtcd(ctx, labOpts()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	back := time.Now()
	for _, n := range st.Nodes {
		eventually(t, 30*time.Second, n.Name+" to report ready again", func() (bool, string) {
			stat, err := agentapi.NewClient(n.Socket).Status(ctx)
			code, body := getMetricsPort(t, &n, "/readyz")
			return err == nil && stat.Ready && code == http.StatusOK, fmt.Sprint(stat, err, code, string(body))
		})
	}
	eventually(t, 30*time.Second, "node1 to clean up the pod that went away", func() (bool, string) {
		_, inMap := endpointsOf(t, &node1)[c.IP]
		var eps []struct{ Pod string }
		if err := agentapi.NewClient(node1.Socket).Get(ctx, "/v1/endpoints?node=node1", &eps); err != nil {
			return false, err.Error()
		}
		for _, e := range eps {
			if e.Pod == "c" {
				return false, "the store still holds c"
			}
		}
		return !inMap, fmt.Sprintf("c in the map: %v", inMap)
	})
	caughtUp := time.Since(back)
	s.progress(t, 64<<10, "after the outage")
	s.finish(t)
	log, err := os.ReadFile(filepath.Join(filepath.Dir(node1.Socket), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"store unreachable", "store reachable again"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("node1's agent log does not say %q", want)
		}
	}
	t.Logf("etcd down %s: %d rounds of probes and the streams kept going (UDP %d/%d); ready again and c cleaned up %s after etcd came back",
		storeOutage, rounds, s.udpEchos.Load(), s.udpSent.Load(), caughtUp.Round(time.Millisecond))
}

// must returns v, failing nothing: for lookups of what a lab file declared.
func must[T any](v *T, err error) *T {
	if err != nil {
		panic(err)
	}
	return v
}

// probeAllowed probes a pair that must connect, five times before it calls it unreachable:
// on a loaded machine a SYN may wait past a probe's second.
func probeAllowed(st *lab.State, from, to string) (err error) {
	for range 5 {
		if err = st.Probe(from, to, 80, "TCP"); err == nil {
			return nil
		}
	}
	return err
}
