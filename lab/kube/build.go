package kube

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// buildScript builds the Kubernetes binaries and the loopback CNI plugin from source into
// CacheDir, only those missing; `make deps-kubernetes` runs the same file.
//
//go:embed build.sh
var buildScript []byte

// EnsureBinaries builds what the kubernetes lab needs from source when any of it is missing
// from CacheDir, saying so first and showing the build's progress on out. It needs go in PATH.
func EnsureBinaries(ctx context.Context, out io.Writer) error {
	if !missingBuilt() {
		return nil
	}
	fmt.Fprintf(out, "building Kubernetes %s from source (once, cached in %s): about 12 minutes on 2 idle cores\n", Version, CacheDir())
	if err := RunScript(ctx, buildScript, out, "EBPFNET_CACHE="+CacheDir(), "EBPFNET_K8S_VERSION="+Version); err != nil {
		return fmt.Errorf("build Kubernetes %s: %w", Version, err)
	}
	return nil
}

// RunScript runs an embedded bash script with env added to this process's environment,
// showing its output on out: how the lab's build scripts run when a binary is missing.
func RunScript(ctx context.Context, script []byte, out io.Writer, env ...string) error {
	cmd := exec.CommandContext(ctx, "bash", "-s")
	cmd.Stdin = bytes.NewReader(script)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	return cmd.Run()
}

// missingBuilt tells whether a binary the build makes is not in the cache.
func missingBuilt() bool {
	for _, b := range Binaries {
		if _, err := os.Stat(bin(b)); err != nil {
			return true
		}
	}
	if _, err := os.Stat(CoreDNSBinary()); err != nil {
		return true
	}
	return CNIPluginsDir() == ""
}
