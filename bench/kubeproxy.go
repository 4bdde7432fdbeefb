package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/podnet"
	"github.com/ebpfnet/ebpfnet/store/etcdserver"
)

// The Services baseline (issue 11): a client pod reaches a backend pod on the other node through
// a ClusterIP that kube-proxy, in iptables mode, translates in the client's node; and the same
// two pods talking directly, with no kube-proxy anywhere.

// PodToPodKernel is the setup with no Service in the path: the limit of the kube-proxy setups.
const PodToPodKernel = "pod-to-pod-kernel"

// IPTablesBackend is the iptables kube-proxy runs: both write the same rules, into the kernel's
// nf_tables or into its legacy xtables.
type IPTablesBackend string

const (
	// IPTablesNFT is iptables-nft, Debian's default, and what kube-proxy's image picks on a node
	// with no legacy rules.
	IPTablesNFT IPTablesBackend = "nft"
	// IPTablesLegacy is iptables-legacy.
	IPTablesLegacy IPTablesBackend = "legacy"
)

// KubeProxyName is the setup where kube-proxy programs n Services with backend:
// "kube-proxy-iptables-1000svc" (nft), "kube-proxy-iptables-legacy-1000svc".
func KubeProxyName(n int, backend IPTablesBackend) string {
	if backend == IPTablesLegacy {
		return fmt.Sprintf("kube-proxy-iptables-legacy-%dsvc", n)
	}
	return fmt.Sprintf("kube-proxy-iptables-%dsvc", n)
}

// KubeProxyProgram is how long kube-proxy took to program n Services.
type KubeProxyProgram struct {
	Services int             `json:"services"`
	Backend  IPTablesBackend `json:"backend"`
	// CreateMs is writing the n Services and their EndpointSlices to the API server.
	CreateMs float64 `json:"createMs"`
	// ProgramMs is from kube-proxy's start, with all n Services in the API, until the last
	// successful sync of the rules that put every one of them in its nat table.
	ProgramMs float64 `json:"programMs"`
	// FullSyncMs is kube-proxy's own figure for its full syncs of the IPv4 rules until then
	// (kubeproxy_sync_full_proxy_rules_duration_seconds, mean; in general there was one): the
	// part of ProgramMs spent writing rules rather than starting and listing.
	FullSyncMs float64 `json:"fullSyncMs"`
	// AddOneMs is one more Service and its EndpointSlice created, with n programmed, until a
	// sync has put it in the nat table too.
	AddOneMs float64 `json:"addOneMs"`
}

const (
	kpServiceCIDR = "10.96.0.0/16"
	kpClusterCIDR = "10.244.0.0/16"
	kpNamespace   = "bench"
	kpMetricsAddr = "127.0.0.1:10249" // in the client's node namespace
	kpTimeout     = 5 * time.Minute   // for kube-proxy's programming
)

// kpNodeNames are the Node objects' names of the two node namespaces; kube-proxy runs as the first.
var kpNodeNames = [2]string{"node-0", "node-1"}

// The API server's address, on the underlay beside the nodes' (see underlay), and the pods'.
var (
	kpCPIP      = netip.MustParseAddr("10.251.0.3")
	kpPodCIDRs  = [2]netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.244.1.0/24")}
	kpBackendIP = kpPodCIDRs[1].Addr().Next().Next()
)

// KubeProxyBaseline is the Services baseline's setups: PodToPodKernel, and per count in Services,
// KubeProxyName(count, Backend). Building each kube-proxy setup appends how long kube-proxy took
// to program it to Programs. They need kube-proxy in kube.BinDir() (make deps-kubernetes).
type KubeProxyBaseline struct {
	Backend  IPTablesBackend
	Services []int
	Programs []KubeProxyProgram
	// names, when set, names the setups' namespaces and directories names0, names1, … rather
	// than by the prefix RunSuite gives (tests, to find what a run left).
	names string
}

