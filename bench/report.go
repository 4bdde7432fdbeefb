package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/ebpfnet/ebpfnet/agent"
)

// Report is everything one `make bench` measured.
type Report struct {
	Date     time.Time   `json:"date"`
	Commit   string      `json:"commit"` // the ebpfnet-bench build's, "+dirty" when modified
	Kernel   string      `json:"kernel"`
	CPU      string      `json:"cpu"`
	CPUs     int         `json:"cpus"`
	Config   Config      `json:"config"`
	Suites   []Suite     `json:"suites"`
	ProgCost *ProgCost   `json:"progCost,omitempty"`
	CNI      *CNICost    `json:"cni,omitempty"`
	Policy   *PolicyCost `json:"policy,omitempty"`
	Kube     *KubeCost   `json:"kubernetes,omitempty"`
	// ServiceUpdate times a Service backend change until it takes connections.
	ServiceUpdate *ServiceUpdate `json:"serviceUpdate,omitempty"`
	// KubeProxy is how long kube-proxy took to program the services suite's Services.
	KubeProxy []KubeProxyProgram `json:"kubeProxy,omitempty"`
	// BGP is how fast routes follow nodes joining and leaving a two-rack BGP lab.
	BGP *BGPConvergence `json:"bgpConvergence,omitempty"`
	// Peers is ebpfnet beside Cilium, each the CNI of the same kubernetes lab.
	Peers *PeersCost `json:"peers,omitempty"`
	// Scale is a large lab beside a small one of the same shape (the scale suite).
	Scale *ScaleCost `json:"scale,omitempty"`
}

// NewReport stamps the machine it runs on.
func NewReport(cfg Config) *Report {
	kernel := "unknown"
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	return &Report{Date: time.Now().UTC(), Commit: buildCommit(), Kernel: kernel, CPU: cpuModel(),
		CPUs: runtime.NumCPU(), Config: cfg}
}

