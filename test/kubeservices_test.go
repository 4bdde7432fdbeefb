package test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// kubeServiceObjects is a Deployment of two echo pods that keep serving 20s after SIGTERM (so
// a deleted one is a terminating, still serving, backend) and a NodePort Service over them.
const kubeServiceObjects = `apiVersion: v1
kind: Namespace
metadata: {name: svc}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: svc}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 30
      automountServiceAccountToken: false
      enableServiceLinks: false
      containers:
      - name: echo
        image: ` + kube.EchoImage + `
        imagePullPolicy: Never
        command: [/ebpfnet, lab, serve, --ports, "80/TCP,80/UDP", --ready, /tmp/ready, --drain, 20s]
        ports: [{name: http, containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svc}
spec:
  type: NodePort
  selector: {app: echo}
  ports:
  - {name: http, port: 8080, targetPort: http, protocol: TCP, nodePort: 30180}
  - {name: dns, port: 8053, targetPort: 80, protocol: UDP}
`

// kubeSlice is the part of an EndpointSlice the test reads.
type kubeSlice struct {
	Endpoints []struct {
		Addresses  []string `json:"addresses"`
		Conditions struct {
			Ready       *bool `json:"ready"`
			Terminating *bool `json:"terminating"`
		} `json:"conditions"`
	} `json:"endpoints"`
}

// sliceEndpoints returns the Service's endpoints: address -> "ready" or "terminating".
func sliceEndpoints(t *testing.T, st *lab.State) map[netip.Addr]string {
	t.Helper()
	var list struct{ Items []kubeSlice }
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "endpointslices", "-n", "svc",
		"-l", "kubernetes.io/service-name=web", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]string{}
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case e.Conditions.Terminating != nil && *e.Conditions.Terminating:
				out[ip] = "terminating"
			case e.Conditions.Ready == nil || *e.Conditions.Ready:
				out[ip] = "ready"
			}
		}
	}
	return out
}

// checkKubeServices: with no kube-proxy, a Service made through the API reaches its pods by
// ClusterIP (from pods and nodes) and NodePort (from outside), pods reach the API server
// through the default kubernetes Service, and a deleted (terminating) backend keeps its
// established connection while it gets no new one.
func checkKubeServices(t *testing.T, st *lab.State) {
	kubectl(t, st, kubeServiceObjects, "apply", "-f", "-")
	t.Cleanup(func() { kubectl(t, st, "", "delete", "namespace", "svc", "--ignore-not-found", "--wait=false") })
	eventually(t, 3*time.Minute, "two ready endpoints", func() (bool, string) {
		eps := sliceEndpoints(t, st)
		return len(eps) == 2, fmt.Sprint(eps)
	})
	client := mustPod(t, st, "x/a")
	var vip netip.Addr
	eventually(t, time.Minute, "the service in the store", func() (bool, string) {
		ip, err := st.ServiceIP(t.Context(), "svc/web", 8080, "TCP")
		vip = ip
		return err == nil, fmt.Sprint(err)
	})
	addr := netip.AddrPortFrom(vip, 8080)
	eventually(t, time.Minute, "both pods answer on the ClusterIP", func() (bool, string) {
		seen := map[netip.Addr]bool{}
		for i := 0; i < 40 && len(seen) < 2; i++ {
			if w, err := lab.AskWho(client.Netns, addr, "TCP"); err == nil {
				seen[w.Server] = true
			}
		}
		return len(seen) == 2, fmt.Sprint(seen)
	})
	for _, proto := range []string{"UDP"} {
		if _, err := lab.AskWho(client.Netns, netip.AddrPortFrom(vip, 8053), proto); err != nil {
			t.Errorf("ClusterIP over %s: %v", proto, err)
		}
	}
	for _, n := range st.Nodes {
		if err := st.ProbeNodePort(n.Name, 30180, "TCP"); err != nil {
			t.Errorf("NodePort on %s: %v", n.Name, err)
		}
		// Each node programs the Service from its own watch: give the slowest a moment.
		eventually(t, 30*time.Second, "node "+n.Name+" to the ClusterIP", func() (bool, string) {
			_, err := lab.AskWho(n.Netns, addr, "TCP")
			return err == nil, fmt.Sprint(err)
		})
	}

	t.Run("pods reach the API server through the kubernetes Service", func(t *testing.T) {
		ip := strings.TrimSpace(kubectl(t, st, "", "get", "service", "kubernetes", "-n", "default", "-o", "jsonpath={.spec.clusterIP}"))
		eventually(t, time.Minute, "TLS handshake with the API server at "+ip+":443", func() (bool, string) {
			err := namespace.Do(client.Netns, func() error {
				c, err := net.DialTimeout("tcp4", ip+":443", 2*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				// A TLS ClientHello gets a TLS record back: the API server answered.
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(clientHello()); err != nil {
					return err
				}
				b := make([]byte, 1)
				if _, err := c.Read(b); err != nil {
					return err
				}
				if b[0] != 0x16 && b[0] != 0x15 { // a handshake or an alert: a TLS record either way
					return fmt.Errorf("answered 0x%02x, not TLS", b[0])
				}
				return nil
			})
			return err == nil, fmt.Sprint(err)
		})
	})

	t.Run("terminating backend keeps its connection, gets no new one", func(t *testing.T) {
		held := openWho(t, client.Netns, addr)
		doomed := held.server
		pod := strings.TrimSpace(kubectl(t, st, "", "get", "pods", "-n", "svc", "-o",
			fmt.Sprintf("jsonpath={.items[?(@.status.podIP==%q)].metadata.name}", doomed)))
		kubectl(t, st, "", "delete", "pod", "-n", "svc", pod, "--wait=false")
		eventually(t, time.Minute, doomed.String()+" terminating", func() (bool, string) {
			eps := sliceEndpoints(t, st)
			return eps[doomed] == "terminating", fmt.Sprint(eps)
		})
		// Once the agents program the change, no new connection goes there.
		eventually(t, 30*time.Second, "new connections avoid "+doomed.String(), func() (bool, string) {
			for i := 0; i < 20; i++ {
				w, err := lab.AskWho(client.Netns, addr, "TCP")
				if err != nil || w.Server == doomed {
					return false, fmt.Sprintf("connection %d: %v %v", i, w.Server, err)
				}
			}
			return true, ""
		})
		for i := 0; i < 30; i++ {
			if w, err := lab.AskWho(client.Netns, addr, "TCP"); err == nil && w.Server == doomed {
				t.Fatalf("a new connection went to the terminating %s", doomed)
			}
		}
		held.stillEchoes(t)
	})
}

// clientHello is a minimal TLS 1.2 ClientHello, enough for any TLS server to answer.
func clientHello() []byte {
	body := []byte{0x03, 0x03}
	body = append(body, make([]byte, 32)...)                      // random
	body = append(body, 0)                                        // session id
	body = append(body, 0, 4, 0xc0, 0x2f, 0x13, 0x01)             // cipher suites
	body = append(body, 1, 0)                                     // compression: null
	ext := []byte{0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported groups: P-256
		0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03} // signature algorithms
	body = append(body, byte(len(ext)>>8), byte(len(ext)))
	body = append(body, ext...)
	hs := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{0x16, 0x03, 0x01, byte(len(hs) >> 8), byte(len(hs))}, hs...)
}
