package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
)

// NodeConfig says where and how to run one node's containerd and kubelet.
type NodeConfig struct {
	Name       string     // the Node object's name
	Dir        string     // the node's state, certificates, logs and pid files all live under it
	Netns      string     // the node's network namespace path
	IP         netip.Addr // the node's InternalIP; kubelet serves on it
	ClusterDNS netip.Addr // the kube-dns Service's cluster IP, each pod's nameserver
	CNIPlugins []string   // plugins linked into the node's /opt/cni/bin before containerd starts (loopback)
	Images     []string   // image archives (BuildImages) imported into containerd before kubelet starts
}

// Node is a running containerd and kubelet.
type Node struct {
	Name             string     // as configured
	Dir              string     // as configured, absolute
	Netns            string     // as configured
	IP               netip.Addr // as configured
	ClusterDNS       netip.Addr // as configured
	MountNS          string     // the node's mount namespace (mountns.go), where containerd and kubelet run
	ContainerdSocket string     // containerd's gRPC socket (CRI endpoint)
	CgroupRoot       string     // the kubelet's cgroupRoot, the parent of every pod cgroup
	RestrictOOM      bool       // whether containerd clamps the CRI's negative oom_score_adj
	pki              string
	caFile           string
}

// StartNode gives the node its mount namespace (mountns.go), starts containerd (with cfg.Images
// imported) and kubelet there and in cfg.Netns, and returns once the Node object is registered;
// it stays NotReady until a CNI config exists in the node's /etc/cni/net.d.
// Whatever it returns, Teardown(cfg.Dir) removes what it started.
func StartNode(ctx context.Context, cp *ControlPlane, cfg NodeConfig) (*Node, error) {
	if err := CheckBinaries(); err != nil {
		return nil, err
	}
	if !cfg.ClusterDNS.IsValid() {
		return nil, fmt.Errorf("node %s: no cluster DNS address", cfg.Name)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name: cfg.Name, Dir: dir, Netns: cfg.Netns, IP: cfg.IP, ClusterDNS: cfg.ClusterDNS,
		MountNS:          filepath.Join(dir, mountNSFile),
		ContainerdSocket: filepath.Join(dir, "containerd.sock"),
		CgroupRoot:       cgroupRootName(dir, cfg.Name),
		RestrictOOM:      NegativeOOMScoreRefused(),
		pki:              filepath.Join(dir, "pki"),
		caFile:           cp.CAFile,
	}
	for _, d := range []string{n.pki, filepath.Join(dir, "pod-logs")} {
		if err := ensureDir(d); err != nil {
			return nil, err
		}
	}
	if err := n.writePKI(cp); err != nil {
		return nil, err
	}
	// Recorded before the cgroup is made, so that Teardown finds it whatever happens next.
	if err := writeFile(filepath.Join(dir, cgroupRootFile), n.CgroupRoot+"\n"); err != nil {
		return nil, err
	}
	if err := createCgroupRoot(n.CgroupRoot); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := makeMountNS(ctx, dir); err != nil {
		return nil, err
	}
	for _, p := range cfg.CNIPlugins {
		if err := os.Symlink(p, NodeHostPath(dir, filepath.Join(NodeCNIBin, filepath.Base(p)))); err != nil && !os.IsExist(err) {
			return nil, err
		}
	}
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := n.importImages(ctx, cfg.Images); err != nil {
		return nil, err
	}
	if err := n.startKubelet(ctx, cp); err != nil {
		return nil, err
	}
	slog.Info("kubernetes node registered", "node", n.Name, "ip", n.IP, "dir", dir, "restrictOOM", n.RestrictOOM)
	return n, nil
}

func (n *Node) pkiFile(name string) string { return filepath.Join(n.pki, name) }

// namespaces are the node's network and mount namespaces.
func (n *Node) namespaces() namespaces { return namespaces{net: n.Netns, mnt: n.MountNS} }

