// Package kube runs a real Kubernetes for the lab: kube-apiserver, kube-controller-manager and
// kube-scheduler, and per node containerd and kubelet, as processes in network namespaces.
package kube

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Version is the Kubernetes release the lab runs (v1.37 refuses this host's cgroup v1).
const Version = "v1.34.4"

// Binaries are the Kubernetes programs build.sh puts in BinDir.
var Binaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

// hostTools are the Debian programs a node needs.
var hostTools = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "findmnt"}

// CacheDir is where built binaries live, outside the repository: $EBPFNET_CACHE or /var/cache/ebpfnet.
func CacheDir() string {
	if d := os.Getenv("EBPFNET_CACHE"); d != "" {
		return d
	}
	return "/var/cache/ebpfnet"
}

// BinDir is the directory holding the Kubernetes binaries of Version.
func BinDir() string { return filepath.Join(CacheDir(), "kubernetes", Version, "bin") }

// CNIPluginsDir is the directory holding the loopback CNI plugin (the newest version built), or
// "" when none is.
func CNIPluginsDir() string {
	found, _ := filepath.Glob(filepath.Join(CacheDir(), "cni-plugins", "v*", "bin", "loopback"))
	if len(found) == 0 {
		return ""
	}
	slices.SortFunc(found, func(a, b string) int { return compareVersions(versionOf(a), versionOf(b)) })
	return filepath.Dir(found[len(found)-1])
}

// versionOf returns the vX.Y.Z component of a cni-plugins/<version>/bin/loopback path.
func versionOf(loopback string) string { return filepath.Base(filepath.Dir(filepath.Dir(loopback))) }

// compareVersions orders vMAJOR.MINOR.PATCH strings numerically.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(strings.TrimPrefix(a, "v"), "."), strings.Split(strings.TrimPrefix(b, "v"), ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		// A component that is not a number counts as 0.
		na, _ := strconv.Atoi(pa[i])
		nb, _ := strconv.Atoi(pb[i])
		if na != nb {
			return na - nb
		}
	}
	return len(pa) - len(pb)
}

// bin is the path of one Kubernetes binary.
func bin(name string) string { return filepath.Join(BinDir(), name) }

// CheckBinaries fails with one line naming everything missing when the lab cannot run Kubernetes.
func CheckBinaries() error {
	var missing []string
	for _, b := range Binaries {
		if _, err := os.Stat(bin(b)); err != nil {
			missing = append(missing, b)
		}
	}
	if _, err := os.Stat(CoreDNSBinary()); err != nil {
		missing = append(missing, "coredns")
	}
	if CNIPluginsDir() == "" {
		missing = append(missing, "loopback CNI plugin")
	}
	for _, t := range hostTools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return errors.New("kubernetes lab: missing " + strings.Join(missing, ", ") + " (under " + CacheDir() + " or in PATH): run make deps deps-kubernetes")
	}
	return nil
}
