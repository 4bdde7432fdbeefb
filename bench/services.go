package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
)

// ServiceSetups compare a pod reaching a pod on another node directly with reaching it
// through a ClusterIP, alone and among extra Services, in native mode: plain routing, like
// the kube-proxy baseline's nodes.
func ServiceSetups(extra []int) []Builder {
	b := []Builder{
		{"ebpfnet-native-direct", func(p string) (*Topology, error) { return buildServiceLab(p, false, 0) }},
		{"ebpfnet-native-clusterip", func(p string) (*Topology, error) { return buildServiceLab(p, true, 0) }},
	}
	for _, n := range extra {
		b = append(b, Builder{fmt.Sprintf("ebpfnet-native-clusterip-%dsvc", n),
			func(p string) (*Topology, error) { return buildServiceLab(p, true, n) }})
	}
	return b
}

// benchService is the Service over the server pod: iperf3's and sockperf's ports as they are.
func benchService() lab.ServiceSpec {
	port := func(name string, p int) lab.ServicePortSpec {
		return lab.ServicePortSpec{Name: name, Port: p, TargetPort: intstr.FromInt32(int32(p)), Protocol: "TCP"}
	}
	return lab.ServiceSpec{Namespace: "b", Name: "server", Selector: map[string]string{"role": "server"},
		Ports: []lab.ServicePortSpec{port("iperf", iperfPort), port("sockperf", latencyPort)}}
}

// buildServiceLab is a two-node native lab, client on n1 and server on n2; through a Service
// when viaService, with extra more Services (over the same server) programmed beside it.
func buildServiceLab(prefix string, viaService bool, extra int) (t *Topology, err error) {
	t = &Topology{Name: "ebpfnet-native-direct"}
	if viaService {
		t.Name = "ebpfnet-native-clusterip"
	}
	if extra > 0 {
		t.Name += fmt.Sprintf("-%dsvc", extra)
	}
	defer closeOnError(t, &err)
	spec := &lab.Spec{Mode: "native", Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}},
		Namespaces: []lab.Namespace{{Name: "b"}},
		Pods: []lab.PodSpec{{Namespace: "b", Name: "c", Node: "n1"},
			{Namespace: "b", Name: "s", Node: "n2", Labels: map[string]string{"role": "server"}}}}
	if viaService {
		spec.Services = []lab.ServiceSpec{benchService()}
	}
	st, err := upBenchLab(t, prefix, spec)
	if err != nil {
		return nil, err
	}
	if extra > 0 {
		var more []lab.ServiceSpec
		for i := 0; i < extra; i++ {
			s := benchService()
			s.Name = fmt.Sprintf("extra-%d", i)
			more = append(more, s)
		}
		start := time.Now()
		if _, err := st.ApplyServices(context.Background(), more); err != nil {
			return nil, fmt.Errorf("apply %d services: %w", extra, err)
		}
		slog.Info("applied extra services", "services", extra, "took", time.Since(start))
	}
	c, _ := st.Pod("b/c")
	s, _ := st.Pod("b/s")
	t.Client, t.Server, t.ServerIP = nsName(c.Netns), nsName(s.Netns), s.IP
	if viaService {
		if t.Target, err = st.ServiceIP(context.Background(), "b/server", iperfPort, "TCP"); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// upBenchLab brings a lab up with the ebpfnet binary built beside this one; t's Close takes it
// down.
func upBenchLab(t *Topology, name string, spec *lab.Spec) (*lab.State, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	t.undo = append(t.undo, func() error { return lab.Down(name) })
	opts, err := benchLabOptions()
	if err != nil {
		return nil, err
	}
	return lab.Up(context.Background(), name, spec, opts)
}

// benchLabOptions run a lab's agents from the ebpfnet binary built beside this one.
func benchLabOptions() (lab.Options, error) {
	exe, err := ebpfnetExe()
	return lab.Options{Exe: exe}, err
}

// ebpfnetExe is the ebpfnet binary built beside this one (make build).
func ebpfnetExe() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(exe), "ebpfnet"), nil
}

// ServiceUpdate is how long a change of a Service's backends takes to reach the datapath.
type ServiceUpdate struct {
	Rounds int `json:"rounds"`
	// NewBackendP50ms and MaxMs: from the store change (a pod labelled into the selector) to
	// the first connection a client looping on the ClusterIP gets answered by that pod.
	NewBackendP50ms float64 `json:"newBackendP50ms"`
	NewBackendMaxMs float64 `json:"newBackendMaxMs"`
}

// MeasureServiceUpdate labels a pod into a Service's selector and out again, rounds times,
// while a client connects to the ClusterIP in a loop, and times each change until the new
// backend answers.
func MeasureServiceUpdate(rounds int) (res ServiceUpdate, err error) {
	t := &Topology{Name: "service-update"}
	defer func() {
		if cerr := t.Close(); err == nil {
			err = cerr
		}
	}()
	ports := []lab.Port{{Name: "http", Port: 80, Protocol: "TCP"}}
	spec := &lab.Spec{Mode: "vxlan", Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}},
		Namespaces: []lab.Namespace{{Name: "b"}},
		Pods: []lab.PodSpec{{Namespace: "b", Name: "c", Node: "n1", Ports: ports},
			{Namespace: "b", Name: "old", Node: "n1", Labels: map[string]string{"app": "web"}, Ports: ports},
			{Namespace: "b", Name: "new", Node: "n2", Ports: ports}},
		Services: []lab.ServiceSpec{{Namespace: "b", Name: "web", Selector: map[string]string{"app": "web"},
			Ports: []lab.ServicePortSpec{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "TCP"}}}}}
	st, err := upBenchLab(t, fmt.Sprintf("su%d", time.Now().UnixNano()%1000), spec)
	if err != nil {
		return res, err
	}
	ctx := context.Background()
	vip, err := st.ServiceIP(ctx, "b/web", 8080, "TCP")
	if err != nil {
		return res, err
	}
	client, _ := st.Pod("b/c")
	newPod, _ := st.Pod("b/new")
	addr := netip.AddrPortFrom(vip, 8080)
	var took []float64
	for r := 0; r < rounds; r++ {
		start := time.Now()
		if err := st.Client().Label(ctx, agentapi.LabelRequest{Kind: "pod", Namespace: "b", Name: "new", Set: map[string]string{"app": "web"}}); err != nil {
			return res, err
		}
		for {
			w, err := lab.AskWho(client.Netns, addr, "TCP")
			if err == nil && w.Server == newPod.IP {
				break
			}
			if time.Since(start) > time.Minute {
				return res, fmt.Errorf("round %d: the new backend never answered", r+1)
			}
		}
		took = append(took, float64(time.Since(start).Microseconds())/1000)
		if err := st.Client().Label(ctx, agentapi.LabelRequest{Kind: "pod", Namespace: "b", Name: "new", Remove: []string{"app"}}); err != nil {
			return res, err
		}
		// Out again: wait until it no longer answers, so the next round starts clean.
		for n := 0; n < 20; {
			if w, err := lab.AskWho(client.Netns, addr, "TCP"); err == nil && w.Server != newPod.IP {
				n++
			} else {
				n = 0
			}
		}
	}
	slices.Sort(took)
	res = ServiceUpdate{Rounds: rounds, NewBackendP50ms: round2(median(took)), NewBackendMaxMs: round2(took[len(took)-1])}
	return res, nil
}