// Setups are the builders for RunSuite, the limit (PodToPodKernel) first; ctx bounds the
// building of the kube-proxy setups.
func (b *KubeProxyBaseline) Setups(ctx context.Context) []Builder {
	name := func(prefix string, i int) string {
		if b.names != "" {
			return fmt.Sprintf("%s%d", b.names, i)
		}
		return prefix
	}
	setups := []Builder{{PodToPodKernel, func(p string) (*Topology, error) {
		t, _, err := buildHostGW(name(p, 0), PodToPodKernel)
		return t, err
	}}}
	for i, n := range b.Services {
		setups = append(setups, Builder{KubeProxyName(n, b.Backend), func(p string) (*Topology, error) {
			t, prog, err := buildKubeProxy(ctx, name(p, i+1), n, b.Backend)
			if err != nil {
				return nil, err
			}
			b.Programs = append(b.Programs, prog)
			slog.Info("kube-proxy programmed", "services", n, "backend", b.Backend, "createMs", prog.CreateMs,
				"programMs", prog.ProgramMs, "fullSyncMs", round2(prog.FullSyncMs), "addOneMs", prog.AddOneMs)
			return t, nil
		}})
	}
	return setups
}

// Check fails early, before any building, on what the setups cannot do without.
func (b *KubeProxyBaseline) Check() error {
	if len(b.Services) == 0 {
		return fmt.Errorf("kube-proxy baseline: no service counts")
	}
	if b.Backend != IPTablesNFT && b.Backend != IPTablesLegacy {
		return fmt.Errorf("kube-proxy baseline: iptables backend %q: want %q or %q", b.Backend, IPTablesNFT, IPTablesLegacy)
	}
	if err := kube.CheckBinaries(); err != nil {
		return err
	}
	if _, err := os.Stat(kubeProxyBin()); err != nil {
		return fmt.Errorf("kube-proxy is not built (run make deps-kubernetes): %w", err)
	}
	return nil
}

// Run measures the setups as a suite of their own, "kube-proxy": the baseline is the first
// count's kube-proxy, the limit pod to pod. Whatever it returns, everything it made is gone.
func (b *KubeProxyBaseline) Run(ctx context.Context, cfg Config) (Suite, error) {
	if err := b.Check(); err != nil {
		return Suite{}, err
	}
	return RunSuite("kube-proxy", KubeProxyName(b.Services[0], b.Backend), PodToPodKernel, b.Setups(ctx), cfg)
}

// KubeProxySuite measures, side by side and interleaved round by round, a client pod reaching a
// backend pod on the other node directly (PodToPodKernel) and through a ClusterIP with
// kube-proxy in iptables mode, running backend, programming each of services Services
// (KubeProxyName(n, backend)); and returns the suite and how long kube-proxy took to program
// each count. Whatever it returns, everything it made is gone.
func KubeProxySuite(ctx context.Context, cfg Config, backend IPTablesBackend, services []int) (Suite, []KubeProxyProgram, error) {
	b := &KubeProxyBaseline{Backend: backend, Services: services}
	suite, err := b.Run(ctx, cfg)
	return suite, b.Programs, err
}

// buildHostGW is two nodes on an underlay with one pod each, a client on the first and a
// server on the second, each node routing the other's pod CIDR through its underlay address
// (flannel's host-gw): no BPF, no encapsulation, no Service. It returns the nodes' underlay
// addresses too.
func buildHostGW(prefix, name string) (t *Topology, ips [2]netip.Addr, err error) {
	t = &Topology{Name: name}
	defer closeOnError(t, &err)
	nodes, ips, err := t.underlay(prefix, IPv4)
	if err != nil {
		return nil, ips, err
	}
	for i, n := range nodes {
		if err := sysctl(namespace.Path(n), "ipv4/ip_forward", "1"); err != nil {
			return nil, ips, err
		}
		o := 1 - i
		err := inNS(n, func(h *netlink.Handle) error {
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(kpPodCIDRs[o]), Gw: ips[o].AsSlice()})
		})
		if err != nil {
			return nil, ips, fmt.Errorf("route to %s in %s: %w", kpPodCIDRs[o], n, err)
		}
	}
	pods := [2]string{prefix + "-c", prefix + "-s"}
	for i, p := range pods {
		path, err := t.netns(p)
		if err != nil {
			return nil, ips, err
		}
		pod := podnet.Pod{NodeNetns: namespace.Path(nodes[i]), Netns: path, ContainerID: p,
			IP: kpPodCIDRs[i].Addr().Next().Next(), MTU: 1500}
		if _, err := podnet.Plumb(pod, nil); err != nil {
			return nil, ips, err
		}
	}
	t.Client, t.Server, t.ServerIP = pods[0], pods[1], kpBackendIP
	return t, ips, nil
}

