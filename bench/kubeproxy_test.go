package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

func TestParseKubeRules(t *testing.T) {
	save := `*filter
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.40.2/32 -p tcp -m comment --comment "bench/svc-01000 has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.12.7/32 -p tcp -m tcp --dport 5201 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP ! -s 10.244.0.0/16 -d 10.96.12.7/32 -p tcp -m tcp --dport 5201 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
`
	r := parseKubeRules([]byte(save))
	if len(r.clusterIP) != 2 || !r.clusterIP["10.96.0.1:443"] || !r.clusterIP["10.96.12.7:5201"] {
		t.Errorf("cluster IPs %v", r.clusterIP)
	}
	if len(r.reject) != 1 || !r.reject["10.96.40.2:80"] {
		t.Errorf("rejected %v", r.reject)
	}
}

// The defaults keep TestKubeProxySuite near a minute and a half; the figures are
//
//	go test -count=1 -timeout 60m -run TestKubeProxySuite -v ./bench/ -args \
//	    -kube-proxy-services 1000,10000 -kube-proxy-rounds 5 -kube-proxy-throughput 5s -kube-proxy-latency 3s
//
// (about ten minutes, most of it writing 10,000 Services; -kube-proxy-iptables legacy for the other backend).
var (
	kpServicesFlag   = flag.String("kube-proxy-services", "10,100", "TestKubeProxySuite: comma-separated Service counts")
	kpRoundsFlag     = flag.Int("kube-proxy-rounds", 1, "TestKubeProxySuite: measurement rounds")
	kpThroughputFlag = flag.Duration("kube-proxy-throughput", 2*time.Second, "TestKubeProxySuite: length of one iperf3 run")
	kpLatencyFlag    = flag.Duration("kube-proxy-latency", time.Second, "TestKubeProxySuite: length of one sockperf run")
	kpBackendFlag    = flag.String("kube-proxy-iptables", string(IPTablesNFT), "TestKubeProxySuite: iptables backend, nft or legacy")
)

// TestKubeProxySuite runs the Services baseline once, briefly, and checks that it measured every
// setup and left nothing behind.
func TestKubeProxySuite(t *testing.T) {
	nstest.RequireRoot(t)
	var counts []int
	for _, f := range strings.Split(*kpServicesFlag, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			t.Fatalf("-kube-proxy-services %q: want positive counts", *kpServicesFlag)
		}
		counts = append(counts, n)
	}
	cfg := Config{Rounds: *kpRoundsFlag, Throughput: *kpThroughputFlag, Latency: *kpLatencyFlag}
	// Names of this run's own, so that another run at the same time is no leak.
	prefix := fmt.Sprintf("kt%04d", os.Getpid()%10000)
	t.Cleanup(func() { checkNothingLeft(t, prefix) })
	b := &KubeProxyBaseline{Backend: IPTablesBackend(*kpBackendFlag), Services: counts, names: prefix}
	suite, err := b.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	progs := b.Programs
	want := []string{PodToPodKernel}
	for _, n := range counts {
		want = append(want, KubeProxyName(n, IPTablesBackend(*kpBackendFlag)))
	}
	if len(suite.Setups) != len(want) {
		t.Fatalf("setups %+v, want %v", suite.Setups, want)
	}
	for i, st := range suite.Setups {
		if st.Name != want[i] || len(st.ThroughputGbps) != cfg.Rounds || st.MedianGbps <= 0 || st.MedianP50us <= 0 || st.MedianP99us < st.MedianP50us {
			t.Errorf("setup %d: %+v", i, st)
		}
		t.Logf("%s: %.2f Gbit/s, p50 %.1f µs, p99 %.1f µs (samples: %v Gbit/s, p50 %v, p99 %v)", st.Name, st.MedianGbps,
			st.MedianP50us, st.MedianP99us, st.ThroughputGbps, st.LatencyP50us, st.LatencyP99us)
	}
	if len(progs) != len(counts) {
		t.Fatalf("programming times %+v", progs)
	}
	for i, p := range progs {
		if p.Services != counts[i] || p.Backend != IPTablesBackend(*kpBackendFlag) || p.ProgramMs <= 0 || p.AddOneMs <= 0 {
			t.Errorf("programming %d: %+v", i, p)
		}
		t.Logf("%d services: created in %.0f ms, programmed in %.0f ms from kube-proxy's start (full sync %.0f ms), one more in %.0f ms",
			p.Services, p.CreateMs, p.ProgramMs, p.FullSyncMs, p.AddOneMs)
	}
}

// TestKubeProxySuiteFailing stops the suite half way, by its context, once it has started a
// process of its own, and checks that it still removes everything it made.
func TestKubeProxySuiteFailing(t *testing.T) {
	nstest.RequireRoot(t)
	prefix := fmt.Sprintf("kf%04d", os.Getpid()%10000)
	t.Cleanup(func() { checkNothingLeft(t, prefix) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stopped atomic.Bool
	go func() {
		for ctx.Err() == nil {
			if len(processesOf(prefix)) > 0 {
				stopped.Store(true)
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond) // polling /proc for the suite's first process
		}
	}()
	cfg := Config{Rounds: 1, Throughput: 2 * time.Second, Latency: time.Second}
	b := &KubeProxyBaseline{Backend: IPTablesNFT, Services: []int{10}, names: prefix}
	_, err := b.Run(ctx, cfg)
	if !stopped.Load() {
		t.Fatalf("the suite ended (%v) before it started a process of its own", err)
	}
	if err == nil {
		t.Fatal("the suite stopped half way returned no error")
	}
	t.Logf("failed as meant to: %v", err)
}

// processesOf lists the processes whose command line names the suite's run prefix.
func processesOf(prefix string) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "ebpfnet-kubeproxy-"+prefix) {
			found = append(found, fmt.Sprintf("%s %q", p, b))
		}
	}
	return found
}

// checkNothingLeft fails unless every namespace, directory and process of the run is gone.
func checkNothingLeft(t *testing.T, prefix string) {
	if left, _ := filepath.Glob(filepath.Join(namespace.Dir, prefix+"*")); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "ebpfnet-kubeproxy-"+prefix+"*")); len(left) > 0 {
		t.Errorf("directories left: %v", left)
	}
	for _, p := range processesOf(prefix) {
		t.Errorf("process left: %s", p)
	}
}
