package lab

import "path/filepath"

// KubeCNIConfDir is the directory whose conflist a kubernetes lab node's containerd loads
// (and reloads when it changes).
func (s *State) KubeCNIConfDir(node string) string {
	return filepath.Join(s.kubeNodeDir(node), "cni-conf")
}

// KubeContainerdSocket is the CRI socket of a kubernetes lab node's containerd.
func (s *State) KubeContainerdSocket(node string) string {
	return filepath.Join(s.kubeNodeDir(node), "containerd.sock")
}