// buildKubeProxy is buildHostGW with an API server holding n Services whose EndpointSlices
// name the server pod, and kube-proxy in iptables mode in the client's node, started once they
// all exist; the client dials one of the Services' ClusterIP. It returns how long the
// programming took too.
func buildKubeProxy(ctx context.Context, prefix string, n int, backend IPTablesBackend) (t *Topology, prog KubeProxyProgram, err error) {
	prog.Services, prog.Backend = n, backend
	t, nodeIPs, err := buildHostGW(prefix, KubeProxyName(n, backend))
	if err != nil {
		return nil, prog, err
	}
	defer closeOnError(t, &err)
	cp, api, err := t.apiServer(ctx, prefix)
	if err != nil {
		return nil, prog, err
	}
	start := time.Now()
	if err := createNodes(ctx, api, nodeIPs); err != nil {
		return nil, prog, err
	}
	svcs, err := createServices(ctx, api, n)
	if err != nil {
		return nil, prog, err
	}
	prog.CreateMs = msSince(start)
	t.Target = svcs.vip
	kp, err := t.startKubeProxy(cp, prefix+"-n0", backend)
	if err != nil {
		return nil, prog, err
	}
	synced, err := kp.waitSynced(ctx, false, func(r kubeRules) bool { return svcs.has(r.clusterIP) })
	if err != nil {
		return nil, prog, err
	}
	prog.ProgramMs = ms(synced.Sub(kp.started))
	// kube-proxy records a sync's duration once it has finished everything after writing the
	// rules, a moment after their timestamp.
	m, err := kp.waitMetrics(ctx, func(m map[string]float64) bool { return m[kpFullSyncsNum] > 0 })
	if err != nil {
		return nil, prog, err
	}
	prog.FullSyncMs = m[kpFullSyncSum] / m[kpFullSyncsNum] * 1000
	if prog.AddOneMs, err = addOne(ctx, api, kp, svcs, n); err != nil {
		return nil, prog, err
	}
	return t, prog, nil
}

// addOne times one more Service (number n) and its EndpointSlice, from their creation until
// kube-proxy's rules send its ClusterIP on, with svcs programmed; then deletes them again, so
// that the setup measured holds svcs alone, and waits until kube-proxy has synced that.
func addOne(ctx context.Context, api kubernetes.Interface, kp *kubeProxy, svcs serviceSet, n int) (float64, error) {
	start := time.Now()
	extra, err := createService(ctx, api, n)
	if err != nil {
		return 0, err
	}
	synced, err := kp.waitSynced(ctx, false, func(r kubeRules) bool { return svcs.has(r.clusterIP) && r.clusterIP[extra] })
	if err != nil {
		return 0, err
	}
	took := synced.Sub(start)
	// The EndpointSlice first, then the Service, each waited for, so that kube-proxy has
	// synced both changes before anything is measured: without endpoints the Service's
	// ClusterIP is rejected, without the Service that rejection goes.
	name := serviceName(n)
	if err := api.DiscoveryV1().EndpointSlices(kpNamespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return 0, err
	}
	if _, err := kp.waitSynced(ctx, false, func(r kubeRules) bool { return r.reject[extra] && !r.clusterIP[extra] }); err != nil {
		return 0, err
	}
	if err := api.CoreV1().Services(kpNamespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return 0, err
	}
	if _, err := kp.waitSynced(ctx, true, func(r kubeRules) bool { return svcs.has(r.clusterIP) && !r.reject[extra] }); err != nil {
		return 0, err
	}
	return ms(took), nil
}

