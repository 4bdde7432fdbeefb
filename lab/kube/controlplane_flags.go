package kube

// apiserverArgs are kube-apiserver's flags: Node and RBAC authorization, certificates from the
// lab's CA, priority and fairness off to keep it light.
func (cp *ControlPlane) apiserverArgs(cfg ControlPlaneConfig) []string {
	return []string{
		"--etcd-servers=" + cfg.EtcdURL,
		"--advertise-address=" + cfg.AdvertiseIP.String(),
		"--bind-address=" + cfg.AdvertiseIP.String(),
		"--secure-port=" + apiserverPort,
		"--cert-dir=" + cp.pki,
		"--tls-cert-file=" + cp.pkiFile("apiserver.crt"),
		"--tls-private-key-file=" + cp.pkiFile("apiserver.key"),
		"--client-ca-file=" + cp.CAFile,
		"--kubelet-client-certificate=" + cp.pkiFile("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + cp.pkiFile("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + cp.CAFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-cluster-ip-range=" + cfg.serviceCIDRs(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cp.pkiFile("sa.pub"),
		"--service-account-signing-key-file=" + cp.pkiFile("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--event-ttl=10m",
	}
}

// controllerManagerArgs are kube-controller-manager's flags: no node CIDR allocation (ebpfnet does
// it, in each family of --cluster-cidr), so no --node-cidr-mask-size either.
func (cp *ControlPlane) controllerManagerArgs(cfg ControlPlaneConfig) []string {
	kc := cp.kubeconfigOf("controller-manager")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=" + cfg.AdvertiseIP.String(),
		"--leader-elect=false",
		"--allocate-node-cidrs=false",
		"--cluster-cidr=" + cfg.clusterCIDRs(),
		"--service-cluster-ip-range=" + cfg.serviceCIDRs(),
		"--service-account-private-key-file=" + cp.pkiFile("sa.key"),
		"--root-ca-file=" + cp.CAFile,
		"--use-service-account-credentials=true", // its own role lacks what some controllers need
		"--profiling=false",
	}
}

// schedulerArgs are kube-scheduler's flags.
func (cp *ControlPlane) schedulerArgs(cfg ControlPlaneConfig) []string {
	kc := cp.kubeconfigOf("scheduler")
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=" + cfg.AdvertiseIP.String(),
		"--leader-elect=false",
		"--profiling=false",
	}
}
