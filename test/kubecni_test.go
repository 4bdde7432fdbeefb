package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// cniPodNamespace holds the pods checkContainerdCNIVersions makes, labelled cniPodLabel.
const (
	cniPodNamespace = "default"
	cniPodLabel     = "ebpfnet-check=cni-versions"
)

// cniPod is an echo server pinned to node3.
func cniPod(name string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {ebpfnet-check: cni-versions}
spec:
  nodeName: node3
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers:
  - name: echo
    image: %s
    imagePullPolicy: Never
    command: [/ebpfnet, lab, serve, --ports, 80/TCP, --ready, /tmp/ready]
    ports: [{containerPort: 80}]
`, name, cniPodNamespace, kube.EchoImage)
}

// checkContainerdCNIVersions: containerd, not cnitool, drives ebpfnet-cni at every cniVersion
// containerd 1.6 takes. For 0.4.0 and 1.0.0, node3's conflist is rewritten (containerd
// reloads it: its CRI status shows the new file), and a pod on node3 runs with an address x/a
// reaches, its sandbox's network made at that version (libcni's cached result says so), and
// leaves nothing on node3 once deleted. At 1.1.0 containerd refuses the result: the sandbox
// fails with that reason and nothing is left on node3. Then the original conflist comes back
// and a pod works again.
func checkContainerdCNIVersions(t *testing.T, st *lab.State) {
	node3, err := st.Node("node3")
	if err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(st.KubeCNIConfDir("node3"), "10-ebpfnet.conflist")
	orig, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	socket := st.KubeContainerdSocket("node3")
	waitCNIConflist(t, socket, orig)
	t.Cleanup(func() {
		kubectl(t, st, "", "delete", "pod", "-n", cniPodNamespace, "-l", cniPodLabel, "--ignore-not-found")
		if now, _ := os.ReadFile(conflist); string(now) != string(orig) {
			writeConflist(t, socket, conflist, orig)
		}
	})
	before := stateOf(t, node3)
	leases := len(kubeRecords(t, st, "ipam"))
	// gone waits until the pod's object, endpoint, veth, map entries, pins and lease are gone.
	gone := func(t *testing.T, name string) {
		t.Helper()
		eventually(t, 2*time.Minute, name+" gone from node3", func() (bool, string) {
			if out := kubectl(t, st, "", "get", "pod", "-n", cniPodNamespace, name, "--ignore-not-found", "-o", "name"); out != "" {
				return false, "the API still holds " + out
			}
			if e, ok := endpointsIn(t, st, cniPodNamespace)[cniPodNamespace+"/"+name]; ok {
				return false, fmt.Sprintf("endpoint %+v left", e)
			}
			if now := stateOf(t, node3); now != before {
				return false, fmt.Sprintf("node3: %+v, before %+v", now, before)
			}
			if now := len(kubeRecords(t, st, "ipam")); now != leases {
				return false, fmt.Sprintf("%d lease records, %d before", now, leases)
			}
			return true, ""
		})
	}

	for _, v := range []string{"0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			writeConflist(t, socket, conflist, withCNIVersion(t, orig, v))
			name := "cni-" + strings.ReplaceAll(v, ".", "")
			runCNIPod(t, st, name, v)
			kubectl(t, st, "", "delete", "pod", "-n", cniPodNamespace, name, "--wait=false")
			gone(t, name)
		})
	}

	t.Run("1.1.0 refused", func(t *testing.T) {
		writeConflist(t, socket, conflist, withCNIVersion(t, orig, "1.1.0"))
		name := "cni-110"
		kubectl(t, st, cniPod(name), "apply", "-f", "-")
		want := `unsupported CNI result version "1.1.0"`
		eventually(t, 2*time.Minute, name+"'s sandbox refused", func() (bool, string) {
			var list struct {
				Items []struct{ Reason, Message string }
			}
			out := kubectl(t, st, "", "get", "events", "-n", cniPodNamespace, "--field-selector", "involvedObject.name="+name, "-o", "json")
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				t.Fatal(err)
			}
			var seen []string
			for _, e := range list.Items {
				if e.Reason == "FailedCreatePodSandBox" && strings.Contains(e.Message, want) {
					return true, ""
				}
				seen = append(seen, e.Reason+": "+e.Message)
			}
			return false, strings.Join(seen, " | ")
		})
		if phase := strings.TrimSpace(kubectl(t, st, "", "get", "pod", "-n", cniPodNamespace, name, "-o", "jsonpath={.status.phase}")); phase != "Pending" {
			t.Errorf("%s is %s, want Pending", name, phase)
		}
		// containerd undoes the ADD it refused (kubelet retries, and each retry is undone too).
		eventually(t, time.Minute, "node3 back as before while "+name+" is refused", func() (bool, string) {
			if now := stateOf(t, node3); now != before {
				return false, fmt.Sprintf("node3: %+v, before %+v", now, before)
			}
			if now := len(kubeRecords(t, st, "ipam")); now != leases {
				return false, fmt.Sprintf("%d lease records, %d before", now, leases)
			}
			return true, ""
		})
		kubectl(t, st, "", "delete", "pod", "-n", cniPodNamespace, name, "--wait=false")
		gone(t, name)
	})

	t.Run("original conflist restored", func(t *testing.T) {
		writeConflist(t, socket, conflist, orig)
		var conf struct{ CNIVersion string }
		if err := json.Unmarshal(orig, &conf); err != nil {
			t.Fatal(err)
		}
		runCNIPod(t, st, "cni-restored", conf.CNIVersion)
		kubectl(t, st, "", "delete", "pod", "-n", cniPodNamespace, "cni-restored", "--wait=false")
		gone(t, "cni-restored")
	})
}

// runCNIPod creates cniPod(name) and waits until it runs with an address and x/a reaches it;
// libcni's cache of its sandbox's ADD must hold a result of cniVersion version.
func runCNIPod(t *testing.T, st *lab.State, name, version string) {
	t.Helper()
	kubectl(t, st, cniPod(name), "apply", "-f", "-")
	var ip netip.Addr
	eventually(t, 2*time.Minute, name+" running with an address", func() (bool, string) {
		var pod struct {
			Status struct{ Phase, PodIP string }
		}
		if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "pod", "-n", cniPodNamespace, name, "-o", "json")), &pod); err != nil {
			t.Fatal(err)
		}
		a, err := netip.ParseAddr(pod.Status.PodIP)
		ip = a
		return pod.Status.Phase == "Running" && err == nil, fmt.Sprintf("phase %q ip %q; %s", pod.Status.Phase, pod.Status.PodIP, podEvents(t, st, name))
	})
	xa, err := st.Pod("x/a")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "x/a reaches "+name, func() (bool, string) {
		err := lab.ProbeFrom(xa.Netns, netip.AddrPortFrom(ip, 80), "TCP")
		return err == nil, fmt.Sprint(err)
	})
	e, ok := endpointsIn(t, st, cniPodNamespace)[cniPodNamespace+"/"+name]
	if !ok || e.IP != ip {
		t.Fatalf("%s runs with %s, but the agents hold endpoint %+v", name, ip, e)
	}
	// libcni (inside containerd) caches every ADD's result, named network-sandbox-ifname.
	cached := filepath.Join("/var/lib/cni/results", "ebpfnet-"+e.ContainerID+"-eth0")
	b, err := os.ReadFile(cached)
	if err != nil {
		t.Fatalf("libcni's cache of %s's ADD: %v", name, err)
	}
	var c struct {
		Result struct{ CNIVersion string }
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", cached, err)
	}
	if c.Result.CNIVersion != version {
		t.Errorf("containerd got a result of cniVersion %q for %s, want %q", c.Result.CNIVersion, name, version)
	}
}

// podEvents summarises a test pod's events, for timeout messages.
func podEvents(t *testing.T, st *lab.State, name string) string {
	t.Helper()
	return strings.TrimSpace(kubectl(t, st, "", "get", "events", "-n", cniPodNamespace, "--field-selector", "involvedObject.name="+name,
		"-o", "jsonpath={range .items[*]}{.reason}: {.message}; {end}"))
}

// withCNIVersion is conflist with its cniVersion set to version.
func withCNIVersion(t *testing.T, conflist []byte, version string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conflist, &m); err != nil {
		t.Fatal(err)
	}
	m["cniVersion"] = version
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeConflist replaces the conflist at path (a rename, so containerd never reads half of
// it) and waits until the containerd at socket has loaded it.
func writeConflist(t *testing.T, socket, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp") // no conflist extension: containerd skips it
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitCNIConflist(t, socket, data)
}

// waitCNIConflist waits until containerd's CRI status shows data as the pod network's conflist.
func waitCNIConflist(t *testing.T, socket string, data []byte) {
	t.Helper()
	eventually(t, 30*time.Second, "containerd to load the conflist", func() (bool, string) {
		src, err := criCNIConflist(socket)
		return err == nil && src == string(data), fmt.Sprintf("loaded %q, %v", src, err)
	})
}

// criCNIConflist asks containerd's CRI for its status and returns the text of the conflist it
// loaded for pods' eth0.
func criCNIConflist(socket string) (string, error) {
	info, err := criStatusInfo(socket)
	if err != nil {
		return "", err
	}
	var cfg struct {
		Networks []struct {
			Config struct{ Source string }
			IFName string
		}
	}
	if err := json.Unmarshal([]byte(info["cniconfig"]), &cfg); err != nil {
		return "", fmt.Errorf("CRI status cniconfig %q: %w", info["cniconfig"], err)
	}
	for _, n := range cfg.Networks {
		if n.IFName == "eth0" {
			return n.Config.Source, nil
		}
	}
	return "", fmt.Errorf("no eth0 network in %s (last load: %s)", info["cniconfig"], info["lastCNILoadStatus"])
}

// rawCodec hands protobuf bytes through as they are: the test speaks the one CRI call it needs
// by hand rather than depend on the CRI's generated API.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// criStatusInfo calls runtime.v1.RuntimeService/Status with verbose set and returns the info
// map of its answer.
func criStatusInfo(socket string) (map[string]string, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1) // StatusRequest{verbose: true}
	var resp []byte
	if err := conn.Invoke(ctx, "/runtime.v1.RuntimeService/Status", &req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
		return nil, fmt.Errorf("CRI status: %w", err)
	}
	// StatusResponse: status = 1 (message), info = 2 (map<string, string>: entries key = 1, value = 2).
	info := map[string]string{}
	fields := func(b []byte, each func(num protowire.Number, typ protowire.Type, v []byte) error) error {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := each(num, typ, b[:m]); err != nil {
				return err
			}
			b = b[m:]
		}
		return nil
	}
	err = fields(resp, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != 2 || typ != protowire.BytesType {
			return nil
		}
		entry, _ := protowire.ConsumeBytes(v)
		var key, value string
		err := fields(entry, func(num protowire.Number, typ protowire.Type, v []byte) error {
			s, _ := protowire.ConsumeBytes(v)
			switch {
			case typ != protowire.BytesType:
			case num == 1:
				key = string(s)
			case num == 2:
				value = string(s)
			}
			return nil
		})
		info[key] = value
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CRI status answer: %w", err)
	}
	return info, nil
}
