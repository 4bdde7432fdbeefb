package kube

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// CoreDNSVersion is the CoreDNS release build.sh builds from its Go module for the cluster DNS.
const CoreDNSVersion = "v1.12.4"

// CoreDNSImage is the cluster DNS's image: the cached CoreDNS binary as /coredns.
const CoreDNSImage = "docker.io/ebpfnet/coredns:" + CoreDNSVersion

// ClusterDomain is the lab cluster's DNS domain: kubelet's clusterDomain and CoreDNS's zone.
const ClusterDomain = "cluster.local"

// corednsManifest is the cluster DNS: RBAC, the Corefile, the Deployment and the kube-dns Service.
//
//go:embed coredns.yaml
var corednsManifest string

// CoreDNSBinary is the path of the cached CoreDNS binary.
func CoreDNSBinary() string {
	return filepath.Join(CacheDir(), "coredns", CoreDNSVersion, "bin", "coredns")
}

// DNSManifest is the cluster DNS's objects with the kube-dns Service on clusterIP.
func DNSManifest(clusterIP netip.Addr) (string, error) {
	t, err := template.New("coredns").Option("missingkey=error").Parse(corednsManifest)
	if err != nil {
		return "", fmt.Errorf("cluster DNS manifest: %w", err)
	}
	var out bytes.Buffer
	err = t.Execute(&out, map[string]string{"Image": CoreDNSImage, "ClusterIP": clusterIP.String(), "Domain": ClusterDomain})
	if err != nil {
		return "", fmt.Errorf("cluster DNS manifest: %w", err)
	}
	return out.String(), nil
}

// DeployDNS creates the cluster DNS through the API server; WaitDNS waits for it.
func (cp *ControlPlane) DeployDNS(ctx context.Context, clusterIP netip.Addr) error {
	manifest, err := DNSManifest(clusterIP)
	if err != nil {
		return err
	}
	cmd := cp.KubectlCommand(ctx, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cluster DNS: kubectl apply: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// WaitDNS returns once every CoreDNS replica is ready (its kubernetes plugin has synced), or
// fails with kubectl's account of the rollout.
func (cp *ControlPlane) WaitDNS(ctx context.Context) error {
	out, err := cp.Kubectl(ctx, "rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout="+startTimeout.String())
	if err != nil {
		return fmt.Errorf("cluster DNS: kubectl rollout status: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// coreDNSImage is the CoreDNS image BuildImages writes, from the cached binary.
func coreDNSImage() (image, error) {
	bin := CoreDNSBinary()
	if _, err := os.Stat(bin); err != nil {
		return image{}, fmt.Errorf("cluster DNS: %w: run make deps-kubernetes", err)
	}
	return image{ref: CoreDNSImage, entrypoint: []string{"/coredns"}, files: []imageFile{{name: "coredns", src: bin, mode: 0o755}}}, nil
}