// buildCommit is the commit this binary was built from, as Go stamps it, or else (GOFLAGS
// may say -buildvcs=false) the checkout it sits in (bin/ of a clone); "+dirty" when modified.
func buildCommit() string {
	commit, dirty := "", false
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if commit == "" {
		exe, err := os.Executable()
		if err != nil {
			return "unknown"
		}
		dir := filepath.Dir(exe)
		out, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
		if err != nil {
			return "unknown"
		}
		commit = strings.TrimSpace(string(out))
		status, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
		dirty = err != nil || len(bytes.TrimSpace(status)) > 0
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if dirty {
		commit += "+dirty"
	}
	return commit
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Write saves results.json, results.md and ratios.svg in dir and prints the markdown to w.
func (r *Report) Write(dir string, w io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	md := r.Markdown()
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := r.chart(filepath.Join(dir, "ratios.svg")); err != nil {
		return fmt.Errorf("draw chart: %w", err)
	}
	_, err = io.WriteString(w, md)
	return err
}

// Markdown renders the tables with ratios against each suite's baseline and limit.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# ebpfnet benchmark\n\n%s · commit %s · kernel %s · %s (%d CPUs) · %d rounds, interleaved; medians\n\n",
		r.Date.Format("2006-01-02 15:04 UTC"), r.Commit, r.Kernel, r.CPU, r.CPUs, r.Config.Rounds)
	if p := r.Peers; p != nil {
		p.markdown(&b)
	}
	for _, s := range r.Suites {
		s.markdown(&b)
	}
	if c := r.Scale; c != nil {
		c.markdown(&b)
	}
	if c := r.ProgCost; c != nil {
		fmt.Fprintf(&b, "## per-packet cost (BPF_PROG_TEST_RUN, repeat %d)\n\n| program | ns/packet |\n|---|---:|\n", c.Repeat)
		fmt.Fprintf(&b, "| empty tc program | %.0f |\n| from_pod (%s) | %.0f |\n| from_pod overhead | %.0f |\n\n",
			c.EmptyNs, c.Description, c.FromPodNs, c.OverheadNs)
	}
	if c := r.CNI; c != nil {
		fmt.Fprintf(&b, "## CNI (%d pods added %d at a time, then deleted; exec of ebpfnet-cni included)\n\n", c.Pods, c.Parallel)
		fmt.Fprintf(&b, "| ADD p50 | ADD p99 | DEL p50 | pods/s |\n|---:|---:|---:|---:|\n| %.1f ms | %.1f ms | %.1f ms | %.1f |\n\n",
			c.AddP50ms, c.AddP99ms, c.DelP50ms, c.PodsPerSec)
		if len(c.PhasesMeanMs) > 0 {
			fmt.Fprintf(&b, "The agent's share, mean per ADD (ebpfnet_cni_add_phase_seconds):")
			sep := " "
			for _, p := range agent.AddPhases {
				fmt.Fprintf(&b, "%s%s %.1f ms", sep, p, c.PhasesMeanMs[p])
				sep = ", "
			}
			fmt.Fprintf(&b, "\n\n")
		}
		if e := c.Exec; e != nil {
			fmt.Fprintf(&b, "One exec answering VERSION (median of %d, in turn): ebpfnet-cni %.1f ms, containernetworking loopback %s %.1f ms, ratio %.2f\n\n",
				e.Runs, e.EbpfnetP50ms, e.LoopbackVersion, e.LoopbackP50ms, e.Ratio)
		}
	}
	if p := r.Policy; p != nil {
		fmt.Fprintf(&b, "## policy\n\nfrom_pod per packet (BPF_PROG_TEST_RUN) by policy map size: a new flow no rule allows (every lookup runs) and a packet of a tracked, allowed flow\n\n| entries | denied new flow ns | tracked flow ns |\n|---:|---:|---:|\n")
		for _, s := range p.Scale {
			fmt.Fprintf(&b, "| %d | %.0f | %.0f |\n", s.Entries, s.DeniedNs, s.AllowedNs)
		}
		fmt.Fprintf(&b, "\ncompile %d policies over %d pods: %.1f ms (%d entries for one node of ten), programming them: %.1f ms\n\n",
			p.CompilePols, p.CompilePods, p.CompileMs, p.CompileEntries, p.ProgramMs)
		fmt.Fprintf(&b, "`policy apply` until all three nodes of a lab enforce it: p50 %.1f ms, max %.1f ms\n\n", p.ApplyP50ms, p.ApplyMaxMs)
	}
	if k := r.Kube; k != nil {
		fmt.Fprintf(&b, "## kubernetes (a three-node kubernetes lab: API server, kubelet, containerd)\n\n")
		fmt.Fprintf(&b, "NetworkPolicy created through the API until every node reports enforcing it (%d rounds): p50 %.1f ms, max %.1f ms\n\n",
			k.PolicyRounds, k.EnforceP50ms, k.EnforceMaxMs)
		fmt.Fprintf(&b, "Deployment of %d pods, from its creation until each pod answers: p50 %.0f ms, p99 %.0f ms, all %.0f ms\n\n",
			k.Pods, k.ReadyP50ms, k.ReadyP99ms, k.ReadyAllMs)
	}
	if len(r.KubeProxy) > 0 {
		b.WriteString("## kube-proxy programming (iptables mode)\n\n| Services | backend | create through the API | kube-proxy start to all programmed | full sync | one more Service |\n|---:|---|---:|---:|---:|---:|\n")
		for _, p := range r.KubeProxy {
			fmt.Fprintf(&b, "| %d | %s | %.0f ms | %.0f ms | %.0f ms | %.0f ms |\n", p.Services, p.Backend, p.CreateMs, p.ProgramMs, p.FullSyncMs, p.AddOneMs)
		}
		b.WriteString("\n")
	}
	for _, s := range r.Suites {
		if s.Name != "services" {
			continue
		}
		var rows []string
		for _, kp := range s.Setups {
			n, ok := strings.CutPrefix(kp.Name, "kube-proxy-iptables-")
			if !ok {
				continue
			}
			n = strings.TrimPrefix(n, "legacy-")
			eb := s.Get("ebpfnet-native-clusterip-" + n)
			n = strings.TrimSuffix(n, "svc")
			if eb.Name == "" {
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s | %.3f | %.3f | %.3f |", n, ratio(eb.MedianGbps, kp.MedianGbps),
				ratio(eb.MedianP50us, kp.MedianP50us), ratio(eb.MedianP99us, kp.MedianP99us)))
		}
		if len(rows) > 0 {
			b.WriteString("## ebpfnet ClusterIP against kube-proxy, among as many Services\n\n| Services | TCP × | p50 × | p99 × |\n|---:|---:|---:|---:|\n")
			b.WriteString(strings.Join(rows, "\n") + "\n\nebpfnet-native-clusterip-N over kube-proxy-iptables-N; both plainly routed between the nodes. Lower latency ratio is better.\n\n")
		}
	}
	if c := r.BGP; c != nil {
		c.markdown(&b)
	}
	if u := r.ServiceUpdate; u != nil {
		fmt.Fprintf(&b, "## service backend change\n\nA pod labelled into a Service's selector (store write) until a client looping on the ClusterIP is answered by it (%d rounds): p50 %.1f ms, max %.1f ms\n\n",
			u.Rounds, u.NewBackendP50ms, u.NewBackendMaxMs)
	}
	return b.String()
}

