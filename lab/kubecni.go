package lab

import (
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// KubeCNIConfDir is the directory whose conflist a kubernetes lab node's containerd loads
// (and reloads when it changes).
func (s *State) KubeCNIConfDir(node string) string {
	return kube.NodeHostPath(s.kubeNodeDir(node), kube.NodeCNIConf)
}

// KubeContainerdSocket is the CRI socket of a kubernetes lab node's containerd.
func (s *State) KubeContainerdSocket(node string) string {
	return filepath.Join(s.kubeNodeDir(node), "containerd.sock")
}

// NodeHostPath is where the host sees a path of the node's: in a kubernetes lab the node's own
// directories (its pods' network namespaces among them) are directories of the node's dir.
func (s *State) NodeHostPath(node, path string) string {
	if !s.Kubernetes {
		return path
	}
	return kube.NodeHostPath(s.kubeNodeDir(node), path)
}
