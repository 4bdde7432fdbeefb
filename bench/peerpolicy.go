package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// The peers suite's policy figures: throughput and requests with many rules in force, and the
// time from a NetworkPolicy's creation until every node drops what it denies. Both CNIs are
// judged the same way, by packets: no agent's own report is read.

const (
	rulesPolicy = "rules"
	denyPolicy  = "deny-servers"
	// probeTimeout bounds one connection attempt of the enforcement probes: a denied SYN is
	// dropped, and its attempt ends here.
	probeTimeout = 200 * time.Millisecond
	// deniedStreak is how many attempts in a row must fail before a pair counts as denied.
	deniedStreak = 3
	// probePace spaces one pair's attempts, so that the probes do not load the agents they time.
	probePace = 10 * time.Millisecond
)

// rulesPolicyObject lets the clients in to the servers' echo and iperf3 ports, and n-1 /32
// blocks no pod has in to port 80: n ingress rules in one policy.
func rulesPolicyObject(n int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := func(p int) networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(int32(p))
		return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &v}
	}
	rules := []networkingv1.NetworkPolicyIngressRule{{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
		Ports: []networkingv1.NetworkPolicyPort{port(peerPort), port(iperfPort)},
	}}
	for i := 1; i < n; i++ {
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 123, byte(i >> 8), byte(i)}), 32)
		rules = append(rules, networkingv1.NetworkPolicyIngressRule{
			From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr.String()}}},
			Ports: []networkingv1.NetworkPolicyPort{port(peerPort)},
		})
	}
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: rulesPolicy, Namespace: peerNS},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, Ingress: rules}}
}

// applyRules creates the rules policy in l and waits until it is in force: the outsider no
// longer reaches either server, and the clients still do.
func applyRules(ctx context.Context, l *peerLab, n int) error {
	if _, err := l.api.NetworkingV1().NetworkPolicies(peerNS).Create(ctx, rulesPolicyObject(n), metav1.CreateOptions{}); err != nil {
		return err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		blocked := !connects(l.pod("e").Netns, l.addr("b", peerPort)) && !connects(l.pod("e").Netns, l.addr("c", peerPort))
		allowed := connects(l.pod("a").Netns, l.addr("b", peerPort)) && connects(l.pod("a").Netns, l.addr("c", iperfPort)) &&
			connects(l.pod("d").Netns, l.addr("c", peerPort))
		if blocked && allowed {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not in force after 3 minutes: outsider blocked %v, clients let in %v", blocked, allowed)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// peerPair is a client and a server pod the enforcement figure probes.
type peerPair struct{ from, to string }

// enforcePairs cover both nodes as the enforcing side, same-node and cross-node.
var enforcePairs = []peerPair{{"a", "b"}, {"a", "c"}, {"d", "b"}, {"d", "c"}}

// measureEnforcement creates a policy denying the servers all ingress and returns the time, in
// ms, until every pair's attempts fail: the start of the first attempt of each pair's final
// streak of deniedStreak failures, the latest over the pairs. It then deletes the policy and
// waits until every pair connects again.
func measureEnforcement(ctx context.Context, l *peerLab) (float64, error) {
	if err := waitPairsConnect(l); err != nil {
		return 0, fmt.Errorf("before the policy: %w", err)
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: denyPolicy, Namespace: peerNS},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	nps := l.api.NetworkingV1().NetworkPolicies(peerNS)
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	denied := make([]time.Time, len(enforcePairs))
	errs := make([]error, len(enforcePairs))
	var wg sync.WaitGroup
	for i, p := range enforcePairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			denied[i], errs[i] = firstOfDeniedStreak(l.pod(p.from).Netns, l.addr(p.to, peerPort), deadline)
		}()
	}
	_, err := nps.Create(ctx, np, metav1.CreateOptions{})
	wg.Wait()
	if err != nil {
		return 0, err
	}
	var latest time.Time
	for i, p := range enforcePairs {
		if errs[i] != nil {
			return 0, fmt.Errorf("%s to %s: %w", p.from, p.to, errs[i])
		}
		if denied[i].After(latest) {
			latest = denied[i]
		}
	}
	if err := nps.Delete(ctx, denyPolicy, metav1.DeleteOptions{}); err != nil {
		return 0, err
	}
	if err := waitPairsConnect(l); err != nil {
		return 0, fmt.Errorf("after the policy's deletion: %w", err)
	}
	return float64(latest.Sub(start).Microseconds()) / 1000, nil
}

// firstOfDeniedStreak attempts connections from nsPath to dst until deniedStreak in a row
// fail, and returns when the first of them started.
func firstOfDeniedStreak(nsPath string, dst netip.AddrPort, deadline time.Time) (time.Time, error) {
	var first time.Time
	fails := 0
	for fails < deniedStreak {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("still connecting to %s when the time ran out", dst)
		}
		at := time.Now()
		if connects(nsPath, dst) {
			fails = 0
		} else {
			if fails == 0 {
				first = at
			}
			fails++
		}
		time.Sleep(probePace) // pacing the attempts, bounded by the deadline
	}
	return first, nil
}

// waitPairsConnect waits up to a minute until every enforcement pair connects.
func waitPairsConnect(l *peerLab) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var wrong []string
		for _, p := range enforcePairs {
			if !connects(l.pod(p.from).Netns, l.addr(p.to, peerPort)) {
				wrong = append(wrong, p.from+"→"+p.to)
			}
		}
		if len(wrong) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after a minute, %v do not connect", wrong)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// connects says whether a TCP connection from the namespace at nsPath to dst is established
// within probeTimeout; it is closed with a reset, leaving nothing in TIME_WAIT.
func connects(nsPath string, dst netip.AddrPort) bool {
	var c net.Conn
	err := namespace.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), probeTimeout)
		return err
	})
	if err != nil {
		return false
	}
	_ = c.(*net.TCPConn).SetLinger(0)
	_ = c.Close() // a probe: connecting was the answer
	return true
}
