package test

import (
	"os"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/test/nstest"
)

// TestKubeDev (temporary) runs the outage and CNI version checks on the kubernetes lab named by
// $EBPFNET_KUBEDEV_LAB, or on a fresh vxlan one it brings up and down.
func TestKubeDev(t *testing.T) {
	nstest.RequireRoot(t)
	name := os.Getenv("EBPFNET_KUBEDEV_LAB")
	if name == "" {
		name = "kd" + nstest.Suffix(4)
		t.Cleanup(func() { lab.Down(name) })
		out, code := ebpfnet(t, "lab", "up", "--name", name, "-f", writeSpec(t, standardLab(t, "vxlan")))
		if code != 0 {
			t.Fatalf("lab up: exit %d: %s", code, out)
		}
	}
	st, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("EBPFNET_KUBEDEV_SKIP_CNI") == "" {
		t.Run("containerd CNI versions", func(t *testing.T) { checkContainerdCNIVersions(t, st) })
	}
	if os.Getenv("EBPFNET_KUBEDEV_SKIP_OUTAGE") == "" {
		t.Run("agent restart and API outage", func(t *testing.T) { checkAgentRestartAndAPIOutage(t, st) })
	}
}
