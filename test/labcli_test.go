package test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// leftovers lists what of lab name is still on the machine: namespaces, pins, state, processes.
func leftovers(t *testing.T, name string) []string {
	t.Helper()
	var left []string
	entries, _ := os.ReadDir(namespace.Dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"-") || strings.HasPrefix(e.Name(), name+".") {
			left = append(left, "netns "+e.Name())
		}
	}
	for _, p := range []string{filepath.Join(lab.PinRoot, name), lab.Dir(name)} {
		if _, err := os.Stat(p); err == nil {
			left = append(left, p)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), lab.Dir(name)+"/") {
			left = append(left, "process "+filepath.Base(filepath.Dir(p)))
		}
	}
	return left
}

func writeLabFile(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "lab.yaml")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

const smallLab = `mode: vxlan
nodes: [{name: n1}, {name: n2}]
namespaces: [{name: x}]
pods:
  - {namespace: x, name: a, node: n1, ports: [{port: 80}]}
  - {namespace: x, name: b, node: n2, ports: [{port: 80, protocol: UDP}]}
`

// Acceptance: lab down leaves nothing, is idempotent, and copes with killed processes.
func TestLabDownLeavesNothing(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	file := writeLabFile(t, smallLab)
	for _, killFirst := range []bool{false, true} {
		name := "dn" + nstest.Suffix(4)
		t.Cleanup(func() { downLab(t, name) })
		if out, code := ebpfnet(t, "lab", "up", "-f", file, "--name", name); code != 0 {
			t.Fatalf("lab up: %s", out)
		}
		if out, code := ebpfnet(t, "lab", "probe", "x/a", "x/b", "--port", "80", "--protocol", "UDP", "--name", name); code != 0 {
			t.Fatalf("probe in a fresh lab: %s", out)
		}
		if len(leftovers(t, name)) == 0 {
			t.Fatal("leftovers() finds nothing of a running lab, so it cannot prove a clean down")
		}
		if killFirst {
			st, err := lab.Load(name)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range st.Pods {
				if err := syscall.Kill(p.ServerPID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i := 0; i < 2; i++ {
			if out, code := ebpfnet(t, "lab", "down", "--name", name); code != 0 {
				t.Fatalf("lab down #%d (servers killed first: %v): %s", i+1, killFirst, out)
			}
			if left := leftovers(t, name); len(left) > 0 {
				t.Fatalf("after lab down #%d (servers killed first: %v): %v", i+1, killFirst, left)
			}
		}
	}
}

// Acceptance: a malformed lab file is refused, naming the field, and nothing is made.
func TestMalformedLabFileChangesNothing(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	cases := []struct{ name, body, want string }{
		{"unknown mode", strings.Replace(smallLab, "mode: vxlan", "mode: geneve", 1), "mode: unknown mode \"geneve\""},
		{"undeclared node", strings.Replace(smallLab, "node: n2", "node: n3", 1), "pods[1].node: \"n3\" is not a declared node"},
		{"duplicate pod", strings.Replace(smallLab, "name: b,", "name: a,", 1), "pods[1]: duplicate pod x/a"},
		{"bad port", strings.Replace(smallLab, "port: 80}]}\n  - ", "port: 70000}]}\n  - ", 1), "pods[0].ports[0].port: 70000 is not in 1-65535"},
		{"bad protocol", strings.Replace(smallLab, "protocol: UDP", "protocol: ICMP", 1), "pods[1].ports[0].protocol: \"ICMP\""},
		{"overlapping cidrs", strings.Replace(smallLab, "nodes: [{name: n1}, {name: n2}]",
			"nodes: [{name: n1, podCIDR: 10.244.0.0/23}, {name: n2, podCIDR: 10.244.1.0/24}]", 1),
			"nodes[1].podCIDR: 10.244.1.0/24 overlaps nodes[0].podCIDR 10.244.0.0/23"},
		{"unknown field", strings.Replace(smallLab, "mode: vxlan", "mode: vxlan\nmtu: 9000", 1), `unknown field "mtu"`},
		{"undeclared namespace", strings.Replace(smallLab, "{namespace: x, name: b", "{namespace: z, name: b", 1), "pods[1].namespace: \"z\" is not a declared namespace"},
	}
	for _, c := range cases {
		name := "bad" + nstest.Suffix(4)
		out, code := ebpfnet(t, "lab", "up", "-f", writeLabFile(t, c.body), "--name", name)
		if code == 0 {
			downLab(t, name)
			t.Errorf("%s: lab up succeeded", c.name)
			continue
		}
		if !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%s: got %q, want one line containing %q", c.name, out, c.want)
		}
		if left := leftovers(t, name); len(left) > 0 {
			t.Errorf("%s: a refused lab file left %v", c.name, left)
		}
	}
	if _, err := lab.Load("bad-never-up"); !errors.Is(err, lab.ErrNotUp) {
		t.Errorf("loading a lab that never existed: %v", err)
	}
}
