package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/peers"
)

// The peers suite (issue 25): ebpfnet and Cilium, each the CNI of a kubernetes lab of the same
// spec, up side by side on this machine and measured round by round, interleaved, so that the
// machine's noise falls on both alike. Every figure is a ratio ebpfnet / Cilium.

// PeersConfig says what the peers suite measures and how long.
type PeersConfig struct {
	Rounds     int
	Throughput time.Duration // one iperf3 run
	Requests   time.Duration // one TCP_RR or TCP_CRR run
	// Modes are the labs' modes, each a pair of labs; the last also gets the figures that do
	// not depend on the mode: rules in force, policy enforcement, CNI ADD and memory.
	Modes []string
	// Rules is the NetworkPolicy rules in force for the rules figures (0 skips them).
	Rules int
	// Pods are added to one node, Parallel at a time, for the CNI and memory figures (0 skips).
	Pods, Parallel int
}

// PeerFigure is one figure, measured on ebpfnet and on Cilium in every round.
type PeerFigure struct {
	Name string `json:"name"`
	Mode string `json:"mode"`
	Unit string `json:"unit"`
	// HigherIsBetter: throughput and rates; latency, time and memory are better lower.
	HigherIsBetter bool      `json:"higherIsBetter"`
	Ebpfnet        []float64 `json:"ebpfnet"`
	Cilium         []float64 `json:"cilium"`
	EbpfnetMedian  float64   `json:"ebpfnetMedian"`
	CiliumMedian   float64   `json:"ciliumMedian"`
	// Ratio is ebpfnet's median over Cilium's.
	Ratio float64 `json:"ratio"`
}

// Better says whether ebpfnet's median is at least as good as Cilium's.
func (f PeerFigure) Better() bool {
	if f.HigherIsBetter {
		return f.Ratio >= 1
	}
	return f.Ratio <= 1
}

// PeersCost is the peers suite's figures.
type PeersCost struct {
	CiliumVersion string       `json:"ciliumVersion"`
	Rounds        int          `json:"rounds"`
	Figures       []PeerFigure `json:"figures"`
}

// Peer lab pods: two clients and two servers, one of each per node, and an outsider no rule
// lets in (the proof that a policy is in force).
const (
	peerNS        = "x"
	peerPort      = 80 // the pods' echo servers (lab serve)
	peerClusterIP = "10.96.0.80"
)

func peersSpec(mode, cni string) *lab.Spec {
	tcp := []lab.Port{{Port: peerPort, Protocol: "TCP"}}
	pod := func(name, node, role string) lab.PodSpec {
		return lab.PodSpec{Namespace: peerNS, Name: name, Node: node, Labels: map[string]string{"pod": name, "role": role}, Ports: tcp}
	}
	return &lab.Spec{Mode: mode, Kubernetes: true, CNI: cni, Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}},
		Namespaces: []lab.Namespace{{Name: peerNS}},
		Pods: []lab.PodSpec{pod("a", "n1", "client"), pod("b", "n1", "server"), pod("c", "n2", "server"),
			pod("d", "n2", "client"), pod("e", "n2", "outsider")},
		Services: []lab.ServiceSpec{{Namespace: peerNS, Name: "echo", Selector: map[string]string{"pod": "c"},
			Ports: []lab.ServicePortSpec{{Port: peerPort}}, ClusterIP: peerClusterIP}}}
}

// peerLab is one lab of a pair, up, with iperf3 serving in its server pods.
type peerLab struct {
	cni   string
	st    *lab.State
	api   kubernetes.Interface
	iperf []*exec.Cmd
}

func (l *peerLab) pod(name string) lab.Pod {
	for _, p := range l.st.Pods {
		if p.Name == name && p.Namespace == peerNS {
			return p
		}
	}
	return lab.Pod{}
}

func (l *peerLab) addr(name string, port int) netip.AddrPort {
	return netip.AddrPortFrom(l.pod(name).IP, uint16(port))
}

func (l *peerLab) close() {
	for _, c := range l.iperf {
		_ = c.Process.Kill()
		_ = c.Wait() // killed: its exit status says so
	}
	if l.st != nil {
		downLab(l.st.Name)
	}
}

