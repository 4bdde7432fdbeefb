package test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// nodeFootprint is what ebpfnet leaves on a node: links and routes in its network namespace
// (the routes by the agent's protocol number, 0xeb), files under its pin directory, and the CNI
// files `cni install` writes.
type nodeFootprint struct {
	links, routes, pins, cniFiles []string
}

func footprintOf(t *testing.T, n lab.Node, cniFiles ...string) nodeFootprint {
	t.Helper()
	var fp nodeFootprint
	err := namespace.Do(n.Netns, func() error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			fp.links = append(fp.links, l.Attrs().Name)
		}
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: 0xeb}, netlink.RT_FILTER_PROTOCOL)
		for _, r := range routes {
			fp.routes = append(fp.routes, r.Dst.String())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(n.PinDir, func(p string, d os.DirEntry, err error) error {
		if os.IsNotExist(err) {
			return nil
		}
		if err == nil && !d.IsDir() {
			fp.pins = append(fp.pins, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range cniFiles {
		if _, err := os.Stat(f); err == nil {
			fp.cniFiles = append(fp.cniFiles, f)
		}
	}
	return fp
}

// Acceptance (issue 22, removal): `ebpfnet uninstall` on a node refuses while its agent
// answers, and once the agent is stopped removes every pin, link, device, route and CNI file
// ebpfnet made there, leaving the node's own links; the other node keeps its datapath.
func TestUninstall(t *testing.T) {
	t.Parallel()
	st := upLab(t, "un", twoNodes("vxlan"))
	node1, node2 := *must(st.Node("node1")), *must(st.Node("node2"))
	cniBin, cniConf := t.TempDir(), t.TempDir()
	if out, code := ebpfnet(t, "cni", "install", "--bin-dir", cniBin, "--conf-dir", cniConf); code != 0 {
		t.Fatalf("cni install: exit %d: %s", code, out)
	}
	cniFiles := []string{filepath.Join(cniBin, "ebpfnet-cni"), filepath.Join(cniConf, "10-ebpfnet.conflist")}
	uninstall := func() (string, int) {
		cmd := exec.Command("nsenter", "--net="+node1.Netns, "--", ebpfnetBin, "--pin-dir", node1.PinDir, "uninstall",
			"--cni-bin-dir", cniBin, "--cni-conf-dir", cniConf, "--socket", node1.Socket)
		out, err := cmd.CombinedOutput()
		if ee := (*exec.ExitError)(nil); err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		} else if err != nil {
			return string(out), ee.ExitCode()
		}
		return string(out), 0
	}

	// Every kind of thing uninstall removes is there, and the footprint sees it.
	a := must(st.Pod("x/a"))
	before := footprintOf(t, node1, cniFiles...)
	for _, want := range []string{"ebpfnet_vxlan", "ebpfnet_host", "ebpfnet_net"} {
		if !slices.Contains(before.links, want) {
			t.Fatalf("node1 has no %s before uninstall: %v", want, before.links)
		}
	}
	podVeths := slices.DeleteFunc(slices.Clone(before.links), func(l string) bool { return !strings.HasPrefix(l, "eb") || strings.HasPrefix(l, "ebpfnet") })
	if len(podVeths) != 1 || len(before.routes) == 0 || len(before.pins) == 0 || len(before.cniFiles) != 2 {
		t.Fatalf("before uninstall: pod veths %v (pod %s), routes %v, %d pins, CNI files %v", podVeths, a.Name, before.routes, len(before.pins), before.cniFiles)
	}

	out, code := uninstall()
	if code == 0 || !strings.Contains(out, node1.Socket) {
		t.Fatalf("uninstall beside a running agent: exit %d: %s", code, out)
	}
	if got := footprintOf(t, node1, cniFiles...); !slices.Equal(got.links, before.links) || len(got.pins) != len(before.pins) || len(got.cniFiles) != 2 {
		t.Fatalf("a refused uninstall removed something: %+v, before %+v", got, before)
	}

	if err := st.StopAgent("node1"); err != nil {
		t.Fatal(err)
	}
	out, code = uninstall()
	if code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, out)
	}
	t.Logf("uninstall:\n%s", out)
	after := footprintOf(t, node1, cniFiles...)
	// The node's own links stay: lo and the underlay.
	own := slices.DeleteFunc(slices.Clone(before.links), func(l string) bool { return strings.HasPrefix(l, "eb") })
	if !slices.Contains(own, "lo") || !slices.Contains(own, lab.UnderlayIf) || !slices.Equal(after.links, own) {
		t.Errorf("links on node1 after uninstall: %v, want %v", after.links, own)
	}
	if left := slices.Concat(after.routes, after.pins, after.cniFiles); len(left) > 0 {
		t.Errorf("uninstall left on node1: %v", left)
	}
	if fp := footprintOf(t, node2); len(fp.pins) == 0 || !slices.Contains(fp.links, "ebpfnet_vxlan") {
		t.Fatalf("node2 lost its datapath: %+v", fp)
	}
}
