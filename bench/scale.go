package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
)

// ScaleSuite is the name of the suite that brings up a large lab beside a small one of the
// same shape (ScaleConfig), times the large one's policy and compares their pod-to-pod figures.
const ScaleSuite = "scale"

// ScaleConfig is the shape of the scale suite's labs.
type ScaleConfig struct {
	Nodes      int `json:"nodes"`
	Pods       int `json:"pods"`      // of the large lab
	SmallPods  int `json:"smallPods"` // of the small one
	Namespaces int `json:"namespaces"`
	Policies   int `json:"policies"`
	Applies    int `json:"applies"` // policy apply-and-delete rounds
}

// DefaultScale is issue 19's lab: 1,000 pods on 5 nodes, beside 10 pods on 5 nodes.
var DefaultScale = ScaleConfig{Nodes: 5, Pods: 1000, SmallPods: 10, Namespaces: 10, Policies: 10, Applies: 5}

// ScaleCost is what the scale suite reports beside its two pod-to-pod suites.
type ScaleCost struct {
	Config ScaleConfig  `json:"config"`
	Small  ScaleLab     `json:"small"`
	Large  ScaleLab     `json:"large"`
	Policy *ScalePolicy `json:"policy,omitempty"`
	// AgentsAfterPolicy are the large lab's agents once the policy rounds are done.
	AgentsAfterPolicy []AgentUsage `json:"agentsAfterPolicy,omitempty"`
}

// ScaleLab is one lab's bring-up.
type ScaleLab struct {
	Pods int `json:"pods"`
	// UpSeconds is lab.Up's wall time: etcd, agents, every pod's CNI ADD (one at a time), the
	// probes' servers; DownSeconds is lab.Down's.
	UpSeconds   float64 `json:"upSeconds"`
	DownSeconds float64 `json:"downSeconds,omitempty"`
	// CNI is every ADD of the bring-up, timed by a wrapper in the plugin's place.
	CNI ScaleCNI `json:"cni"`
	// Agents are the agents (and etcd) once the lab is up.
	Agents []AgentUsage `json:"agents"`
}

// ScaleCNI is the ADDs of one lab's bring-up, in the order the lab made them.
type ScaleCNI struct {
	Adds  int     `json:"adds"`
	P50ms float64 `json:"p50ms"`
	P99ms float64 `json:"p99ms"`
	MaxMs float64 `json:"maxMs"`
	// FirstP50ms and LastP50ms are the median of the first and of the last tenth of the ADDs
	// (at least one): whether an ADD costs more in a fuller cluster.
	FirstP50ms float64 `json:"firstP50ms"`
	LastP50ms  float64 `json:"lastP50ms"`
	// PhasesMeanMs is the agents' share by phase (ebpfnet_cni_add_phase_seconds), mean over
	// every node's ADDs.
	PhasesMeanMs map[string]float64 `json:"phasesMeanMs,omitempty"`
}

// AgentUsage is one lab process's resources and, for an agent, its reconciles so far.
type AgentUsage struct {
	Name       string  `json:"name"`
	CPUSeconds float64 `json:"cpuSeconds"` // user + system since it started
	RSSMiB     float64 `json:"rssMiB"`
	Reconciles int     `json:"reconciles,omitempty"`
	// ReconcileMeanMs and ReconcileP99ms are from ebpfnet_reconcile_duration_seconds, the p99
	// as the upper bound of its bucket.
	ReconcileMeanMs float64 `json:"reconcileMeanMs,omitempty"`
	ReconcileP99ms  float64 `json:"reconcileP99ms,omitempty"`
}