// upPeerLab brings up the lab of cni in mode and starts iperf3 in the server pods.
func upPeerLab(ctx context.Context, exe, mode, cni string) (*peerLab, error) {
	spec := peersSpec(mode, cni)
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	name := "bp" + cni[:1] + mode[:2]
	downLab(name) // what an interrupted run left
	l := &peerLab{cni: cni}
	slog.Info("peers: lab up", "lab", name, "cni", cni, "mode", mode)
	st, err := lab.Up(ctx, name, spec, lab.Options{Exe: exe})
	if err != nil {
		downLab(name)
		return nil, fmt.Errorf("%s lab (%s): %w", cni, mode, err)
	}
	l.st = st
	if l.api, err = labClient(st); err != nil {
		l.close()
		return nil, err
	}
	for _, server := range []string{"b", "c"} {
		p := l.pod(server)
		c := exec.Command("nsenter", "--net="+p.Netns, "--", "iperf3", "-s", "-B", p.IP.String(), "-p", fmt.Sprint(iperfPort))
		if err := c.Start(); err != nil {
			l.close()
			return nil, fmt.Errorf("iperf3 in %s: %w", p.Key(), err)
		}
		l.iperf = append(l.iperf, c)
		if err := waitListening(p.Netns, netip.AddrPortFrom(p.IP, uint16(iperfPort))); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

// upPeerLabs brings up the ebpfnet and the Cilium lab of mode side by side.
func upPeerLabs(ctx context.Context, exe, mode string) ([2]*peerLab, error) {
	var labs [2]*peerLab
	var errs [2]error
	var wg sync.WaitGroup
	for i, cni := range []string{lab.CNIEbpfnet, lab.CNICilium} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			labs[i], errs[i] = upPeerLab(ctx, exe, mode, cni)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		for _, l := range labs {
			if l != nil {
				l.close()
			}
		}
		return labs, err
	}
	return labs, nil
}

// peerMeasure is one figure's measurement in a lab.
type peerMeasure struct {
	name, unit     string
	higherIsBetter bool
	run            func(*peerLab) (float64, error)
}

// MeasurePeers runs the peers suite. exe is the ebpfnet binary the ebpfnet labs run.
func MeasurePeers(ctx context.Context, exe string, cfg PeersConfig) (*PeersCost, error) {
	if !peers.CiliumBuilt() {
		return nil, fmt.Errorf("cilium %s is not built in %s: make deps-cilium builds it", peers.CiliumVersion, peers.CiliumDir())
	}
	cost := &PeersCost{CiliumVersion: peers.CiliumVersion, Rounds: cfg.Rounds}
	for i, mode := range cfg.Modes {
		if err := ctx.Err(); err != nil {
			return cost, err
		}
		figs, err := measurePeerMode(ctx, exe, mode, i == len(cfg.Modes)-1, cfg)
		cost.Figures = append(cost.Figures, figs...)
		if err != nil {
			return cost, fmt.Errorf("peers, %s: %w", mode, err)
		}
	}
	return cost, nil
}

func measurePeerMode(ctx context.Context, exe, mode string, all bool, cfg PeersConfig) ([]PeerFigure, error) {
	labs, err := upPeerLabs(ctx, exe, mode)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, l := range labs {
			l.close()
		}
	}()
	figs, err := interleave(ctx, labs, mode, cfg.Rounds, pathMeasures(cfg, ""))
	if err != nil || !all {
		return figs, err
	}
	if cfg.Rules > 0 {
		for _, l := range labs {
			if err := applyRules(ctx, l, cfg.Rules); err != nil {
				return figs, fmt.Errorf("%s: %d rules: %w", l.cni, cfg.Rules, err)
			}
		}
		more, err := interleave(ctx, labs, mode, cfg.Rounds, pathMeasures(cfg, fmt.Sprintf(", %d rules in force", cfg.Rules)))
		figs = append(figs, more...)
		if err != nil {
			return figs, err
		}
		for _, l := range labs {
			if err := l.api.NetworkingV1().NetworkPolicies(peerNS).Delete(ctx, rulesPolicy, metav1.DeleteOptions{}); err != nil {
				return figs, err
			}
		}
	}
	enforce := []peerMeasure{{"NetworkPolicy created until enforced on every node", "ms", false, func(l *peerLab) (float64, error) {
		return measureEnforcement(ctx, l)
	}}}
	more, err := interleave(ctx, labs, mode, cfg.Rounds, enforce)
	figs = append(figs, more...)
	if err != nil || cfg.Pods == 0 {
		return figs, err
	}
	// Once per lab: a hundred pods are no round's worth.
	cni := PeerFigure{Name: fmt.Sprintf("CNI ADD p50, %d pods %d at a time", cfg.Pods, cfg.Parallel), Mode: mode, Unit: "ms"}
	cni99 := PeerFigure{Name: fmt.Sprintf("CNI ADD p99, %d pods %d at a time", cfg.Pods, cfg.Parallel), Mode: mode, Unit: "ms"}
	mem := PeerFigure{Name: "agent memory per pod (RSS growth)", Mode: mode, Unit: "KiB"}
	for _, l := range labs {
		c, err := measurePeerCNI(ctx, l, cfg.Pods, cfg.Parallel)
		if err != nil {
			return figs, fmt.Errorf("%s: CNI figures: %w", l.cni, err)
		}
		slog.Info("peers: CNI", "cni", l.cni, "addP50ms", round2(c.addP50), "addP99ms", round2(c.addP99), "rssBeforeKiB", c.rssBefore, "rssAfterKiB", c.rssAfter)
		perPod := float64(c.rssAfter-c.rssBefore) / float64(cfg.Pods)
		add(&cni, l.cni, c.addP50)
		add(&cni99, l.cni, c.addP99)
		add(&mem, l.cni, perPod)
	}
	return append(figs, finish(cni), finish(cni99), finish(mem)), nil
}

