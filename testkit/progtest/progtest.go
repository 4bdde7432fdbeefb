// Package progtest runs BPF programs on packets with BPF_PROG_TEST_RUN, table-driven.
package progtest

import (
	"testing"

	"github.com/cilium/ebpf"
)

// Case is one packet through a program and what must come out.
type Case struct {
	Name   string
	In     []byte
	Want   uint32                          // the program's return code (tc or XDP action)
	Check  func(tb testing.TB, out []byte) // optional: inspect the packet after the program
	Before func(tb testing.TB)             // optional: set up maps for this case
}

// MustRun runs prog once on pkt and returns its verdict and the packet as it left.
func MustRun(tb testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("BPF_PROG_TEST_RUN %s: %v", prog, err)
	}
	return ret, opts.DataOut
}

// RunTable runs every case as a subtest.
func RunTable(t *testing.T, prog *ebpf.Program, cases []Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if c.Before != nil {
				c.Before(t)
			}
			got, out := MustRun(t, prog, c.In)
			if got != c.Want {
				t.Fatalf("verdict %d, want %d", got, c.Want)
			}
			if c.Check != nil {
				c.Check(t, out)
			}
		})
	}
}