// ScalePolicy is the large lab's policy rounds: the policy set applied in one call, checked,
// then deleted policy by policy.
type ScalePolicy struct {
	Policies int `json:"policies"`
	Rounds   int `json:"rounds"`
	// ApplyMs: the apply call, from its start until it returns (the agent answers once every
	// node has programmed the set).
	ApplyMs []float64 `json:"applyMs"`
	// WaitMs: after it returned, `policy wait` (POST /v1/sync) and then the policy status
	// showing every node enforcing every policy of the set.
	WaitMs []float64 `json:"waitMs"`
	// PacketMs: from the apply call's start until the probe client's connections to the denied
	// server fail (the first of three failures in a row), judged by packets alone.
	PacketMs []float64 `json:"packetMs"`
	// DeleteMs: deleting the set, one call per policy, each returning once every node has
	// programmed it.
	DeleteMs    []float64 `json:"deleteMs"`
	ApplyP50ms  float64   `json:"applyP50ms"`
	ApplyMaxMs  float64   `json:"applyMaxMs"`
	WaitP50ms   float64   `json:"waitP50ms"`
	PacketP50ms float64   `json:"packetP50ms"`
	PacketMaxMs float64   `json:"packetMaxMs"`
	DeleteP50ms float64   `json:"deleteP50ms"`
	// ImplDelayMeanMs is the agents' ebpfnet_policy_implementation_delay_seconds over the
	// rounds, mean over every node's observations.
	ImplDelayMeanMs float64 `json:"implementationDelayMeanMs"`
}

// MeasureScale brings up the small lab and the large one, measures pod to pod in both, round
// by round, interleaved (the same-node and cross-node suites it returns, each against the
// small lab), then times the policy rounds in the large lab. What was measured is returned
// with an error too.
func MeasureScale(ctx context.Context, sc ScaleConfig, cfg Config) (*ScaleCost, []Suite, error) {
	cost := &ScaleCost{Config: sc}
	opts, err := benchLabOptions()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "ebpfnet-scale-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	cniLog := filepath.Join(dir, "cni.log")
	if opts.CNIPlugin, err = cniTimer(dir, filepath.Join(filepath.Dir(opts.Exe), "ebpfnet-cni"), cniLog); err != nil {
		return nil, nil, err
	}
	stamp := time.Now().UnixNano() % 10000
	names := [2]string{fmt.Sprintf("ss%d", stamp), fmt.Sprintf("sl%d", stamp)}
	labs := [2]*lab.State{}
	into := [2]*ScaleLab{&cost.Small, &cost.Large}
	defer func() {
		for _, n := range names {
			downLab(n) // a no-op for a lab taken down below
		}
	}()
	for i, pods := range []int{sc.SmallPods, sc.Pods} {
		spec, err := ScaleSpec(sc.Nodes, pods, sc.Namespaces)
		if err != nil {
			return cost, nil, err
		}
		slog.Info("scale: bringing a lab up", "lab", names[i], "nodes", sc.Nodes, "pods", pods)
		if err := os.WriteFile(cniLog, nil, 0o644); err != nil {
			return cost, nil, err
		}
		start := time.Now()
		st, err := lab.Up(ctx, names[i], spec, opts)
		if err != nil {
			return cost, nil, fmt.Errorf("lab %s of %d pods: %w", names[i], pods, err)
		}
		labs[i] = st
		l := into[i]
		l.Pods, l.UpSeconds = pods, time.Since(start).Seconds()
		if l.CNI, err = readCNITimes(cniLog); err != nil {
			return cost, nil, err
		}
		if l.CNI.PhasesMeanMs, l.Agents, err = labUsage(st); err != nil {
			return cost, nil, err
		}
		slog.Info("scale: lab up", "lab", names[i], "pods", pods, "seconds", round2(l.UpSeconds),
			"addP50ms", l.CNI.P50ms, "addP99ms", l.CNI.P99ms, "firstP50ms", l.CNI.FirstP50ms, "lastP50ms", l.CNI.LastP50ms)
	}
	suites, err := scaleTraffic(labs, cfg)
	if err != nil {
		return cost, suites, err
	}
	if cost.Policy, err = scalePolicy(ctx, labs[1], sc); err != nil {
		return cost, suites, fmt.Errorf("policy rounds: %w", err)
	}
	if _, cost.AgentsAfterPolicy, err = labUsage(labs[1]); err != nil {
		return cost, suites, err
	}
	for i, n := range names {
		start := time.Now()
		if err := lab.Down(n); err != nil {
			return cost, suites, fmt.Errorf("lab down %s: %w", n, err)
		}
		into[i].DownSeconds = time.Since(start).Seconds()
	}
	return cost, suites, nil
}

