package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// docs/cli.md is what gen-docs makes of the command tree: a flag or command added without
// `make generate` fails here.
func TestCLIReferenceIsCurrent(t *testing.T) {
	var got bytes.Buffer
	if err := writeCLIReference(&got); err != nil {
		t.Fatal(err)
	}
	// The generator must see the tree: a reference without the daemon's flags is no reference.
	for _, want := range []string{"## ebpfnet daemon", "`--cluster-cidr`", "## ebpfnet lab up"} {
		if !strings.Contains(got.String(), want) {
			t.Fatalf("the generated reference lacks %q", want)
		}
	}
	committed, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), committed) {
		t.Error("docs/cli.md is stale: run `go run ./cmd/ebpfnet gen-docs --out docs/cli.md` (make generate) and commit it")
	}
}
