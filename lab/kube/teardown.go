package kube

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// killTimeout bounds the wait for killed processes to be gone.
const killTimeout = 10 * time.Second

// containerLogsDir is where kubelet links every container's log, whatever its root dir.
const containerLogsDir = "/var/log/containers"

// Teardown removes everything StartControlPlane and StartNode made under dir (a control plane's
// or node's dir, or one holding several): their processes, containerd's shims and the pods'
// containers, every mount under dir, the pods' cgroups, the shims' sockets and kubelet's log
// links, then dir itself. It needs nothing but dir, so a fresh process can run it, and running
// it again is harmless. It kills every process whose command line names a path under dir: keep
// other processes' files (the lab's etcd, the agents) out of dir.
func Teardown(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	// Kubelets first, so that none restarts what is killed next.
	killAll(findKubelets(dir), dir)
	roots, sockets := nodeState(dir)
	for _, r := range roots {
		if err := killCgroup(r, killTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	// containerd, its shims and the control plane: whatever names a path under dir. Again until
	// none is seen, as one caught in execve shows no command line for a moment.
	for range 3 {
		killAll(processesUnder(dir), dir)
	}
	if left := processesUnder(dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes %v under %s survived SIGKILL", left, dir))
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	for _, r := range roots {
		if err := removeCgroup(r); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range sockets {
		if err := os.Remove(s); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	removeLogLinks(dir)
	removeDevicePluginSocket()
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// findKubelets lists the kubelet processes under dir.
func findKubelets(dir string) []int {
	return slices.DeleteFunc(kubeletsOnHost(), func(pid int) bool { return !OwnedBy(pid, dir) })
}

// kubeletsOnHost lists every kubelet process on the host, of any lab.
func kubeletsOnHost() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == "kubelet" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killAll SIGKILLs pids (those still under dir) and waits for them to be gone.
func killAll(pids []int, dir string) {
	for _, pid := range pids {
		if OwnedBy(pid, dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // gone meanwhile is fine: the wait below checks
		}
	}
	deadline := time.Now().Add(killTimeout)
	for time.Now().Before(deadline) && slices.ContainsFunc(pids, func(pid int) bool { return OwnedBy(pid, dir) }) {
		time.Sleep(pollInterval / 5) // waiting for the kernel to reap them
	}
}

// nodeState finds, under dir, the cgroup roots every node recorded and the sockets containerd's
// shims listen on (outside dir, in /run/containerd/s), read from the address file each shim
// leaves in its task bundles.
func nodeState(dir string) (roots, sockets []string) {
	// The walk goes on past what it cannot read: it returns no error.
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil //nolint:nilerr // a part it cannot read holds no state of a node: walk on
		case d.IsDir() && d.Name() == "io.containerd.runtime.v2.task":
			files, _ := filepath.Glob(filepath.Join(p, "*", "*", "address"))
			for _, f := range files {
				b, _ := os.ReadFile(f)
				addr := strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://")
				if strings.HasPrefix(addr, "/run/containerd/s/") && !slices.Contains(sockets, addr) {
					sockets = append(sockets, addr)
				}
			}
			return filepath.SkipDir
		case d.IsDir() && (d.Name() == "kubelet" || d.Name() == "root" || d.Name() == "pki"):
			return filepath.SkipDir // big trees with nothing to find
		case d.Name() == cgroupRootFile:
			b, _ := os.ReadFile(p)
			if r := strings.TrimSpace(string(b)); strings.HasPrefix(r, "/ebpfnet-") {
				roots = append(roots, r)
			}
		}
		return nil
	})
	return roots, sockets
}

// mountsUnder lists the mount points at or below dir, in the order they were mounted.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if p := unescapeMount(fields[4]); p == dir || strings.HasPrefix(p, dir+"/") {
			mounts = append(mounts, p)
		}
	}
	return mounts, sc.Err()
}

// unmountUnder detaches every mount at or below dir (overlay root filesystems, sandboxes' shm,
// network namespace bind mounts, kubelet's volumes), newest first, until none is left.
func unmountUnder(dir string) error {
	for range 10 {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return fmt.Errorf("read mounts: %w", err)
		}
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range slices.Backward(mounts) {
			_ = unix.Unmount(m, unix.MNT_DETACH) // the loop reads the mounts again and fails on what stays
		}
	}
	mounts, _ := mountsUnder(dir)
	return fmt.Errorf("mounts left under %s: %v", dir, mounts)
}

// devicePluginSocket is where every kubelet serves device plugins, whatever its root dir.
const devicePluginSocket = "/var/lib/kubelet/device-plugins/kubelet.sock"

// removeDevicePluginSocket removes the kubelets' shared socket, and the directories made for
// it, once no kubelet runs on the host.
func removeDevicePluginSocket() {
	if len(kubeletsOnHost()) > 0 {
		return
	}
	os.Remove(devicePluginSocket)
	os.Remove(filepath.Dir(devicePluginSocket))               // only if empty
	os.Remove(filepath.Dir(filepath.Dir(devicePluginSocket))) // only if empty
}

// removeLogLinks removes kubelet's links in /var/log/containers that point under dir.
func removeLogLinks(dir string) {
	entries, _ := os.ReadDir(containerLogsDir)
	for _, e := range entries {
		p := filepath.Join(containerLogsDir, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
}
