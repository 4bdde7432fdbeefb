package test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// kubectlAPI runs kubectl as the admin against the shared API server.
func kubectlAPI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"--net=" + namespace.Path(apiServer.ns), "--", filepath.Join(kube.BinDir(), "kubectl"),
		"--kubeconfig", filepath.Join(apiServer.dir, "cp", "admin.kubeconfig")}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

// TestDeployManifests: what deploy/ ships passes the API server's own validation (a
// server-side dry run, strict about unknown fields), and a broken copy of it does not.
func TestDeployManifests(t *testing.T) {
	sharedAPIServer(t)
	out, err := kubectlAPI(t, "apply", "--dry-run=server", "--validate=strict", "-f", "../deploy/crds.yaml", "-f", "../deploy/ebpfnet.yaml")
	if err != nil {
		t.Fatalf("server-side dry run of deploy/: %v\n%s", err, out)
	}
	for _, kind := range []string{"serviceaccount/ebpfnet", "clusterrole.rbac.authorization.k8s.io/ebpfnet",
		"clusterrolebinding.rbac.authorization.k8s.io/ebpfnet", "configmap/ebpfnet", "daemonset.apps/ebpfnet"} {
		if !strings.Contains(out, kind) {
			t.Errorf("dry run did not cover %s:\n%s", kind, out)
		}
	}
	// The check can fail: a field the schema lacks is refused.
	broken := t.TempDir() + "/broken.yaml"
	if err := exec.Command("sh", "-c", "sed 's/hostNetwork: true/hostNetwerk: true/' ../deploy/ebpfnet.yaml > "+broken).Run(); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectlAPI(t, "apply", "--dry-run=server", "--validate=strict", "-f", broken); err == nil {
		t.Fatalf("a misspelt field passed the dry run:\n%s", out)
	}
}

// TestDeployRoleSuffices: with nothing but deploy/'s ServiceAccount and ClusterRole, the
// kubernetes store does everything an agent does.
func TestDeployRoleSuffices(t *testing.T) {
	cfg := sharedAPIServer(t)
	if out, err := kubectlAPI(t, "apply", "-f", "../deploy/crds.yaml", "-f", "../deploy/ebpfnet.yaml"); err != nil {
		t.Fatalf("apply deploy/: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := kubectlAPI(t, "delete", "--ignore-not-found", "-f", "../deploy/ebpfnet.yaml"); err != nil {
			t.Errorf("kubectl delete: %v: %s", err, out)
		}
	})
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:ebpfnet"}
	kv := openKubeStore(t, cfg)
	c := &store.Cluster{KV: kv}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := "role-" + nstest.Suffix(4)
	if err := c.PutNamespace(ctx, ns, map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Identity(ctx, "ns="+ns+";pod:app=role"); err != nil {
		t.Fatal(err)
	}
	p := ipam.New(kv, "role-node", netipPrefix(t, "10.252.0.0/28"))
	if _, err := p.Allocate(ctx, "c/eth0"); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(ctx, "c/eth0"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutStatus(ctx, "role-node", store.NodeStatus{Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BumpGeneration(ctx); err != nil {
		t.Fatal(err)
	}
	// Services: `ebpfnet service apply` creates and updates them, `delete` deletes them; their
	// EndpointSlices are read.
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "role-svc", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "role"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	for range 2 { // create, then update
		if err := c.PutService(ctx, svc); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Services(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.DeleteService(ctx, ns, "role-svc"); err != nil || !ok {
		t.Fatalf("delete service: %v %v", ok, err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// And nothing more: the role does not let the agent delete namespaces, nor write
	// EndpointSlices, nor get one (its informer lists and watches them).
	for _, verb := range [][]string{{"delete", "namespaces"}, {"create", "endpointslices.discovery.k8s.io"}, {"get", "endpointslices.discovery.k8s.io"}} {
		args := append([]string{"auth", "can-i"}, append(verb, "--as", "system:serviceaccount:kube-system:ebpfnet")...)
		if out, err := kubectlAPI(t, args...); err == nil || !strings.Contains(out, "no") {
			t.Fatalf("the agent's role may %s %s: %s", verb[0], verb[1], out)
		}
	}
}

func netipPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCNIInstall: what the DaemonSet's init container runs puts the plugin and a conflist at
// the version containerd 1.6 takes where the runtime reads them, and refuses a bad version.
func TestCNIInstall(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	out, code := ebpfnet(t, "cni", "install", "--bin-dir", bin, "--conf-dir", conf, "--socket", "/run/x/agent.sock")
	if code != 0 {
		t.Fatalf("cni install: exit %d: %s", code, out)
	}
	if fi, err := os.Stat(filepath.Join(bin, "ebpfnet-cni")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin not installed executable: %v %v", fi, err)
	}
	data, err := os.ReadFile(filepath.Join(conf, "10-ebpfnet.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct{ Type, Socket string }
	}
	if err := json.Unmarshal(data, &c); err != nil || c.CNIVersion != "1.0.0" || len(c.Plugins) != 1 ||
		c.Plugins[0].Type != "ebpfnet-cni" || c.Plugins[0].Socket != "/run/x/agent.sock" {
		t.Fatalf("conflist %s (%v)", data, err)
	}
	if out, code := ebpfnet(t, "cni", "install", "--bin-dir", bin, "--conf-dir", conf, "--cni-version", "9.9.9"); code != 2 || !strings.Contains(out, "cni-version") {
		t.Fatalf("a bad version: exit %d: %s", code, out)
	}
}
