package test

import (
	"strings"
	"testing"
	"time"
)

// Acceptance (issue 7, prefilter): a CIDR added to the prefilter stops traffic from that
// source at XDP, counted there and never seen by tc; deleting it restores traffic.
func TestPrefilterDropsAtXDP(t *testing.T) {
	t.Parallel()
	st := upLab(t, "pf", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	if err := st.Probe("x/b", "x/a", 80, "TCP"); err != nil {
		t.Fatal(err)
	}
	xdpDrops := map[string]string{"direction": "prefilter", "reason": "prefilter"}
	overlay := map[string]string{"direction": "from-overlay", "reason": "forward-local"}
	cidr := node2.IP.String() + "/32" // everything node2 sends node1 is VXLAN from this address
	out, code := ebpfnet(t, "prefilter", "add", cidr, "--lab", st.Name)
	if code != 0 || !(strings.Contains(out, "native mode") || strings.Contains(out, "generic mode")) {
		t.Fatalf("prefilter add: %s", out)
	}
	before := scrape(t, node1)
	if err := st.Probe("x/b", "x/a", 80, "TCP"); err == nil {
		t.Fatal("x/b still reaches x/a with node2's address in the prefilter")
	}
	after := scrape(t, node1)
	if d := counterDelta(t, before, after, "ebpfnet_drop_packets_total", xdpDrops); d == 0 {
		t.Fatal("no XDP prefilter drop was counted")
	}
	if d := counterDelta(t, before, after, "ebpfnet_forward_packets_total", overlay); d != 0 {
		t.Fatalf("tc saw %v packets from the denied source", d)
	}
	if out, _ := ebpfnet(t, "prefilter", "list", "--lab", st.Name); !strings.Contains(out, cidr) {
		t.Fatalf("prefilter list: %s", out)
	}
	if out, code := ebpfnet(t, "prefilter", "delete", cidr, "--lab", st.Name); code != 0 {
		t.Fatalf("prefilter delete: %s", out)
	}
	eventually(t, 5*time.Second, "traffic restored", func() (bool, string) {
		err := st.Probe("x/b", "x/a", 80, "TCP")
		return err == nil, "probe failed"
	})
	if out, code := ebpfnet(t, "prefilter", "add", "10.0.0.300/8", "--lab", st.Name); code == 0 || !strings.Contains(out, `"10.0.0.300/8" is not a CIDR`) {
		t.Fatalf("a bad CIDR: exit %d %s", code, out)
	}
}
