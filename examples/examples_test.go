// Package examples holds the configuration, lab files, policies and Services the docs show.
// Its tests load each file with the product's own parser and validation, and hold every
// yaml or json block of README.md and docs/*.md to the file it shows, byte for byte, so a
// doc cannot show what the product refuses.
package examples

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/policy"
)

// parser loads one kind of file as the product does, returning its refusal.
type parser func(path string) error

// agentConfig is what `ebpfnet daemon -c FILE` does before it starts anything.
func agentConfig(path string) error {
	c, err := agent.ReadConfig(path)
	if err != nil {
		return err
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// labFile is what `ebpfnet lab up -f FILE` does before it makes anything.
func labFile(path string) error {
	_, err := lab.ReadSpec(path)
	return err
}

// policies is what `ebpfnet policy apply -f FILE` sends only once it parses.
func policies(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	nps, err := policy.Parse(data)
	if err != nil {
		return err
	}
	if len(nps) == 0 {
		return errors.New("no NetworkPolicy in the file")
	}
	return nil
}

// services is what `ebpfnet service apply -f FILE` and the agent's API check.
func services(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	objs, err := agent.ParseServices(data)
	if err != nil {
		return err
	}
	for i := range objs.Services {
		agent.NormalizeService(&objs.Services[i])
		if err := agent.ValidateService(&objs.Services[i]); err != nil {
			return err
		}
	}
	for i := range objs.EndpointSlices {
		agent.NormalizeEndpointSlice(&objs.EndpointSlices[i])
		if err := agent.ValidateEndpointSlice(&objs.EndpointSlices[i]); err != nil {
			return err
		}
	}
	return nil
}

// conflist is what a runtime reads from /etc/cni/net.d (libcni), naming our plugin.
func conflist(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return err
	}
	if len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "ebpfnet-cni" {
		return errors.New("want exactly one plugin, of type ebpfnet-cni")
	}
	return nil
}

// examples is every file of this directory (but the tests) and the parser that must take it.
// A file missing here fails TestEveryExampleHasAParser.
var examples = map[string]parser{
	"agent-local.yaml":           agentConfig,
	"agent-etcd.yaml":            agentConfig,
	"agent-kubernetes.yaml":      agentConfig,
	"agent-bgp.yaml":             agentConfig,
	"demo-lab.yaml":              labFile,
	"bgp-racks.yaml":             labFile,
	"lab-reference.yaml":         labFile,
	"dual-stack-lab.yaml":        labFile,
	"ipv6-only-lab.yaml":         labFile,
	"deny-shop-to-db.yaml":       policies,
	"policy-egress-ipblock.yaml": policies,
	"service-web.yaml":           services,
	"service-external.yaml":      services,
	"cni/10-ebpfnet.conflist":    conflist,
}

func exampleFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		files = append(files, filepath.ToSlash(path))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no example files found")
	}
	return files
}

func TestEveryExampleHasAParser(t *testing.T) {
	for _, f := range exampleFiles(t) {
		if examples[f] == nil {
			t.Errorf("examples/%s: no parser in the examples table of examples_test.go", f)
		}
	}
	for f := range examples {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("examples table names %s: %v", f, err)
		}
	}
}

func TestExamplesAreAccepted(t *testing.T) {
	for f, parse := range examples {
		t.Run(f, func(t *testing.T) {
			if err := parse(f); err != nil {
				t.Errorf("examples/%s is refused by the product's parser: %v", f, err)
			}
		})
	}
}

