package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/store"
)

// KubeCost is what a three-node kubernetes lab measured: how long a NetworkPolicy written to the
// API server takes to be enforced on every node, and how long a Deployment's pods take from its
// creation until each answers.
type KubeCost struct {
	PolicyRounds int     `json:"policyRounds"`
	EnforceP50ms float64 `json:"enforceP50ms"`
	EnforceMaxMs float64 `json:"enforceMaxMs"`
	Pods         int     `json:"pods"`
	ReadyP50ms   float64 `json:"podReadyP50ms"`
	ReadyP99ms   float64 `json:"podReadyP99ms"`
	ReadyAllMs   float64 `json:"podReadyAllMs"`
}

// MeasureKubernetes brings up a kubernetes lab and measures policy enforcement over rounds and
// a Deployment of pods replicas.
func MeasureKubernetes(rounds, pods int) (KubeCost, error) {
	exe, err := os.Executable()
	if err != nil {
		return KubeCost{}, err
	}
	port := []lab.Port{{Port: 80, Protocol: "TCP"}}
	spec := &lab.Spec{Mode: "vxlan", Kubernetes: true, Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}},
		Namespaces: []lab.Namespace{{Name: "x"}},
		Pods: []lab.PodSpec{{Namespace: "x", Name: "a", Node: "n1", Labels: map[string]string{"pod": "a"}, Ports: port},
			{Namespace: "x", Name: "b", Node: "n2", Labels: map[string]string{"pod": "b"}, Ports: port},
			{Namespace: "x", Name: "c", Node: "n3", Labels: map[string]string{"pod": "c"}, Ports: port}}}
	if err := spec.Validate(); err != nil {
		return KubeCost{}, err
	}
	name := fmt.Sprintf("bk%d", time.Now().UnixNano()%10000)
	defer downLab(name)
	ctx := context.Background()
	st, err := lab.Up(ctx, name, spec, lab.Options{Exe: filepath.Join(filepath.Dir(exe), "ebpfnet")})
	if err != nil {
		return KubeCost{}, err
	}
	api, err := labClient(st)
	if err != nil {
		return KubeCost{}, err
	}
	c := KubeCost{PolicyRounds: rounds, Pods: pods}
	if c.EnforceP50ms, c.EnforceMaxMs, err = measureEnforce(ctx, st, api, rounds); err != nil {
		return c, err
	}
	c.ReadyP50ms, c.ReadyP99ms, c.ReadyAllMs, err = measurePodReady(ctx, st, api, pods)
	return c, err
}

// labClient is a client-go client of the lab's API server, dialling from the lab's underlay.
func labClient(st *lab.State) (kubernetes.Interface, error) {
	cp, err := st.ControlPlane()
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Dial = namespace.Dialer(st.Underlay)
	cfg.QPS, cfg.Burst = 100, 200
	return kubernetes.NewForConfig(cfg)
}

// measureEnforce creates a deny policy through the API and times it until every node reports
// enforcing its version, checks that x/a no longer reaches x/b, then deletes it.
func measureEnforce(ctx context.Context, st *lab.State, api kubernetes.Interface, rounds int) (p50, max float64, err error) {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-b", Namespace: "x"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	want := store.PolicyVersion(np)
	nps := api.NetworkingV1().NetworkPolicies("x")
	var took []float64
	for range rounds {
		start := time.Now()
		if _, err := nps.Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return 0, 0, err
		}
		if err := waitEnforcing(ctx, st, func(ps []agentapi.PolicyStatus) bool {
			for _, p := range ps {
				if p.Name == "deny-b" && p.Version == want && p.Enforcing == p.Nodes && p.Nodes == len(st.Nodes) {
					return true
				}
			}
			return false
		}); err != nil {
			return 0, 0, err
		}
		took = append(took, float64(time.Since(start).Microseconds())/1000)
		if err := st.Probe("x/a", "x/b", 80, "TCP"); err == nil {
			return 0, 0, fmt.Errorf("every node reported the deny, yet x/a reaches x/b")
		}
		if err := nps.Delete(ctx, "deny-b", metav1.DeleteOptions{}); err != nil {
			return 0, 0, err
		}
		if err := st.Client().Wait(ctx, 30*time.Second); err != nil {
			return 0, 0, err
		}
	}
	sort.Float64s(took)
	return median(took), took[len(took)-1], nil
}

// waitEnforcing polls every node's report of what it enforces, read without a sync barrier
// (the status reads the store as the node's agent sees it).
func waitEnforcing(ctx context.Context, st *lab.State, done func([]agentapi.PolicyStatus) bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ps, err := st.Client().PolicyStatus(ctx)
		if err == nil && done(ps) {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("policy not enforced on every node after 30s: %w", err)
			}
			return errors.New("policy not enforced on every node after 30s")
		}
		time.Sleep(2 * time.Millisecond) // polling the nodes' reports, bounded above
	}
}

// measurePodReady creates a Deployment of n echo pods and times, for each pod, from the
// Deployment's creation until the pod answers on port 80 from its node.
func measurePodReady(ctx context.Context, st *lab.State, api kubernetes.Interface, n int) (p50, p99, all float64, err error) {
	if _, err := api.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		return 0, 0, 0, err
	}
	d := echoDeployment("echo", "bench", int32(n), nil)
	start := time.Now()
	if _, err := api.AppsV1().Deployments("bench").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return 0, 0, 0, err
	}
	ready := map[string]float64{}
	var mu sync.Mutex
	deadline := start.Add(5 * time.Minute)
	for len(ready) < n {
		if time.Now().After(deadline) {
			return 0, 0, 0, fmt.Errorf("%d of %d pods answered within 5 minutes", len(ready), n)
		}
		var wg sync.WaitGroup
		for _, node := range st.Nodes {
			var eps []store.Endpoint
			if err := agentapi.NewClient(node.Socket).Get(ctx, "/v1/endpoints?node="+node.Name, &eps); err != nil {
				return 0, 0, 0, err
			}
			for _, e := range eps {
				mu.Lock()
				_, done := ready[e.Pod]
				mu.Unlock()
				if e.Namespace != "bench" || done {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if lab.ProbeFrom(node.Netns, netip.AddrPortFrom(e.IP, 80), "TCP") == nil {
						mu.Lock()
						ready[e.Pod] = float64(time.Since(start).Microseconds()) / 1000
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
		time.Sleep(10 * time.Millisecond) // polling for new pods, bounded by the deadline
	}
	var took []float64
	for _, ms := range ready {
		took = append(took, ms)
	}
	sort.Float64s(took)
	p99i := (len(took)*99 + 99) / 100
	if p99i > len(took) {
		p99i = len(took)
	}
	if err := api.CoreV1().Namespaces().Delete(ctx, "bench", metav1.DeleteOptions{}); err != nil {
		return 0, 0, 0, err
	}
	return median(took), took[p99i-1], took[len(took)-1], nil
}

// echoDeployment is a Deployment of replicas pods serving `lab serve` on port 80/TCP, on
// nodes matching nodeSelector (nil: any).
func echoDeployment(name, namespace string, replicas int32, nodeSelector map[string]string) *appsv1.Deployment {
	zero := int64(0)
	no := false
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, AutomountServiceAccountToken: &no, EnableServiceLinks: &no,
					NodeSelector: nodeSelector,
					Containers: []corev1.Container{{Name: "echo", Image: kube.EchoImage, ImagePullPolicy: corev1.PullNever,
						Command: []string{"/ebpfnet", "lab", "serve", "--ports", "80/TCP", "--ready", "/tmp/ready"}}}}}}}
}