// HostPath is where the host sees the node's path (NodeHostPath).
func (n *Node) HostPath(path string) string { return NodeHostPath(n.Dir, path) }

// writePKI issues the kubelet's client (system:node:<name>) and serving certificates from the
// cluster CA and writes its kubeconfig.
func (n *Node) writePKI(cp *ControlPlane) error {
	ca, err := loadCA(cp.pki)
	if err != nil {
		return err
	}
	ca.dir = n.pki
	if err := ca.issue(certSpec{name: "kubelet-client", cn: "system:node:" + n.Name, orgs: []string{"system:nodes"}, client: true}); err != nil {
		return err
	}
	if err := ca.issue(certSpec{name: "kubelet-server", cn: n.Name, server: true, ips: []net.IP{n.IP.AsSlice()}, dns: []string{n.Name}}); err != nil {
		return err
	}
	return writeKubeconfig(filepath.Join(n.Dir, "kubelet.kubeconfig"), cp.Server, cp.CAFile,
		n.pkiFile("kubelet-client.crt"), n.pkiFile("kubelet-client.key"), "system:node:"+n.Name)
}

// startContainerd writes containerd's config, starts it and waits until it answers.
func (n *Node) startContainerd(ctx context.Context) error {
	conf := filepath.Join(n.Dir, "containerd.toml")
	if err := writeFile(conf, containerdConfig(n, n.RestrictOOM)); err != nil {
		return err
	}
	p, err := spawn(n.namespaces(), n.Dir, "containerd", nil, "containerd", "--config", conf)
	if err != nil {
		return err
	}
	return waitFor(ctx, "containerd on "+n.Name, func() (bool, string, error) {
		if err := p.alive(); err != nil {
			return false, "", err
		}
		if out, err := n.ctr(ctx, "version"); err != nil {
			return false, fmt.Sprintf("%v: %s", err, out), nil // not up yet: waitFor tries again
		}
		return true, "", nil
	})
}

// startKubelet writes the kubelet's config, starts it and waits until its Node is registered.
func (n *Node) startKubelet(ctx context.Context, cp *ControlPlane) error {
	if err := writeFile(filepath.Join(n.Dir, "resolv.conf"), "nameserver 127.0.0.1\n"); err != nil {
		return err
	}
	oom := -999 // the kubelet's default
	if n.RestrictOOM {
		oom = 0
	}
	if err := writeFile(filepath.Join(n.Dir, "kubelet.yaml"), kubeletConfig(n, oom)); err != nil {
		return err
	}
	p, err := spawn(n.namespaces(), n.Dir, "kubelet", nil, bin("kubelet"), kubeletArgs(n)...)
	if err != nil {
		return err
	}
	client, err := cp.client()
	if err != nil {
		return err
	}
	defer client.close()
	return waitFor(ctx, "node "+n.Name+" to register", func() (bool, string, error) {
		if err := p.alive(); err != nil {
			return false, "", err
		}
		code, _, err := client.get(ctx, "/api/v1/nodes/"+n.Name)
		return code == 200, fmt.Sprintf("GET node: %d %v", code, err), nil
	})
}

// WaitNodeReady returns once the Node called name reports Ready (it needs a CNI config).
func (cp *ControlPlane) WaitNodeReady(ctx context.Context, name string) error {
	client, err := cp.client()
	if err != nil {
		return err
	}
	defer client.close()
	return waitFor(ctx, "node "+name+" to be Ready", func() (bool, string, error) {
		code, body, err := client.get(ctx, "/api/v1/nodes/"+name)
		if err != nil || code != 200 {
			return false, fmt.Sprintf("GET node: %d %v", code, err), nil
		}
		var node struct {
			Status struct {
				Conditions []struct{ Type, Status, Message string }
			}
		}
		if err := json.Unmarshal(body, &node); err != nil {
			return false, "", fmt.Errorf("node %s: %w", name, err)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == "Ready" {
				return c.Status == "True", c.Message, nil
			}
		}
		return false, "no Ready condition", nil
	})
}