// apiServer runs an etcd and a Kubernetes control plane (lab/kube) in a namespace of their own
// on the underlay, at kpCPIP, with their files in a temporary directory; Close removes them all.
func (t *Topology) apiServer(ctx context.Context, prefix string) (*kube.ControlPlane, kubernetes.Interface, error) {
	cpNS := prefix + "-cp"
	cpPath, err := t.netns(cpNS)
	if err != nil {
		return nil, nil, err
	}
	_, eth0, err := vethPair(prefix+"-u", "p2", cpNS, "eth0", 1500)
	if err != nil {
		return nil, nil, err
	}
	err = inNS(prefix+"-u", func(h *netlink.Handle) error {
		port, err := h.LinkByName("p2")
		if err != nil {
			return err
		}
		br, err := h.LinkByName("br0")
		if err != nil {
			return err
		}
		return h.LinkSetMaster(port, br)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("plug the control plane into the underlay: %w", err)
	}
	if err := addAddr(cpNS, eth0, kpCPIP.String()+"/24"); err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "ebpfnet-kubeproxy-"+prefix+"-")
	if err != nil {
		return nil, nil, err
	}
	t.undo = append(t.undo, func() error { return os.RemoveAll(dir) })
	// etcd runs in this process; its sockets are made, and so stay, in the control plane's
	// namespace. (Its gRPC gateway would dial from this one, but the API server speaks gRPC.)
	var etcd *etcdserver.Server
	err = namespace.Do(cpPath, func() (err error) {
		etcd, err = etcdserver.Start(filepath.Join(dir, "etcd"), "http://127.0.0.1:2379", "http://127.0.0.1:2380")
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	t.undo = append(t.undo, func() error { etcd.Close(); return nil })
	cpDir := filepath.Join(dir, "cp")
	// Teardown also kills kube-proxy: its command line names the kubeconfig under cpDir.
	t.undo = append(t.undo, func() error { return kube.Teardown(cpDir) })
	cp, err := kube.StartControlPlane(ctx, kube.ControlPlaneConfig{Dir: cpDir, Netns: cpPath, EtcdURL: "http://127.0.0.1:2379",
		AdvertiseIP: kpCPIP, ServiceCIDR: kpServiceCIDR, ClusterCIDR: kpClusterCIDR})
	if err != nil {
		return nil, nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.Dial = namespace.Dialer(cpPath)
	cfg.QPS, cfg.Burst = 2000, 2000
	cfg.ContentType = "application/vnd.kubernetes.protobuf" // thousands of writes: the cheaper encoding
	cfg.Timeout = time.Minute                               // per request: writes go on as long as each one does
	api, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	// Nothing here needs the controller manager or the scheduler: the EndpointSlices are
	// written here, and there are no pods. Stopped, they take no CPU from what is measured.
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		b, err := os.ReadFile(filepath.Join(cp.Dir, name+".pid"))
		if err != nil {
			return nil, nil, err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, nil, fmt.Errorf("%s.pid: %w", name, err)
		}
		if kube.OwnedBy(pid, cp.Dir) {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				return nil, nil, fmt.Errorf("stop %s: %w", name, err)
			}
		}
	}
	return cp, api, nil
}

// createNodes writes the two Node objects with their underlay addresses: kube-proxy waits 30s
// for its own before it starts without it.
func createNodes(ctx context.Context, api kubernetes.Interface, ips [2]netip.Addr) error {
	for i, name := range kpNodeNames {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:   corev1.NodeSpec{PodCIDR: kpPodCIDRs[i].String(), PodCIDRs: []string{kpPodCIDRs[i].String()}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ips[i].String()}}}}
		if _, err := api.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
	}
	return nil
}

// serviceSet is what createServices made: the "ClusterIP:port" of every Service port, and the
// measured Service's ClusterIP.
type serviceSet struct {
	ports []string
	vip   netip.Addr
}

// has reports whether every one of the set's ports is among those programmed.
func (s serviceSet) has(got map[string]bool) bool {
	for _, p := range s.ports {
		if !got[p] {
			return false
		}
	}
	return true
}

// createServices writes n Services and their EndpointSlices, several at a time. Service 0 is
// the measured one, with iperf3's and sockperf's ports; the others have one port each.
func createServices(ctx context.Context, api kubernetes.Interface, n int) (serviceSet, error) {
	if _, err := api.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kpNamespace}},
		metav1.CreateOptions{}); err != nil {
		return serviceSet{}, err
	}
	ports := make([][]string, n)
	next := make(chan int)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for i := range next {
				if errs[w] != nil {
					continue
				}
				p, err := createServicePorts(ctx, api, i)
				ports[i], errs[w] = p, err
			}
		})
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return serviceSet{}, err
	}
	var s serviceSet
	for _, p := range ports {
		s.ports = append(s.ports, p...)
	}
	vip, _, _ := strings.Cut(ports[0][0], ":")
	s.vip = netip.MustParseAddr(vip)
	return s, nil
}

