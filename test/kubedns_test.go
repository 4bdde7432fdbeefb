package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// dnsClientObjects is a pod that keeps its service-account token (lab pods do not), serving TCP
// echo on 80, in a namespace of its own.
const dnsClientObjects = `apiVersion: v1
kind: Namespace
metadata: {name: dnscheck}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dnscheck}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: client
    image: ` + kube.EchoImage + `
    imagePullPolicy: Never
    command: [/ebpfnet, lab, serve, --ports, 80/TCP, --ready, /tmp/ready]
`

// checkClusterDNS: the kube-dns Service answers pods for Services by name over UDP and TCP
// (through ebpfnet's BPF Services), a pod reaches the API server as kubernetes.default with its
// service-account token, and kubectl exec, logs and port-forward reach pods.
func checkClusterDNS(t *testing.T, st *lab.State) {
	svcIP := func(ns, name string) netip.Addr {
		t.Helper()
		ip, err := netip.ParseAddr(strings.TrimSpace(kubectl(t, st, "", "get", "service", name, "-n", ns, "-o", "jsonpath={.spec.clusterIP}")))
		if err != nil {
			t.Fatal(err)
		}
		return ip
	}
	dnsIP, apiIP := svcIP("kube-system", "kube-dns"), svcIP("default", "kubernetes")
	if dnsIP != st.ClusterDNS() {
		t.Fatalf("kube-dns has cluster IP %s; kubelet hands pods %s", dnsIP, st.ClusterDNS())
	}
	from := st.Pods[0]
	for _, proto := range []string{"udp", "tcp"} {
		for name, want := range map[string]netip.Addr{
			"kubernetes.default.svc.cluster.local":   apiIP,
			"kube-dns.kube-system.svc.cluster.local": dnsIP,
		} {
			eventually(t, time.Minute, fmt.Sprintf("%s resolves %s over %s", from.Key(), name, proto), func() (bool, string) {
				got, err := resolveIn(from.Netns, netip.AddrPortFrom(dnsIP, 53), proto, name)
				return err == nil && slices.Equal(got, []netip.Addr{want}), fmt.Sprintf("%v %v; want %s", got, err, want)
			})
		}
	}
	// The tool sees an absent name as absent: the same query for a Service that does not exist.
	if got, err := resolveIn(from.Netns, netip.AddrPortFrom(dnsIP, 53), "udp", "nosuch.default.svc.cluster.local"); err == nil {
		t.Errorf("nosuch.default resolved to %v", got)
	}

	kubectl(t, st, dnsClientObjects, "apply", "-f", "-")
	t.Cleanup(func() { kubectl(t, st, "", "delete", "namespace", "dnscheck", "--ignore-not-found", "--wait=false") })
	kubectl(t, st, "", "wait", "-n", "dnscheck", "pod/client", "--for=condition=Ready", "--timeout=3m")

	t.Run("a pod reaches the API server as kubernetes.default with its token", func(t *testing.T) {
		out := kubectl(t, st, "", "exec", "-n", "dnscheck", "client", "--",
			"/ebpfnet", "lab", "api-whoami", "--server", "https://kubernetes.default")
		if got := strings.TrimSpace(out); got != "system:serviceaccount:dnscheck:default" {
			t.Errorf("the API server saw %q; want the pod's service account system:serviceaccount:dnscheck:default", got)
		}
	})
	t.Run("kubectl logs", func(t *testing.T) {
		if out := kubectl(t, st, "", "logs", "-n", "kube-system", "deployment/coredns"); !strings.Contains(out, "CoreDNS-"+strings.TrimPrefix(kube.CoreDNSVersion, "v")) {
			t.Errorf("CoreDNS's log has no banner:\n%s", out)
		}
		if out := kubectl(t, st, "", "logs", "-n", "dnscheck", "client"); !strings.Contains(out, "serving") {
			t.Errorf("the client pod's log has no start line:\n%s", out)
		}
	})
	t.Run("kubectl port-forward", func(t *testing.T) { checkPortForward(t, st) })
}

// resolveIn asks the DNS server at server, from the network namespace netnsPath over proto,
// for name's addresses of server's family (IPv6 ones in an IPv6-only cluster).
func resolveIn(netnsPath string, server netip.AddrPort, proto, name string) ([]netip.Addr, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (c net.Conn, err error) {
		err = namespace.Do(netnsPath, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, proto, server.String())
			return err
		})
		return c, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	network := "ip4"
	if server.Addr().Is6() {
		network = "ip6"
	}
	addrs, err := r.LookupNetIP(ctx, network, name)
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, err
}

// checkPortForward: `kubectl port-forward` to the client pod's port 80 carries an echo there and
// back (the API server, kubelet and containerd stream it into the pod's namespace).
func checkPortForward(t *testing.T, st *lab.State) {
	cp, err := st.ControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := cp.KubectlCommand(ctx, "port-forward", "-n", "dnscheck", "pod/client", ":80")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }() // killed by cancel: its status says nothing
	// "Forwarding from 127.0.0.1:PORT -> 80"
	line, err := bufio.NewReader(stdout).ReadString('\n')
	m := regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+) -> 80`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("kubectl port-forward printed %q (%v): %s", line, err, stderr.String())
	}
	local := netip.MustParseAddrPort(m[1])
	// kubectl listens in the lab's underlay, where it runs.
	var c net.Conn
	err = namespace.Do(st.Underlay, func() (err error) {
		c, err = net.DialTimeout("tcp4", local.String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := "through port-forward " + st.Name + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("echo through port-forward: %q, %v; want %q (kubectl: %s)", got, err, msg, stderr.String())
	}
}
