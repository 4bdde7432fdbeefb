package test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ebpfnetBin is the CLI built once for the tests that drive it the way a user would.
var ebpfnetBin, binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ebpfnet-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir, ebpfnetBin = dir, filepath.Join(dir, "ebpfnet")
	// cnitool comes from the module proxy, pinned in go.mod as a tool.
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/ebpfnet", "../cmd/ebpfnet-cni",
		"github.com/containernetworking/cni/cnitool")
	// Static, so that the lab's container images can hold the same binary.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ebpfnet:", err)
		os.Exit(1)
	}
	code := m.Run()
	stopAPIServer()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ebpfnet runs the CLI and returns its combined output and exit code.
func ebpfnet(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(ebpfnetBin, args...).CombinedOutput()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run ebpfnet %v: %v", args, err)
	}
	return string(out), code
}