// cniTimer writes a plugin that runs plugin and appends "COMMAND startNs endNs status" to log.
func cniTimer(dir, plugin, log string) (string, error) {
	path := filepath.Join(dir, "ebpfnet-cni")
	script := fmt.Sprintf("#!/bin/sh\ns=$(date +%%s%%N)\n%s\nrc=$?\necho \"$CNI_COMMAND $s $(date +%%s%%N) $rc\" >>%s\nexit $rc\n",
		shellQuote(plugin), shellQuote(log))
	return path, os.WriteFile(path, []byte(script), 0o755)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// readCNITimes reads cniTimer's log: the ADDs' times, in the order they ran.
func readCNITimes(path string) (ScaleCNI, error) {
	f, err := os.Open(path)
	if err != nil {
		return ScaleCNI{}, err
	}
	defer f.Close()
	var adds []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 || fields[0] != "ADD" {
			continue
		}
		start, err1 := strconv.ParseInt(fields[1], 10, 64)
		end, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return ScaleCNI{}, fmt.Errorf("CNI timer line %q: %w", sc.Text(), err)
		}
		adds = append(adds, float64(end-start)/1e6)
	}
	if err := sc.Err(); err != nil {
		return ScaleCNI{}, err
	}
	return cniStats(adds), nil
}

// cniStats summarises ADD times given in the order they ran.
func cniStats(adds []float64) ScaleCNI {
	if len(adds) == 0 {
		return ScaleCNI{}
	}
	tenth := max(1, len(adds)/10)
	c := ScaleCNI{Adds: len(adds), FirstP50ms: round2(median(adds[:tenth])), LastP50ms: round2(median(adds[len(adds)-tenth:]))}
	s := append([]float64(nil), adds...)
	sort.Float64s(s)
	c.P50ms, c.P99ms, c.MaxMs = round2(median(s)), round2(s[min(len(s)-1, len(s)*99/100)]), round2(s[len(s)-1])
	return c
}

// scaleTraffic measures pod to pod in both labs, the four setups interleaved round by round,
// and returns them as two suites, same node and cross node, each against the small lab.
func scaleTraffic(labs [2]*lab.State, cfg Config) ([]Suite, error) {
	pairs := []struct{ suffix, to string }{{"same-node", "perf-same"}, {"cross-node", "perf-cross"}}
	var topos []*Topology
	all := Suite{Name: ScaleSuite}
	for _, p := range pairs {
		for i, size := range []string{"small", "large"} {
			t, err := labTopology(labs[i], size+"-"+p.suffix, "perf-client", p.to)
			if t != nil {
				topos = append(topos, t)
			}
			if err != nil {
				closeAll(topos)
				return nil, err
			}
			all.Setups = append(all.Setups, Setup{Name: t.Name})
		}
	}
	err := measure(&all, topos, cfg)
	closeAll(topos)
	var suites []Suite
	for k, p := range pairs {
		base := "small-" + p.suffix
		suites = append(suites, Suite{Name: ScaleSuite + "-" + p.suffix, Baseline: base, Limit: base, Setups: all.Setups[2*k : 2*k+2]})
	}
	return suites, err
}

// labTopology is a lab's pod from (in scaleNS) as the client of its pod to, which runs
// iperf3 and sockperf until Close.
func labTopology(st *lab.State, name, from, to string) (*Topology, error) {
	c, err := st.Pod(scaleNS + "/" + from)
	if err != nil {
		return nil, err
	}
	s, err := st.Pod(scaleNS + "/" + to)
	if err != nil {
		return nil, err
	}
	t := &Topology{Name: name, Client: nsName(c.Netns), Server: nsName(s.Netns), ServerIP: s.IP}
	return t, t.startServers()
}

