package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The lab's nodes share one kernel and one filesystem. Each gets what a real node has to itself
// from a mount namespace of its own, where containerd, kubelet and so every pod run: at the
// paths below (the node's view), a directory of the node's dir (the host's view). The
// DaemonSet's hostPaths then mean in the lab what they mean on a real node.
const (
	NodeBPFFS   = "/sys/fs/bpf"    // a bpffs instance of the node's own: "bpffs"
	NodeRunDir  = "/run/ebpfnet"   // the agent's socket: "run"
	NodeCNIConf = "/etc/cni/net.d" // the conflist containerd reads: "cni-conf"
	NodeCNIBin  = "/opt/cni/bin"   // the CNI plugins containerd runs: "cni-bin"
	NodeNetns   = "/run/netns"     // the pods' network namespaces containerd makes: "netns"
	// NodeCiliumRun is a peer's state (lab/peers): cilium-agent's socket and state: "cilium-run".
	NodeCiliumRun = "/run/cilium"
)

// nodeMounts maps each node path to its directory in the node's dir.
var nodeMounts = []struct{ node, dir string }{
	{NodeBPFFS, "bpffs"}, {NodeRunDir, "run"}, {NodeCNIConf, "cni-conf"}, {NodeCNIBin, "cni-bin"}, {NodeNetns, "netns"},
	{NodeCiliumRun, "cilium-run"},
}

// mountNSFile, in a node's dir, holds the node's mount namespace (a bind mount of it).
const mountNSFile = "mnt.ns"

// NodeHostPath is where the host sees path of the node whose dir is dir: under one of the
// node's own directories, or path itself (the rest of the filesystem is shared).
func NodeHostPath(dir, path string) string {
	path = filepath.Clean(path)
	if rest, ok := strings.CutPrefix(path, "/var/run/"); ok {
		path = "/run/" + rest
	}
	for _, m := range nodeMounts {
		if path == m.node {
			return filepath.Join(dir, m.dir)
		}
		if rest, ok := strings.CutPrefix(path, m.node+"/"); ok {
			return filepath.Join(dir, m.dir, rest)
		}
	}
	return path
}

// nodeSetup runs in the node's new mount namespace, a copy of the host's. It cuts every
// propagation back to the host but the pods' namespace directory's, drops the copies of
// namespace and bpffs mounts (they would keep other nodes' namespaces and pins alive, and
// containerd takes the lowest of stacked mounts for the one it checks), and mounts the node's
// own directories. Arguments: the node's dir.
const nodeSetup = `set -e
d=$1
# on MOUNTPOINT CMD...: runs CMD... MOUNTPOINT, unless the mount is gone meanwhile (another lab
# removed a namespace of its own, and the removal reached this copy before it was private).
on() {
	m=$1; shift
	"$@" "$m" 2>/dev/null || ! findmnt -rn -M "$m" >/dev/null || "$@" "$m"
}
findmnt -rn -o TARGET,PROPAGATION | while read -r m p; do
	case "$p" in shared*) [ "$m" = "$d/netns" ] || on "$(printf '%b' "$m")" mount --make-private ;; esac
done
findmnt -rn -o TARGET,FSTYPE | sort -r | while read -r m t; do
	m=$(printf '%b' "$m")
	case "$t" in nsfs|bpf) [ "$m" = "$d/bpffs" ] || on "$m" umount -l ;; esac
done
umount -R -l /run/netns 2>/dev/null || true
mount --bind "$d/bpffs" /sys/fs/bpf
mount --make-shared /sys/fs/bpf
mount --bind "$d/run" /run/ebpfnet
mount --bind "$d/cni-conf" /etc/cni/net.d
mount --bind "$d/cni-bin" /opt/cni/bin
mount --bind "$d/netns" /run/netns
mount --bind "$d/cilium-run" /run/cilium
`

// makeMountNS gives the node at dir its mount namespace, held by dir/mnt.ns: a bpffs of its
// own, and its run, CNI and netns directories, which the host sees under dir. The netns
// directory is shared with the host, so that the host enters the pods' namespaces at
// dir/netns. Teardown(dir) undoes it: it unmounts everything under dir.
func makeMountNS(ctx context.Context, dir string) error {
	for _, m := range nodeMounts {
		if err := ensureDir(filepath.Join(dir, m.dir)); err != nil {
			return err
		}
		// The mount points must exist on the host's filesystem; they are the usual directories.
		if err := ensureDir(m.node); err != nil {
			return err
		}
	}
	bpffs := filepath.Join(dir, "bpffs")
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpffs at %s: %w", bpffs, err)
	}
	netns := filepath.Join(dir, "netns")
	if err := unix.Mount(netns, netns, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", netns, err)
	}
	if err := unix.Mount("", netns, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("share %s: %w", netns, err)
	}
	nsFile := filepath.Join(dir, mountNSFile)
	if err := os.WriteFile(nsFile, nil, 0o600); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "unshare", "--mount="+nsFile, "--propagation", "unchanged",
		"sh", "-c", nodeSetup, "node-setup", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("node mount namespace: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
