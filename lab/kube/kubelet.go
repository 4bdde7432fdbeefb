package kube

import (
	"fmt"
	"path/filepath"
)

// kubeletConfig is the node's KubeletConfiguration: this host's cgroup v1 accepted, the node's
// own cgroup root, no swap check, no image garbage collection nor disk eviction (images are
// imported, never pulled back), the cluster DNS for pods, no iptables, and no port but 10250 on the node's address.
func kubeletConfig(n *Node, oomScoreAdj int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzPort: 0
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
oomScoreAdj: %d
resolvConf: %s
clusterDomain: %s
clusterDNS: [%s]
podLogsDir: %s
volumePluginDir: %s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%%"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
  imagefs.inodesFree: "0%%"
makeIPTablesUtilChains: false
hairpinMode: none
serializeImagePulls: false
registerNode: true
`, n.IP, n.pkiFile("kubelet-server.crt"), n.pkiFile("kubelet-server.key"), n.caFile,
		n.ContainerdSocket, n.CgroupRoot, oomScoreAdj,
		filepath.Join(n.Dir, "resolv.conf"), ClusterDomain, n.ClusterDNS, filepath.Join(n.Dir, "pod-logs"),
		filepath.Join(n.Dir, "kubelet", "volume-plugins"))
}

// kubeletArgs are the flags that have no configuration-file field.
func kubeletArgs(n *Node) []string {
	return []string{
		"--config=" + filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig=" + filepath.Join(n.Dir, "kubelet.kubeconfig"),
		"--root-dir=" + filepath.Join(n.Dir, "kubelet"),
		"--cert-dir=" + n.pki,
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
	}
}