// scalePolicy applies the policy set sc.Applies times, each time checking that the probes'
// denied pair is denied and the allowed pair answers, and deletes it again.
func scalePolicy(ctx context.Context, st *lab.State, sc ScaleConfig) (*ScalePolicy, error) {
	docs, names, err := scalePolicies(sc.Policies, sc.Namespaces)
	if err != nil {
		return nil, err
	}
	client, err := st.Pod(scaleNS + "/client")
	if err != nil {
		return nil, err
	}
	denied, err := st.Pod(scaleNS + "/denied")
	if err != nil {
		return nil, err
	}
	deniedAt := netip.AddrPortFrom(denied.IP, scaleProbePort)
	c := st.Client()
	before, err := implDelay(st)
	if err != nil {
		return nil, err
	}
	p := &ScalePolicy{Policies: len(names), Rounds: sc.Applies}
	for r := range sc.Applies {
		if err := waitConnects(client.Netns, deniedAt, time.Minute); err != nil {
			return p, fmt.Errorf("round %d, before the apply: %w", r+1, err)
		}
		start := time.Now()
		deadline := start.Add(time.Minute)
		type streak struct {
			at  time.Time
			err error
		}
		probed := make(chan streak, 1)
		go func() {
			at, err := firstOfDeniedStreak(client.Netns, deniedAt, deadline)
			probed <- streak{at, err}
		}()
		if _, err := c.ApplyPolicies(ctx, docs); err != nil {
			<-probed
			return p, fmt.Errorf("round %d: apply: %w", r+1, err)
		}
		applied := time.Now()
		err := c.Wait(ctx, 30*time.Second)
		if err == nil {
			err = waitEnforcing(ctx, st, func(ps []agentapi.PolicyStatus) bool { return allEnforcing(ps, names, len(st.Nodes)) })
		}
		waited := time.Now()
		pr := <-probed
		if err = errors.Join(err, pr.err); err != nil {
			return p, fmt.Errorf("round %d: %w", r+1, err)
		}
		// The real probes, after the timed ones: an echo through the lab's servers.
		if st.Probe(scaleNS+"/client", scaleNS+"/denied", scaleProbePort, "TCP") == nil {
			return p, fmt.Errorf("round %d: client reaches denied once every node enforces deny-denied", r+1)
		}
		if err := st.Probe(scaleNS+"/client", scaleNS+"/allowed", scaleProbePort, "TCP"); err != nil {
			return p, fmt.Errorf("round %d: client does not reach allowed under allow-client: %w", r+1, err)
		}
		delStart := time.Now()
		for _, n := range names {
			ns, name, _ := strings.Cut(n, "/")
			if err := c.DeletePolicy(ctx, ns, name); err != nil {
				return p, fmt.Errorf("round %d: delete %s: %w", r+1, n, err)
			}
		}
		p.DeleteMs = append(p.DeleteMs, ms(time.Since(delStart)))
		p.ApplyMs = append(p.ApplyMs, ms(applied.Sub(start)))
		p.WaitMs = append(p.WaitMs, ms(waited.Sub(applied)))
		p.PacketMs = append(p.PacketMs, ms(pr.at.Sub(start)))
		slog.Info("scale: policy round", "round", r+1, "applyMs", p.ApplyMs[r], "waitMs", p.WaitMs[r], "packetMs", p.PacketMs[r], "deleteMs", p.DeleteMs[r])
	}
	p.ApplyP50ms, p.ApplyMaxMs = median(p.ApplyMs), maxOf(p.ApplyMs)
	p.WaitP50ms, p.DeleteP50ms = median(p.WaitMs), median(p.DeleteMs)
	p.PacketP50ms, p.PacketMaxMs = median(p.PacketMs), maxOf(p.PacketMs)
	after, err := implDelay(st)
	if err != nil {
		return p, err
	}
	if n := after.count - before.count; n > 0 {
		p.ImplDelayMeanMs = round2(1000 * (after.sum - before.sum) / n)
	}
	return p, nil
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// waitConnects waits until a connection from nsPath to dst is established.
func waitConnects(nsPath string, dst netip.AddrPort, within time.Duration) error {
	deadline := time.Now().Add(within)
	for !connects(nsPath, dst) {
		if time.Now().After(deadline) {
			return fmt.Errorf("no connection to %s within %s", dst, within)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by the deadline
	}
	return nil
}

// allEnforcing says whether every node of nodes enforces each of names ("ns/name").
func allEnforcing(ps []agentapi.PolicyStatus, names []string, nodes int) bool {
	enforcing := map[string]bool{}
	for _, s := range ps {
		enforcing[s.Namespace+"/"+s.Name] = s.Nodes == nodes && s.Enforcing == nodes
	}
	for _, n := range names {
		if !enforcing[n] {
			return false
		}
	}
	return true
}

// histSum is a histogram's observations (summed over nodes), with its cumulative buckets
// when it is one node's.
type histSum struct {
	count, sum float64
	buckets    []bucket
}

// bucket is a histogram bucket: how many observations were at most le.
type bucket struct{ le, cumulative float64 }

// implDelay sums every node's ebpfnet_policy_implementation_delay_seconds.
func implDelay(st *lab.State) (histSum, error) {
	var h histSum
	for _, n := range st.Nodes {
		hists, err := scrapeHistograms(n)
		if err != nil {
			return h, err
		}
		one := hists["ebpfnet_policy_implementation_delay_seconds"]
		h.count += one.count
		h.sum += one.sum
	}
	return h, nil
}

// labUsage is the mean of each CNI ADD phase over every node's ADDs, and every agent's and
// etcd's resources.
func labUsage(st *lab.State) (map[string]float64, []AgentUsage, error) {
	phases := map[string]histSum{}
	var usage []AgentUsage
	for _, n := range st.Nodes {
		hists, err := scrapeHistograms(n)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range agent.AddPhases {
			one, sum := hists["ebpfnet_cni_add_phase_seconds{phase="+p+"}"], phases[p]
			sum.count += one.count
			sum.sum += one.sum
			phases[p] = sum
		}
		u, err := procUsage(n.Name, n.AgentPID)
		if err != nil {
			return nil, nil, err
		}
		if h := hists["ebpfnet_reconcile_duration_seconds"]; h.count > 0 {
			u.Reconciles = int(h.count)
			u.ReconcileMeanMs = round2(1000 * h.sum / h.count)
			u.ReconcileP99ms = round2(1000 * bucketQuantile(h.buckets, h.count, 0.99))
		}
		usage = append(usage, u)
	}
	etcd, err := procUsage("etcd", st.EtcdPID)
	if err != nil {
		return nil, nil, err
	}
	mean := map[string]float64{}
	for p, h := range phases {
		if h.count > 0 {
			mean[p] = round2(1000 * h.sum / h.count)
		}
	}
	return mean, append(usage, etcd), nil
}

// bucketQuantile is the upper bound of the bucket the q-quantile of count observations falls
// in (the largest finite bound for the +Inf bucket).
func bucketQuantile(buckets []bucket, count, q float64) float64 {
	last := 0.0
	for _, b := range buckets {
		if !math.IsInf(b.le, 1) {
			last = b.le
		}
		if b.cumulative >= q*count {
			return last
		}
	}
	return last
}

// procUsage reads a process's CPU time (user + system) and resident memory from /proc.
func procUsage(name string, pid int) (AgentUsage, error) {
	u := AgentUsage{Name: name}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The fields after the command (in parentheses, which may hold spaces): utime and stime
	// are the 12th and 13th, in clock ticks of 100 Hz.
	_, rest, ok := strings.Cut(string(stat), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u.CPUSeconds = round2((utime + stime) / 100)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return u, fmt.Errorf("/proc/%d/status VmRSS %q: %w", pid, v, err)
			}
			u.RSSMiB = round2(kb / 1024)
		}
	}
	return u, nil
}

