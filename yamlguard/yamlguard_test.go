package yamlguard_test

import (
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
	"github.com/ebpfnet/ebpfnet/yamlguard"
)

// bomb is a document of about 100 KiB whose aliases repeat one long string past
// MaxDocumentBytes.
func bomb(prefix string) string { return prefix + yamlbomb.Repeated(100<<10, 20) }

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		name, doc, want string
	}{
		{"no alias", "a: 1\nb: [x, y]\n", ""},
		{"aliases within the bound", "a: &a \"" + strings.Repeat("x", 10<<10) + "\"\nb: [*a, *a, *a]\n", ""},
		{"aliases past the bound", bomb(""), "its aliases expand it past the 1 MiB a document may have"},
		{"ten levels of ten aliases", yamlbomb.Laughs(""), "its aliases expand it past the 1 MiB"},
		{"a document over the bound", "a: \"" + strings.Repeat("x", yamlguard.MaxDocumentBytes) + "\"\n", "1.0 MiB is over the 1 MiB a document may have"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := yamlguard.Check([]byte(c.doc))
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}