// markdown is the suite's table: medians, and ratios to the baseline and the limit.
func (s Suite) markdown(b *strings.Builder) {
	base, lim := s.Get(s.Baseline), s.Get(s.Limit)
	v6 := s.Family == IPv6
	fmt.Fprintf(b, "## %s\n\n", s.Name)
	fmt.Fprintf(b, "| setup | TCP Gbit/s | × %s | × %s | p50 µs | p99 µs | p50 × %s |", s.Baseline, s.Limit, s.Baseline)
	if v6 {
		fmt.Fprintf(b, " TCP_CRR µs | TCP_CRR × %s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", s.Baseline)
	} else {
		b.WriteString("\n|---|---:|---:|---:|---:|---:|---:|\n")
	}
	for _, st := range s.Setups {
		fmt.Fprintf(b, "| %s | %.2f | %.3f | %.3f | %.1f | %.1f | %.3f |", st.Name, st.MedianGbps,
			ratio(st.MedianGbps, base.MedianGbps), ratio(st.MedianGbps, lim.MedianGbps),
			st.MedianP50us, st.MedianP99us, ratio(st.MedianP50us, base.MedianP50us))
		if v6 {
			fmt.Fprintf(b, " %.1f | %.3f |", st.MedianCRRus, ratio(st.MedianCRRus, base.MedianCRRus))
		}
		b.WriteString("\n")
	}
	if v6 {
		b.WriteString("\nOver IPv6, the IPv4 setups in dual stack (across nodes, VXLAN over the IPv4 underlay). Throughput: one iperf3 TCP stream; " +
			"latency: TCP_RR, the Go client against the lab's echo server (Debian's sockperf has no IPv6), the round trip " +
			"of a one-byte request, µs, not comparable with sockperf's; TCP_CRR: a new connection for each, mean µs. " +
			"Lower latency ratio is better.\n\n")
		return
	}
	b.WriteString("\nThroughput: one iperf3 TCP stream; latency: sockperf TCP ping-pong (one-way, µs). Lower latency ratio is better.\n\n")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// chart draws, per suite, each setup's throughput and latency as a ratio of the baseline.
func (r *Report) chart(path string) error {
	p := plot.New()
	p.Title.Text = "ebpfnet vs kernel baselines (ratio to each suite's baseline)"
	p.Y.Label.Text = "ratio (throughput: higher is better; p50 latency: lower is better)"
	var names []string
	var tput, lat plotter.Values
	for _, s := range r.Suites {
		base := s.Get(s.Baseline)
		for _, st := range s.Setups {
			names = append(names, s.Name+"\n"+st.Name)
			tput = append(tput, ratio(st.MedianGbps, base.MedianGbps))
			lat = append(lat, ratio(st.MedianP50us, base.MedianP50us))
		}
	}
	if len(names) == 0 {
		return nil
	}
	w := vg.Points(14)
	bt, err := plotter.NewBarChart(tput, w)
	if err != nil {
		return err
	}
	bt.Color = plotutil.Color(0)
	bt.Offset = -w / 2
	bl, err := plotter.NewBarChart(lat, w)
	if err != nil {
		return err
	}
	bl.Color = plotutil.Color(1)
	bl.Offset = w / 2
	p.Add(bt, bl, plotter.NewGrid())
	p.Legend.Add("TCP throughput", bt)
	p.Legend.Add("p50 latency", bl)
	p.Legend.Top = true
	p.NominalX(names...)
	width := vg.Length(len(names)) * vg.Centimeter * 2.2
	if width < 16*vg.Centimeter {
		width = 16 * vg.Centimeter
	}
	return p.Save(width, 11*vg.Centimeter, path)
}
