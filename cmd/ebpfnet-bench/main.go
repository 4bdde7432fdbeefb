// Command ebpfnet-bench measures ebpfnet side by side with kernel baselines (`make bench`).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ebpfnet/ebpfnet/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ebpfnet-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	out := flag.String("out", "bin/bench", "directory for results.json, results.md and ratios.svg")
	rounds := flag.Int("rounds", 5, "measurement rounds, interleaved across setups")
	tput := flag.Duration("throughput", 5*time.Second, "length of one iperf3 run")
	lat := flag.Duration("latency", 3*time.Second, "length of one sockperf run (over IPv6, of one TCP_RR and one TCP_CRR run)")
	repeat := flag.Int("prog-repeat", 1_000_000, "BPF_PROG_TEST_RUN repetitions per sample")
	suites := flag.String("suites", "same-node,same-node-ipv6,cross-node,cross-node-ipv6,policy,services,bgp",
		"comma-separated suites to run: same-node, same-node-ipv6, cross-node, cross-node-ipv6 (VXLAN), policy, services, bgp; scale (not by default: about 10 minutes)")
	serviceUpdates := flag.Int("service-updates", 10, "Service backend changes to time (0 skips them)")
	kubeProxy := flag.String("kube-proxy-services", "1000,10000", "services suite: Service counts for kube-proxy (iptables mode) and ebpfnet among as many Services (empty skips)")
	kubeProxyIPT := flag.String("kube-proxy-iptables", "nft", "services suite: kube-proxy's iptables backend, nft or legacy")
	policyFigures := flag.Bool("policy-figures", true, "measure policy scale, compile and apply times")
	cniPods := flag.Int("cni-pods", 100, "pods to add and delete for the CNI figures (0 skips them)")
	cniParallel := flag.Int("cni-parallel", 10, "CNI figures: ADDs (and DELs) at a time")
	kubePods := flag.Int("kube-pods", 30, "pods of the kubernetes lab's Deployment (0 skips the kubernetes figures)")
	peerModes := flag.String("peers", "native,vxlan", "peers suite: modes of the ebpfnet and Cilium lab pairs, the last also with the figures that do not depend on the mode (empty skips the suite; make deps-cilium builds Cilium)")
	peerRounds := flag.Int("peer-rounds", 7, "peers suite: rounds, interleaved between ebpfnet and Cilium")
	peerRules := flag.Int("peer-rules", 1000, "peers suite: NetworkPolicy rules in force for the rules figures (0 skips them)")
	peerPods := flag.Int("peer-pods", 100, "peers suite: pods added to one node for the CNI ADD and memory figures (0 skips them)")
	bgpJoins := flag.Int("bgp-joins", 5, "bgp suite: nodes to join to a two-rack lab and remove again, timing route convergence (0 skips them)")
	scalePods := flag.Int("scale-pods", bench.DefaultScale.Pods, "scale suite: pods of the large lab (a multiple of -scale-nodes), beside a small lab of two a node")
	scaleNodes := flag.Int("scale-nodes", bench.DefaultScale.Nodes, "scale suite: nodes of both labs")
	scaleApplies := flag.Int("scale-applies", bench.DefaultScale.Applies, "scale suite: policy apply-and-delete rounds in the large lab")
	flag.Parse()
	if *rounds < 1 || *tput < 2*time.Second || *lat < time.Second {
		return fmt.Errorf("-rounds must be >= 1, -throughput >= 2s, -latency >= 1s")
	}
	cfg := bench.Config{Rounds: *rounds, Throughput: *tput, Latency: *lat, ProgRepeat: *repeat, ProgSamples: 5}
	report := bench.NewReport(cfg)

	cost, err := bench.MeasureProgCost(cfg.ProgRepeat, cfg.ProgSamples)
	if err != nil {
		return err
	}
	report.ProgCost = &cost
	if *policyFigures {
		pc, err := measurePolicy(cfg.ProgRepeat)
		if err != nil {
			return err
		}
		report.Policy = pc
	}
	if *cniPods > 0 {
		c, err := bench.MeasureCNI(*cniPods, *cniParallel)
		if err != nil {
			return err
		}
		report.CNI = &c
	}
	if *kubePods > 0 {
		k, err := bench.MeasureKubernetes(10, *kubePods)
		if err != nil {
			return fmt.Errorf("kubernetes figures: %w", err)
		}
		report.Kube = &k
	}
	if *serviceUpdates > 0 {
		u, err := bench.MeasureServiceUpdate(*serviceUpdates)
		if err != nil {
			return fmt.Errorf("service update figures: %w", err)
		}
		report.ServiceUpdate = &u
	}
	if modes := splitList(*peerModes); len(modes) > 0 {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		p, err := bench.MeasurePeers(ctx, filepath.Join(filepath.Dir(exe), "ebpfnet"), bench.PeersConfig{Rounds: *peerRounds,
			Throughput: *tput, Requests: *lat, Modes: modes, Rules: *peerRules, Pods: *peerPods, Parallel: *cniParallel})
		report.Peers = p
		if err != nil {
			// What was measured is kept: a peers run is long.
			if werr := report.Write(*out, os.Stdout); werr != nil {
				slog.Warn("write the partial report", "err", werr)
			}
			return err
		}
	}
	for _, name := range splitList(*suites) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if name == bench.ScaleSuite {
			sc := bench.DefaultScale
			sc.Pods, sc.Nodes, sc.SmallPods, sc.Applies = *scalePods, *scaleNodes, 2*(*scaleNodes), *scaleApplies
			cost, suites, err := bench.MeasureScale(ctx, sc, cfg)
			report.Scale = cost
			report.Suites = append(report.Suites, suites...)
			if err != nil {
				if werr := report.Write(*out, os.Stdout); werr != nil {
					slog.Warn("write the partial report", "err", werr)
				}
				return fmt.Errorf("scale suite: %w", err)
			}
			continue
		}
		def, ok := bench.Suites[name]
		if !ok {
			return fmt.Errorf("unknown suite %q", name)
		}
		slog.Info("running suite", "suite", name)
		builders := def.Builders()
		var kp *bench.KubeProxyBaseline
		if name == "services" {
			counts, err := parseCounts(*kubeProxy)
			if err != nil {
				return fmt.Errorf("-kube-proxy-services: %w", err)
			}
			builders = bench.ServiceSetups(counts)
			if len(counts) > 0 {
				kp = &bench.KubeProxyBaseline{Backend: bench.IPTablesBackend(*kubeProxyIPT), Services: counts}
				if err := kp.Check(); err != nil {
					return err
				}
				builders = append(builders, kp.Setups(ctx)...)
			}
		}
		s, err := bench.RunSuite(name, def.Baseline, def.Limit, builders, cfg)
		if err != nil {
			return err
		}
		if kp != nil {
			report.KubeProxy = kp.Programs
		}
		if name == "bgp" && *bgpJoins > 0 {
			c, err := bench.MeasureBGPConvergence(ctx, *bgpJoins)
			if err != nil {
				return fmt.Errorf("bgp convergence figures: %w", err)
			}
			report.BGP = &c
		}
		report.Suites = append(report.Suites, s)
	}
	return report.Write(*out, os.Stdout)
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

func measurePolicy(repeat int) (*bench.PolicyCost, error) {
	scale, err := bench.MeasurePolicyScale([]int{0, 1000, 10000, 100000}, repeat)
	if err != nil {
		return nil, err
	}
	pc := &bench.PolicyCost{Scale: scale, CompilePods: 1000, CompilePols: 1000}
	if pc.CompileMs, pc.CompileEntries, pc.ProgramMs, err = bench.MeasureCompile(1000, 1000); err != nil {
		return nil, err
	}
	if pc.ApplyP50ms, pc.ApplyMaxMs, err = bench.MeasureApply(10); err != nil {
		return nil, err
	}
	return pc, nil
}
