package policy_test

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
	"github.com/ebpfnet/ebpfnet/yamlguard"
)

const head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n"

// billionLaughs is the classic alias bomb in a policy's annotations.
func billionLaughs() string {
	return head + "  annotations:\n" + yamlbomb.Laughs("    ") + "spec: {podSelector: {}}\n"
}

// longLaughs repeats one long string through aliases: few aliases (under the YAML decoder's
// own alias limits), each expanding to size bytes.
func longLaughs(size, aliases int) string {
	return head + "  labels:\n    a: &a \"" + strings.Repeat("x", size) + "\"\n  annotations:\n    b: [" +
		strings.TrimSuffix(strings.Repeat("*a,", aliases), ",") + "]\nspec: {podSelector: {}}\n"
}

// parseBounded parses data and returns Parse's error, failing the test when the parse
// allocated more than maxAlloc in all. Total allocation bounds the heap's growth from above,
// whatever the collector did meanwhile; how long a parse takes is for `make bench`.
func parseBounded(t *testing.T, data []byte, maxAlloc uint64) error {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := policy.Parse(data)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d bytes: %v, %.1f MiB allocated", len(data), err, float64(alloc)/(1<<20))
	if alloc > maxAlloc {
		t.Errorf("parsing %d bytes allocated %.1f MiB, want at most %d MiB", len(data), float64(alloc)/(1<<20), maxAlloc>>20)
	}
	return err
}

// Hostile YAML is refused, for the reason the guard measured (its error says which), and in
// bounded memory (under 64 MiB allocated in all): alias bombs of both kinds, an alias loop, a
// document over the size limit, a bomb after a good document. Without the guard the
// long-string bomb alone allocates gigabytes.
func TestParseRefusesHostileYAML(t *testing.T) {
	const maxAlloc = 64 << 20
	good := head + "spec: {podSelector: {}}\n"
	cases := []struct {
		name, doc, want string
	}{
		{"billion laughs", billionLaughs(), "document 1: its aliases expand it past the 1 MiB"},
		{"a long string repeated by aliases", longLaughs(64<<10, 4000), "document 1: its aliases expand it past the 1 MiB"},
		{"an alias loop", head + "  annotations: &a {b: [*a]}\nspec: {podSelector: {}}\n", "document 1: an alias refers to a node that contains it"},
		{"a document over 1 MiB", head + "  annotations:\n    a: \"" + strings.Repeat("x", yamlguard.MaxDocumentBytes) + "\"\nspec: {podSelector: {}}\n",
			"document 1: 1.0 MiB is over the 1 MiB a document may have"},
		{"a bomb after a good document", good + "---\n" + longLaughs(64<<10, 4000), "document 2: its aliases expand it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := parseBounded(t, []byte(c.doc), maxAlloc)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line containing %q", err, c.want)
			}
		})
	}
}

// A 100 MB document is refused unparsed: by its size, allocating almost nothing beyond its text.
func TestParseRefuses100MB(t *testing.T) {
	doc := bytes.Repeat([]byte("x"), 100<<20)
	copy(doc, head+"  annotations:\n    a: \"")
	copy(doc[len(doc)-30:], "\"\nspec: {podSelector: {}}\n")
	err := parseBounded(t, doc, 1<<20)
	if err == nil || !strings.Contains(err.Error(), "is over the 1 MiB a document may have") {
		t.Fatalf("got %v", err)
	}
}

// Aliases that expand to little are YAML as people write it: accepted, and expanded as the
// decoder always did.
func TestParseAcceptsModestAliases(t *testing.T) {
	doc := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: &web {app: web}} # the * in a comment is no alias
  ingress:
  - from: [{podSelector: {matchLabels: *web}}, {namespaceSelector: {matchLabels: *web}}]
---
# a document of comments only
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: q, namespace: x}
spec: {podSelector: {}}
`
	nps, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(nps) != 2 || nps[0].Spec.Ingress[0].From[1].NamespaceSelector.MatchLabels["app"] != "web" || nps[1].Name != "q" {
		t.Fatalf("parsed %+v", nps)
	}
}
