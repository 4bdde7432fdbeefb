package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// startTimeout bounds how long a component may take to become ready.
const startTimeout = 3 * time.Minute

// ControlPlaneConfig says where and how to run the control plane.
type ControlPlaneConfig struct {
	Dir         string     // certificates, kubeconfigs, logs and pid files all live under it
	Netns       string     // network namespace path to run in ("" = the caller's)
	EtcdURL     string     // the etcd the apiserver stores in, e.g. http://10.0.0.1:2379
	AdvertiseIP netip.Addr // the apiserver listens and advertises here, on port 6443
	ServiceCIDR string     // e.g. 10.96.0.0/16
	ClusterCIDR string     // pod addresses, e.g. 10.244.0.0/16 (node CIDRs are not allocated)
	// ServiceCIDRv6 and ClusterCIDRv6 make the cluster dual stack (IPv4 first), e.g.
	// fd00:10:96::/112 and fd00:10:244::/56; both or neither.
	ServiceCIDRv6 string
	ClusterCIDRv6 string
}

// serviceCIDRs is the --service-cluster-ip-range of the API server and the controller manager:
// the IPv4 range, then the IPv6 one in a dual-stack cluster.
func (cfg ControlPlaneConfig) serviceCIDRs() string {
	return joinCIDRs(cfg.ServiceCIDR, cfg.ServiceCIDRv6)
}

// clusterCIDRs is the controller manager's --cluster-cidr, IPv4 first.
func (cfg ControlPlaneConfig) clusterCIDRs() string {
	return joinCIDRs(cfg.ClusterCIDR, cfg.ClusterCIDRv6)
}

// joinCIDRs is the CIDRs that are set, comma-separated.
func joinCIDRs(cidrs ...string) string {
	var set []string
	for _, c := range cidrs {
		if c != "" {
			set = append(set, c)
		}
	}
	return strings.Join(set, ",")
}

// ControlPlane is a running kube-apiserver, kube-controller-manager and kube-scheduler.
type ControlPlane struct {
	Dir        string // as configured
	Netns      string // as configured
	Server     string // https://AdvertiseIP:6443
	Kubeconfig string // the admin's (system:masters) kubeconfig
	CAFile     string // the cluster CA certificate
	pki        string
}

// apiserverPort is the apiserver's secure port.
const apiserverPort = "6443"

// StartControlPlane writes the PKI and kubeconfigs under cfg.Dir, starts the three components in
// cfg.Netns and returns once /readyz answers ok and the default ServiceAccount and the
// kube-root-ca.crt ConfigMap its pods mount exist in the namespace "default". Whatever
// it returns, Teardown(cfg.Dir) removes what it started.
func StartControlPlane(ctx context.Context, cfg ControlPlaneConfig) (*ControlPlane, error) {
	if err := CheckBinaries(); err != nil {
		return nil, err
	}
	firstServiceIP, err := firstIP(cfg.ServiceCIDR)
	if err != nil {
		return nil, err
	}
	if !cfg.AdvertiseIP.IsValid() {
		return nil, fmt.Errorf("control plane: no advertise address")
	}
	if (cfg.ServiceCIDRv6 == "") != (cfg.ClusterCIDRv6 == "") {
		return nil, fmt.Errorf("control plane: dual stack needs an IPv6 service CIDR and an IPv6 cluster CIDR, got %q and %q",
			cfg.ServiceCIDRv6, cfg.ClusterCIDRv6)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{
		Dir: dir, Netns: cfg.Netns, pki: filepath.Join(dir, "pki"),
		Server: "https://" + net.JoinHostPort(cfg.AdvertiseIP.String(), apiserverPort),
	}
	cp.CAFile = filepath.Join(cp.pki, "ca.crt")
	cp.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := cp.writePKI(cfg.AdvertiseIP, firstServiceIP); err != nil {
		return nil, err
	}
	client, err := cp.client()
	if err != nil {
		return nil, err
	}
	defer client.close()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var procs []*proc
	// The apiserver first: the others exit when RBAC is not bootstrapped yet.
	apiserverArgs := cp.apiserverArgs(cfg)
	// Recorded so that StartAPIServer, in any process, can run it again as it first ran.
	if err := writeArgs(cp.apiserverArgsFile(), apiserverArgs); err != nil {
		return nil, err
	}
	if err := cp.start(&procs, "kube-apiserver", apiserverArgs); err != nil {
		return nil, err
	}
	if err := cp.waitReady(ctx, client, procs, "/readyz"); err != nil {
		return nil, err
	}
	if err := cp.start(&procs, "kube-controller-manager", cp.controllerManagerArgs(cfg)); err != nil {
		return nil, err
	}
	if err := cp.start(&procs, "kube-scheduler", cp.schedulerArgs(cfg)); err != nil {
		return nil, err
	}
	// What every pod's service account volume needs, made by the controller manager.
	for _, path := range []string{"/api/v1/namespaces/default/serviceaccounts/default", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"} {
		if err := cp.waitReady(ctx, client, procs, path); err != nil {
			return nil, err
		}
	}
	slog.Info("kubernetes control plane ready", "server", cp.Server, "dir", dir)
	return cp, nil
}

// LoadControlPlane describes, from a fresh process, the control plane StartControlPlane started
// with this dir and netns, to run kubectl or start more nodes.
func LoadControlPlane(dir, netns string) (*ControlPlane, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: dir, Netns: netns, pki: filepath.Join(dir, "pki")}
	cp.CAFile = filepath.Join(cp.pki, "ca.crt")
	cp.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	b, err := os.ReadFile(cp.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load control plane: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "server: "); ok {
			cp.Server = v
			return cp, nil
		}
	}
	return nil, fmt.Errorf("load control plane: no server in %s", cp.Kubeconfig)
}

