package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
)

// aliasBomb is a YAML document of about 100 KiB whose aliases expand one long string past the
// 1 MiB any document may have.
func aliasBomb(prefix string) string { return prefix + yamlbomb.Repeated(100<<10, 20) }

// The agent's config and Service files are checked by the YAML guard before they are decoded:
// an alias bomb is refused with the guard's reason, naming the file or the document.
func TestYAMLReadersRefuseAliasBombs(t *testing.T) {
	const reason = "its aliases expand it past the 1 MiB a document may have"
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(aliasBomb("nodeName: node1\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadConfig(path); err == nil || !strings.Contains(err.Error(), "config "+path+": "+reason) {
		t.Errorf("ReadConfig of an alias bomb: %v, want the file and %q", err, reason)
	}
	good := "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: s}\nspec: {ports: [{port: 80}]}\n"
	if _, err := ParseServices([]byte(good)); err != nil {
		t.Fatalf("a good Service: %v", err)
	}
	_, err := ParseServices([]byte(good + "---\n" + aliasBomb("apiVersion: v1\nkind: Service\n")))
	if err == nil || !strings.Contains(err.Error(), "document 2: "+reason) {
		t.Errorf("ParseServices of an alias bomb: %v, want document 2 and %q", err, reason)
	}
}