// createService writes Service i and its EndpointSlice and returns its "ClusterIP:port" (the
// first port's).
func createService(ctx context.Context, api kubernetes.Interface, i int) (string, error) {
	p, err := createServicePorts(ctx, api, i)
	if err != nil {
		return "", err
	}
	return p[0], nil
}

func createServicePorts(ctx context.Context, api kubernetes.Interface, i int) ([]string, error) {
	type port struct {
		name       string
		port, peer int32
	}
	ports := []port{{"", 80, 8080}}
	if i == 0 {
		ports = []port{{"iperf", iperfPort, iperfPort}, {"sockperf", latencyPort, latencyPort}}
	}
	name := serviceName(i)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kpNamespace}}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kpNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench.ebpfnet.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{kpBackendIP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, NodeName: ptr(kpNodeNames[1])}},
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.name, Protocol: corev1.ProtocolTCP, Port: p.port,
			TargetPort: intstr.FromInt32(p.peer)})
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr(p.name), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(p.peer)})
	}
	made, err := api.CoreV1().Services(kpNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s: %w", name, err)
	}
	if _, err := api.DiscoveryV1().EndpointSlices(kpNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create endpointslice %s: %w", name, err)
	}
	var out []string
	for _, p := range ports {
		out = append(out, fmt.Sprintf("%s:%d", made.Spec.ClusterIP, p.port))
	}
	return out, nil
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func ptr[T any](v T) *T { return &v }

func kubeProxyBin() string { return filepath.Join(kube.BinDir(), "kube-proxy") }

// kubeProxy is a running kube-proxy.
type kubeProxy struct {
	netns   string // its node's namespace path
	bin     string // the directory of its iptables commands
	log     string
	started time.Time
	seen    float64       // the newest sync waitSynced has looked at, in unix seconds
	done    chan struct{} // closed once it has exited
	metrics *http.Client  // dials into netns
}

// startKubeProxy runs kube-proxy in iptables mode in the node namespace, as the node's
// kube-proxy would: with the cluster's pod CIDR to tell pod traffic (not masqueraded) from the
// rest, and the iptables commands of backend first on its $PATH. It leaves the host-wide
// conntrack table size alone. Close kills it.
func (t *Topology) startKubeProxy(cp *kube.ControlPlane, node string, backend IPTablesBackend) (*kubeProxy, error) {
	path := namespace.Path(node)
	dir := filepath.Dir(cp.Dir)
	kp := &kubeProxy{netns: path, bin: filepath.Join(dir, "bin"), log: filepath.Join(dir, "kube-proxy.log"), done: make(chan struct{}),
		metrics: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: namespace.Dialer(path)}}}
	if err := iptablesCommands(kp.bin, backend); err != nil {
		return nil, err
	}
	logf, err := os.Create(kp.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net="+path, "--", kubeProxyBin(),
		"--kubeconfig="+cp.Kubeconfig,
		"--proxy-mode=iptables",
		"--hostname-override="+kpNodeNames[0],
		"--cluster-cidr="+kpClusterCIDR,
		"--detect-local-mode=ClusterCIDR",
		"--conntrack-max-per-core=0", // nf_conntrack_max and its hash size are the host's, not the namespace's
		"--oom-score-adj=0",
		"--metrics-bind-address="+kpMetricsAddr,
		"--healthz-bind-address=127.0.0.1:10256",
		"--v=2")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PATH="+kp.bin+":"+os.Getenv("PATH"))
	kp.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	go func() {
		_ = cmd.Wait() // it ends killed, below: its status says nothing
		close(kp.done)
	}()
	t.undo = append(t.undo, func() error {
		_ = cmd.Process.Kill() // fails only if it is gone already
		<-kp.done
		return nil
	})
	return kp, nil
}

// iptablesCommands makes dir hold the iptables commands kube-proxy runs, each a link to
// Debian's command of backend: xtables-*-multi picks what to do by the name it is run as.
func iptablesCommands(dir string, backend IPTablesBackend) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, cmd := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(family + "-" + string(backend) + cmd)
			if err != nil {
				return fmt.Errorf("iptables %s backend: %w", backend, err)
			}
			if err := os.Symlink(target, filepath.Join(dir, family+cmd)); err != nil {
				return err
			}
		}
	}
	return nil
}

