package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/loader"
)

// TestHealthProbes: the agent's /healthz and /readyz (kubelet's probes in deploy/ebpfnet.yaml)
// answer ok on a working node, both fail naming the hook when the node's from-host link is
// detached behind the agent's back, and a restarted agent attaches it again and is healthy.
// (The store's outage, which fails only /readyz, is in TestStoreOutage.)
func TestHealthProbes(t *testing.T) {
	t.Parallel()
	st := upLab(t, "hp", twoNodes("vxlan"))
	n := *must(st.Node("node1"))
	health := func(path string) (int, string) {
		code, body := getMetricsPort(t, &n, path)
		return code, strings.TrimSpace(string(body))
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := health(path); code != http.StatusOK || body != "ok" {
			t.Fatalf("%s on a working node: %d %q", path, code, body)
		}
	}

	pin := loader.LinkPinPath(n.PinDir, agent.HostDevice, loader.HookFromHost)
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("the from-host link is not where the check looks: %v", err)
	}
	// The agent holds no descriptor of a pinned link: with its pin gone, the link detaches.
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	want := "from-host on " + agent.HostDevice + " is detached"
	for _, path := range []string{"/healthz", "/readyz"} {
		eventually(t, 30*time.Second, path+" to report the detached hook", func() (bool, string) {
			code, body := health(path)
			return code == http.StatusServiceUnavailable && strings.Contains(body, want), fmt.Sprintf("%d %q", code, body)
		})
	}

	// What kubelet does when liveness fails: a new agent, which attaches its hooks again.
	if err := st.StopAgent("node1"); err != nil {
		t.Fatal(err)
	}
	if err := st.StartAgent(context.Background(), "node1", labOpts()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "a restarted agent to be healthy", func() (bool, string) {
		code, body := health("/healthz")
		return code == http.StatusOK && body == "ok", fmt.Sprintf("%d %q", code, body)
	})
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("the restarted agent did not pin from-host again: %v", err)
	}
}