// start spawns one component and adds it to procs.
func (cp *ControlPlane) start(procs *[]*proc, name string, args []string) error {
	p, err := spawn(namespaces{net: cp.Netns}, cp.Dir, name, nil, bin(name), args...)
	if err != nil {
		return err
	}
	*procs = append(*procs, p)
	return nil
}

// waitReady polls GET path until it answers 200, failing early when one of procs has exited.
func (cp *ControlPlane) waitReady(ctx context.Context, client *apiClient, procs []*proc, path string) error {
	return waitFor(ctx, "the control plane ("+path+")", func() (bool, string, error) {
		for _, p := range procs {
			if err := p.alive(); err != nil {
				return false, "", err
			}
		}
		code, body, err := client.get(ctx, path)
		if err != nil || code != 200 {
			return false, fmt.Sprintf("%d %v %s", code, err, strings.TrimSpace(string(body))), nil
		}
		return true, "", nil
	})
}

// writePKI makes the CA, every control-plane certificate, the service account key and the
// kubeconfigs of the admin, the controller manager and the scheduler.
func (cp *ControlPlane) writePKI(advertise netip.Addr, firstServiceIP netip.Addr) error {
	ca, err := newCA(cp.pki)
	if err != nil {
		return err
	}
	specs := []certSpec{
		{name: "apiserver", cn: "kube-apiserver", server: true,
			ips: []net.IP{advertise.AsSlice(), net.IPv4(127, 0, 0, 1), firstServiceIP.AsSlice()},
			dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}},
		{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true},
		{name: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, client: true},
		{name: "controller-manager", cn: "system:kube-controller-manager", client: true},
		{name: "scheduler", cn: "system:kube-scheduler", client: true},
	}
	for _, s := range specs {
		if err := ca.issue(s); err != nil {
			return err
		}
	}
	if err := writeServiceAccountKey(cp.pki); err != nil {
		return err
	}
	for _, u := range []string{"admin", "controller-manager", "scheduler"} {
		if err := writeKubeconfig(cp.kubeconfigOf(u), cp.Server, cp.CAFile, ca.certPath(u), ca.keyPath(u), u); err != nil {
			return err
		}
	}
	return nil
}

// kubeconfigOf is the kubeconfig path of a control-plane user.
func (cp *ControlPlane) kubeconfigOf(user string) string {
	return filepath.Join(cp.Dir, user+".kubeconfig")
}

func (cp *ControlPlane) pkiFile(name string) string { return filepath.Join(cp.pki, name) }

// client is an admin API client reaching the apiserver from the control plane's namespace.
func (cp *ControlPlane) client() (*apiClient, error) {
	return newAPIClient(cp.Server, cp.Netns, cp.CAFile, cp.pkiFile("admin.crt"), cp.pkiFile("admin.key"))
}

// Kubectl runs kubectl as the admin from the control plane's namespace and returns its output.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return cp.KubectlCommand(ctx, args...).CombinedOutput()
}

// KubectlCommand is the command Kubectl runs, for callers that want its stdin or streams.
func (cp *ControlPlane) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--kubeconfig=" + cp.Kubeconfig}, args...)
	if cp.Netns == "" {
		return exec.CommandContext(ctx, bin("kubectl"), full...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + cp.Netns, "--", bin("kubectl")}, full...)...)
}

// firstIP is the first host address of cidr: the kubernetes Service's cluster IP.
func firstIP(cidr string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service cidr: %w", err)
	}
	return p.Masked().Addr().Next(), nil
}
