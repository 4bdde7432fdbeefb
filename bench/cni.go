package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// CNICost is how fast the CNI plugin attaches pods, measured end to end: the runtime's exec of
// ebpfnet-cni, the agent's capacity check, IPAM, plumbing and datapath work, the result on
// stdout.
type CNICost struct {
	Pods int `json:"pods"`
	// Parallel is how many ADDs (and DELs) ran at a time.
	Parallel   int     `json:"parallel"`
	AddP50ms   float64 `json:"addP50ms"`
	AddP99ms   float64 `json:"addP99ms"`
	DelP50ms   float64 `json:"delP50ms"`
	PodsPerSec float64 `json:"podsPerSecond"`
	// PhasesMeanMs is the agent's share of an ADD, by phase of ebpfnet_cni_add_phase_seconds:
	// the mean over the run's ADDs.
	PhasesMeanMs map[string]float64 `json:"phasesMeanMs,omitempty"`
	// Exec is the floor under each of those: one exec answering VERSION, beside the
	// containernetworking loopback plugin's (nil when no loopback plugin is built).
	Exec *ExecCost `json:"exec,omitempty"`
}

// ExecCost is what one exec of a CNI plugin answering CNI_COMMAND=VERSION costs (process start,
// runtime and package initialisation, one line on stdout), ebpfnet-cni beside the loopback
// plugin of containernetworking/plugins, run in turn so that both see the same machine.
type ExecCost struct {
	Runs            int     `json:"runs"`
	EbpfnetP50ms    float64 `json:"ebpfnetP50ms"`
	LoopbackP50ms   float64 `json:"loopbackP50ms"`
	LoopbackVersion string  `json:"loopbackVersion"`
	// Ratio is ebpfnet-cni's median over loopback's.
	Ratio float64 `json:"ratio"`
}

// execRuns is how many times each plugin is exec'd for ExecCost.
const execRuns = 51

// MeasureExec times runs execs of each plugin answering VERSION, alternating between them and
// swapping which goes first every round, and returns each one's median in ms.
func MeasureExec(plugins []string, runs int) ([]float64, error) {
	times := make([][]float64, len(plugins))
	for r := 0; r < runs; r++ {
		for k := range plugins {
			i := (k + r) % len(plugins)
			c := exec.Command(plugins[i])
			c.Env = []string{"CNI_COMMAND=VERSION"}
			var out bytes.Buffer
			c.Stdout = &out
			start := time.Now()
			if err := c.Run(); err != nil {
				return nil, fmt.Errorf("%s VERSION: %w", plugins[i], err)
			}
			times[i] = append(times[i], float64(time.Since(start).Microseconds())/1000)
			if !bytes.Contains(out.Bytes(), []byte(`"supportedVersions"`)) {
				return nil, fmt.Errorf("%s VERSION answered %q, not a version list", plugins[i], out.String())
			}
		}
	}
	medians := make([]float64, len(plugins))
	for i := range times {
		medians[i] = median(times[i])
	}
	return medians, nil
}

// measureExecCost is ExecCost of the plugin at path, or nil when no loopback plugin is built.
func measureExecCost(path string) (*ExecCost, error) {
	dir := kube.CNIPluginsDir()
	if dir == "" {
		slog.Info("no loopback CNI plugin built (make deps builds it): CNI exec cost skipped")
		return nil, nil
	}
	loopback := filepath.Join(dir, "loopback")
	m, err := MeasureExec([]string{path, loopback}, execRuns)
	if err != nil {
		return nil, err
	}
	return &ExecCost{Runs: execRuns, EbpfnetP50ms: m[0], LoopbackP50ms: m[1],
		LoopbackVersion: filepath.Base(filepath.Dir(dir)), Ratio: m[0] / m[1]}, nil
}

