// Package yamlguard refuses a YAML document before any decoder is given it: one too big, or
// one whose aliases would expand it past that size. Every reader of YAML people hand ebpfnet
// (policies, Service files, the agent's config, lab files) checks each document with it.
package yamlguard

import (
	"bytes"
	"errors"
	"fmt"

	yaml3 "go.yaml.in/yaml/v3"
)

// MaxDocumentBytes bounds one YAML document. The decoder holds a tree of a document's nodes,
// tens of times the size of its text (a hundred and more for a document of one-character
// nodes), so this bound is what keeps one parse small. It is about what Kubernetes stores of
// one object (etcd refuses requests over 1.5 MiB) and far above any NetworkPolicy people write.
const MaxDocumentBytes = 1 << 20

// errAliasLoop says an anchor's value holds an alias of itself.
var errAliasLoop = errors.New("an alias refers to a node that contains it")

// Check refuses a document the YAML decoder should not be given: one over
// MaxDocumentBytes, or one whose aliases would expand it past that size, which is how a YAML
// "billion laughs" turns a few hundred bytes into gigabytes (the decoder in use refuses deep
// alias trees, but not a long string repeated by aliases). A document without '*' has no
// alias and is not parsed here; one with aliases is parsed once into nodes, which keep
// aliases as pointers, and measured without expanding anything.
func Check(doc []byte) error {
	if len(doc) > MaxDocumentBytes {
		return fmt.Errorf("%s is over the %s a document may have", Size(int64(len(doc))), Size(MaxDocumentBytes))
	}
	if bytes.IndexByte(doc, '*') < 0 {
		return nil
	}
	var root yaml3.Node
	if err := yaml3.Unmarshal(doc, &root); err != nil {
		return err
	}
	m := measure{budget: MaxDocumentBytes, sizes: map[*yaml3.Node]int64{}}
	n, err := m.expanded(&root)
	if err != nil {
		return err
	}
	if n > MaxDocumentBytes {
		return fmt.Errorf("its aliases expand it past the %s a document may have (a YAML alias bomb?)", Size(MaxDocumentBytes))
	}
	return nil
}

// measure finds the size of a node tree with every alias expanded, each node counted as its
// text (scalars) plus two bytes, never going far past budget.
type measure struct {
	budget int64
	sizes  map[*yaml3.Node]int64 // finished nodes; -1 while a node is being measured
}

func (m *measure) expanded(n *yaml3.Node) (int64, error) {
	if n == nil {
		return 0, nil
	}
	switch s, ok := m.sizes[n]; {
	case ok && s < 0:
		return 0, errAliasLoop
	case ok:
		return s, nil
	}
	m.sizes[n] = -1
	total := int64(2 + len(n.Value))
	if n.Kind == yaml3.AliasNode {
		s, err := m.expanded(n.Alias)
		if err != nil {
			return 0, err
		}
		total += s
	}
	for _, c := range n.Content {
		s, err := m.expanded(c)
		if err != nil {
			return 0, err
		}
		// Stop adding once past the budget: the answer is "too big" either way, and sizes
		// stay far from overflowing however many times a node is repeated.
		if total += s; total > m.budget {
			total = m.budget + 1
			break
		}
	}
	m.sizes[n] = total
	return total, nil
}

// Size writes a byte count as people read it.
func Size(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