// scrapeHistograms reads a lab node's agent's histograms, from inside the node's namespace,
// by name, or name{label=value} for one labelled by a single label.
func scrapeHistograms(n lab.Node) (map[string]histSum, error) {
	body, err := metricsOf(n)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", n.Name, err)
	}
	out := map[string]histSum{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			key := name
			if l := m.GetLabel(); len(l) == 1 {
				key += "{" + l[0].GetName() + "=" + l[0].GetValue() + "}"
			}
			hs := histSum{count: float64(h.GetSampleCount()), sum: h.GetSampleSum()}
			for _, b := range h.GetBucket() {
				hs.buckets = append(hs.buckets, bucket{le: b.GetUpperBound(), cumulative: float64(b.GetCumulativeCount())})
			}
			out[key] = hs
		}
	}
	return out, nil
}

// markdown is the scale suite's bring-up, policy and agent tables (its pod-to-pod tables are
// those of its two suites).
func (c *ScaleCost) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "## scale (%d nodes, vxlan: %d pods beside %d)\n\n", c.Config.Nodes, c.Large.Pods, c.Small.Pods)
	b.WriteString("| lab | up | down | CNI ADDs | ADD p50 | ADD p99 | ADD max | first tenth p50 | last tenth p50 | agents' share by phase (mean) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, l := range []ScaleLab{c.Small, c.Large} {
		var phases []string
		for _, p := range agent.AddPhases {
			if v, ok := l.CNI.PhasesMeanMs[p]; ok {
				phases = append(phases, fmt.Sprintf("%s %.1f", p, v))
			}
		}
		fmt.Fprintf(b, "| %d pods | %.1f s | %.1f s | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %s ms |\n", l.Pods, l.UpSeconds, l.DownSeconds,
			l.CNI.Adds, l.CNI.P50ms, l.CNI.P99ms, l.CNI.MaxMs, l.CNI.FirstP50ms, l.CNI.LastP50ms, strings.Join(phases, ", "))
	}
	b.WriteString("\nCNI ADDs one at a time, as `lab up` makes them, each timed around the plugin's exec.\n\n")
	if p := c.Policy; p != nil {
		fmt.Fprintf(b, "%d NetworkPolicies applied in one call in the %d-pod lab, then deleted one by one (%d rounds): apply call until it returns (every node programmed) p50 %.1f ms, max %.1f ms; "+
			"then `policy wait` and the status showing all %d nodes enforcing all of them p50 %.1f ms; apply start until the denied pair's connections fail p50 %.1f ms, max %.1f ms "+
			"(every round the lab's probe then found the denied pair refused and the allowed pair answering); deleting the set p50 %.1f ms; the agents' implementation delay mean %.1f ms.\n\n",
			p.Policies, c.Large.Pods, p.Rounds, p.ApplyP50ms, p.ApplyMaxMs, c.Config.Nodes, p.WaitP50ms, p.PacketP50ms, p.PacketMaxMs, p.DeleteP50ms, p.ImplDelayMeanMs)
	}
	b.WriteString("| process | small lab up: CPU s | RSS MiB | reconciles | mean | p99 ≤ | large lab up: CPU s | RSS MiB | reconciles | mean | p99 ≤ |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, l := range c.Large.Agents {
		var s AgentUsage
		if i < len(c.Small.Agents) {
			s = c.Small.Agents[i]
		}
		fmt.Fprintf(b, "| %s | %.1f | %.0f | %d | %.1f ms | %.0f ms | %.1f | %.0f | %d | %.1f ms | %.0f ms |\n", l.Name, s.CPUSeconds, s.RSSMiB, s.Reconciles, s.ReconcileMeanMs, s.ReconcileP99ms,
			l.CPUSeconds, l.RSSMiB, l.Reconciles, l.ReconcileMeanMs, l.ReconcileP99ms)
	}
	if len(c.AgentsAfterPolicy) > 0 {
		b.WriteString("\nThe large lab's processes after the pod-to-pod rounds and the policy rounds: ")
		var parts []string
		for _, u := range c.AgentsAfterPolicy {
			parts = append(parts, fmt.Sprintf("%s %.1f CPU s, %.0f MiB", u.Name, u.CPUSeconds, u.RSSMiB))
		}
		b.WriteString(strings.Join(parts, "; ") + ".\n")
	}
	b.WriteString("\n")
}