// pathMeasures are the pod-to-pod and ClusterIP figures; suffix tells them apart.
func pathMeasures(cfg PeersConfig, suffix string) []peerMeasure {
	stream := func(server string) func(*peerLab) (float64, error) {
		return func(l *peerLab) (float64, error) {
			return iperfStream(l.pod("a").Netns, l.addr(server, iperfPort), cfg.Throughput)
		}
	}
	rr := func(dst func(*peerLab) netip.AddrPort, connect bool) func(*peerLab) (float64, error) {
		return func(l *peerLab) (float64, error) {
			run := TCPRR
			if connect {
				run = TCPCRR
			}
			t, err := run(l.pod("a").Netns, dst(l), cfg.Requests)
			return t.MeanMicros(), err
		}
	}
	pod := func(name string) func(*peerLab) netip.AddrPort {
		return func(l *peerLab) netip.AddrPort { return l.addr(name, peerPort) }
	}
	svc := func(*peerLab) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(peerClusterIP), peerPort)
	}
	ms := []peerMeasure{
		{"TCP_STREAM same-node" + suffix, "Gbit/s", true, stream("b")},
		{"TCP_STREAM cross-node" + suffix, "Gbit/s", true, stream("c")},
		{"TCP_RR same-node" + suffix, "µs", false, rr(pod("b"), false)},
		{"TCP_RR cross-node" + suffix, "µs", false, rr(pod("c"), false)},
		{"TCP_CRR same-node" + suffix, "µs", false, rr(pod("b"), true)},
		{"TCP_CRR cross-node" + suffix, "µs", false, rr(pod("c"), true)},
	}
	if suffix == "" {
		ms = append(ms, peerMeasure{"ClusterIP TCP_RR (backend cross-node)", "µs", false, rr(svc, false)},
			peerMeasure{"ClusterIP TCP_CRR (backend cross-node)", "µs", false, rr(svc, true)})
	}
	return ms
}

// interleave measures every figure in both labs, round by round; each round starts with the
// other lab than the one before.
func interleave(ctx context.Context, labs [2]*peerLab, mode string, rounds int, ms []peerMeasure) ([]PeerFigure, error) {
	figs := make([]PeerFigure, len(ms))
	for i, m := range ms {
		figs[i] = PeerFigure{Name: m.name, Mode: mode, Unit: m.unit, HigherIsBetter: m.higherIsBetter}
	}
	for r := range rounds {
		for i, m := range ms {
			for k := range labs {
				if err := ctx.Err(); err != nil {
					return figs, err
				}
				l := labs[(k+r)%2]
				v, err := m.run(l)
				if err != nil {
					for i := range figs {
						figs[i] = finish(figs[i])
					}
					return figs, fmt.Errorf("%s, %s, round %d: %w", l.cni, m.name, r+1, err)
				}
				add(&figs[i], l.cni, v)
				slog.Info("peers: measured", "mode", mode, "round", r+1, "figure", m.name, "cni", l.cni, m.unit, round2(v))
			}
		}
	}
	for i := range figs {
		figs[i] = finish(figs[i])
	}
	return figs, nil
}

func add(f *PeerFigure, cni string, v float64) {
	if cni == lab.CNICilium {
		f.Cilium = append(f.Cilium, v)
	} else {
		f.Ebpfnet = append(f.Ebpfnet, v)
	}
}

func finish(f PeerFigure) PeerFigure {
	f.EbpfnetMedian, f.CiliumMedian = median(f.Ebpfnet), median(f.Cilium)
	f.Ratio = ratio(f.EbpfnetMedian, f.CiliumMedian)
	return f
}

// markdown writes the peers table: one row per figure, medians and the ratio, and whether
// ebpfnet meets the goal (a ratio >= 1 where higher is better, <= 1 where lower is).
func (p *PeersCost) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "## peers: ebpfnet / Cilium %s (%d rounds, interleaved)\n\n", p.CiliumVersion, p.Rounds)
	b.WriteString("| figure | mode | ebpfnet | Cilium | ebpfnet / Cilium | better |\n|---|---|---:|---:|---:|---|\n")
	for _, f := range p.Figures {
		better := "yes"
		if !f.Better() {
			better = "no"
		}
		fmt.Fprintf(b, "| %s | %s | %.2f %s | %.2f %s | %.3f | %s |\n", f.Name, f.Mode, f.EbpfnetMedian, f.Unit, f.CiliumMedian, f.Unit, f.Ratio, better)
	}
	b.WriteString("\nEvery round, in the order measured:\n\n")
	for _, f := range p.Figures {
		fmt.Fprintf(b, "- %s, %s (%s): ebpfnet %s; Cilium %s\n", f.Name, f.Mode, f.Unit, rounds(f.Ebpfnet), rounds(f.Cilium))
	}
	b.WriteString("\nTwo kubernetes labs of the same spec (2 nodes), one networked by each, up side by side. TCP_STREAM: one iperf3 stream; TCP_RR and TCP_CRR: one-byte requests to the pods' echo servers, on one connection or a new one each, as µs per transaction; the CNI ADD figures are taken once per lab, by a wrapper timing each call of the plugin while kubelet adds a Deployment's pods to one node.\n\n")
}

func rounds(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(parts, " ")
}
