package kube

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
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
)

// cgroupRootFile, in a node's dir, names the cgroup under which its kubelet puts every pod.
const cgroupRootFile = "cgroup-root"

// cgroupRootName is the node's own cgroup root, so that two kubelets on one host never share
// /kubepods: /ebpfnet-<hash of the node dir>-<node>.
func cgroupRootName(nodeDir, node string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(nodeDir)))
	return "/ebpfnet-" + hex.EncodeToString(sum[:])[:8] + "-" + node
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and v2).
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fs := fields[sep+1]; fs == "cgroup" || fs == "cgroup2" {
			mounts = append(mounts, unescapeMount(fields[4]))
		}
	}
	return mounts, sc.Err()
}

// createCgroupRoot makes root in every hierarchy; in the cpuset one it copies the parent's cpus
// and mems, which a new cpuset cgroup lacks and without which nothing can join it.
func createCgroupRoot(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return fmt.Errorf("cgroup mounts: %w", err)
	}
	for _, m := range mounts {
		dir := filepath.Join(m, root)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("make cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("set %s of %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// cgroupDirs lists root and every cgroup below it in every hierarchy, deepest first.
func cgroupDirs(root string) []string {
	mounts, _ := cgroupMounts()
	var dirs []string
	for _, m := range mounts {
		// The walk goes on past what it cannot read: it returns no error.
		_ = filepath.WalkDir(filepath.Join(m, root), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}

// cgroupPids lists the processes in root's cgroups.
func cgroupPids(root string) []int {
	var pids []int
	for _, d := range cgroupDirs(root) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// killCgroup SIGKILLs every process under root until none is left (the pod's containers).
func killCgroup(root string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := cgroupPids(root)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in cgroup %s", pids, root)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL) // one gone already is what is wanted; the loop checks
		}
		time.Sleep(pollInterval / 5) // waiting for the kernel to reap them
	}
}

// removeCgroup removes root and everything below it in every hierarchy.
func removeCgroup(root string) error {
	var errs []error
	for _, d := range cgroupDirs(root) {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount decodes the octal escapes (\040 for a space) of a mountinfo path.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
