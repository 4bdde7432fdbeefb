// Package peers builds and configures the CNIs the kubernetes lab runs in ebpfnet's place, so
// that both are measured on the same nodes, pods and packets: Cilium, built from its Go module.
package peers

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// CiliumVersion is the Cilium the lab builds and runs (build-cilium.sh says it again; a test
// keeps the two equal).
const CiliumVersion = "v1.20.2"

// buildScript builds cilium-agent and cilium-cni from source into CiliumDir, with the module's
// BPF sources and CRDs; `make deps-cilium` runs the same file.
//
//go:embed build-cilium.sh
var buildScript []byte

// CiliumDir holds the build of CiliumVersion: bin/ (cilium-agent, cilium-cni, and clang, the
// project's clang-19 under the name the agent runs), bpf/ (the sources the agent compiles) and
// crds/ (the CustomResourceDefinitions its operator would install).
func CiliumDir() string { return filepath.Join(kube.CacheDir(), "cilium", CiliumVersion) }

// CiliumAgent and CiliumCNI are the built binaries.
func CiliumAgent() string { return filepath.Join(CiliumDir(), "bin", "cilium-agent") }
func CiliumCNI() string   { return filepath.Join(CiliumDir(), "bin", "cilium-cni") }

// CiliumBuilt tells whether everything the build makes is in the cache.
func CiliumBuilt() bool {
	for _, f := range []string{CiliumAgent(), CiliumCNI(), filepath.Join(CiliumDir(), "bpf", "bpf_lxc.c"),
		filepath.Join(CiliumDir(), "bin", "clang"), filepath.Join(CiliumDir(), "crds")} {
		if _, err := os.Stat(f); err != nil {
			return false
		}
	}
	return true
}

// EnsureCilium builds Cilium from source when any of it is missing from CiliumDir, saying so
// first and showing the build's progress on out. It needs go and clang-19 in PATH.
func EnsureCilium(ctx context.Context, out io.Writer) error {
	if CiliumBuilt() {
		return nil
	}
	fmt.Fprintf(out, "building Cilium %s from source (once, cached in %s): about 8 minutes on 2 idle cores\n", CiliumVersion, CiliumDir())
	if err := kube.RunScript(ctx, buildScript, out, "EBPFNET_CACHE="+kube.CacheDir(), "EBPFNET_CILIUM_VERSION="+CiliumVersion); err != nil {
		return fmt.Errorf("build Cilium %s: %w", CiliumVersion, err)
	}
	return nil
}

// CiliumNode is what one node's cilium-agent is told.
type CiliumNode struct {
	Mode        string       // "vxlan" (Cilium's tunnel mode) or "native" (native routing)
	ClusterCIDR netip.Prefix // the pods' addresses, routed natively in native mode
	VXLANPort   int          // the tunnel's UDP port
	Device      string       // the node's device on the underlay
	Kubeconfig  string       // how the agent reaches the API server (kube-proxy is not there)
}

// CiliumModes are the lab modes Cilium runs in; IP-in-IP is not one of Cilium's.
var CiliumModes = []string{"vxlan", "native"}

// CiliumArgs is the command line of node's cilium-agent, as Cilium's tuning guide recommends
// where this kernel allows: kube-proxy replacement, BPF host routing, BPF masquerading, the
// lab mode's routing, IPAM from the Nodes' spec.podCIDR (no operator needed).
func CiliumArgs(n CiliumNode) ([]string, error) {
	args := []string{
		"--k8s-kubeconfig-path=" + n.Kubeconfig,
		"--lib-dir=" + CiliumDir(),
		"--state-dir=/run/cilium",
		"--bpf-root=/sys/fs/bpf",
		"--cgroup-root=/run/cilium/cgroupv2",
		"--devices=" + n.Device,
		"--ipam=kubernetes",
		"--k8s-require-ipv4-pod-cidr=true",
		"--enable-ipv4=true",
		"--enable-ipv6=false",
		"--kube-proxy-replacement=true",
		"--enable-host-legacy-routing=false",
		"--enable-bpf-masquerade=true",
		"--enable-ipv4-masquerade=true",
		// kube-proxy-replacement turns socket LB on whatever --bpf-lb-sock says; its programs
		// attach to the one cgroup root every process here shares. Host-only keeps them to
		// sockets of the agent's own network namespace (the node's); pods get per-packet LB.
		"--bpf-lb-sock-hostns-only=true",
		"--enable-l7-proxy=false",
		"--enable-health-checking=false",
		"--enable-endpoint-health-checking=false",
		"--identity-allocation-mode=crd",
		"--write-cni-conf-when-ready=/etc/cni/net.d/05-cilium.conflist",
	}
	switch n.Mode {
	case "vxlan":
		args = append(args, "--routing-mode=tunnel", "--tunnel-protocol=vxlan", "--tunnel-port="+strconv.Itoa(n.VXLANPort))
	case "native":
		args = append(args, "--routing-mode=native", "--ipv4-native-routing-cidr="+n.ClusterCIDR.String(),
			"--auto-direct-node-routes=true")
	default:
		return nil, fmt.Errorf("cilium runs in mode vxlan or native, not %q", n.Mode)
	}
	return args, nil
}

// CiliumEnv is the environment of node's cilium-agent: its node's name, and a PATH that finds
// clang (the project's clang-19) and iptables.
func CiliumEnv(node string) []string {
	return []string{"K8S_NODE_NAME=" + node, "CILIUM_K8S_NAMESPACE=kube-system",
		"PATH=" + filepath.Join(CiliumDir(), "bin") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
}

// CiliumCRDs are the CustomResourceDefinitions the agent needs before it starts (the operator
// would install them; the lab runs none): every file of CiliumDir()/crds.
func CiliumCRDs() ([][]byte, error) {
	files, err := filepath.Glob(filepath.Join(CiliumDir(), "crds", "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CRDs in %s (make deps-cilium)", filepath.Join(CiliumDir(), "crds"))
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}
