package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// scrape fetches a lab node's /metrics from inside its namespace.
func scrape(t *testing.T, n *lab.Node) []byte {
	t.Helper()
	code, body := getMetricsPort(t, n, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("scrape %s: %d %s", n.Name, code, body)
	}
	return body
}

// getMetricsPort GETs path from a lab node's metrics address, from inside its namespace.
func getMetricsPort(t *testing.T, n *lab.Node, path string) (int, []byte) {
	t.Helper()
	// The transport dials on its own goroutine: the socket must be made inside the namespace.
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = namespace.Do(n.Netns, func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	// A generous bound: an agent busy with 100 CNI callers on a loaded machine answers late, not never.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := client.Get(fmt.Sprintf("http://%s%s", netip.AddrPortFrom(n.IP, lab.MetricsPort), path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, n.Name, err)
	}
	return resp.StatusCode, body
}

// sample returns the value of the series name{labels} in an exposition; a missing metric or
// series fails the test (a typo, or a metric the agent stopped exporting, is no 0).
func sample(t *testing.T, expo []byte, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := lookup(t, expo, name, labels)
	if !ok {
		t.Fatalf("no %s %v in the exposition:\n%s", name, labels, grepEbpfnet(expo))
	}
	return v
}

// counterDelta is how much the counter name{labels} rose from one exposition to a later one.
// The series must be in after; in before it may be missing, as the datapath's counters are
// exported once they first count.
func counterDelta(t *testing.T, before, after []byte, name string, labels map[string]string) float64 {
	t.Helper()
	was, _ := lookup(t, before, name, labels)
	return sample(t, after, name, labels) - was
}

// lookup finds the series name{labels} (labels: a subset of the series' labels) in an
// exposition.
func lookup(t *testing.T, expo []byte, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(expo))
	if err != nil {
		t.Fatalf("exposition does not parse: %v", err)
	}
	f, ok := families[name]
	if !ok {
		return 0, false
	}
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, want := range labels {
			if v, ok := have[k]; !ok || v != want {
				match = false
			}
		}
		if match {
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Histogram != nil: // its count of observations
				return float64(m.Histogram.GetSampleCount()), true
			}
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// Acceptance (issue 7, metrics): after traffic and a denied flow the scraped counters move by
// exactly the packets sent, and promtool finds nothing wrong in the exposition.
func TestPrometheusMetrics(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods[1].Labels = map[string]string{"pod": "b"}
	st := upLab(t, "pm", spec)
	deny := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: []\n"
	if _, err := st.Client().ApplyPolicies(context.Background(), []byte(deny)); err != nil {
		t.Fatal(err)
	}
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	tunnelled := map[string]string{"direction": "from-pod", "reason": "forward-tunnel"}
	denied := map[string]string{"direction": "from-overlay", "reason": "policy-denied-ingress"}
	before1, before2 := scrape(t, node1), scrape(t, node2)

	const sent = 25
	err := namespace.Do(a.Netns, func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(b.IP, 81).String())
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < sent; i++ {
			if _, err := c.Write([]byte("metrics")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "node2 counts the denied packets", func() (bool, string) {
		got, _ := lookup(t, scrape(t, node2), "ebpfnet_drop_packets_total", denied)
		was, _ := lookup(t, before2, "ebpfnet_drop_packets_total", denied)
		got -= was
		return got == sent, fmt.Sprintf("%v of %d\n%s", got, sent, grepEbpfnet(scrape(t, node2)))
	})
	after1, after2 := scrape(t, node1), scrape(t, node2)
	if got := counterDelta(t, before1, after1, "ebpfnet_forward_packets_total", tunnelled); got != sent {
		t.Errorf("node1 tunnelled %v packets, sent %d", got, sent)
	}
	if got := counterDelta(t, before2, after2, "ebpfnet_drop_packets_total", denied); got != sent {
		t.Errorf("node2 counted %v policy drops, sent %d", got, sent)
	}
	if sample(t, after2, "ebpfnet_policies", nil) != 1 || sample(t, after2, "ebpfnet_bpf_map_pressure", map[string]string{"map": "endpoints"}) <= 0 {
		t.Errorf("agent state gauges missing: policies=%v", sample(t, after2, "ebpfnet_policies", nil))
	}
	// One CNI ADD is one observation of each of its phases.
	ns := nstest.New(t, "pm")
	conf := cniConf(node1.Socket, "")
	if out, code := plugin(t, node1, cniEnv("ADD", "pm-add", ns.Path), conf); code != 0 {
		t.Fatalf("ADD: %s", out)
	}
	t.Cleanup(func() { plugin(t, node1, cniEnv("DEL", "pm-add", ns.Path), conf) })
	added := scrape(t, node1)
	for _, phase := range []string{"pod", "queue", "room", "ipam", "plumb", "record"} {
		if got := counterDelta(t, after1, added, "ebpfnet_cni_add_phase_seconds", map[string]string{"phase": phase}); got != 1 {
			t.Errorf("ebpfnet_cni_add_phase_seconds{phase=%q} observed %v times for one ADD", phase, got)
		}
	}
	for _, expo := range [][]byte{after1, after2, added} {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = bytes.NewReader(expo)
		if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	}
}

func grepEbpfnet(expo []byte) string {
	var out []string
	for _, l := range strings.Split(string(expo), "\n") {
		if strings.HasPrefix(l, "ebpfnet_drop") || strings.HasPrefix(l, "ebpfnet_forward") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
