package kube

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// PauseImage is the sandbox image containerd uses; BuildImages makes it, nothing pulls it.
const PauseImage = "docker.io/ebpfnet/pause:lab"

// EchoImage holds the ebpfnet binary as /ebpfnet, to run `/ebpfnet lab serve` in pods.
const EchoImage = "docker.io/ebpfnet/echo:lab"

// containerdNamespace is the containerd namespace the CRI works in.
const containerdNamespace = "k8s.io"

// NegativeOOMScoreRefused reports whether this machine refuses a negative oom_score_adj (no
// CAP_SYS_RESOURCE), as the CRI asks for every sandbox; a child tries, so this process keeps its own.
func NegativeOOMScoreRefused() bool {
	return exec.Command("sh", "-c", "echo -1 > /proc/self/oom_score_adj").Run() != nil
}

// containerdConfig is a containerd 1.6 (config version 2) configuration whose every path is
// under the node's dir or one of the node's own (mountns.go): several containerds on one host
// never meet. Pods' namespaces go where a real node's do, /var/run/netns. restrictOOM makes the CRI
// clamp oom_score_adj to containerd's own (0) instead of asking runc for a negative one.
func containerdConfig(n *Node, restrictOOM bool) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return strings.Join([]string{
		`version = 2`,
		`root = ` + q(filepath.Join(n.Dir, "containerd", "root")),
		`state = ` + q(filepath.Join(n.Dir, "containerd", "state")),
		`disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]`,
		``,
		`[grpc]`,
		`  address = ` + q(n.ContainerdSocket),
		`[ttrpc]`,
		`  address = ` + q(n.ContainerdSocket+".ttrpc"),
		`[debug]`,
		`  level = "info"`,
		``,
		`[plugins."io.containerd.grpc.v1.cri"]`,
		`  sandbox_image = ` + q(PauseImage),
		`  disable_apparmor = true`,
		`  restrict_oom_score_adj = ` + fmt.Sprint(restrictOOM),
		`  stream_server_address = "127.0.0.1"`,
		`  stream_server_port = "0"`,
		`  enable_cdi = false`,
		`  [plugins."io.containerd.grpc.v1.cri".containerd]`,
		`    snapshotter = "overlayfs"`,
		`    default_runtime_name = "runc"`,
		`    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
		`      runtime_type = "io.containerd.runc.v2"`,
		`      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]`,
		`        SystemdCgroup = false`,
		`        Root = ` + q(filepath.Join(n.Dir, "runc")),
		`  [plugins."io.containerd.grpc.v1.cri".cni]`,
		`    bin_dir = ` + q(NodeCNIBin),
		`    conf_dir = ` + q(NodeCNIConf),
		`    max_conf_num = 1`,
		``,
	}, "\n")
}

// ctr runs containerd's CLI against the node's containerd, in the CRI's namespace.
func (n *Node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"--address", n.ContainerdSocket, "--namespace", containerdNamespace}, args...)
	out, err := exec.CommandContext(ctx, "ctr", full...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// importImages loads image archives into containerd, where the CRI finds them by name.
func (n *Node) importImages(ctx context.Context, archives []string) error {
	if err := ImportImages(ctx, n.ContainerdSocket, archives); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	return nil
}

// ImportImages loads image archives into the containerd at socket, in the CRI's namespace.
func ImportImages(ctx context.Context, socket string, archives []string) error {
	for _, a := range archives {
		out, err := exec.CommandContext(ctx, "ctr", "--address", socket, "--namespace", containerdNamespace, "images", "import", a).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s: %w: %s", a, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
