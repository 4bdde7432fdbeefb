package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostileNames would lead out of the lab's directories and namespaces, or make names the
// kernel and the tools refuse, were they taken as given.
var hostileNames = []string{"", ".", "..", "../x", "../../etc", "a/b", "/abs", "a\x00b", "a b", "a\nb", "A", "-a", "a-", "a.b", "a_b",
	"ünï", strings.Repeat("a", 64), strings.Repeat("a", 100000)}

// Every user-supplied name that becomes a path or a namespace name is refused, by name, in
// one line, before anything is made: lab names, node names, namespace, pod and rack names, in
// a lab file and when added to a running lab.
func TestHostileNamesRefused(t *testing.T) {
	root := t.TempDir()
	saved := StateRoot
	StateRoot = root
	t.Cleanup(func() { StateRoot = saved })
	oneLine := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") || len(err.Error()) > 300 {
			t.Errorf("%s: %v; want one short line containing %q", what, err, want)
		}
	}
	for _, name := range hostileNames {
		q := strings.ReplaceAll(name, "\n", `\n`)
		if len(q) > 20 {
			q = q[:20] + "…"
		}
		oneLine("lab name "+q, CheckName(name), "lab name")
		_, err := Load(name)
		oneLine("Load "+q, err, "lab name")
		oneLine("Down "+q, Down(name), "lab name")
		oneLine("node name "+q, checkNodeName(name), "must be a lower-case DNS label")
		st := &State{Name: "t"}
		_, err = st.AddPod(context.Background(), PodSpec{Namespace: name, Name: "p", Node: "n1"}, Options{})
		oneLine("AddPod namespace "+q, err, "pod namespace")
		_, err = st.AddPod(context.Background(), PodSpec{Namespace: "x", Name: name, Node: "n1"}, Options{})
		oneLine("AddPod name "+q, err, "pod name")
		_, err = st.AddNode(context.Background(), NodeSpec{Name: name}, Options{})
		oneLine("AddNode "+q, err, "node name")
		if name != "" { // no rack is a lab without racks
			_, err = st.AddNode(context.Background(), NodeSpec{Name: "n2", Rack: name}, Options{})
			oneLine("AddNode rack "+q, err, "rack")
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("refused names left %d entries in the state root", len(entries))
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(root), "x")); err == nil {
		t.Error("a refused name made a file beside the state root")
	}
}

// The same names in a lab file are refused naming the field.
func TestHostileNamesInLabFile(t *testing.T) {
	for _, name := range hostileNames {
		if name == "" {
			continue // an absent name is a different error
		}
		q := yamlQuote(name)
		for _, c := range []struct{ file, want string }{
			{"mode: vxlan\nnodes: [{name: " + q + "}]\n", "nodes[0].name: "},
			{"mode: native\nnodes: [{name: n1, rack: " + q + "}]\nbgp: {asn: 64512, routerASN: 64500}\n", "nodes[0].rack: "},
			{"mode: vxlan\nnodes: [{name: n1}]\nnamespaces: [{name: " + q + "}]\n", "namespaces[0].name: "},
			{"mode: vxlan\nnodes: [{name: n1}]\nnamespaces: [{name: x}]\npods: [{namespace: x, name: " + q + ", node: n1}]\n", "pods[0].name: "},
		} {
			_, err := readSpec(t, c.file)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%.60q: %.200v; want one line about %s", c.file, err, c.want)
			}
		}
	}
}

// yamlQuote writes s as a double-quoted YAML scalar, escaping what YAML would not take raw.
func yamlQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\x00", `\0`)
	return `"` + r.Replace(s) + `"`
}
