package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// CNICost is how fast the CNI plugin attaches pods, measured end to end: the runtime's exec of
// ebpfnet-cni, the agent's IPAM, plumbing and datapath work, the result on stdout.
type CNICost struct {
	Pods       int     `json:"pods"`
	AddP50ms   float64 `json:"addP50ms"`
	AddP99ms   float64 `json:"addP99ms"`
	DelP50ms   float64 `json:"delP50ms"`
	PodsPerSec float64 `json:"podsPerSecond"`
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

// MeasureCNI adds n pods one after another to a one-node lab, then deletes them.
func MeasureCNI(n int) (CNICost, error) {
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
	run := func(cmd, id, netns string) (time.Duration, error) {
		c := exec.Command("nsenter", "--net="+node.Netns, "--", filepath.Join(dir, "ebpfnet-cni"))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + dir}
		c.Stdin = bytes.NewBufferString(conf)
		start := time.Now()
		out, err := c.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("CNI %s %s: %w: %s", cmd, id, err, out)
		}
		return time.Since(start), nil
	}
	var adds, dels []float64
	begin := time.Now()
	for i := 0; i < n; i++ {
		nsName := fmt.Sprintf("%s.p%d", name, i)
		path, err := namespace.Create(nsName)
		if err != nil {
			return CNICost{}, err
		}
		defer func() {
			if err := namespace.Delete(nsName); err != nil {
				slog.Warn("cni bench: pod namespace left", "netns", nsName, "err", err)
			}
		}()
		d, err := run("ADD", nsName, path)
		if err != nil {
			return CNICost{}, err
		}
		adds = append(adds, float64(d.Microseconds())/1000)
	}
	total := time.Since(begin)
	for i := 0; i < n; i++ {
		nsName := fmt.Sprintf("%s.p%d", name, i)
		d, err := run("DEL", nsName, namespace.Path(nsName))
		if err != nil {
			return CNICost{}, err
		}
		dels = append(dels, float64(d.Microseconds())/1000)
	}
	sort.Float64s(adds)
	return CNICost{Pods: n, AddP50ms: median(adds), AddP99ms: adds[(len(adds)*99)/100], DelP50ms: median(dels),
		PodsPerSec: float64(n) / total.Seconds(), Exec: execCost}, nil
}
