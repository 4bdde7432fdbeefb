package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
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
}

// MeasureCNI adds n pods one after another to a one-node lab, then deletes them.
func MeasureCNI(n int) (CNICost, error) {
	exe, err := os.Executable()
	if err != nil {
		return CNICost{}, err
	}
	dir := filepath.Dir(exe)
	spec := &lab.Spec{Mode: "vxlan", Nodes: []lab.NodeSpec{{Name: "n1"}}, Namespaces: []lab.Namespace{{Name: "b"}}}
	if err := spec.Validate(); err != nil {
		return CNICost{}, err
	}
	name := fmt.Sprintf("bc%d", time.Now().UnixNano()%10000)
	defer lab.Down(name)
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
			return 0, fmt.Errorf("CNI %s %s: %v: %s", cmd, id, err, out)
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
		defer namespace.Delete(nsName)
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
		PodsPerSec: float64(n) / total.Seconds()}, nil
}
