// Package yamlbomb writes YAML alias bombs: small documents whose aliases expand far past what
// any reader should decode, for the tests of every YAML reader's guard.
package yamlbomb

import (
	"fmt"
	"strings"
)

// Laughs is the billion laughs: ten aliases of ten aliases, nine levels deep, 10^9 strings
// from about 500 bytes. Every line starts with indent, so it can sit inside a mapping.
func Laughs(indent string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%sl0: &l0 \"lol\"\n", indent)
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "%sl%d: &l%d [%s]\n", indent, i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d,", i-1), 10), ","))
	}
	return b.String()
}

// Repeated anchors one string of size bytes at key a and lists aliases of it at key b: few
// aliases (under a decoder's own alias limits), each expanding to size bytes.
func Repeated(size, aliases int) string {
	return "a: &a \"" + strings.Repeat("x", size) + "\"\nb: [" + strings.TrimSuffix(strings.Repeat("*a,", aliases), ",") + "]\n"
}

// Policy is a NetworkPolicy's head (apiVersion, kind, metadata with its name) whose metadata
// the bombs below go into.
const Policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n"

// LaughsInAnnotations is Policy with Laughs as its annotations.
func LaughsInAnnotations() string { return Policy + "  annotations:\n" + Laughs("    ") }

// LabelledInAnnotations is Policy whose labels anchor a string of size bytes that its
// annotations list aliases of.
func LabelledInAnnotations(size, aliases int) string {
	return Policy + "  labels:\n    a: &a \"" + strings.Repeat("x", size) + "\"\n  annotations:\n    b: [" +
		strings.TrimSuffix(strings.Repeat("*a,", aliases), ",") + "]\n"
}
