package main

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// zeros is an endless stream of one byte, for a huge standard input.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '#'
	}
	return len(p), nil
}

// `apply -f` refuses input over the agent's request limit having read no more than the limit:
// a 100 MB file unread (its size says enough), 100 MB of standard input after 16 MiB. Total
// allocation bounds the memory the read took.
func TestReadApplyFileBounded(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil { // sparse: nothing is written
		t.Fatal(err)
	}
	f.Close()
	small := filepath.Join(dir, "small.yaml")
	if err := os.WriteFile(small, []byte("kind: NetworkPolicy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		file     string
		stdin    io.Reader
		want     string // error, or "" for success
		maxAlloc uint64
	}{
		{"100 MB file", huge, nil, huge + " is over 16 MiB, the most the agent takes in one request", 1 << 20},
		{"100 MB on stdin", "-", io.LimitReader(zeros{}, 100<<20), "standard input is over 16 MiB", 96 << 20}, // about 35 MiB, twice that under -race
		{"small file", small, nil, "", 1 << 20},
		{"no file", "", nil, "policy apply needs -f FILE", 1 << 20},
	}
	for _, c := range cases {
		cmd := &cobra.Command{}
		cmd.SetIn(c.stdin)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		data, err := readApplyFile(cmd, c.file, "policy apply")
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		switch {
		case c.want == "" && (err != nil || string(data) != "kind: NetworkPolicy\n"):
			t.Errorf("%s: %q, %v", c.name, data, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		case alloc > c.maxAlloc:
			t.Errorf("%s: allocated %.1f MiB, want at most %d MiB", c.name, float64(alloc)/(1<<20), c.maxAlloc>>20)
		}
		t.Logf("%s: %v, %.1f MiB allocated", c.name, err, float64(alloc)/(1<<20))
	}
}