// kube-proxy's metrics of its IPv4 rules waitSynced reads.
const (
	kpLastSync     = `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`        // end of the last successful sync, unix s
	kpLastQueued   = `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"}` // last change that asked for one
	kpFullSyncSum  = `kubeproxy_sync_full_proxy_rules_duration_seconds_sum{ip_family="IPv4"}`
	kpFullSyncsNum = `kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}`
)

// waitSynced polls kube-proxy's metrics until a successful sync of the IPv4 rules, newer than
// any it looked at before, has left rules of which ok holds, and no change asked for another
// since, when quiet; it returns that sync's time.
func (kp *kubeProxy) waitSynced(ctx context.Context, quiet bool, ok func(kubeRules) bool) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, kpTimeout)
	defer cancel()
	for {
		select {
		case <-kp.done:
			return time.Time{}, fmt.Errorf("kube-proxy exited: %s", tail(kp.log, 5))
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("kube-proxy did not program the services: %w (%s)", ctx.Err(), tail(kp.log, 5))
		default:
		}
		m, err := kp.scrape(ctx)
		if last := m[kpLastSync]; err == nil && last > kp.seen && (!quiet || last >= m[kpLastQueued]) {
			kp.seen = last
			got, err := kp.programmed()
			if err != nil {
				return time.Time{}, err
			}
			if ok(got) {
				return time.Unix(0, int64(last*1e9)), nil
			}
		}
		time.Sleep(20 * time.Millisecond) // polling kube-proxy's metrics, bounded by ctx
	}
}

// waitMetrics polls kube-proxy's metrics until ok holds of them, and returns them.
func (kp *kubeProxy) waitMetrics(ctx context.Context, ok func(map[string]float64) bool) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, kpTimeout)
	defer cancel()
	for {
		m, err := kp.scrape(ctx)
		if err == nil && ok(m) {
			return m, nil
		}
		select {
		case <-kp.done:
			return nil, fmt.Errorf("kube-proxy exited: %s", tail(kp.log, 5))
		case <-ctx.Done():
			return nil, fmt.Errorf("kube-proxy's metrics: %w (%w)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond): // polling, bounded by ctx
		}
	}
}

// scrape reads kube-proxy's /metrics: each series, labels included, to its value.
func (kp *kubeProxy) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+kpMetricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := kp.metrics.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// kubeRules are the "ClusterIP:port"s kube-proxy's KUBE-SERVICES chains name: in the nat
// table, those it sends to a Service's chain; in the filter table, those it rejects for want of
// endpoints.
type kubeRules struct {
	clusterIP, reject map[string]bool
}

// programmed reads the node's nat and filter tables.
func (kp *kubeProxy) programmed() (kubeRules, error) {
	out, err := exec.Command("nsenter", "--net="+kp.netns, "--", filepath.Join(kp.bin, "iptables-save")).Output()
	if err != nil {
		return kubeRules{}, fmt.Errorf("iptables-save: %w", err)
	}
	return parseKubeRules(out), nil
}

// parseKubeRules reads iptables-save output for kube-proxy's rules
// "-A KUBE-SERVICES -d IP/32 -p tcp ... --dport PORT -j KUBE-SVC-…" (nat) and
// "-A KUBE-SERVICES -d IP/32 -p tcp ... --dport PORT -j REJECT …" (filter).
func parseKubeRules(save []byte) kubeRules {
	r := kubeRules{clusterIP: map[string]bool{}, reject: map[string]bool{}}
	var table string
	for _, line := range strings.Split(string(save), "\n") {
		if t, ok := strings.CutPrefix(line, "*"); ok {
			table = t
			continue
		}
		if !strings.HasPrefix(line, "-A KUBE-SERVICES ") {
			continue
		}
		var ip, port, target string
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "-d":
				ip = strings.TrimSuffix(f[i+1], "/32")
			case "--dport":
				port = f[i+1]
			case "-j":
				target = f[i+1]
			}
		}
		switch {
		case ip == "" || port == "":
		case table == "nat" && strings.HasPrefix(target, "KUBE-SVC-"):
			r.clusterIP[ip+":"+port] = true
		case table == "filter" && target == "REJECT":
			r.reject[ip+":"+port] = true
		}
	}
	return r
}

// tail is the last n lines of a log, joined by " | ".
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msSince(t time.Time) float64 { return ms(time.Since(t)) }