// MeasureCNI adds n pods to a one-node lab, parallel at a time, then deletes them.
func MeasureCNI(n, parallel int) (CNICost, error) {
	exe, err := os.Executable()
	if err != nil {
		return CNICost{}, err
	}
	dir := filepath.Dir(exe)
	execCost, err := measureExecCost(filepath.Join(dir, "ebpfnet-cni"))
	if err != nil {
		return CNICost{}, err
	}
	spec := &lab.Spec{Mode: "vxlan", Nodes: []lab.NodeSpec{{Name: "n1"}}, Namespaces: []lab.Namespace{{Name: "b"}}}
	if err := spec.Validate(); err != nil {
		return CNICost{}, err
	}
	name := fmt.Sprintf("bc%d", time.Now().UnixNano()%10000)
	defer downLab(name)
	st, err := lab.Up(context.Background(), name, spec, lab.Options{Exe: filepath.Join(dir, "ebpfnet")})
	if err != nil {
		return CNICost{}, err
	}
	node := st.Nodes[0]
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ebpfnet","type":"ebpfnet-cni","socket":%q}`, node.Socket)
	// The plugin runs in the bench's own namespace, not entered into the node's: it only dials
	// the agent's socket (a path) and passes the pod's namespace as a descriptor, so where it
	// runs changes nothing but the time, and an nsenter exec in front (about 2 ms) is no part
	// of what a runtime pays.
	run := func(cmd, id, netns string) (time.Duration, error) {
		c := exec.Command(filepath.Join(dir, "ebpfnet-cni"))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + dir}
		c.Stdin = bytes.NewBufferString(conf)
		start := time.Now()
		out, err := c.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("CNI %s %s: %w: %s", cmd, id, err, out)
		}
		return time.Since(start), nil
	}
	// The pods' namespaces first: making them is the runtime's work, not the plugin's.
	paths := make([]string, n)
	for i := range n {
		nsName := fmt.Sprintf("%s.p%d", name, i)
		if paths[i], err = namespace.Create(nsName); err != nil {
			return CNICost{}, err
		}
		defer func() {
			if err := namespace.Delete(nsName); err != nil {
				slog.Warn("cni bench: pod namespace left", "netns", nsName, "err", err)
			}
		}()
	}
	// parallel callers at a time, as a runtime starting a Deployment's pods.
	each := func(cmd string) ([]float64, time.Duration, error) {
		times := make([]float64, n)
		errs := make([]error, n)
		next := make(chan int)
		var wg sync.WaitGroup
		begin := time.Now()
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					d, err := run(cmd, fmt.Sprintf("%s.p%d", name, i), paths[i])
					times[i], errs[i] = float64(d.Microseconds())/1000, err
				}
			}()
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		return times, time.Since(begin), errors.Join(errs...)
	}
	adds, total, err := each("ADD")
	if err != nil {
		return CNICost{}, err
	}
	dels, _, err := each("DEL")
	if err != nil {
		return CNICost{}, err
	}
	phases, err := addPhases(node)
	if err != nil {
		return CNICost{}, err
	}
	sort.Float64s(adds)
	return CNICost{Pods: n, Parallel: parallel, AddP50ms: median(adds), AddP99ms: adds[(len(adds)*99)/100], DelP50ms: median(dels),
		PodsPerSec: float64(n) / total.Seconds(), PhasesMeanMs: phases, Exec: execCost}, nil
}

// addPhases scrapes a lab node's agent for the mean time of each phase of its CNI ADDs.
func addPhases(n lab.Node) (map[string]float64, error) {
	body, err := metricsOf(n)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", n.Name, err)
	}
	f, ok := families["ebpfnet_cni_add_phase_seconds"]
	if !ok {
		return nil, fmt.Errorf("scrape %s: no ebpfnet_cni_add_phase_seconds", n.Name)
	}
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		h := m.GetHistogram()
		for _, l := range m.GetLabel() {
			if l.GetName() == "phase" && h.GetSampleCount() > 0 {
				out[l.GetValue()] = 1000 * h.GetSampleSum() / float64(h.GetSampleCount())
			}
		}
	}
	return out, nil
}

// metricsOf reads a lab node's agent's metrics page, from inside the node's namespace.
func metricsOf(n lab.Node) (io.ReadCloser, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = namespace.Do(n.Netns, func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	resp, err := client.Get("http://" + netip.AddrPortFrom(n.IP, lab.MetricsPort).String() + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", n.Name, err)
	}
	return resp.Body, nil
}