// Each parser refuses what the product refuses: without this, a parser that accepted anything
// would let every example pass. The first agent case is the configuration README.md used to
// show (nodeLeaseTTL on a local store, a bgp block with routing: store in vxlan mode).
func TestParsersRefuseBadFiles(t *testing.T) {
	const agentBase = "underlayInterface: eth0\nclusterCIDR: 10.244.0.0/16\n"
	for _, c := range []struct {
		name, content, wantErr string
		parse                  parser
	}{
		{"agent: lease on a local store", agentBase + "mode: vxlan\nstore: {type: local}\nnodeLeaseTTL: 30s\n",
			"nodeLeaseTTL: only an etcd store has leases", agentConfig},
		{"agent: bgp with routing store", agentBase + "mode: vxlan\nstore: {type: etcd, endpoints: [http://10.0.0.1:2379]}\nrouting: store\nbgp: {asn: 64512, meshNodes: true}\n",
			"bgp: set, but routing is store", agentConfig},
		{"agent: bgp in vxlan mode", agentBase + "mode: vxlan\nrouting: bgp\nbgp: {asn: 64512, meshNodes: true}\n",
			"routing: bgp distributes native routes", agentConfig},
		{"agent: unknown field", agentBase + "mode: vxlan\nmode2: x\n", `unknown field "mode2"`, agentConfig},
		{"lab: unknown mode", "mode: geneve\nnodes: [{name: n1}]\n", "mode:", labFile},
		{"lab: IPv6 only with clusterCIDRv6", "mode: vxlan\nipFamilies: [IPv6]\nclusterCIDRv6: fd00:1::/56\nnodes: [{name: n1}]\n", "clusterCIDRv6: set, but the lab is IPv6-only", labFile},
		{"lab: IPv6 only with an IPv4 cluster CIDR", "mode: vxlan\nipFamilies: [IPv6]\nclusterCIDR: 10.1.0.0/16\nnodes: [{name: n1}]\n", "is not an IPv6 network of /64 or larger", labFile},
		{"lab: unknown family", "mode: vxlan\nipFamilies: [IPv4, IPv7]\nnodes: [{name: n1}]\n", "ipFamilies:", labFile},
		{"lab: IPv4 cluster CIDR as IPv6", "mode: vxlan\nipFamilies: [IPv4, IPv6]\nclusterCIDRv6: 10.1.0.0/16\nnodes: [{name: n1}]\n", "clusterCIDRv6:", labFile},
		{"agent: IPv6 cluster CIDR too small", agentBase + "mode: vxlan\nclusterCIDRv6: fd00::/96\n", "clusterCIDRv6:", agentConfig},
		{"agent: IPv6 pod CIDR outside", agentBase + "mode: vxlan\nclusterCIDRv6: fd00:10:244::/56\npodCIDRv6: fd00:99::/64\n", "not inside clusterCIDRv6", agentConfig},
		{"policy: port out of range", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n",
			"70000", policies},
		{"service: unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {ports: [{port: 80}], colour: red}\n",
			`unknown field`, services},
		{"conflist: another plugin", `{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}`,
			"ebpfnet-cni", conflist},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad")
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			err := c.parse(path)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

// The agent configuration deploy/ebpfnet.yaml ships in its ConfigMap is one the agent takes.
func TestDeployAgentConfigIsAccepted(t *testing.T) {
	data, err := os.ReadFile("../deploy/ebpfnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var cm struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal(doc, &cm); err != nil {
			t.Fatalf("deploy/ebpfnet.yaml: %v", err)
		}
		conf, ok := cm.Data["agent.yaml"]
		if cm.Kind != "ConfigMap" || !ok {
			continue
		}
		found = true
		path := filepath.Join(t.TempDir(), "agent.yaml")
		// The DaemonSet gives the node's name by flag; any name stands for it here.
		if err := os.WriteFile(path, []byte("nodeName: node1\n"+conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := agentConfig(path); err != nil {
			t.Errorf("deploy/ebpfnet.yaml's agent.yaml is refused: %v", err)
		}
	}
	if !found {
		t.Error("deploy/ebpfnet.yaml has no ConfigMap with agent.yaml")
	}
}

// docs are the markdown files whose blocks and links are checked.
func docs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no docs/*.md found")
	}
	return append(files, "../README.md")
}

// block is a fenced block of a markdown file.
type block struct {
	line    int    // of the opening fence
	lang    string // the fence's info string
	example string // the path of the `<!-- example: PATH -->` line right above it, if any
	content string
}

var exampleMarker = regexp.MustCompile(`^<!-- example: (\S+) -->$`)

// fencedBlocks reads the ``` blocks of a markdown file.
func fencedBlocks(t *testing.T, path string) []block {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		out    []block
		cur    *block
		marker string
		buf    strings.Builder
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{line: n, lang: strings.TrimSpace(strings.TrimPrefix(line, "```")), example: marker}
			buf.Reset()
		case cur != nil && line == "```":
			cur.content = buf.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			buf.WriteString(line + "\n")
		}
		marker = ""
		if m := exampleMarker.FindStringSubmatch(line); m != nil && cur == nil {
			marker = m[1]
		}
		if cur == nil && marker == "" && strings.HasPrefix(strings.TrimSpace(line), "<!-- example") {
			t.Errorf("%s:%d: malformed example marker %q (want <!-- example: examples/FILE -->)", path, n, line)
		}
	}
	if cur != nil {
		t.Errorf("%s:%d: fenced block never closed", path, cur.line)
	}
	return out
}

// Every yaml or json block in the docs is an example file, shown whole: the line above it
// names the file, and the block is the file byte for byte. A marker must be followed by a block.
func TestDocsShowExamplesVerbatim(t *testing.T) {
	shown := 0
	for _, doc := range docs(t) {
		for _, b := range fencedBlocks(t, doc) {
			isConfig := b.lang == "yaml" || b.lang == "yml" || b.lang == "json"
			if b.example == "" {
				if isConfig {
					t.Errorf("%s:%d: a %s block with no <!-- example: examples/FILE --> line above it: put it in examples/ (where a test parses it) and name it", doc, b.line, b.lang)
				}
				continue
			}
			rel, ok := strings.CutPrefix(b.example, "examples/")
			if !ok || examples[rel] == nil {
				t.Errorf("%s:%d: %s is not a file of the examples table", doc, b.line, b.example)
				continue
			}
			want, err := os.ReadFile(rel)
			if err != nil {
				t.Errorf("%s:%d: %v", doc, b.line, err)
				continue
			}
			if b.content != string(want) {
				t.Errorf("%s:%d: the block differs from %s; paste the file in whole", doc, b.line, b.example)
			}
			shown++
		}
	}
	if shown == 0 {
		t.Error("no example block found in the docs: is the marker syntax still <!-- example: examples/FILE -->?")
	}
}

var (
	mdLink    = regexp.MustCompile(`\]\(([^)#\s]*)(?:#([^)\s]*))?\)`)
	mdHeading = regexp.MustCompile("(?m)^#{1,6} (.+)$")
	notInSlug = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
)

// anchors are the heading anchors GitHub makes of a markdown file: lower case, punctuation
// dropped, spaces made hyphens.
func anchors(data []byte) map[string]bool {
	out := map[string]bool{}
	for _, m := range mdHeading.FindAllSubmatch(data, -1) {
		slug := notInSlug.ReplaceAllString(strings.ToLower(strings.TrimSpace(string(m[1]))), "")
		out[strings.ReplaceAll(slug, " ", "-")] = true
	}
	return out
}

// Every relative link of the docs leads to a file or directory of the repository, and a link
// to a section of a markdown file to a heading it has.
func TestDocsLinksResolve(t *testing.T) {
	checked, sections := 0, 0
	for _, doc := range docs(t) {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
			target, section := m[1], m[2]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path := doc
			if target != "" {
				path = filepath.Join(filepath.Dir(doc), target)
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s: link to %s: %v", doc, target, err)
					continue
				}
				checked++
			}
			if section == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			md, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !anchors(md)[section] {
				t.Errorf("%s: link to %s#%s: no such heading in %s", doc, target, section, path)
			}
			sections++
		}
	}
	if checked == 0 || sections == 0 {
		t.Errorf("checked %d file links and %d section links: is the link pattern wrong?", checked, sections)
	}
}

// The front page stays a front page (the issue asks for at most 10 KB).
func TestReadmeIsShort(t *testing.T) {
	fi, err := os.Stat("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 10240 {
		t.Errorf("README.md is %d bytes; keep it at most 10240 and move detail to docs/", fi.Size())
	}
}
